"""A masked autoencoder (He et al., 2022) whose encoder is the ViT that ``FrozenMaeEncoder`` embeds EM with.

The encoder is :func:`scsam_monai.networks.encoders.build_mae_vit` (a timm ``VisionTransformer``) built from the
same ``arch`` name as the frozen encoder, so that its state dict loads into ``FrozenMaeEncoder`` unchanged. The
MAE parts are written here: per-sample random masking (argsort of uniform noise), the encoder run on the visible
patches only, a light decoder (linear embedding, a learned mask token, fixed 2D sin-cos position embeddings,
timm ``Block`` transformer blocks, a linear pixel head) and the per-patch targets (normalised per patch by
default, MAE's ``norm_pix_loss``). :class:`MaskedPatchLoss` averages the squared error over the masked patches.

Images are single-channel, intensities in [0, 1], normalised inside with ``(x - 0.5) / 0.25`` as the frozen
encoder does; pre-training crops are the arch's field of view (``fov``), any multiple of the patch size works.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from scsam_monai.atomic import atomic_write
from scsam_monai.networks.checkpoints import MAE_ARCHITECTURE_KEY
from scsam_monai.networks.encoders import MAE_PIXEL_MEAN, MAE_PIXEL_STD, build_mae_vit, mae_architecture
from scsam_monai.startup_checks.errors import boolean_word_hint

__all__ = [
    "MAE_DECODERS",
    "MaskedAutoencoder",
    "MaskedPatchLoss",
    "PIXEL_TARGETS",
    "sincos_pos_embed_2d",
    "patchify",
    "unpatchify",
    "random_masking",
]

#: Values of ``norm_pix_loss`` (:class:`MaskedAutoencoder`): normalised, raw and centred (``"mean"``) targets.
PIXEL_TARGETS = (True, False, "mean")

#: Decoder settings per arch (pre-training only; the decoder is discarded afterwards). MAE's decoder is narrower
#: and shallower than its encoder; these keep it small on the 512-wide encoder.
MAE_DECODERS: dict[str, dict[str, int]] = {
    "mae_vit_512": {"decoder_embed_dim": 256, "decoder_depth": 4, "decoder_num_heads": 8},
    "tiny": {"decoder_embed_dim": 128, "decoder_depth": 1, "decoder_num_heads": 4},
}
MAE_DECODERS["tiny_1024"] = MAE_DECODERS["tiny"]  # the same encoder block on the paper's canvas


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embeddings (MAE's): half the channels encode the row, half the column.

    Args:
        dim: embedding width, a multiple of 4.
        grid_h: rows of the token grid.
        grid_w: columns of the token grid.

    Returns:
        Tensor (grid_h * grid_w, dim), row-major.
    """
    if dim % 4:
        raise ValueError(f"the sin-cos embedding width must be a multiple of 4, got {dim}.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping patches, row-major.

    Args:
        images: (B, C, H, W), H and W multiples of ``patch_size``.
        patch_size: patch side.

    Returns:
        Tensor (B, N, patch_size**2 * C), N = (H / p) * (W / p), the pixels of each patch row-major.
    """
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}.")
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: (B, N, patch_size**2 * C).
        patch_size: patch side.
        height: image height H.
        width: image width W.

    Returns:
        Images (B, C, H, W).
    """
    b, n, d = patches.shape
    p = patch_size
    gh, gw = height // p, width // p
    c = d // (p * p)
    if gh * gw != n or c * p * p != d:
        raise ValueError(f"{n} patches of {d} values do not tile a {height}x{width} image with patch {p}.")
    x = patches.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, height, width)


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the visible patches of each sample at random (MAE: argsort of per-sample uniform noise).

    Args:
        batch_size: B.
        num_patches: N patches per image.
        mask_ratio: fraction of patches masked, in (0, 1); at least one patch stays visible and one is masked.
        device: device of the returned tensors.
        generator: random generator (its device draws the noise); None for the global RNG.

    Returns:
        ``ids_keep`` (B, K) indices of the visible patches (in random order) and ``mask`` (B, N), 1.0 for masked
        and 0.0 for visible patches, K = N - round(N * mask_ratio).
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}.")
    if num_patches < 2:
        raise ValueError(f"masking needs at least 2 patches per image, got {num_patches}.")
    keep = min(max(num_patches - round(num_patches * mask_ratio), 1), num_patches - 1)
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch_size, num_patches, generator=generator, device=noise_device).to(device)
    ids_keep = torch.argsort(noise, dim=1)[:, :keep]
    mask = torch.ones(batch_size, num_patches, device=device)
    mask.scatter_(1, ids_keep, 0.0)
    return ids_keep, mask


class MaskedAutoencoder(nn.Module):
    """MAE pre-training model: the arch's timm ViT on the visible patches, a small decoder, per-patch targets.

    Args:
        arch: key of ``MAE_ARCHITECTURES`` (``"mae_vit_512"``: field of view 256, patch 16, width 512; ``"tiny"``:
            field of view 64, patch 4, width 512, one block).
        depth: encoder blocks; None for the arch's.
        num_heads: encoder attention heads; None for the arch's.
        mask_ratio: fraction of patches masked per image (ScSAM: 0.5).
        decoder_embed_dim: decoder width; None for :data:`MAE_DECODERS`' value of the arch.
        decoder_depth: decoder blocks; None for the arch's.
        decoder_num_heads: decoder attention heads; None for the arch's.
        norm_pix_loss: the targets of the masked patches. True: each patch normalised by its own mean and standard
            deviation (MAE's default); ``"mean"``: each patch minus its own mean (its texture at its own contrast,
            without the brightness that raw targets are dominated by, and without amplifying the noise of flat
            patches as normalised targets do); False: the normalised intensities themselves.
        pixel_mean: intensity mean subtracted from [0, 1] images (the frozen encoder's).
        pixel_std: intensity standard deviation divided by (the frozen encoder's).

    Attributes:
        encoder: the timm ``VisionTransformer``; its state dict is what ``FrozenMaeEncoder`` loads.
        architecture: the encoder's settings (``mae_architecture``) after overrides.

    Example::

        mae = MaskedAutoencoder(arch="tiny")
        out = mae(torch.rand(8, 1, 64, 64))  # pred/target (8, 256, 16), mask (8, 256)
        loss = MaskedPatchLoss()(out["pred"], out["target"], out["mask"])
    """

    def __init__(
        self,
        *,
        arch: str = "mae_vit_512",
        depth: int | None = None,
        num_heads: int | None = None,
        mask_ratio: float = 0.5,
        decoder_embed_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_num_heads: int | None = None,
        norm_pix_loss: bool | str = True,
        pixel_mean: float = MAE_PIXEL_MEAN,
        pixel_std: float = MAE_PIXEL_STD,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}.")
        if pixel_std <= 0:
            raise ValueError(f"pixel_std must be positive, got {pixel_std}.")
        self.architecture = mae_architecture(arch, depth=depth, num_heads=num_heads)
        decoder = dict(MAE_DECODERS.get(arch, MAE_DECODERS["mae_vit_512"]))
        for key, value in (
            ("decoder_embed_dim", decoder_embed_dim),
            ("decoder_depth", decoder_depth),
            ("decoder_num_heads", decoder_num_heads),
        ):
            if value is not None:
                decoder[key] = int(value)
        if decoder["decoder_embed_dim"] % decoder["decoder_num_heads"] or decoder["decoder_embed_dim"] % 4:
            raise ValueError(
                f"decoder_embed_dim {decoder['decoder_embed_dim']} must be a multiple of 4 and of "
                f"decoder_num_heads {decoder['decoder_num_heads']}."
            )
        self.decoder_settings = decoder
        self.arch = arch
        self.mask_ratio = float(mask_ratio)
        if norm_pix_loss not in PIXEL_TARGETS:
            hint = boolean_word_hint("norm_pix_loss", norm_pix_loss)
            raise ValueError(f"norm_pix_loss must be true, false or 'mean', got {norm_pix_loss!r}{hint}.")
        self.norm_pix_loss: bool | str = norm_pix_loss if isinstance(norm_pix_loss, str) else bool(norm_pix_loss)
        self.pixel_mean = float(pixel_mean)
        self.pixel_std = float(pixel_std)
        self.patch_size = int(self.architecture["patch_size"])
        width, dec_width = int(self.architecture["embed_dim"]), decoder["decoder_embed_dim"]

        self.encoder = build_mae_vit(arch, depth=depth, num_heads=num_heads)
        # MAE's fixed sin-cos position embeddings on the pre-training grid (frozen here; the frozen encoder
        # interpolates them to its tiles' grid). The class token's entry stays zero.
        grid = self.architecture["fov"] // self.patch_size
        with torch.no_grad():
            self.encoder.pos_embed.zero_()
            self.encoder.pos_embed[0, self.encoder.num_prefix_tokens :] = sincos_pos_embed_2d(width, grid, grid)
        self.encoder.pos_embed.requires_grad_(False)

        self.decoder_embed = nn.Linear(width, dec_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width))
        self.decoder_blocks = nn.Sequential(
            *[
                Block(dec_width, decoder["decoder_num_heads"], mlp_ratio=4.0, qkv_bias=True)
                for _ in range(decoder["decoder_depth"])
            ]
        )
        self.decoder_norm = nn.LayerNorm(dec_width)
        self.decoder_pred = nn.Linear(dec_width, self.patch_size**2)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for name, module in self.named_modules():
            if name.startswith("decoder") and isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif name.startswith("decoder") and isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups: weight decay on matrices only (not on biases, norms, tokens).

        Args:
            weight_decay: decay of the weight matrices.
        """
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or name.endswith("token") else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(images - pixel_mean) / pixel_std`` for one-channel images (B, 1, H, W) in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"MaskedAutoencoder expects one-channel images (B, 1, H, W), got {tuple(images.shape)}.")
        return (images - self.pixel_mean) / self.pixel_std

    def targets(self, normalized: torch.Tensor) -> torch.Tensor:
        """Per-patch prediction targets (B, N, p*p) of normalised images (normalised per patch if set)."""
        target = patchify(normalized, self.patch_size)
        if self.norm_pix_loss == "mean":
            return target - target.mean(dim=-1, keepdim=True)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6).sqrt()
        return target

    def forward_encoder(self, normalized: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encode the visible patches.

        Args:
            normalized: normalised images (B, 1, H, W).
            ids_keep: indices (B, K) of the visible patches.

        Returns:
            Latent tokens (B, 1 + K, D): the class token, then the visible patches in ``ids_keep`` order.
        """
        enc = self.encoder
        # timm's own patch and position embedding (interpolated for other grids), as in ``forward_features``
        tokens = enc._pos_embed(enc.patch_embed(normalized))
        prefix, patches = tokens[:, : enc.num_prefix_tokens], tokens[:, enc.num_prefix_tokens :]
        visible = torch.gather(patches, 1, ids_keep[..., None].expand(-1, -1, patches.shape[-1]))
        x = enc.norm_pre(torch.cat([prefix, visible], dim=1))
        return enc.norm(enc.blocks(x))

    def forward_decoder(self, latent: torch.Tensor, ids_keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Predict every patch from the visible patches' latents.

        Args:
            latent: (B, 1 + K, D) from :meth:`forward_encoder`.
            ids_keep: (B, K) indices of the visible patches.
            grid: token grid (rows, columns).

        Returns:
            Predicted patches (B, N, p*p), N = rows * columns.
        """
        x = self.decoder_embed(latent)
        prefix = self.encoder.num_prefix_tokens
        b, n, width = x.shape[0], grid[0] * grid[1], x.shape[-1]
        full = self.mask_token.to(x.dtype).expand(b, n, width)
        full = full.scatter(1, ids_keep[..., None].expand(-1, -1, width), x[:, prefix:])
        full = full + sincos_pos_embed_2d(width, *grid).to(device=x.device, dtype=x.dtype)[None]
        x = self.decoder_norm(self.decoder_blocks(torch.cat([x[:, :prefix], full], dim=1)))
        return self.decoder_pred(x[:, prefix:])

    def forward(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Mask, encode, decode.

        Args:
            images: one-channel images (B, 1, H, W), intensities in [0, 1], H and W multiples of the patch size.
            generator: random generator of the masks; None for the global RNG.

        Returns:
            ``pred`` and ``target`` (B, N, p*p) and ``mask`` (B, N), 1.0 where the patch was masked.
        """
        normalized = self.normalize(images)
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        ids_keep, mask = random_masking(
            images.shape[0], grid[0] * grid[1], self.mask_ratio, device=images.device, generator=generator
        )
        pred = self.forward_decoder(self.forward_encoder(normalized, ids_keep), ids_keep, grid)
        return {"pred": pred, "target": self.targets(normalized), "mask": mask}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Masked input, reconstruction and original in intensity space, for display.

        Args:
            images: one-channel images (B, 1, H, W) in [0, 1].
            generator: random generator of the masks.

        Returns:
            ``masked`` (visible patches, masked ones 0), ``reconstruction`` (predicted masked patches pasted into
            the visible ones; per-patch normalised predictions take the true patch's mean and spread, centred
            ones (``norm_pix_loss="mean"``) its mean) and
            ``original``, each (B, 1, H, W); ``mask`` (B, 1, H, W), 1 where masked.
        """
        out = self.forward(images, generator=generator)
        h, w = images.shape[-2:]
        pred = out["pred"].float()
        if self.norm_pix_loss:  # per-patch targets: put the true patch's spread (unless centred) and mean back
            patches = patchify(self.normalize(images), self.patch_size)
            if self.norm_pix_loss != "mean":
                pred = pred * (patches.var(dim=-1, keepdim=True) + 1.0e-6).sqrt()
            pred = pred + patches.mean(dim=-1, keepdim=True)
        pred = unpatchify(pred, self.patch_size, h, w) * self.pixel_std + self.pixel_mean
        mask = unpatchify(
            out["mask"][..., None].expand(-1, -1, self.patch_size**2).to(images.dtype), self.patch_size, h, w
        )
        return {
            "masked": images * (1 - mask),
            "reconstruction": images * (1 - mask) + pred.to(images.dtype) * mask,
            "original": images,
            "mask": mask,
        }

    def encoder_record(self, **extra: object) -> dict:
        """The architecture record stored with the exported encoder (``FrozenMaeEncoder`` checks it).

        Args:
            extra: further plain facts to record (e.g. ``epoch``).
        """
        cfg = self.architecture
        record = {key: cfg[key] for key in ("arch", "fov", "patch_size", "embed_dim", "depth", "num_heads")}
        record.update(
            mlp_ratio=float(cfg["mlp_ratio"]),
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            mask_ratio=self.mask_ratio,
            norm_pix_loss=self.norm_pix_loss,
            format_version=1,
        )
        record.update(extra)
        return record

    def save_encoder(self, path: str | Path, **extra: object) -> Path:
        """Write the encoder alone, atomically: ``{"mae_architecture": record, "state_dict": timm ViT state}``.

        The file loads with ``torch.load(weights_only=True)`` and into ``FrozenMaeEncoder(arch, checkpoint=path)``.

        Args:
            path: destination file.
            extra: further plain facts to record (e.g. ``epoch``).

        Returns:
            The path written.
        """
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.encoder.state_dict().items()}
        buffer = io.BytesIO()
        torch.save({MAE_ARCHITECTURE_KEY: self.encoder_record(**extra), "state_dict": state}, buffer)
        return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


class MaskedPatchLoss(nn.Module):
    """Mean squared error over the masked patches only (MAE's loss).

    ``loss = sum_n mask_n * mean_pixels((pred_n - target_n)**2) / sum_n mask_n``.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: pred and target (B, N, P), mask (B, N) with 1 for masked patches. Returns a scalar."""
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

"""The two frozen image encoders of ScSAM: SAM's ViT image encoder and an MAE ViT pre-trained on EM.

Both take images of any size with intensities in [0, 1], shape (B, C, H, W), C in {1, 3}, place them on their
square canvas (longest side resized to the canvas, bottom/right padding; see :mod:`.geometry`) and return a 64x64
embedding: (B, 256, 64, 64) for SAM, (B, 512, 64, 64) for the MAE. Their weights never change: parameters do not
require gradients, the modules stay in eval mode when ``.train()`` is called, and ``forward`` runs under
``torch.no_grad()``. ``cache_key`` identifies architecture and weights, for caches of precomputed embeddings.

Pretrained weights are required. Random weights (for tests and the CPU demo, with the ``"tiny"`` architectures)
must be asked for with ``allow_random_weights=True`` and are announced with a WARNING in the log.

The MAE's ViT is built by :func:`build_mae_vit` from one name of :data:`MAE_ARCHITECTURES`, both here and in the
MAE pre-training (:mod:`scsam_monai.mae`), so that the pre-trained encoder and the frozen one cannot drift apart.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from segment_anything.modeling import ImageEncoderViT
from timm.models.vision_transformer import VisionTransformer

from scsam_monai.networks.checkpoints import SamCheckpoint, load_mae_checkpoint, sha256_file, submodule_state
from scsam_monai.networks.geometry import longest_side_size, pad_to_square, resize_longest
from scsam_monai.networks.precision import PRECISIONS, precision_context, resolve_precision
from scsam_monai.networks.sam_attention import SAM_ATTENTION_KINDS, sam_attention_kind, set_sam_attention

__all__ = [
    "SAM_ARCHITECTURES",
    "MAE_ARCHITECTURES",
    "TEST_ARCHITECTURES",
    "MAE_PIXEL_MEAN",
    "MAE_PIXEL_STD",
    "mae_architecture",
    "build_mae_vit",
    "FrozenSamEncoder",
    "FrozenMaeEncoder",
]

logger = logging.getLogger(__name__)

_SAM_COMMON = {
    "img_size": 1024,
    "patch_size": 16,
    "window_size": 14,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "use_rel_pos": True,
    "out_chans": 256,
    "layer_norm_eps": 1e-6,
}

#: Keyword arguments of ``segment_anything.modeling.ImageEncoderViT`` per architecture (``layer_norm_eps`` becomes
#: ``norm_layer``). vit_b/l/h are exactly those of ``segment_anything.build_sam``; "tiny" (tests, CPU demo) keeps
#: the 64x64 token grid and the 256x64x64 output with a 256 canvas, 4-pixel patches and two narrow blocks;
#: "tiny_1024" has the same blocks on SAM's own 1024 canvas with 16-pixel patches, so that a slice is tiled as for
#: ViT-B at about the cost per tile of "tiny" (benchmarks of whole slices). Every name but those of
#: :data:`TEST_ARCHITECTURES` is an official SAM checkpoint's (``scsam_monai.startup_checks.SAM_ARCHS`` is derived
#: from it).
SAM_ARCHITECTURES: dict[str, dict] = {
    "vit_b": {**_SAM_COMMON, "embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {**_SAM_COMMON, "embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {**_SAM_COMMON, "embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
    "tiny": {
        **_SAM_COMMON,
        "img_size": 256,
        "patch_size": 4,
        "window_size": 8,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 2,
        "global_attn_indexes": (1,),
    },
}
SAM_ARCHITECTURES["tiny_1024"] = {**SAM_ARCHITECTURES["tiny"], "img_size": 1024, "patch_size": 16}

#: Architectures with random weights only, for tests, the CPU demo and benchmarks: no checkpoint exists for them.
TEST_ARCHITECTURES = ("tiny", "tiny_1024")

#: MAE ViT encoders (timm ``VisionTransformer``, one input channel, class token). ``fov`` is the pre-training field
#: of view (the position embeddings' grid is ``fov / patch_size``, interpolated to ``tile_size / patch_size`` when
#: embedding), ``canvas`` the square the image is placed on, ``tile_size`` the side of the tiles encoded in one
#: batch and stitched by position. "mae_vit_512" follows the paper (field of view 256, patch 16, width 512); the
#: paper does not state depth and heads, so 8 blocks of 16 heads are used (the widths of MAE's standard 512-wide
#: transformer); a checkpoint of another depth fails to load with a clear error. "tiny" (tests, CPU demo) keeps
#: the width 512 and the 64x64 token grid with a 256 canvas and 4-pixel patches; "tiny_1024" the same block on the
#: 1024 canvas with the paper's patches, tiles and field of view.
MAE_ARCHITECTURES: dict[str, dict] = {
    "mae_vit_512": {
        "canvas": 1024,
        "tile_size": 512,
        "fov": 256,
        "patch_size": 16,
        "embed_dim": 512,
        "depth": 8,
        "num_heads": 16,
        "mlp_ratio": 4.0,
    },
    "tiny": {
        "canvas": 256,
        "tile_size": 128,
        "fov": 64,
        "patch_size": 4,
        "embed_dim": 512,
        "depth": 1,
        "num_heads": 4,
        "mlp_ratio": 4.0,
    },
}
MAE_ARCHITECTURES["tiny_1024"] = {
    **MAE_ARCHITECTURES["tiny"],
    **{key: MAE_ARCHITECTURES["mae_vit_512"][key] for key in ("canvas", "tile_size", "fov", "patch_size")},
}

#: Intensity normalisation of the MAE, ``(x - mean) / std`` on [0, 1] intensities, in pre-training and embedding.
MAE_PIXEL_MEAN = 0.5
MAE_PIXEL_STD = 0.25

# entries of an MAE architecture that fix the shapes of the pre-trained weights' grid and width
_MAE_SHAPE_KEYS = ("fov", "patch_size", "embed_dim", "mlp_ratio")


def mae_architecture(arch: str, *, depth: int | None = None, num_heads: int | None = None) -> dict:
    """The MAE ViT settings of ``arch``, with depth and heads optionally overridden.

    Args:
        arch: key of :data:`MAE_ARCHITECTURES`.
        depth: number of transformer blocks; None for the arch's.
        num_heads: attention heads per block (must divide the width); None for the arch's.

    Returns:
        A copy of the arch's entry (``canvas``, ``tile_size``, ``fov``, ``patch_size``, ``embed_dim``, ``depth``,
        ``num_heads``, ``mlp_ratio``) with ``arch`` added.
    """
    if arch not in MAE_ARCHITECTURES:
        raise ValueError(f"unknown MAE arch {arch!r}, expected one of {sorted(MAE_ARCHITECTURES)}.")
    cfg = {**MAE_ARCHITECTURES[arch], "arch": arch}
    if depth is not None:
        cfg["depth"] = int(depth)
    if num_heads is not None:
        cfg["num_heads"] = int(num_heads)
    if cfg["depth"] < 1 or cfg["num_heads"] < 1 or cfg["embed_dim"] % cfg["num_heads"]:
        raise ValueError(
            f"MAE arch {arch!r}: depth ({cfg['depth']}) and num_heads ({cfg['num_heads']}) must be positive and "
            f"num_heads must divide the width {cfg['embed_dim']}."
        )
    return cfg


def build_mae_vit(arch: str = "mae_vit_512", *, depth: int | None = None, num_heads: int | None = None):
    """The MAE's ViT encoder: a timm ``VisionTransformer`` for one-channel images.

    Its position embeddings cover the pre-training field of view (``fov / patch_size`` per side) and are
    interpolated (``dynamic_img_size``) for other input sizes. It has a class token, no classifier and no pooling;
    ``forward_features`` returns ``(B, 1 + N, embed_dim)``. Weights are timm's random initialisation (draws from
    the global RNG).

    Args:
        arch: key of :data:`MAE_ARCHITECTURES`.
        depth: number of transformer blocks; None for the arch's.
        num_heads: attention heads per block; None for the arch's.
    """
    cfg = mae_architecture(arch, depth=depth, num_heads=num_heads)
    return VisionTransformer(
        img_size=cfg["fov"],
        patch_size=cfg["patch_size"],
        in_chans=1,
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        num_classes=0,
        global_pool="",
        class_token=True,
        dynamic_img_size=True,
    )


_SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
_SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def _onto_canvas(x: torch.Tensor, canvas: int, fit: bool) -> torch.Tensor:
    """``x`` resized so its longest side is ``canvas`` (``fit``), or as it is when it fits (then only padded).

    Raises:
        ValueError: ``fit`` is False and ``x`` is larger than the canvas.
    """
    if fit:
        return resize_longest(x, canvas, mode="bilinear")
    if max(x.shape[-2:]) > canvas:
        raise ValueError(
            f"an image of {tuple(x.shape[-2:])} pixels does not fit the {canvas}x{canvas} canvas at its own pixel "
            "size: tile it (scsam_monai.engines.tiling) or let the encoder resize it (fit_to_canvas=True)."
        )
    return x


def _check_images(images: torch.Tensor, owner: str) -> None:
    """Validate a batch of images (B, C, H, W), C in {1, 3}, finite floats in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{owner} expects images of shape (B, C, H, W), got {shape}.")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{owner} expects 1 (grayscale) or 3 (RGB) channels, got {images.shape[1]} channels.")
    if min(images.shape) == 0:
        raise ValueError(f"{owner} got an empty batch or image of shape {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"{owner} expects floating point intensities in [0, 1], got dtype {images.dtype}.")
    if not torch.isfinite(images).all():
        raise ValueError(f"{owner} got non-finite values (NaN or inf) in the images.")
    if images.max() > 2.0:
        raise ValueError(
            f"{owner} expects intensities in [0, 1], got a maximum of {images.max().item():.4g}; "
            "scale the images to [0, 1] first (e.g. divide 8-bit images by 255)."
        )


def _random_weights_or_refuse(owner: str, arch: str, allow_random_weights: bool, seed: int, hint: str) -> None:
    """Refuse to build without a checkpoint unless random weights were asked for; then warn loudly."""
    if not allow_random_weights:
        raise ValueError(
            f"{owner}(arch={arch!r}) needs a pretrained checkpoint, and none was given. {hint} To run with random "
            "weights anyway (tests, CPU demo), set `allow_random_weights: true` in the config "
            "(allow_random_weights=True)."
        )
    logger.warning(
        "!!! %s(arch=%r) is using RANDOM weights (seed %d), not a pretrained checkpoint. Its embeddings are not "
        "meaningful: results obtained with it must NOT be reported as pretrained ScSAM results. !!!",
        owner,
        arch,
        seed,
    )


class _FrozenEncoder(nn.Module):
    """Base of the frozen encoders: no gradients, always in eval mode."""

    img_size: int

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _FrozenEncoder:
        """Keep eval mode whatever ``mode`` is (the encoder is frozen).

        Args:
            mode: ignored.
        """
        return super().train(False)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Size ``(h', w')`` of an ``height`` x ``width`` image resized onto the canvas (before padding).

        Args:
            height: height of the original image.
            width: width of the original image.
        """
        return longest_side_size(height, width, self.img_size)


def _infer_sam_arch(state: dict[str, torch.Tensor]) -> str | None:
    """Name of the SAM_ARCHITECTURES entry whose shapes match an ``image_encoder`` state dict, if any."""
    w = state.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for name, cfg in SAM_ARCHITECTURES.items():
        if (cfg["embed_dim"], cfg["patch_size"], cfg["depth"]) == (w.shape[0], w.shape[-1], depth):
            return name
    return f"unknown (embed_dim {w.shape[0]}, patch {w.shape[-1]}, depth {depth})"


def _short(error: Exception, lines: int = 4) -> str:
    text = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(text[:lines]) + (" ..." if len(text) > lines else "")


def _check_mae_record(path: str, arch: str, base: dict, record: dict) -> None:
    """Refuse a pre-trained MAE file whose recorded grid or width differ from those of ``arch``."""
    differing = [k for k in _MAE_SHAPE_KEYS if k in record and float(record[k]) != float(base[k])]
    if differing:
        held = record.get("arch", "unknown")
        details = ", ".join(f"{k} {record[k]} (arch {arch!r}: {base[k]})" for k in differing)
        raise ValueError(
            f"checkpoint '{path}' was pre-trained with MAE arch {held!r}, not {arch!r}: {details}. "
            f"Set the arch it was pre-trained with (mae_arch: {held})."
        )


def _from_record(name: str, given, record: dict, default, path: str | None):
    """``given`` if not None (it must then agree with the record), else the record's value, else ``default``."""
    if given is None:
        return type(default)(record[name]) if name in record else default
    if name in record and float(record[name]) != float(given):
        raise ValueError(
            f"checkpoint '{path}' was pre-trained with {name}={record[name]}, but {name}={given} was asked for; "
            f"leave {name} unset to use the checkpoint's."
        )
    return type(default)(given)


class FrozenSamEncoder(_FrozenEncoder):
    """SAM's ViT image encoder, frozen, with SAM's preprocessing.

    Images are replicated to 3 channels if grayscale, scaled to [0, 255], resized (longest side to the canvas,
    antialiased bilinear), normalised with SAM's pixel mean/std and zero-padded at the bottom/right, as
    ``segment_anything.modeling.Sam.preprocess`` (the resize is ``ResizeLongestSide.apply_image_torch``'s).

    Args:
        arch: key of :data:`SAM_ARCHITECTURES`: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"tiny"`` (tests/CPU).
        checkpoint: SAM or SAM-compatible checkpoint file (see :func:`.checkpoints.load_sam_state_dict`), or a
            :class:`.checkpoints.SamCheckpoint` read already (the model builder reads the file once); None or ""
            for none.
        allow_random_weights: build with random weights when ``checkpoint`` is None (a WARNING is logged).
        seed: seed of the random weights (the global RNG is left untouched).
        precision: ``"auto"`` (bf16 autocast on CUDA GPUs and CPUs that run bf16 natively, else fp16 on older GPUs
            and fp32 on other CPUs), ``"bf16"``, ``"fp16"`` (CUDA only) or ``"fp32"`` (autocast off, even inside an
            outer autocast); see :mod:`.precision`. Embeddings are returned in float32 whatever the precision.
        attention: ``"fused"`` (:class:`.sam_attention.FusedSamAttention`: ``scaled_dot_product_attention`` with
            the relative-position bias as its mask) or ``"reference"`` (segment-anything's own ``Attention``).
        compile: ``torch.compile`` the ViT at the first call (state-dict keys unchanged): ``"auto"``
            (default: compile on a CPU unless the arch is "tiny", where compiling costs more than it saves),
            False, True (default mode) or a mode name (``"reduce-overhead"``: CUDA graphs; ``"max-autotune"``).
            On a CPU the default mode compiles with Inductor's ``freezing``: the frozen weights become constants
            that oneDNN prepacks once (in bf16 under bf16 autocast) and the elementwise work between the matmuls
            (bias build, residual adds, GELU, LayerNorm, window partitions) is fused, and the global blocks'
            attention runs chunked (:func:`.sam_attention.chunked_rel_pos_attention`): 3.12x segment-anything's
            float32 encoder for ViT-B on the build machine (benchmarks/results/cpu_full_sam_encoder_chunked.json),
            after a one-time compile at the first call. Weights are read at that first call: load checkpoints before it.

    Attributes:
        img_size: side of the square canvas (1024, 256 for "tiny").
        embedding_shape: (256, 64, 64), the shape of one image's embedding.
        cache_key: ``"sam-<arch>-<sha256 of the checkpoint>"`` or ``"sam-<arch>-random-seed<seed>"``. Precision
            and attention are not part of it: they change the embeddings by rounding only (bf16: < 2% relative L2,
            tested), like the float16 storage of the cache.

    Example::

        enc = FrozenSamEncoder(arch="vit_b", checkpoint="models/sam_vit_b_01ec64.pth")
        emb = enc(torch.rand(2, 1, 768, 1024))  # (2, 256, 64, 64)
    """

    def __init__(
        self,
        *,
        arch: str = "vit_b",
        checkpoint: str | Path | SamCheckpoint | None = None,
        allow_random_weights: bool = False,
        seed: int = 0,
        precision: str = "auto",
        attention: str = "fused",
        compile: bool | str = "auto",
    ) -> None:
        super().__init__()
        if arch not in SAM_ARCHITECTURES:
            raise ValueError(f"unknown SAM arch {arch!r}, expected one of {sorted(SAM_ARCHITECTURES)}.")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown SAM encoder precision {precision!r}, expected one of {PRECISIONS}.")
        if attention not in SAM_ATTENTION_KINDS:
            raise ValueError(f"unknown SAM encoder attention {attention!r}, expected one of {SAM_ATTENTION_KINDS}.")
        self.precision = precision
        cfg = dict(SAM_ARCHITECTURES[arch])
        self.arch = arch
        read = checkpoint if isinstance(checkpoint, SamCheckpoint) else None
        self.checkpoint = read.path if read is not None else (str(checkpoint) if checkpoint else None)
        self.img_size = int(cfg["img_size"])
        grid = self.img_size // cfg["patch_size"]
        self.embedding_shape = (int(cfg["out_chans"]), grid, grid)
        if self.checkpoint is None:
            _random_weights_or_refuse(
                "FrozenSamEncoder",
                arch,
                allow_random_weights,
                seed,
                "Pass checkpoint=<path to an official SAM checkpoint, e.g. sam_vit_b_01ec64.pth> "
                "(see bundle/large_files.yml).",
            )
        eps = cfg.pop("layer_norm_eps")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = ImageEncoderViT(norm_layer=partial(nn.LayerNorm, eps=eps), **cfg)
        if self.checkpoint is None:
            self.cache_key = f"sam-{arch}-random-seed{seed}"
        else:
            state = submodule_state(SamCheckpoint.of(read or self.checkpoint).state, "image_encoder")
            try:
                self.encoder.load_state_dict(state, strict=True)
            except RuntimeError as e:
                held = _infer_sam_arch(state)
                raise ValueError(
                    f"checkpoint '{self.checkpoint}' does not match the SAM image encoder arch {arch!r}"
                    f"{f'; the file holds arch {held!r}' if held else ''}. Set the arch that matches the file. "
                    f"Details: {_short(e)}"
                ) from e
            self.cache_key = f"sam-{arch}-{sha256_file(self.checkpoint)}"
        set_sam_attention(self.encoder, attention)  # after loading: the swap keeps the parameters and their keys
        self.register_buffer("pixel_mean", torch.tensor(_SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()
        self.compile_setting: bool | str = compile
        self._compiled = False  # compiled at the first call, when the device is known
        # the compiled ViT lives outside the module tree (object.__setattr__): state-dict keys, .to() and copies
        # see only self.encoder; a copy (MONAI Label deep-copies networks) compiles again at its own first call
        object.__setattr__(self, "_compiled_fn", None)

    def __getstate__(self) -> dict:
        """Pickle/deepcopy state without the compiled graph (it holds this instance's frozen weights)."""
        state = self.__dict__.copy()
        state["_compiled"], state["_compiled_fn"] = False, None
        return state

    @property
    def compiled(self) -> bool:
        """Whether the ViT runs as a compiled graph (after the first call)."""
        return self._compiled_fn is not None

    def compile_options(self, device: torch.device | str) -> dict | None:
        """Keyword arguments of ``torch.compile`` for the ViT on ``device``, or None when it runs eagerly.

        ``"auto"`` compiles on a CPU for the full-size archs only (see the class docstring); on a CPU the default
        mode uses Inductor's ``freezing`` (valid because the encoder is frozen and runs under ``no_grad``).
        """
        setting, device_type = self.compile_setting, torch.device(device).type
        if setting == "auto":
            setting = device_type == "cpu" and self.arch not in TEST_ARCHITECTURES
        if setting is False or setting in ("false", "none", "off", ""):
            return None
        if setting is True or setting in ("true", "default"):
            return {"options": {"freezing": True}} if device_type == "cpu" else {}
        return {"mode": str(setting)}

    @property
    def attention(self) -> str:
        """``"fused"`` or ``"reference"``: the attention the ViT's blocks use now."""
        return sam_attention_kind(self.encoder)

    def compute_dtype(self, device: torch.device | str | None = None) -> torch.dtype | None:
        """The autocast dtype of the ViT on ``device`` (default: where the encoder is), None for float32."""
        return resolve_precision(self.precision, self.pixel_mean.device if device is None else device)

    def preprocess(self, images: torch.Tensor, *, fit_to_canvas: bool = True) -> torch.Tensor:
        """Place images on SAM's normalised canvas.

        Args:
            images: intensities in [0, 1], shape (B, C, H, W), C in {1, 3}.
            fit_to_canvas: resize the longest side to the canvas (SAM's way); False: images no larger than the
                canvas keep their pixel size and are only padded (tiles at the model's pixel size).

        Returns:
            Tensor (B, 3, S, S), S = ``img_size``; the padded region is 0 (SAM's order: normalise, then pad).
        """
        _check_images(images, type(self).__name__)
        x = images.to(device=self.pixel_mean.device, dtype=self.pixel_mean.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = _onto_canvas(x * 255.0, self.img_size, fit_to_canvas)
        x = (x - self.pixel_mean) / self.pixel_std
        return pad_to_square(x, self.img_size, pad_value=0.0)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, *, fit_to_canvas: bool = True) -> torch.Tensor:
        """Embed images.

        Args:
            images: intensities in [0, 1], shape (B, C, H, W), C in {1, 3}, any H, W.
            fit_to_canvas: see :meth:`preprocess`.

        Returns:
            Embeddings (B, 256, 64, 64) covering the canvas; the image occupies the top-left
            ``input_size(H, W)`` scaled by 64 / ``img_size``; float32.
        """
        x = self.preprocess(images, fit_to_canvas=fit_to_canvas)
        if torch.jit.is_tracing():  # a trace (TorchScript export) records the eager ops, never a compiled graph
            with precision_context(x.device, self.compute_dtype(x.device)):
                return self.encoder.forward(x).float()
        if not self._compiled:
            self._compiled = True
            options = self.compile_options(x.device)
            if options is not None:
                try:
                    object.__setattr__(self, "_compiled_fn", torch.compile(self.encoder, **options))
                    with precision_context(x.device, self.compute_dtype(x.device)):
                        return self._compiled_fn(x).float()
                except Exception as e:  # noqa: BLE001 - "auto" must never stop a run that eager mode can do
                    object.__setattr__(self, "_compiled_fn", None)  # back to eager, for this and every later call
                    if self.compile_setting != "auto":
                        raise
                    logger.warning(
                        "torch.compile of the SAM encoder failed (%s: %s); running it eagerly. Set the SAM "
                        "encoder's compile to false to skip the attempt (e.g. on machines without a C++ compiler).",
                        type(e).__name__,
                        _short(e),
                    )
        vit = self._compiled_fn if self._compiled_fn is not None else self.encoder
        with precision_context(x.device, self.compute_dtype(x.device)):
            return vit(x).float()


class FrozenMaeEncoder(_FrozenEncoder):
    """An MAE ViT pre-trained on EM, frozen, applied tile by tile to a large canvas.

    Images (grayscale; RGB is averaged to one channel) are resized (longest side to the canvas, antialiased
    bilinear), zero-padded at the bottom/right IN INTENSITY SPACE (the padding is black, 0, like EM background
    outside the image) and then normalised with ``(x - pixel_mean) / pixel_std``: unlike SAM, padding comes before
    normalisation. The canvas is cut into ``(canvas / tile_size)**2`` tiles, all encoded in one batch by the ViT
    (position embeddings interpolated from the ``fov / patch`` grid to the ``tile_size / patch`` grid), and the
    tiles' token grids are stitched back by position into a 64x64 grid.

    The checkpoint is the encoder file written by the MAE pre-training (``scsam_monai.mae``, e.g.
    ``bundle/models/mae_encoder.pth``). It records the architecture it was pre-trained with: a file of another arch
    is refused with a message naming it, and its depth, heads and normalisation are used unless given here.

    Args:
        arch: key of :data:`MAE_ARCHITECTURES`: ``"mae_vit_512"`` or ``"tiny"`` (tests/CPU).
        checkpoint: MAE encoder checkpoint (see :func:`.checkpoints.load_mae_checkpoint`); None or "" for none.
        allow_random_weights: build with random weights when ``checkpoint`` is None (a WARNING is logged).
        seed: seed of the random weights (the global RNG is left untouched).
        tile_size: tile side on the canvas; None for the arch's (512, or 128 for "tiny"). Must divide the canvas
            and be a multiple of the patch size (256 gives 16 tiles of 16x16 tokens for "mae_vit_512").
        depth: transformer blocks; None for the checkpoint's record, else the arch's.
        num_heads: attention heads; None for the checkpoint's record, else the arch's.
        pixel_mean: intensity mean subtracted after padding; None for the checkpoint's record, else 0.5.
        pixel_std: intensity standard deviation divided by after padding; None for the record, else 0.25.
        subtract_blank: subtract from every tile's token grid the ViT's response to a blank tile (every pixel at
            the normalisation's mean intensity, 0 after normalisation), encoded in the same batch and precision.
            That response is the part of the features that does not depend on the image: mostly the position
            embeddings carried through the blocks. A pre-trained MAE with fixed sin-cos position embeddings can let
            it dominate its output (on the real-EM report's tiny MAE, 90% of the feature variance over the training
            sections is this fixed pattern, against 21% for a random twin; ``experiments/results/real_em.md``). There,
            removing it did not help the head (MAE* test Dice 0.156 with it, 0.157 without, seed 0). Off by
            default (the paper embeds with the raw encoder output). The trained head does not record it: embed
            with the same setting at inference as in training (``network_def#mae_options`` in both configs).

    Attributes:
        img_size: side of the square canvas (1024, 256 for "tiny").
        tile_size: side of a tile on the canvas.
        embedding_shape: (512, 64, 64), the shape of one image's embedding.
        architecture: the ViT's settings (:func:`mae_architecture`) after overrides.
        cache_key: ``"mae-<arch>-t<tile_size>-<sha256 of the checkpoint>"`` or
            ``"mae-<arch>-t<tile_size>-random-seed<seed>"``, with ``"-d<depth>h<heads>"`` after the tile size when
            they are not the arch's, suffixed ``"-norm<mean>_<std>"`` when the normalisation is not the default and
            ``"-blank"`` with ``subtract_blank``.

    Example::

        enc = FrozenMaeEncoder(arch="mae_vit_512", checkpoint="bundle/models/mae_encoder.pth")
        emb = enc(torch.rand(2, 1, 768, 1024))  # (2, 512, 64, 64)
    """

    def __init__(
        self,
        *,
        arch: str = "mae_vit_512",
        checkpoint: str | Path | None = None,
        allow_random_weights: bool = False,
        seed: int = 0,
        tile_size: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        pixel_mean: float | None = None,
        pixel_std: float | None = None,
        subtract_blank: bool = False,
    ) -> None:
        super().__init__()
        base = mae_architecture(arch)
        self.arch = arch
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.img_size = int(base["canvas"])
        self.patch_size = int(base["patch_size"])
        self.tile_size = int(tile_size) if tile_size is not None else int(base["tile_size"])
        if self.tile_size <= 0 or self.img_size % self.tile_size or self.tile_size % self.patch_size:
            raise ValueError(
                f"tile_size {self.tile_size} must divide the canvas ({self.img_size}) and be a multiple of the "
                f"patch size ({self.patch_size}) for MAE arch {arch!r}."
            )
        state, record = None, {}
        if self.checkpoint is None:
            _random_weights_or_refuse(
                "FrozenMaeEncoder",
                arch,
                allow_random_weights,
                seed,
                "Pass checkpoint=<the MAE encoder pre-trained on EM, e.g. bundle/models/mae_encoder.pth written by "
                "`python -m monai.bundle run pretraining --config_file bundle/configs/pretrain_mae.yaml`>.",
            )
        else:
            state, record = load_mae_checkpoint(self.checkpoint)
            _check_mae_record(self.checkpoint, arch, base, record)
        depth = _from_record("depth", depth, record, base["depth"], self.checkpoint)
        num_heads = _from_record("num_heads", num_heads, record, base["num_heads"], self.checkpoint)
        pixel_mean = _from_record("pixel_mean", pixel_mean, record, MAE_PIXEL_MEAN, self.checkpoint)
        pixel_std = _from_record("pixel_std", pixel_std, record, MAE_PIXEL_STD, self.checkpoint)
        if pixel_std <= 0:
            raise ValueError(f"pixel_std must be positive, got {pixel_std}.")
        self.architecture = mae_architecture(arch, depth=depth, num_heads=num_heads)
        cfg = self.architecture
        self.register_buffer("pixel_mean", torch.tensor(float(pixel_mean)), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(float(pixel_std)), persistent=False)
        self.tiles_per_side = self.img_size // self.tile_size
        grid = self.img_size // self.patch_size
        self.embedding_shape = (int(cfg["embed_dim"]), grid, grid)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.backbone = build_mae_vit(arch, depth=depth, num_heads=num_heads)
        tile_key = f"mae-{arch}-t{self.tile_size}"
        if (cfg["depth"], cfg["num_heads"]) != (base["depth"], base["num_heads"]):
            tile_key += f"-d{cfg['depth']}h{cfg['num_heads']}"
        if state is None:
            self.cache_key = f"{tile_key}-random-seed{seed}"
        else:
            try:
                self.backbone.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ValueError(
                    f"checkpoint '{self.checkpoint}' does not match the MAE ViT arch {arch!r} "
                    f"({cfg['embed_dim']} wide, {cfg['depth']} blocks, patch {cfg['patch_size']}, field of view "
                    f"{cfg['fov']}); if it was pre-trained with another depth, set depth (and num_heads). "
                    f"Details: {_short(e)}"
                ) from e
            self.cache_key = f"{tile_key}-{sha256_file(self.checkpoint)}"
        if (float(pixel_mean), float(pixel_std)) != (MAE_PIXEL_MEAN, MAE_PIXEL_STD):
            self.cache_key += f"-norm{float(pixel_mean):g}_{float(pixel_std):g}"  # other normalisation, other output
        self.subtract_blank = bool(subtract_blank)
        if self.subtract_blank:
            self.cache_key += "-blank"
        self._freeze()

    def preprocess(self, images: torch.Tensor, *, fit_to_canvas: bool = True) -> torch.Tensor:
        """Place images on the normalised canvas.

        Args:
            images: intensities in [0, 1], shape (B, C, H, W), C in {1, 3} (RGB is averaged).
            fit_to_canvas: resize the longest side to the canvas; False: images no larger than the canvas keep
                their pixel size and are only padded (tiles at the model's pixel size).

        Returns:
            Tensor (B, 1, S, S), S = ``img_size``: resized, padded with 0 in intensity space, then normalised
            (the padded region is ``-pixel_mean / pixel_std``).
        """
        _check_images(images, type(self).__name__)
        x = images.to(device=self.pixel_mean.device, dtype=self.pixel_mean.dtype)
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        x = pad_to_square(_onto_canvas(x, self.img_size, fit_to_canvas), self.img_size, pad_value=0.0)
        return (x - self.pixel_mean) / self.pixel_std

    def tile(self, x: torch.Tensor) -> torch.Tensor:
        """Cut canvases into tiles, row-major (top-left, top-right, ...).

        Args:
            x: canvases (B, 1, S, S).

        Returns:
            Tiles (B * T, 1, t, t), T = (S / t)**2, t = ``tile_size``.
        """
        b, c, s, _ = x.shape
        n, t = self.tiles_per_side, self.tile_size
        if s != self.img_size or x.shape[-1] != self.img_size:
            raise ValueError(f"expected canvases of {self.img_size}x{self.img_size}, got {tuple(x.shape)}.")
        return x.reshape(b, c, n, t, n, t).permute(0, 2, 4, 1, 3, 5).reshape(b * n * n, c, t, t)

    def stitch(self, tokens: torch.Tensor) -> torch.Tensor:
        """Put the tiles' token grids back at their positions.

        Args:
            tokens: per-tile token grids (B * T, D, g, g), in the order of :meth:`tile`.

        Returns:
            Embeddings (B, D, n * g, n * g) with n = S / t (64x64 for the defined architectures).
        """
        nt, d, g, _ = tokens.shape
        n = self.tiles_per_side
        if nt % (n * n):
            raise ValueError(f"got {nt} tiles, not a multiple of the {n * n} tiles per image.")
        b = nt // (n * n)
        return tokens.reshape(b, n, n, d, g, g).permute(0, 3, 1, 4, 2, 5).reshape(b, d, n * g, n * g)

    def encode_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """Encode tiles with the ViT in one batch, dropping the class token.

        Args:
            tiles: normalised tiles (N, 1, t, t).

        Returns:
            Token grids (N, D, g, g), g = t / patch_size.
        """
        g, n = tiles.shape[-1] // self.patch_size, tiles.shape[0]
        if self.subtract_blank:
            # one blank tile (0 = the mean intensity after normalisation) in the same call, so its response is
            # computed on the same device, in the same precision and with the same position embeddings
            tiles = torch.cat([tiles, tiles.new_zeros((1, *tiles.shape[1:]))])
        feats = self.backbone.forward_features(tiles)[:, self.backbone.num_prefix_tokens :]
        if self.subtract_blank:
            feats = feats[:n] - feats[n:]
        return feats.reshape(n, g, g, -1).permute(0, 3, 1, 2)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, *, fit_to_canvas: bool = True) -> torch.Tensor:
        """Embed images.

        Args:
            images: intensities in [0, 1], shape (B, C, H, W), C in {1, 3}, any H, W.
            fit_to_canvas: see :meth:`preprocess`.

        Returns:
            Embeddings (B, 512, 64, 64) covering the canvas; the image occupies the top-left
            ``input_size(H, W)`` scaled by 64 / ``img_size``.
        """
        return self.stitch(
            self.encode_tiles(self.tile(self.preprocess(images, fit_to_canvas=fit_to_canvas)))
        ).contiguous()

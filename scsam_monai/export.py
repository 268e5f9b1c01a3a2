"""Export helpers of the bundle: TorchScript of the head and of the whole image-in model.

MONAI's ``ckpt_export`` traces a network with ONE input tensor of ``input_shape``; :class:`ScSAMHead` takes two
(the SAM and the MAE embedding). :class:`ConcatEmbeddingHead` is the same head (a subclass: identical
parameters and state-dict keys, so ``models/model.pt`` loads as it is) whose ``forward`` takes the two embeddings
concatenated along channels.

The whole model (frozen encoders + trained head, images in, logits out) traces with MONAI's ``ckpt_export`` on
``inference.yaml`` (its ``network_def`` is :class:`~scsam_monai.model.ScSAMModel`, whose state dict is
the head's), or with :func:`export_scsam_torchscript`, which also checks the trace against the eager model before
saving and records the image size and the ``image_normalization`` the inputs need in the file's metadata.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from scsam_monai.atomic import atomic_write
from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.networks.checkpoints import load_head_weights
from scsam_monai.networks.scsam import ScSAM, ScSAMHead

__all__ = ["ConcatEmbeddingHead", "export_scsam_torchscript"]

logger = logging.getLogger(__name__)


class ConcatEmbeddingHead(ScSAMHead):
    """:class:`ScSAMHead` with one input: the SAM and MAE embeddings concatenated along channels.

    Built like the head, by ``build_scsam_head(..., head_class=ConcatEmbeddingHead)``. The input has
    ``sam_channels + mae_channels`` channels for ``streams="both"`` (SAM first), ``sam_channels`` for
    ``"sam_only"`` and ``mae_channels`` for ``"mae_only"``.

    Example::

        >>> from scsam_monai.networks.build import build_scsam_head
        >>> head = build_scsam_head(head_class=ConcatEmbeddingHead)
        >>> head(torch.randn(1, 256 + 512, 64, 64)).shape
        torch.Size([1, 3, 256, 256])
    """

    @property
    def in_channels(self) -> int:
        """Channels of the concatenated input."""
        return {"both": self.sam_channels + self.mae_channels, "sam_only": self.sam_channels}.get(
            self.streams, self.mae_channels
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Logits ``(B, C, 4g, 4g)`` for concatenated embeddings ``(B, in_channels, g, g)``."""
        if embeddings.shape[1] != self.in_channels:
            raise ValueError(f"Expected {self.in_channels} embedding channels, got {embeddings.shape[1]}.")
        if torch.jit.is_tracing():
            # the cached positional encoding would enter one trace as a computation and the check trace as a
            # constant: recompute it inside every trace
            self._dense_pe_cache = None
        if self.streams == "both":
            sam, mae = embeddings[:, : self.sam_channels], embeddings[:, self.sam_channels :]
        elif self.streams == "sam_only":
            sam, mae = embeddings, None
        else:
            sam, mae = None, embeddings
        return super().forward(sam, mae)


def export_scsam_torchscript(
    network: ScSAM,
    head_checkpoint: str | Path,
    filepath: str | Path,
    *,
    image_size: Sequence[int] = (1024, 1024),
    meta_file: str | Path | None = None,
    config_files: Sequence[str | Path] = (),
    atol: float = 1e-4,
    device: str | torch.device = "cpu",
) -> Path:
    """Trace the whole ScSAM (frozen encoders + trained head) for images of one size and save it atomically.

    The traced module takes ``(B, 1, H, W)`` images in [0, 1] (any batch size, ``(H, W) = image_size``) and
    returns ``(B, C, H, W)`` logits; a trace fixes the image size (resize and padding are traced as
    constants), so export one file per size a pipeline uses. The file is MONAI's TorchScript-with-metadata:
    ``monai.data.load_net_with_metadata`` returns the module, the bundle's ``metadata.json`` (plus the export's
    image size and classes) and the config files given.

    Args:
        network: the image-in model (``network_def`` of ``[train.yaml, inference.yaml]``), on the CPU or a GPU.
        head_checkpoint: the trained head (``models/model.pt``), loaded strictly.
        filepath: the ``.ts`` file to write.
        image_size: ``(H, W)`` of the images the traced model takes.
        meta_file: the bundle's ``metadata.json``, stored in the file.
        config_files: config files stored beside it (their names as keys).
        atol: largest absolute logit difference allowed between the trace and the eager model.
        device: where the model is traced. Tensors the model creates inside its forward are recorded on this
            device, so export on the device type the TorchScript will run on (CPU by default: portable).

    Raises:
        ValueError: ``image_size`` is not two positive integers, the checkpoint does not fit the head, or the
            traced model disagrees with the eager one (nothing is written then).
    """
    from monai.data import save_net_with_metadata

    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size!r}.")
    load_head_weights(network.head, head_checkpoint)
    normalization = str(ImagePreprocessing.of_model(network))
    device = torch.device(device)
    network = network.to(device).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.rand((1, 1, *size), generator=generator).to(device)
    check = torch.rand((2, 1, *size), generator=generator).to(device)  # another batch size and content
    network.head._dense_pe_cache = None  # computed inside the trace, not baked in from an earlier call
    with torch.no_grad(), warnings.catch_warnings():
        # sizes computed in Python become trace constants: expected, since a trace is made for one image size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(network, example, check_trace=False)
        expected, got = network(check), traced(check)
    diff = float((expected - got).abs().max())
    if not torch.isfinite(expected).all() or diff > atol:
        raise ValueError(f"the traced ScSAM differs from the eager model by {diff:.3g} (> {atol}); not saved.")
    meta = json.loads(Path(meta_file).read_text()) if meta_file else {}
    meta["scsam_export"] = {
        "image_size": list(size),
        "input": f"(B, 1, H, W) float32 image in [0, 1], normalised with image_normalization {normalization!r}",
        "image_normalization": normalization,
        "output": "(B, 1 + C, H, W) logits, channel 0 the background's: the argmax over channels is the label map",
        "num_classes": int(network.head.num_classes),
        "head_checkpoint": Path(head_checkpoint).name,
        "max_abs_difference_to_eager": diff,
        "traced_on": device.type,
    }
    extra = {Path(f).name: Path(f).read_bytes() for f in config_files}
    buffer = io.BytesIO()
    save_net_with_metadata(traced, buffer, meta_values=meta, more_extra_files=extra)
    path = atomic_write(Path(filepath), lambda handle: handle.write(buffer.getvalue()))
    logger.info("Whole ScSAM traced for %s images (trace = eager within %.2g) -> %s", size, diff, path)
    return path

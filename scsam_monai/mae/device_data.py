"""Pre-training data resident on the device: every slice in one tensor, random crops cut and augmented there.

An EM pre-training set is small next to an accelerator's memory (2,000 slices on a 1024 canvas are 4 GiB in
float16), while a data loader that reads, normalises and crops slices in worker processes delivers a few hundred
crops per second and restarts every epoch. Here the slices are read and normalised once (MONAI transforms, in
parallel workers), resized to the scale at which ``FrozenMaeEncoder`` will embed them (longest side = the arch's
canvas), and stacked into one (S, H, W) tensor on the device. Each batch is then a single gather: random slice
indices and crop origins (drawn on the device from torch's global RNG, which :class:`~scsam_monai.mae.handlers.
EpochSeed` seeds per epoch), one advanced-indexing read, and random flips / transposes (the 8 symmetries of the
square) applied per crop with ``torch.where``. Nothing waits for the host.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from scsam_monai.networks.geometry import resize_longest

__all__ = ["ResidentSlices", "ResidentCropLoader", "load_resident_slices", "steps_per_epoch"]

logger = logging.getLogger(__name__)


class ResidentSlices:
    """Slices of intensities in [0, 1] held as one (S, H, W) tensor; random crops are cut from it.

    Slices of different sizes are padded with black (0) at the bottom and right to the largest height and width;
    each slice's own size is kept, and crop origins are drawn inside it (a slice smaller than the crop gives crops
    padded with black at the bottom/right, as the frozen encoder pads).

    Args:
        slices: 2D tensors (H, W), intensities in [0, 1].
        crop_size: side of the square crops.
        device: where the tensor lives (the training device).
        dtype: storage dtype (float16 halves the memory of float32; [0, 1] intensities keep 11 bits).
    """

    def __init__(
        self,
        slices: Sequence[torch.Tensor],
        *,
        crop_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float16,
    ) -> None:
        if not slices:
            raise ValueError("ResidentSlices needs at least one slice.")
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}.")
        shapes = [tuple(s.shape) for s in slices]
        if any(len(shape) != 2 for shape in shapes):
            raise ValueError(f"ResidentSlices expects 2D slices (H, W), got shapes {sorted(set(shapes))}.")
        self.crop_size = int(crop_size)
        height = max(max(h for h, _ in shapes), self.crop_size)
        width = max(max(w for _, w in shapes), self.crop_size)
        self.device = torch.device(device)
        self.volume = torch.zeros(len(slices), height, width, dtype=dtype, device=self.device)
        for i, s in enumerate(slices):
            self.volume[i, : s.shape[0], : s.shape[1]] = s.to(device=self.device, dtype=dtype)
        sizes = torch.tensor(shapes, dtype=torch.int64)
        # largest crop origin + 1 per slice and axis (1 where the slice is smaller than the crop: origin 0)
        self.origin_range = (sizes - self.crop_size).clamp_min(0).add(1).to(self.device)
        self.offsets = torch.arange(self.crop_size, device=self.device)

    def __len__(self) -> int:
        return int(self.volume.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the resident tensor."""
        return self.volume.numel() * self.volume.element_size()

    def crops(self, count: int, *, augment: bool = True) -> torch.Tensor:
        """``count`` random crops (B, 1, c, c) in float32: random slice, random origin, random symmetry.

        Slices are drawn uniformly, so large and small volumes are sampled alike per step; each of the 8
        symmetries of the square (flips and transposition) has probability 1/8 when ``augment``.
        """
        n, dev = len(self), self.device
        index = torch.randint(n, (count,), device=dev)
        uniform = torch.rand(count, 2, device=dev)
        origin = (uniform * self.origin_range[index]).long()  # floor(u * range) in [0, range)
        rows = (origin[:, 0, None] + self.offsets)[:, :, None]
        cols = (origin[:, 1, None] + self.offsets)[:, None, :]
        crops = self.volume[index[:, None, None], rows, cols].float()
        if augment:
            flips = torch.rand(count, 3, device=dev) < 0.5
            crops = torch.where(flips[:, 0, None, None], crops.flip(-1), crops)
            crops = torch.where(flips[:, 1, None, None], crops.flip(-2), crops)
            crops = torch.where(flips[:, 2, None, None], crops.transpose(-1, -2), crops)
        return crops[:, None]


class ResidentCropLoader:
    """An iterable of ``steps`` batches ``{image_key: (B, 1, c, c)}`` cut from :class:`ResidentSlices`.

    It takes the place of a ``DataLoader`` in MONAI's ``SupervisedTrainer`` (give the trainer
    ``epoch_length=len(loader)``). Crops are drawn when a batch is requested, not when the iterator is made, so
    every epoch's crops depend only on the RNG state at the epoch's start (``EpochSeed``).

    Args:
        slices: the resident slices.
        batch_size: crops per batch (per optimizer step).
        steps: batches per epoch.
        augment: random flips and transposes.
        image_key: key of the batch.
    """

    def __init__(
        self, slices: ResidentSlices, *, batch_size: int, steps: int, augment: bool = True, image_key: str = "image"
    ) -> None:
        if batch_size < 1 or steps < 1:
            raise ValueError(f"batch_size and steps must be positive, got {batch_size} and {steps}.")
        self.slices = slices
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.augment = bool(augment)
        self.image_key = image_key

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(self.steps):
            yield {self.image_key: self.slices.crops(self.batch_size, augment=self.augment)}


def steps_per_epoch(num_slices: int, crops_per_image: int, batch_size: int) -> int:
    """Optimizer steps of one epoch: each slice gives ``crops_per_image`` crops on average (at least 1 step)."""
    if num_slices < 1 or crops_per_image < 1 or batch_size < 1:
        raise ValueError(
            f"need positive counts, got {num_slices} slices, {crops_per_image} crops per image, batch {batch_size}."
        )
    return max(1, math.ceil(num_slices * crops_per_image / batch_size))


def load_resident_slices(
    items: Sequence[dict],
    preprocessing: Compose,
    *,
    crop_size: int,
    canvas: int | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
    num_workers: int = 0,
    image_key: str = "image",
) -> ResidentSlices:
    """Read, normalise and resize every slice once and keep them on ``device``.

    Args:
        items: slice items (``scsam_monai.mae.unlabelled_slices``).
        preprocessing: deterministic MONAI transforms giving ``image_key`` as (1, H, W) intensities in [0, 1].
        crop_size: side of the crops to be cut.
        canvas: resize each slice so that its longest side is ``canvas`` (antialiased bilinear, as
            ``FrozenMaeEncoder`` does before embedding), so that pre-training sees the pixel scale of embedding;
            None keeps the slices' own size.
        device: where the slices live.
        dtype: storage dtype.
        num_workers: data-loader workers reading the slices.
        image_key: item key of the image.
    """
    loader = DataLoader(Dataset(list(items), transform=preprocessing), batch_size=1, num_workers=num_workers)
    slices = []
    for batch in loader:
        image = torch.as_tensor(batch[image_key]).float()
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"preprocessing must give one-channel slices (1, H, W), got {tuple(image.shape[1:])}.")
        if canvas is not None:
            image = resize_longest(image, int(canvas), mode="bilinear").clamp(0.0, 1.0)
        slices.append(image[0, 0].to(dtype))
    resident = ResidentSlices(slices, crop_size=crop_size, device=device, dtype=dtype)
    logger.info(
        "MAE pre-training data: %d slices resident on %s as one %s tensor %s (%.1f MiB)",
        len(resident),
        resident.device,
        str(dtype).replace("torch.", ""),
        tuple(resident.volume.shape),
        resident.nbytes / 2**20,
    )
    return resident

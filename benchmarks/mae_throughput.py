"""MAE pre-training throughput: crops per second of the resident-volume data path and of whole training steps.

The pre-training keeps every slice on the device and cuts each batch there (:mod:`scsam_monai.mae.device_data`);
this measures that data path alone and the full optimizer step fed by it (crop, mask, encode, decode, loss,
backward, AdamW), with the bundle's settings (bfloat16 autocast on CUDA). Target: at least 3,000
crops/s for ``mae_vit_512`` on one H100/H200.
"""

from __future__ import annotations

import time

import torch

from benchmarks.measure import autocast_context, summarize, synchronizer
from scsam_monai.mae.device_data import ResidentSlices
from scsam_monai.mae.engine import warmup_cosine_schedule
from scsam_monai.mae.model import MaskedAutoencoder, MaskedPatchLoss
from scsam_monai.networks.encoders import mae_architecture

__all__ = ["mae_pretraining_throughput", "MAE_CROPS_PER_S_TARGET"]

#: Crops per second the pre-training of ``mae_vit_512`` should sustain on one H100/H200.
MAE_CROPS_PER_S_TARGET = 3000.0


def _timed(fn, *, warmup: int, repeats: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


def mae_pretraining_throughput(
    arch: str = "mae_vit_512",
    *,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    amp: bool = True,
    num_slices: int = 20,
    slice_size: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
    seed: int = 0,
) -> dict:
    """Crops/s and steps/s of MAE pre-training on a resident random volume (the bundle's data path and step).

    Args:
        arch: MAE architecture (``MAE_ARCHITECTURES``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
        batch_size: crops per step; None: 256 on CUDA (the recipe), 16 on CPU.
        amp: bfloat16 autocast on CUDA (as the bundle's ``amp``); never on CPU.
        num_slices: slices of the resident volume (the throughput does not depend on it).
        slice_size: side of the slices; None: the arch's canvas (what pre-training stores).
        warmup: untimed steps first (allocation, autotuning).
        repeats: timed steps (median and spread reported).
        seed: seed of the weights and the volume.

    Returns:
        ``crops_per_s`` and ``steps_per_s`` of full training steps (median step), ``data_crops_per_s`` of the
        data path alone, ``step_seconds`` / ``data_seconds`` summaries, the settings, and ``target_crops_per_s``
        with ``meets_target`` (meaningful for ``mae_vit_512`` on a GPU only).
    """
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto" else torch.device(device)
    )
    batch = int(batch_size or (256 if device.type == "cuda" else 16))
    cfg = mae_architecture(arch)
    amp_dtype = torch.bfloat16 if (amp and device.type == "cuda") else None
    sync = synchronizer(device)
    generator = torch.Generator().manual_seed(seed)
    size = int(slice_size or cfg["canvas"])
    volume = torch.rand(num_slices, size, size, generator=generator)
    slices = ResidentSlices(list(volume), crop_size=cfg["fov"], device=device)
    torch.manual_seed(seed)
    network = MaskedAutoencoder(arch=arch).to(device)
    optimizer = torch.optim.AdamW(network.parameter_groups(0.05), lr=1e-4, betas=(0.9, 0.95))
    schedule = warmup_cosine_schedule(optimizer, warmup_steps=10, total_steps=10**6)
    loss_fn = MaskedPatchLoss()
    autocast = autocast_context(device, amp_dtype)

    def data() -> torch.Tensor:
        return slices.crops(batch)

    def step() -> None:
        images = data()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = network(images)
        loss = loss_fn(out["pred"], out["target"], out["mask"])
        loss.backward()
        optimizer.step()
        schedule.step()

    network.train()
    data_samples = _timed(data, warmup=warmup, repeats=repeats, sync=sync)
    step_samples = _timed(step, warmup=warmup, repeats=repeats, sync=sync)
    step_summary, data_summary = summarize(step_samples), summarize(data_samples)
    crops_per_s = batch / step_summary["median"]
    result = {
        "arch": arch,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "threads": torch.get_num_threads(),
        "amp_dtype": None if amp_dtype is None else "bfloat16",
        "batch_size": batch,
        "crop_size": cfg["fov"],
        "resident_slices": num_slices,
        "slice_size": size,
        "crops_per_s": crops_per_s,
        "steps_per_s": 1.0 / step_summary["median"],
        "data_crops_per_s": batch / data_summary["median"],
        "step_seconds": step_summary,
        "data_seconds": data_summary,
        "target_crops_per_s": MAE_CROPS_PER_S_TARGET,
        "meets_target": bool(crops_per_s >= MAE_CROPS_PER_S_TARGET) if arch == "mae_vit_512" else None,
    }
    if device.type == "cuda":
        result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return result

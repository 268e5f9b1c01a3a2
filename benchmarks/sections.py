"""The four sections of the benchmark: per-image inference, head training, data and memory, FLOPs."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from monai.data import DataLoader

from benchmarks.measure import (
    autocast_context,
    count_flops,
    matmul_throughput,
    summarize,
    synchronizer,
    time_interleaved,
)
from benchmarks.per_class_decoding import naive_forward_with_aux
from benchmarks.profiles import BenchmarkProfile
from scsam_monai.data.embedding_cache import EmbeddingCache
from scsam_monai.data.embedding_dataset import cached_embedding_dataset
from scsam_monai.losses import ScSAMLoss
from scsam_monai.networks.build import build_scsam_head
from scsam_monai.networks.encoders import FrozenSamEncoder
from scsam_monai.networks.precision import dtype_name, precision_context
from scsam_monai.networks.sam_attention import reference_copy
from scsam_monai.networks.scsam import ScSAM, ScSAMHead

__all__ = [
    "SAM_FLOP_RULE",
    "reference_sam_encoder",
    "per_image_inference",
    "head_training",
    "cache_read",
    "flops_section",
]

#: How the SAM encoder's FLOPs are counted, on CPUs and GPUs alike (benchmarks/README.md uses the same rule).
SAM_FLOP_RULE = (
    "torch.utils.flop_counter on segment-anything's reference formulation, 2 per multiply-add: linear layers, "
    "convolutions, q k^T, attention x v and the two relative-position einsums; softmax, bias additions and norms "
    "not counted; the same count whichever attention kernel or dtype runs"
)


def _images(batch: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=generator).to(device)


def _head_like(head: ScSAMHead, **kwargs) -> ScSAMHead:
    """A head of the same shape and weights as ``head``, built with other speed switches."""
    other = build_scsam_head(
        grid_size=head.grid_size, canvas_size=head.canvas_size, num_classes=head.num_classes, **kwargs
    )
    other.load_state_dict(head.state_dict())
    return other.to(next(head.parameters()).device).eval()


def reference_sam_encoder(encoder: FrozenSamEncoder) -> Callable[..., torch.Tensor]:
    """segment-anything's ``ImageEncoderViT`` with ``encoder``'s weights (shared), as the product ran before.

    Returns:
        ``f(images, amp_dtype=None)``: the same preprocessing, then the reference ViT in float32 (autocast off, even
        inside an outer autocast) or under autocast to ``amp_dtype``.
    """
    vit = reference_copy(encoder.encoder)

    def run(images: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        x = encoder.preprocess(images)
        with precision_context(x.device, amp_dtype):
            return vit(x).float()

    return run


def per_image_inference(
    model: ScSAM,
    profile: BenchmarkProfile,
    *,
    device: torch.device,
    batch: int,
    amp_dtype: torch.dtype | None,
    channels_last: bool = True,
    compile: bool = False,
) -> dict:
    """Section 1: seconds per image of the SAM encoder, the MAE encoder, the head, and the full model.

    All are timed in the same rounds on the same images. The head is FAFM + prompt encoder + batched mask decoder
    for all classes + the upsampling of the logits to the image size. FLOPs of one call of each part are counted
    during the warm-up.

    Args:
        model: the full ScSAM.
        profile: sizes and counts.
        device: where the model is.
        batch: images per call.
        amp_dtype: autocast dtype, or None for full precision.
        channels_last: also time the head with ``channels_last=True``, in a separate round robin with the default
            head (``head_warm``: the head with its working memory already mapped).
        compile: afterwards, ``torch.compile`` the encoders and the head and time them again (compile time
            reported apart).

    Returns:
        ``seconds_per_image`` (name -> summary), ``flops_per_image`` (name -> FLOPs), ``batch``; with ``compile``,
        ``compiled_seconds_per_image`` and ``compile_seconds``.
    """
    sync = synchronizer(device)
    size = profile.image_size
    images = _images(batch, size, device)
    input_size = model.sam_encoder.input_size(size, size)
    amp = autocast_context(device, amp_dtype)
    sam_reference = reference_sam_encoder(model.sam_encoder)
    with torch.inference_mode(), amp:
        flops = {}
        # one counting rule on every device: the SAM encoder's FLOPs are those of segment-anything's formulation
        # (the fused kernel's are not seen by FlopCounterMode on CPU); see SAM_FLOP_RULE
        flops["sam_encoder"], _ = count_flops(lambda: sam_reference(images))
        sam = model.sam_encoder(images)
        flops["mae_encoder"], mae = count_flops(lambda: model.mae_encoder(images))
        head_kwargs = {"input_size": input_size, "original_size": (size, size)}
        flops["head"], _ = count_flops(lambda: model.head(sam, mae, **head_kwargs))
    flops["full"] = flops["sam_encoder"] + flops["mae_encoder"] + flops["head"]
    busy: dict[str, list[tuple[float, float]]] = {}

    def timed(functions: dict[str, Callable]) -> dict[str, list[float]]:
        def wrap(name, fn):
            def call():
                cpu, wall = time.process_time(), time.perf_counter()
                with torch.inference_mode(), amp:
                    out = fn()
                busy.setdefault(name, []).append((time.process_time() - cpu, time.perf_counter() - wall))
                return out

            return call

        wrapped = {name: wrap(name, fn) for name, fn in functions.items()}
        return time_interleaved(wrapped, warmup=profile.warmup, repeats=profile.repeats, sync=sync)

    functions = {
        "sam_encoder": lambda: model.sam_encoder(images),
        "sam_encoder_reference": lambda: sam_reference(images),
        "mae_encoder": lambda: model.mae_encoder(images),
        "head": lambda: model.head(sam, mae, **head_kwargs),
        "full": lambda: model(images),
    }
    if amp_dtype is not None:  # today's GPU path: segment-anything's encoder under the run's autocast
        functions["sam_encoder_reference_amp"] = lambda: sam_reference(images, amp_dtype=amp_dtype)
    samples = timed(functions)
    if channels_last:
        # A pair of its own: timed among the encoders, the head also pays for re-mapping the memory they freed
        # (page faults), which would be mistaken for a channels-last effect.
        head_cl = _head_like(model.head, channels_last=True)
        pair = timed({"head_warm": functions["head"], "head_channels_last": lambda: head_cl(sam, mae, **head_kwargs)})
        samples.update(pair)
    sam_dtype = model.sam_encoder.compute_dtype(device)
    result = {
        "batch": batch,
        "image_size": size,
        "seconds_per_image": {name: summarize(s, per=batch) for name, s in samples.items()},
        "flops_per_image": {name: f / batch for name, f in flops.items()},
        "sam_encoder": {
            "attention": model.sam_encoder.attention,
            "precision": model.sam_encoder.precision,
            "compile": model.sam_encoder.compile_setting,
            "compiled": model.sam_encoder.compiled,
            "dtype": dtype_name(sam_dtype),
            "reference": "segment_anything ImageEncoderViT (its own Attention), float32, the same weights",
            "reference_amp_dtype": None if amp_dtype is None else dtype_name(amp_dtype),
            "flop_rule": SAM_FLOP_RULE,
        },
        # process CPU seconds per wall second while each function ran (warm-up included): at most the torch
        # threads when nothing oversubscribes the cores
        "cpu_busy_threads": {
            name: sum(c for c, _ in pairs) / max(1e-9, sum(w for _, w in pairs)) for name, pairs in busy.items()
        },
    }
    if compile:
        start = time.perf_counter()
        for module in (model.sam_encoder, model.mae_encoder):
            module.compile()
        model.head = _head_like(model.head, compile=True)
        with torch.inference_mode(), amp:
            model(images)  # compiles everything once
        sync()
        result["compile_seconds"] = time.perf_counter() - start
        compiled = timed(
            {
                "sam_encoder": lambda: model.sam_encoder(images),
                "mae_encoder": lambda: model.mae_encoder(images),
                "head": lambda: model.head(sam, mae, **head_kwargs),
                "full": lambda: model(images),
            }
        )
        result["compiled_seconds_per_image"] = {name: summarize(s, per=batch) for name, s in compiled.items()}
    return result


def _training_batch(batch: int, head: ScSAMHead, device: torch.device, seed: int = 0):
    """Random embeddings like the cache's and a label map with one blob of each class, on the logit grid."""
    generator = torch.Generator().manual_seed(seed)
    g = head.grid_size
    sam = torch.randn(batch, 256, g, g, generator=generator).to(device)
    mae = torch.randn(batch, 512, g, g, generator=generator).to(device)
    label = torch.zeros(batch, 1, 4 * g, 4 * g, dtype=torch.long)
    for k in range(1, head.num_classes + 1):
        y, x = (k * 4 * g) // (head.num_classes + 2), g
        label[:, :, y : y + g // 2, x : x + g] = k
    return sam, mae, label.to(device)


def head_training(
    head: ScSAMHead,
    profile: BenchmarkProfile,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict:
    """Section 2: head training steps (forward, loss, backward, Adam step) per second, batched vs naive loops.

    Args:
        head: a head whose shape and weights are copied (the original is left untouched).
        profile: batch size and repeats.
        device: where the head trains.
        amp_dtype: autocast dtype, or None (float16 uses a GradScaler).

    Returns:
        ``batch``, and per variant (``batched``, ``naive_per_class``, and ``naive_per_prompt`` when the profile
        asks for it) ``step_seconds`` (summary) and ``images_per_s`` (batch / median step time).
    """
    sync = synchronizer(device)
    head = _head_like(head).train()
    loss_fn = ScSAMLoss(num_classes=head.num_classes)
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    sam, mae, label = _training_batch(profile.train_batch, head, device)
    amp = autocast_context(device, amp_dtype)

    def step(forward: Callable) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            with amp:
                logits, aux = forward(sam, mae, label)
                loss = loss_fn(logits, label, aux)["loss"]
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        return run

    variants = {
        "batched": step(head.forward_with_aux),
        "naive_per_class": step(lambda s, m, lab: naive_forward_with_aux(head, s, m, lab, "per_class")),
    }
    if profile.naive_per_prompt:
        variants["naive_per_prompt"] = step(lambda s, m, lab: naive_forward_with_aux(head, s, m, lab, "per_prompt"))
    samples = time_interleaved(variants, warmup=profile.train_warmup, repeats=profile.train_repeats, sync=sync)
    result: dict = {"batch": profile.train_batch}
    for name, values in samples.items():
        summary = summarize(values)
        result[name] = {"step_seconds": summary, "images_per_s": profile.train_batch / summary["median"]}
    return result


def cache_read(profile: BenchmarkProfile, *, grid: int = 64, batch: int | None = None) -> dict:
    """Section 3a: images per second read from an embedding cache through MONAI's Dataset and DataLoader.

    Writes ``cache_images`` random fp16 embeddings (SAM and MAE) and label maps to a temporary cache, reads them
    once untimed (a warm OS page cache, as during training epochs after the first), then times full passes.

    Returns:
        ``images_per_s``, ``bytes_per_image`` (of the cached files), ``pass_seconds`` (summary), ``workers``,
        ``batch``.
    """
    batch = batch or profile.train_batch
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="scsam-bench-cache-") as root:
        cache = EmbeddingCache(root)
        records = []
        nbytes = 0
        for i in range(profile.cache_images):
            image_hash = f"{i:064x}"
            record = {}
            for key, channels in (("sam", 256), ("mae", 512)):
                path = cache.embedding_path(f"bench-{key}", image_hash, "v0")
                cache.save_embedding(path, rng.standard_normal((channels, grid, grid), dtype=np.float32))
                record[key] = str(path)
                nbytes += path.stat().st_size
            path = cache.label_path(image_hash, "v0")
            cache.save_label(path, rng.integers(0, 4, (1, profile.image_size, profile.image_size)))
            nbytes += path.stat().st_size
            record["label"] = str(path)
            records.append(record)
        dataset = cached_embedding_dataset(records, mask_grid=4 * grid)
        loader = DataLoader(dataset, batch_size=batch, num_workers=profile.cache_workers, shuffle=False)

        def one_pass() -> None:
            for item in loader:
                assert item["sam"].shape[0] > 0

        samples = time_interleaved({"pass": one_pass}, warmup=1, repeats=max(2, profile.repeats))["pass"]
    summary = summarize(samples)
    return {
        "images_per_s": profile.cache_images / summary["median"],
        "bytes_per_image": nbytes / profile.cache_images,
        "pass_seconds": summary,
        "images": profile.cache_images,
        "workers": profile.cache_workers,
        "batch": batch,
    }


def flops_section(
    device: torch.device,
    profile: BenchmarkProfile,
    amp_dtype: torch.dtype | None,
    sam_dtype: torch.dtype | None = None,
) -> dict:
    """Section 4 (measurements): the machine's matmul throughput in float32 and in every dtype the run computed in.

    Args:
        device: where to measure.
        profile: matrix sizes.
        amp_dtype: the run's autocast dtype (MAE encoder, head), or None for float32.
        sam_dtype: the SAM encoder's compute dtype, or None for float32.

    Returns:
        dtype name -> ``matmul_throughput`` result (float32; bf16 and fp16 on a GPU; the SAM encoder's dtype on a
        CPU); ``reference`` names the dtype of the MAE encoder and the head, ``sam`` that of the SAM encoder.
    """
    size = profile.matmul_size_cuda if device.type == "cuda" else profile.matmul_size
    result = {"float32": matmul_throughput(device, torch.float32, size)}
    dtypes = [torch.bfloat16, torch.float16] if device.type == "cuda" else []
    dtypes += [d for d in (amp_dtype, sam_dtype) if d is not None and d not in dtypes]
    for dtype in dtypes:
        result[dtype_name(dtype)] = matmul_throughput(device, dtype, size)
    result["reference"] = dtype_name(amp_dtype)
    result["sam"] = dtype_name(sam_dtype)
    return result

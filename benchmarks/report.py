"""Ratios, targets, and the ``benchmark.json`` / ``benchmark.md`` files of a benchmark run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scsam_monai.atomic import atomic_write_text

__all__ = [
    "RATIO_KEYS",
    "TARGETS",
    "DEVICE_TARGETS",
    "WHOLE_DATASET_TARGETS",
    "matmul_fractions",
    "compute_ratios",
    "check_targets",
    "write_report",
    "render_markdown",
]

#: Ratio keys every ``benchmark.json`` carries (None when the section was not run), comparable across runs.
RATIO_KEYS = (
    "full_over_sam",
    "full_over_encoders",
    "head_over_encoders",
    "batched_over_naive_training",
    "memory_1000_over_100_slices",
    "encoder_flops_fraction",
    "sam_fraction_of_matmul",
    "encoder_speedup_over_reference",
    "pipeline_over_model",
)

#: Targets on every device, named for the ratio they bound: ratio key -> (comparison, bound). The head and the
#: pipeline must cost little next to the frozen encoders, batched decoding must beat per-prompt decoding, and a
#: volume's memory must not grow with its slice count.
TARGETS = {
    "head_over_encoders": ("<=", 0.05),
    "pipeline_over_model": (">=", 0.85),
    "full_over_encoders": ("<=", 1.2),
    "batched_over_naive_training": (">=", 3.0),
    "memory_1000_over_100_slices": ("<=", 1.05),
}

#: Targets that depend on the device type: the SAM encoder at least 2.5 x segment-anything's float32
#: encoder on a CPU, and at least 0.35 of the bf16 matmul rate on a GPU.
DEVICE_TARGETS = {
    "cpu": {"encoder_speedup_over_reference": (">=", 2.5)},
    "cuda": {"sam_fraction_of_matmul": (">=", 0.35)},
}


#: Targets of the ``whole_dataset`` section, checked only when it ran: the tiled pipeline at model speed, and two
#: ranks at least 1.6 x one rank's throughput (on an idle 2-core machine).
WHOLE_DATASET_TARGETS = {
    "tiled_pipeline_over_model": (">=", 0.85),
    "two_ranks_over_one": (">=", 1.6),
}


def matmul_fractions(flops: dict, seconds: dict, matmul: dict) -> dict:
    """Achieved FLOP/s of the encoders and the head as fractions of the matmul rate of the dtype each ran in.

    The SAM encoder is compared with the matmul rate of its own dtype (``matmul["sam"]``), the MAE encoder and the
    head with that of the run's autocast dtype (``matmul["reference"]``). For both encoders together the fraction is
    the time they would take at those rates over the time they took: ``(F_sam / R_sam + F_mae / R_mae) /
    (t_sam + t_mae)``, which is FLOPs / time / rate when both use one dtype.

    Args:
        flops: FLOPs per image by stage (``sam_encoder``, ``mae_encoder``, ``head``).
        seconds: summaries (with ``median``) of seconds per image by stage; ``sam_encoder_reference`` if timed.
        matmul: :func:`.sections.flops_section`'s result.
    """
    rate_ref = matmul[matmul["reference"]]["flops_per_s"]
    rate_sam = matmul[matmul.get("sam", matmul["reference"])]["flops_per_s"]
    t_sam, t_mae = seconds["sam_encoder"]["median"], seconds["mae_encoder"]["median"]
    f_sam, f_mae = flops["sam_encoder"], flops["mae_encoder"]
    out = {
        "encoder_flops_per_image": f_sam + f_mae,
        "encoder_flops_per_s": (f_sam + f_mae) / (t_sam + t_mae),
        "encoder_fraction_of_matmul": (f_sam / rate_sam + f_mae / rate_ref) / (t_sam + t_mae),
        "sam_fraction_of_matmul": f_sam / t_sam / rate_sam,
        "mae_fraction_of_matmul": f_mae / t_mae / rate_ref,
        "head_fraction_of_matmul": flops["head"] / seconds["head"]["median"] / rate_ref,
        "sam_dtype": matmul.get("sam", matmul["reference"]),
        "reference_dtype": matmul["reference"],
    }
    if "sam_encoder_reference" in seconds:
        out["sam_reference_fraction_of_float32_matmul"] = (
            f_sam / seconds["sam_encoder_reference"]["median"] / matmul["float32"]["flops_per_s"]
        )
    return out


def _median(section: dict | None, *path: str) -> float | None:
    node = section
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def compute_ratios(results: dict) -> dict:
    """All ratio keys (see :data:`RATIO_KEYS`) plus extra ones, from the sections' results."""
    per = (results.get("per_image") or {}).get("seconds_per_image", {})
    med = {name: s["median"] for name, s in per.items()}
    encoders = med["sam_encoder"] + med["mae_encoder"] if {"sam_encoder", "mae_encoder"} <= set(med) else None
    train = results.get("training") or {}
    memory = (results.get("memory") or {}).get("checkpoints") or []
    flops = results.get("flops") or {}
    ratios = {
        "full_over_sam": _ratio(med.get("full"), med.get("sam_encoder")),
        "full_over_encoders": _ratio(med.get("full"), encoders),
        "head_over_encoders": _ratio(med.get("head"), encoders),
        "batched_over_naive_training": _ratio(
            _median(train, "batched", "images_per_s"), _median(train, "naive_per_class", "images_per_s")
        ),
        "memory_1000_over_100_slices": (
            _ratio(memory[-1]["peak_rss_bytes"], memory[0]["peak_rss_bytes"]) if len(memory) >= 2 else None
        ),
        "encoder_flops_fraction": flops.get("encoder_fraction_of_matmul"),
        "sam_fraction_of_matmul": flops.get("sam_fraction_of_matmul"),
        "encoder_speedup_over_reference": _ratio(med.get("sam_encoder_reference"), med.get("sam_encoder")),
        "pipeline_over_model": (results.get("volume_pipeline") or {}).get("pipeline_over_model"),
        # extra ratios
        "encoder_speedup_over_reference_amp": _ratio(med.get("sam_encoder_reference_amp"), med.get("sam_encoder")),
        "head_channels_last_over_head": _ratio(med.get("head_channels_last"), med.get("head_warm")),
        "batched_over_naive_per_prompt_training": _ratio(
            _median(train, "batched", "images_per_s"), _median(train, "naive_per_prompt", "images_per_s")
        ),
        "gpu_memory_1000_over_100_slices": (
            _ratio(memory[-1].get("gpu_peak_bytes"), memory[0].get("gpu_peak_bytes")) if len(memory) >= 2 else None
        ),
        "cache_read_over_training": _ratio(
            _median(results.get("cache") or {}, "images_per_s"), _median(train, "batched", "images_per_s")
        ),
    }
    whole = results.get("whole_dataset")
    if whole:  # only when the section ran, so that other runs' reports keep their keys
        ratios.update(whole["ratios"])
    compiled = (results.get("per_image") or {}).get("compiled_seconds_per_image")
    if compiled:
        ratios["compiled_full_over_full"] = _ratio(compiled["full"]["median"], med.get("full"))
        ratios["compiled_head_over_head"] = _ratio(compiled["head"]["median"], med.get("head"))
    return ratios


def check_targets(ratios: dict, device_type: str | None = None) -> dict:
    """Target -> ``{"target": "<= 0.05", "value": x, "met": bool | None}`` (None when not measured).

    :data:`WHOLE_DATASET_TARGETS` are added for the ratios of the ``whole_dataset`` section that ``ratios`` holds.

    Args:
        ratios: :func:`compute_ratios`'s result.
        device_type: ``"cpu"`` or ``"cuda"`` adds that device's :data:`DEVICE_TARGETS`; None: only :data:`TARGETS`.
    """
    out = {}
    conditional = {k: v for k, v in WHOLE_DATASET_TARGETS.items() if k in ratios}
    for key, (op, bound) in {**TARGETS, **DEVICE_TARGETS.get(device_type or "", {}), **conditional}.items():
        value = ratios.get(key)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out[key] = {"target": f"{op} {bound:g}", "value": value, "met": met}
    return out


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if isinstance(value, (int, float)):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"
    return str(value)


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.3f} GiB"


def render_markdown(report: dict) -> str:
    """``benchmark.md``: the report's tables."""
    env, prof = report["environment"], report["profile"]
    lines = [
        f"# ScSAM benchmark: profile `{prof['name']}`",
        "",
        f"- Device: {env['device_name']} ({env['device']}), {env['threads']} torch threads, "
        f"{env['cpu_count']} CPUs; torch {env['torch']}; autocast: {env['amp_dtype'] or 'off'}.",
        f"- Encoders: SAM `{prof['sam_arch']}`, MAE `{prof['mae_arch']}`, {prof['image_size']}x{prof['image_size']}"
        " images.",
        f"- Weights: {', '.join(f'{k}: {v}' for k, v in report['weights'].items())}.",
    ]
    if report["random_weights"]:
        lines.append("- **Random weights**: timings only; no segmentation quality is implied.")
    sam = (report.get("per_image") or {}).get("sam_encoder")
    if sam:
        lines.append(
            f"- SAM encoder: {sam['attention']} attention, precision `{sam['precision']}` ({sam['dtype']}); "
            f"reference: {sam['reference']}"
            + (f" (also under {sam['reference_amp_dtype']} autocast)" if sam.get("reference_amp_dtype") else "")
            + "."
        )
    lines += ["", "## Ratios and targets", "", "| ratio | value | target | met |", "|---|---|---|---|"]
    for key, value in report["ratios"].items():
        target = report["targets"].get(key, {})
        lines.append(f"| `{key}` | {_fmt(value)} | {target.get('target', '')} | {_fmt(target.get('met'))} |")
    per = report.get("per_image")
    if per:
        lines += [
            "",
            f"## 1. Inference, seconds per image (batch {per['batch']}, {prof['repeats']} repeats after "
            f"{prof['warmup']} warm-up)",
            "",
            "| stage | median | min | max | IQR | GFLOPs | achieved GFLOP/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in per["seconds_per_image"].items():
            base = name.replace("_channels_last", "").replace("_warm", "").replace("_reference_amp", "")
            fl = per["flops_per_image"].get(base.replace("_reference", ""))
            rate = fl / s["median"] / 1e9 if fl else None
            lines.append(
                f"| {name} | {_fmt(s['median'])} | {_fmt(s['min'])} | {_fmt(s['max'])} | {_fmt(s['iqr'])} | "
                f"{_fmt(fl / 1e9 if fl else None)} | {_fmt(rate)} |"
            )
        if "compiled_seconds_per_image" in per:
            lines += ["", f"torch.compile (compile time {per['compile_seconds']:.1f} s):", ""]
            lines += ["| stage | median | eager median |", "|---|---|---|"]
            for name, s in per["compiled_seconds_per_image"].items():
                eager = per["seconds_per_image"][name]["median"]
                lines.append(f"| {name} | {_fmt(s['median'])} | {_fmt(eager)} |")
    train = report.get("training")
    if train:
        lines += [
            "",
            f"## 2. Head training (forward + loss + backward + Adam, batch {train['batch']}, cached embeddings)",
            "",
            "| variant | images/s | step median s | min | max |",
            "|---|---|---|---|---|",
        ]
        for name, v in train.items():
            if isinstance(v, dict):
                s = v["step_seconds"]
                lines.append(
                    f"| {name} | {_fmt(v['images_per_s'])} | {_fmt(s['median'])} | {_fmt(s['min'])} | "
                    f"{_fmt(s['max'])} |"
                )
    cache, memory = report.get("cache"), report.get("memory")
    if cache or memory:
        lines += ["", "## 3. Data and memory", ""]
    if cache:
        lines.append(
            f"Embedding-cache read: **{_fmt(cache['images_per_s'])} images/s** ({cache['images']} images of "
            f"{cache['bytes_per_image'] / 2**20:.1f} MiB, DataLoader batch {cache['batch']}, {cache['workers']} "
            "workers, warm page cache)."
        )
    if memory:
        lines += [
            "",
            f"Volume inference (`segment_slices`, batch {memory['batch_size']}, fresh process, "
            f"{_fmt(memory['slices_per_s'])} slices/s); baseline after one warm-up batch "
            f"{_gib(memory['baseline_rss_bytes'])}:",
            "",
            "| slices | peak RSS | GPU peak |",
            "|---|---|---|",
        ]
        for mark in memory["checkpoints"]:
            lines.append(f"| {mark['slices']} | {_gib(mark['peak_rss_bytes'])} | {_gib(mark.get('gpu_peak_bytes'))} |")
        lines += [
            "",
            f"Peak RSS growth from slice {memory['checkpoints'][0]['slices']} to slice "
            f"{memory['checkpoints'][-1]['slices']}: {memory['rss_growth_bytes'] / 2**20:.1f} MiB "
            f"({memory['rss_growth_per_slice_bytes'] / 2**10:.1f} KiB per slice).",
        ]
    pipe = report.get("volume_pipeline")
    if pipe:
        runs = pipe["pipeline"]
        lines += [
            "",
            f"Whole volume from disk (`segment_inputs` on a uint16 TIFF stack, {pipe['image_normalization']} "
            f"normalisation measured per volume, batch {pipe['batch_size']}): **{_fmt(pipe['pipeline_slices_per_s'])} "
            f"slices/s** against {_fmt(pipe['model_alone_slices_per_s'])} for the model alone on the same "
            f"{pipe['slices_timed']} slices (`pipeline_over_model` {_fmt(pipe['pipeline_over_model'])}, medians "
            f"{_fmt(pipe['pipeline_over_model_median'])}); peak RSS {_gib(runs[0]['peak_rss_bytes'])} after "
            f"{runs[0]['slices']} slices, {_gib(runs[-1]['peak_rss_bytes'])} after {runs[-1]['slices']}.",
        ]
    mae = report.get("mae_pretraining")
    if mae:
        lines += [
            "",
            f"MAE pre-training (`{mae['arch']}`, batch {mae['batch_size']}, crops cut on the device from a resident "
            f"volume): **{_fmt(mae['crops_per_s'])} crops/s** in whole optimizer steps, "
            f"{_fmt(mae['data_crops_per_s'])} crops/s for the data path alone (target on one H100/H200 for "
            f"`mae_vit_512`: {mae['target_crops_per_s']}).",
        ]
    flops = report.get("flops")
    if flops:
        lines += ["", "## 4. FLOP throughput", "", "| matmul dtype | size | GFLOP/s |", "|---|---|---|"]
        for name, m in flops["matmul"].items():
            if isinstance(m, dict):
                lines.append(f"| {name} | {m['size']} | {_fmt(m['flops_per_s'] / 1e9)} |")
        matmul = flops["matmul"]
        lines += [
            "",
            f"Encoders achieve {_fmt(flops['encoder_flops_per_s'] / 1e9 if flops.get('encoder_flops_per_s') else None)}"
            f" GFLOP/s = **{_fmt(flops.get('encoder_fraction_of_matmul'))}** of the matmul throughput of the dtypes "
            f"they ran in (SAM: {matmul.get('sam', matmul['reference'])}, MAE: {matmul['reference']}); the SAM "
            f"encoder alone **{_fmt(flops.get('sam_fraction_of_matmul'))}**"
            + (
                f", segment-anything's float32 encoder {_fmt(flops['sam_reference_fraction_of_float32_matmul'])} of "
                "the float32 rate"
                if flops.get("sam_reference_fraction_of_float32_matmul")
                else ""
            )
            + ". FLOPs counted by `torch.utils.flop_counter`, 2 per multiply-add; the SAM encoder's on "
            "segment-anything's formulation (see the notes).",
        ]
    whole = report.get("whole_dataset")
    if whole:
        from benchmarks.whole_dataset import markdown_lines

        lines += ["", "## Whole datasets", ""] + markdown_lines(whole)
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``benchmark.json`` and ``benchmark.md`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "benchmark.json", out / "benchmark.md"
    atomic_write_text(json_path, json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path

"""Scores of one experiment repeated over seeds: mean and standard deviation per row (``summary.csv/json/md``).

``experiments/real_em_report.sh`` runs ``scripts/run_experiments.py`` once per seed into ``OUT/seed_<k>``; every row
that finished has written ``OUT/seed_<k>/runs/<method>/row.json`` (its scores and how its training ended), so a
seed cut short still contributes the rows it finished. This module reads those records and writes, per row, the
mean and sample standard deviation over seeds of Dice and IoU per class, the mean Dice, pooled IoU, mcIoU,
Challenge IoU and AJI, and the difference "MAE* - MAE* (random MAE)" of the mean Dice, seed by seed: the measure
of what the EM pre-training of the MAE adds (the report's question: at least 0.05 over at least 3 seeds).

Run: ``python -m experiments.seed_summary OUT SEED [SEED ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.report import plot_learning_curves, write_csv
from scsam_monai.atomic import atomic_write_json, atomic_write_text

__all__ = [
    "GOAL",
    "GOAL_SEEDS",
    "aggregate_seeds",
    "flat_scores",
    "format_summary",
    "mean_std",
    "read_seed_records",
    "main",
]

#: Gain of mean test Dice that the EM-pretrained MAE should show over its random twin: the real-EM report's question.
GOAL = 0.05
#: Seeds the gain must be measured on before the goal counts as met: the real-EM report's question.
GOAL_SEEDS = 3
#: Scalar scores of ``scsam_monai.metrics.segmentation_scores`` kept per row, in the report's order.
SCALARS = ("dice_mean", "miou", "mc_iou", "challenge_iou", "aji")
#: Training facts of a row's record, listed per seed (not averaged).
FACTS = ("optimizer_steps", "samples_seen", "budget_samples", "best_epoch", "epochs", "max_epochs", "stop_reason")


def read_seed_records(out: str | Path, seeds: Sequence[int | str]) -> dict[str, dict[str, dict]]:
    """Finished rows of every seed: ``{seed: {method: record}}`` from ``out/seed_<k>/runs/*/row.json``.

    ``out/seed_<k>/<group>/runs/*/row.json`` count as well: the rows of one seed may run as several processes,
    one output folder each (``experiments/real_em_report.sh``). Rows that failed (a record with ``error``) or have no
    scores are left out; a seed folder that is missing or holds no finished row maps to an empty dict, so the
    caller can say which seeds are absent.
    """
    found: dict[str, dict[str, dict]] = {}
    for seed in seeds:
        rows: dict[str, dict] = {}
        folder = Path(out) / f"seed_{seed}"
        for path in sorted([*folder.glob("runs/*/row.json"), *folder.glob("*/runs/*/row.json")]):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{path}: not a readable row record ({err}).") from err
            if "error" not in record and record.get("scores"):
                rows[record.get("name", path.parent.name)] = record
        found[str(seed)] = rows
    return found


def flat_scores(scores: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, float]:
    """A row's scores as flat columns: the scalars of :data:`SCALARS`, ``dice_<class>`` and ``iou_<class>``.

    ``class_names`` lists the foreground classes (label values 1..C); NaN (a class in no test image) is left out.
    """
    flat = {key: float(scores[key]) for key in SCALARS if scores.get(key) is not None}
    for prefix, key in (("dice", "dice"), ("iou", "class_iou")):
        per_class = scores.get(key) or {}
        for index, name in enumerate(class_names, start=1):
            value = per_class.get(str(index), per_class.get(index))
            if value is not None:
                flat[f"{prefix}_{name}"] = float(value)
    return {k: v for k, v in flat.items() if math.isfinite(v)}


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1) of ``values``; the deviation is None for a single value."""
    if not values:
        raise ValueError("mean_std needs at least one value.")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _label(record: Mapping[str, Any], method: str) -> str:
    groups = record.get("groups") or {}
    return next(iter(groups.values()), method) if isinstance(groups, Mapping) else method


def aggregate_seeds(
    records: Mapping[str, Mapping[str, Mapping]], class_names: Sequence[str], *, pretrained: str = "mae_only",
    random: str = "mae_only_random",
) -> dict[str, Any]:  # fmt: skip
    """Mean and standard deviation over seeds of every score per row, and the pre-training gain of the MAE.

    Args:
        records: ``{seed: {method: row record}}`` as :func:`read_seed_records` returns.
        class_names: foreground class names, label values 1..C.
        pretrained: method of the EM-pretrained MAE row.
        random: method of its random-weight twin.

    Returns:
        ``{"seeds": [...], "rows": {method: {"label", "seeds", "scores": {column: {mean, std, n, values}},
        "training": {seed: facts}}}, "mae_gain": {seeds, values, mean, std, goal, goal_seeds, goal_met} or None}``;
        ``goal_met`` needs both a mean gain of at least :data:`GOAL` and at least :data:`GOAL_SEEDS` seeds.
    """
    seeds = [s for s, rows in records.items() if rows]
    rows: dict[str, dict[str, Any]] = {}
    per_seed: dict[str, dict[str, dict[str, float]]] = {}
    for seed in seeds:
        for method, record in records[seed].items():
            row = rows.setdefault(method, {"label": _label(record, method), "seeds": [], "scores": {}, "training": {}})
            row["seeds"].append(seed)
            row["training"][seed] = {k: record.get(k) for k in FACTS}
            per_seed.setdefault(method, {})[seed] = flat_scores(record["scores"], class_names)
    columns = [*SCALARS, *(f"dice_{n}" for n in class_names), *(f"iou_{n}" for n in class_names)]
    for method, by_seed in per_seed.items():
        for column in columns:
            values = [s[column] for s in by_seed.values() if column in s]
            if values:
                mean, std = mean_std(values)
                rows[method]["scores"][column] = {"mean": mean, "std": std, "n": len(values), "values": values}
    gain = None
    common = [s for s in seeds if "dice_mean" in per_seed.get(pretrained, {}).get(s, {})]
    common = [s for s in common if "dice_mean" in per_seed.get(random, {}).get(s, {})]
    if common:
        values = [per_seed[pretrained][s]["dice_mean"] - per_seed[random][s]["dice_mean"] for s in common]
        mean, std = mean_std(values)
        met = mean >= GOAL and len(values) >= GOAL_SEEDS
        gain = {"seeds": common, "values": values, "mean": mean, "std": std}
        gain.update(goal=GOAL, goal_seeds=GOAL_SEEDS, goal_met=met)
    return {"seeds": seeds, "columns": columns, "rows": rows, "mae_gain": gain}


def _cell(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return "–"
    return f"{stats['mean']:.3f}" + ("" if stats["std"] is None else f" ± {stats['std']:.3f}")


def format_summary(summary: Mapping[str, Any], title: str = "Scores over seeds") -> str:
    """``summary.md``: one table of mean ± standard deviation per row, the training per seed, the MAE gain."""
    columns = summary["columns"]
    lines = [f"# {title}", "", f"Seeds: {', '.join(summary['seeds']) or 'none finished'}; mean ± sample standard "
             "deviation over the seeds a row finished (a single value: one seed, no spread).", ""]  # fmt: skip
    lines += ["| method | seeds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for row in summary["rows"].values():
        cells = " | ".join(_cell(row["scores"].get(c)) for c in columns)
        lines.append(f"| {row['label']} | {len(row['seeds'])} | {cells} |")
    lines += ["", "Training per seed (from each row's training_budget.json):", ""]
    lines += ["| method | seed | " + " | ".join(FACTS) + " |", "|---|---:|" + "---:|" * len(FACTS)]
    for row in summary["rows"].values():
        for seed, facts in row["training"].items():
            lines.append(f"| {row['label']} | {seed} | " + " | ".join(str(facts.get(k, "")) for k in FACTS) + " |")
    gain = summary.get("mae_gain")
    lines.append("")
    if gain:
        spread = "one seed: no spread" if gain["std"] is None else f"standard deviation {gain['std']:.3f}"
        per_seed = ", ".join(f"seed {s}: {v:+.3f}" for s, v in zip(gain["seeds"], gain["values"], strict=True))
        needed = gain.get("goal_seeds", GOAL_SEEDS)
        verdict = "met" if gain["goal_met"] else "not met"
        if not gain["goal_met"] and len(gain["values"]) < needed:
            verdict += f" ({len(gain['values'])} of the {needed} seeds it needs)"
        lines.append(f"MAE* - MAE* (random MAE), mean test Dice: {gain['mean']:+.3f} ({spread}; {per_seed}); "
                     f"goal +{gain['goal']:.2f} over at least {needed} seeds: {verdict}.")  # fmt: skip
    else:
        lines.append("MAE* - MAE* (random MAE): not measured (one of the two rows finished no seed).")
    return "\n".join(lines) + "\n"


def _csv_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for method, row in summary["rows"].items():
        flat: dict[str, Any] = {"method": method, "label": row["label"], "n_seeds": len(row["seeds"])}
        for column in summary["columns"]:
            stats = row["scores"].get(column)
            flat[f"{column}_mean"] = None if not stats else round(stats["mean"], 6)
            flat[f"{column}_std"] = None if not stats or stats["std"] is None else round(stats["std"], 6)
        rows.append(flat)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``OUT/summary.csv``, ``summary.json``, ``summary.md`` and ``learning_curves_seed_<k>.png``."""
    parser = argparse.ArgumentParser(prog="python -m experiments.seed_summary", description=__doc__)
    parser.add_argument("out", help="folder holding seed_<k>/ (and data/manifest.json for the class names)")
    parser.add_argument("seeds", nargs="+", help="seeds to aggregate")
    parser.add_argument("--title", default="Scores over seeds", help="heading of summary.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    records = read_seed_records(out, args.seeds)
    class_names = _class_names(out, records)
    missing = [s for s, rows in records.items() if not rows]
    if missing:
        print(f"seeds: no finished row in {', '.join(str(out / f'seed_{s}') for s in missing)}", file=sys.stderr)
    summary = aggregate_seeds(records, class_names)
    summary["class_names"] = class_names
    write_csv(out / "summary.csv", _csv_rows(summary))
    atomic_write_json(out / "summary.json", summary)
    text = format_summary(summary, args.title)
    atomic_write_text(out / "summary.md", text)
    for seed, rows in records.items():  # every row of a seed in one figure, whichever process trained it
        curves = {_label(r, m): r["curve"] for m, r in rows.items() if r.get("curve")}
        if curves:
            plot_learning_curves(curves, out / f"learning_curves_seed_{seed}.png")
    print(text)
    return 0 if summary["rows"] else 1


def _class_names(out: Path, records: Mapping[str, Mapping[str, Mapping]]) -> list[str]:
    """Foreground class names: a seed's results.json, else data/manifest.json, else the label values 1..C."""
    for seed in records:
        folder = out / f"seed_{seed}"
        for path in [folder / "results.json", *sorted(folder.glob("*/results.json"))]:
            if path.is_file():
                names = json.loads(path.read_text()).get("class_names")
                if names:
                    return list(names[1:])
    manifest = out / "data" / "manifest.json"
    if manifest.is_file():
        classes = json.loads(manifest.read_text()).get("classes", {})
        return [classes[k] for k in sorted(classes, key=int) if int(k) > 0]
    sizes = [len(r["scores"].get("dice", {})) for rows in records.values() for r in rows.values()]
    return [str(i) for i in range(1, max(sizes, default=0) + 1)]


if __name__ == "__main__":
    sys.exit(main())

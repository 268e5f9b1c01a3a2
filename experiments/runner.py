"""Run every method on one datalist with the same split, preprocessing and augmentation; write tables and figures.

Trainable rows are bundle runs (``train.yaml`` + the method's overlays + ``budget.yaml`` + the profile overlay)
executed in this process with ``monai.bundle.ConfigWorkflow``, so the embedding cache is filled by the first row
that needs an encoder and every later row reuses it. Every trainable row gets the profile's budget of training
samples (:func:`.planning.plan_budget` sets its epochs and validation interval) and stops early when its validation
mean Dice stalls (:mod:`.stopping`). Each row's merged config, seed and rerun command are saved under
``DIR/runs/<method>/``. Test images are scored by :mod:`.evaluation` at full resolution, identically for all.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow

from experiments.datalists import class_names_of, cross_dataset_datalists, prepare_datalist, split_subsets
from experiments.registry import CROSS_DATASET_METHODS, METHODS, Method, select_methods
from experiments.report import (
    budget_lines,
    format_markdown,
    plot_learning_curves,
    plot_qualitative,
    table_rows,
    weights_lines,
    write_csv,
)
from scsam_monai.atomic import atomic_write_json, atomic_write_text
from scsam_monai.baselines.evaluation import Evaluation, ScSAMPredictor, TestItem, evaluate_predictor, load_test_items
from scsam_monai.baselines.planning import BudgetPlan, plan_budget
from scsam_monai.baselines.stopping import read_record
from scsam_monai.baselines.supervised import SupervisedPredictor
from scsam_monai.baselines.zero_shot import AMG_SETTINGS, evaluate_zero_shot
from scsam_monai.bundle_command import BUNDLE_DIR, CONFIGS_DIR, bundle_command
from scsam_monai.networks.checkpoints import load_head_weights
from scsam_monai.networks.scsam import count_trainable_parameters

__all__ = ["PROFILES", "ExperimentProfile", "overlay_path", "plan_row", "run_experiments"]

logger = logging.getLogger(__name__)

VARIANTS_DIR = CONFIGS_DIR / "variants"
"""The bundle's variant overlays (ablation heads, baselines, early stopping): options users run too."""
PROFILES_DIR = Path(__file__).resolve().parent / "configs"
"""The bench's own overlays: the profiles' bundle settings and the random-MAE control, run only by the bench."""
BUDGET_OVERLAY = "budget.yaml"


def overlay_path(name: str) -> Path:
    """The overlay file ``name``: the bench's own (``experiments/configs``) or else the bundle's variant."""
    own = PROFILES_DIR / name
    return own if own.is_file() else VARIANTS_DIR / name


@dataclass(frozen=True)
class ExperimentProfile:
    """One profile of the experiment runner: how much data, budget and which rows (not a benchmark profile).

    A profile has two halves, each with one home: the bundle settings its rows train with are the overlay
    ``experiments/configs/<name>.yaml`` (last in every row's config list, so a rerun command carries them), and
    the runner's own settings are these fields. ``benchmarks.profiles.BenchmarkProfile`` is another thing: the
    sizes and repeats of the speed benchmark.

    Args:
        name: the profile's name, also the stem of its overlay.
        max_items: items kept per split (None: all).
        qualitative: test images in the qualitative figure.
        budget_per_slice: training samples per training slice that every trainable row gets (one sample = one
            augmented view of one slice).
        patience: early stopping's patience in validations (0: none).
        methods: the methods run when neither ``methods`` nor ``groups`` is given (None: all).
        amg_profile: the zero-shot row's generator settings (``amg_profile`` of ``variants/zero_shot_sam.yaml``):
            ``"tiny"`` (few points, SAM's confidence filters off: a random SAM passes none of them) or ``"full"``.
    """

    name: str
    max_items: dict[str, int] | None
    qualitative: int
    budget_per_slice: int
    patience: int
    methods: tuple[str, ...] | None = None
    amg_profile: str = "full"

    @property
    def overlay(self) -> Path:
        """The profile's bundle overlay, ``experiments/configs/<name>.yaml``."""
        return PROFILES_DIR / f"{self.name}.yaml"


#: The experiment runner's profiles (``--profile``); their bundle settings are ``experiments/configs/<name>.yaml``.
PROFILES: dict[str, ExperimentProfile] = {
    profile.name: profile
    for profile in (
        ExperimentProfile(
            name="tiny",
            max_items={"training": 2, "validation": 2, "test": 2},
            qualitative=2,
            budget_per_slice=4,  # ScSAM rows: 2 epochs of 2 views; supervised rows: 4 epochs
            patience=0,
            amg_profile="tiny",
        ),
        ExperimentProfile(
            name="small",
            max_items=None,
            qualitative=4,
            budget_per_slice=32,  # ScSAM rows: 8 epochs of 4 views; supervised rows: 32 epochs
            patience=4,
            methods=("scsam", "sam_only", "mae_only", "mae_only_random", "unet", "dynunet"),
            amg_profile="tiny",
        ),
        ExperimentProfile(
            name="full",
            max_items=None,
            qualitative=4,
            budget_per_slice=400,  # ScSAM rows: 100 epochs of 4 views; supervised rows: 400 epochs
            patience=10,
        ),
    )
}


# ---- one row ----------------------------------------------------------------------------------------------
class EpochClock:
    """Seconds since ``start`` at the end of each epoch (after its validation), attached last to a trainer."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[int, float] = {0: 0.0}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._tick)

    def _tick(self, engine: Engine) -> None:
        self.seconds[int(engine.state.epoch)] = time.perf_counter() - self.start


@dataclass
class Context:
    """What every row shares."""

    out: Path
    profile: str
    seed: int
    overrides: dict[str, Any]
    num_classes: int
    class_names: list[str]
    device: torch.device
    base: ConfigParser
    budget_per_slice: int
    patience: int
    test_items: dict[str, list[TestItem]] = field(default_factory=dict)

    def items(self, datalist: Path) -> list[TestItem]:
        key = str(datalist)
        if key not in self.test_items:
            data = json.loads(Path(datalist).read_text())
            self.test_items[key] = load_test_items(data["test"], self.base.get_parsed_content("preprocessing"))
        return self.test_items[key]


def _config_files(method: Method, profile: str) -> list[str]:
    files = [CONFIGS_DIR / "train.yaml", *(overlay_path(o) for o in method.overlays)]
    if method.kind != "zero_shot":
        files.append(overlay_path(BUDGET_OVERLAY))
    return [str(f) for f in (*files, PROFILES[profile].overlay)]


def plan_row(method: Method, files: Sequence[str], overrides: Mapping[str, Any], budget_per_slice: int) -> BudgetPlan:
    """A row's budget plan, from its config (``views_per_image``, ``train#batch_size``) and training slices.

    Args:
        method: the row (``kind`` decides the views per slice and epoch).
        files: its config files.
        overrides: its bundle overrides, ``datalist`` included.
        budget_per_slice: training samples per training slice.
    """
    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(dict(overrides))
    views = int(parser.get_parsed_content("views_per_image"))
    num_slices = len(json.loads(Path(overrides["datalist"]).read_text())["training"])
    return plan_budget(
        budget_per_slice=budget_per_slice,
        num_slices=num_slices,
        views_per_epoch=views if method.kind == "scsam" else 1,
        batch_size=int(parser.get_parsed_content("train#batch_size")),
        views_per_validation=views,
    )


def _command(run_id: str, config_files: Sequence[str], overrides: Mapping[str, Any]) -> str:
    values = {k: v if isinstance(v, str) else repr(v) for k, v in overrides.items()}
    parts = bundle_command(run_id, config_files, overrides=values, configs_dir=CONFIGS_DIR, python="python")
    return " ".join(shlex.quote(p) for p in parts)


def _best(history: Mapping[str, list]) -> tuple[int | None, float]:
    values = [v if v is not None and not math.isnan(v) else -1.0 for v in history.get("val_metric", [])]
    if not values:
        return None, math.nan
    index = int(np.argmax(values))
    return int(history["val_epoch"][index]), float(history["val_metric"][index])


def _train_row(method: Method, name: str, datalist: Path, ctx: Context) -> tuple[dict, Evaluation]:
    run_dir = ctx.out / "runs" / name
    shutil.rmtree(run_dir / "models", ignore_errors=True)  # a fresh run: no stale best model or resume state
    files = _config_files(method, ctx.profile)
    paths = {"datalist": str(datalist), "output_dir": str(run_dir), "ckpt_dir": str(run_dir / "models")}
    plan = plan_row(method, files, {**ctx.overrides, **method.overrides, **paths}, ctx.budget_per_slice)
    budget = {**plan.overrides(), "budget_samples": plan.budget_samples, "early_stopping_patience": ctx.patience}
    # the plan first: an explicit --override (e.g. train#trainer#max_epochs) still wins, and the record says so
    overrides = {**budget, **ctx.overrides, **method.overrides, **paths}
    workflow = ConfigWorkflow(config_file=files, meta_file=str(CONFIGS_DIR / "metadata.json"), **overrides)
    workflow.initialize()
    parser = workflow.parser
    atomic_write_json(run_dir / "config.json", parser.get())
    command = _command("training", files, overrides)
    rerun = _command("training", [str(run_dir / "config.json")], {})
    atomic_write_text(
        run_dir / "command.sh",
        f"#!/usr/bin/env bash\n# {name}: the bundle training of this row (seed {ctx.seed})\n{command}\n"
        f"# or, from the merged config saved beside this file:\n# {rerun}\n",
    )
    start = time.perf_counter()
    parser.get_parsed_content("precompute")  # embeddings (cached after the first row) / image cache
    trainer = parser.get_parsed_content("train#trainer")
    setup_s = time.perf_counter() - start
    clock = EpochClock()
    clock.attach(trainer)
    clock.start = time.perf_counter()
    workflow.run()
    train_s = time.perf_counter() - clock.start
    history = parser.get_parsed_content("train#learning_curve").history
    best_epoch, best_val = _best(history)
    stop = read_record(run_dir)
    if stop is None:
        raise RuntimeError(f"{run_dir}: the run wrote no training_budget.json ({BUDGET_OVERLAY} not applied?).")
    network = parser.get_parsed_content("network")
    trainable = count_trainable_parameters(network)
    load_head_weights(network, run_dir / "models" / "model.pt")  # the best validation epoch's weights
    if method.kind == "scsam":
        model = parser.get_parsed_content("network_def")  # the image-in ScSAM; its head is `network`, trained
        predictor = ScSAMPredictor(model, device=ctx.device)
    else:
        predictor = SupervisedPredictor(network, parser.get_parsed_content("canvas_size"), device=ctx.device)
    evaluation = evaluate_predictor(
        predictor, ctx.items(datalist), ctx.num_classes, keep=PROFILES[ctx.profile].qualitative
    )
    record = {
        "trainable_parameters": trainable,
        "best_epoch": best_epoch,
        "best_val_dice": best_val,
        "time_to_best_s": clock.seconds.get(best_epoch) if best_epoch is not None else None,
        "train_s": train_s,
        "setup_s": setup_s,
        "epochs": int(trainer.state.epoch),
        "max_epochs": stop["max_epochs"],
        "optimizer_steps": stop["optimizer_steps"],
        "samples_seen": stop["samples_seen"],
        "budget_samples": stop["budget_samples"],
        "stopped_early": stop["stopped_early"],
        "stop_reason": stop["stop_reason"],
        "plan": plan.as_dict(),
        "curve": {
            "epoch": list(history["val_epoch"]),
            "samples": [int(e) * plan.samples_per_epoch for e in history["val_epoch"]],
            "val_dice": list(history["val_metric"]),
        },
        "config_files": files,
        "command": command,
    }
    del workflow, parser, trainer, network, predictor
    gc.collect()
    return record, evaluation


def _zero_shot_row(name: str, datalist: Path, ctx: Context) -> tuple[dict, Evaluation]:
    method = next(m for m in METHODS if m.kind == "zero_shot")
    run_dir = ctx.out / "runs" / name
    files = _config_files(method, ctx.profile)
    profile = {"amg_profile": PROFILES[ctx.profile].amg_profile}  # only this row has the generator's settings
    overrides = {**profile, **ctx.overrides, "datalist": str(datalist), "output_dir": str(run_dir)}
    workflow = ConfigWorkflow(config_file=files, meta_file=str(CONFIGS_DIR / "metadata.json"), **overrides)
    workflow.initialize()
    parser = workflow.parser
    atomic_write_json(run_dir / "config.json", parser.get())
    command = _command("zero_shot_run", files, overrides)
    atomic_write_text(
        run_dir / "command.sh", f"#!/usr/bin/env bash\n# {name}: zero-shot SAM on the test split\n{command}\n"
    )
    amg = parser.get_parsed_content("amg_profile")
    sam = parser.get_parsed_content("zero_shot#sam").to(ctx.device)
    evaluation = evaluate_zero_shot(
        datalist=datalist,
        split="test",
        preprocessing=parser.get_parsed_content("preprocessing"),
        sam=sam,
        class_names=ctx.class_names,
        settings=AMG_SETTINGS[amg],
        output_dir=run_dir,
        keep=PROFILES[ctx.profile].qualitative,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "trainable_parameters": 0,
        "best_epoch": None,
        "time_to_best_s": None,
        "masks_per_image": metrics["masks_per_image"],
        "config_files": files,
        "command": command,
        "amg": AMG_SETTINGS[amg],
    }, evaluation


def _run_row(
    method: Method, name: str, datalist: Path, groups: Mapping[str, str], ctx: Context
) -> tuple[dict, Evaluation | None]:
    logger.info("[experiments] %s (%s)", name, ", ".join(groups.values()))
    start = time.perf_counter()
    record: dict[str, Any] = {"name": name, "method": method.name, "kind": method.kind, "groups": dict(groups)}
    record.update({"seed": ctx.seed, "datalist": str(datalist)})
    try:
        if method.kind == "zero_shot":
            extra, evaluation = _zero_shot_row(name, datalist, ctx)
        else:
            extra, evaluation = _train_row(method, name, datalist, ctx)
    except Exception as err:  # noqa: BLE001 - one failed row is reported, the others still run
        logger.exception("[experiments] %s failed", name)
        record.update({"error": f"{type(err).__name__}: {err}", "wall_s": time.perf_counter() - start})
        atomic_write_json(ctx.out / "runs" / name / "row.json", record)
        return record, None
    record.update(extra)
    record.update(
        {
            "scores": evaluation.scores,
            "inference_s_per_image": evaluation.seconds_per_image,
            "num_test_images": len(ctx.items(datalist)),
            "wall_s": time.perf_counter() - start,
        }
    )
    atomic_write_json(ctx.out / "runs" / name / "row.json", record)
    logger.info(
        "[experiments] %s: Dice %.4f, %.0f s", name, evaluation.scores.get("dice_mean", math.nan), record["wall_s"]
    )
    return record, evaluation


# ---- everything --------------------------------------------------------------------------------------------
def _weights_note(base: ConfigParser) -> list[str]:
    notes = []
    for stream in ("sam", "mae"):
        if not base.get_parsed_content(f"{stream}_checkpoint") and base.get_parsed_content(
            f"{stream}_allow_random_weights"
        ):
            arch = base.get_parsed_content(f"{stream}_arch")
            notes.append(f"{stream.upper()} encoder '{arch}' has RANDOM weights")
    return notes


def run_experiments(
    *,
    datalist: str | Path,
    out: str | Path,
    profile: str = "tiny",
    methods: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    cross_dataset: bool = True,
    device: str | None = None,
    budget_per_slice: int | None = None,
    patience: int | None = None,
) -> dict[str, Path]:
    """Run the selected methods on ``datalist`` and write the results into ``out``.

    Args:
        datalist: a Decathlon datalist with ``training``, ``validation`` and ``test`` splits.
        out: output folder (``results.csv``, ``results.md``, ``results.json``, ``learning_curves.png``,
            ``qualitative.png``, ``datalist.json`` and ``runs/<method>/``).
        profile: ``"tiny"`` (CPU minutes, random tiny encoders, a smoke test), ``"small"`` (2 CPU cores, at most
            about 30 minutes on 20 slices) or ``"full"`` (train.yaml's settings, a GPU); see :data:`PROFILES`.
        methods: method names (see ``registry.METHODS``); with ``groups`` None too: the profile's methods.
        groups: table names whose methods to run.
        seed: the seed of every row (bundle ``seed``).
        overrides: more bundle overrides for every row (e.g. ``sam_checkpoint``, ``class_names``).
        cache_dir: embedding cache; default the ``embedding_cache`` folder beside the datalist.
        cross_dataset: also run the cross-dataset rows when the datalist's items name two subsets.
        device: torch device for the rows (default: CUDA when available).
        budget_per_slice: training samples per training slice for every trainable row (default: the profile's).
        patience: validations without a gain of validation mean Dice before a row stops (0: never; default: the
            profile's).

    Returns:
        paths of the written files by name.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}.")
    wall = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = Path(datalist).resolve()
    data = prepare_datalist(source, out / "datalist.json", PROFILES[profile].max_items)
    base_overrides: dict[str, Any] = {
        "bundle_root": str(BUNDLE_DIR),
        "seed": int(seed),
        "cache_dir": str(Path(cache_dir).resolve() if cache_dir else source.parent / "embedding_cache"),
    }
    names = class_names_of(data)
    if names:
        base_overrides["class_names"] = names
    if device:
        base_overrides["device"] = f"$torch.device('{device}')"
    base_overrides.update(overrides or {})
    base = ConfigParser()
    base.read_config([str(CONFIGS_DIR / "train.yaml"), str(PROFILES[profile].overlay)])
    base.update({**base_overrides, "datalist": str(out / "datalist.json")})
    class_names = list(base.get_parsed_content("class_names"))
    ctx = Context(
        out=out,
        profile=profile,
        seed=int(seed),
        overrides=base_overrides,
        num_classes=len(class_names) - 1,
        class_names=class_names,
        device=base.get_parsed_content("device"),
        base=base,
        budget_per_slice=int(budget_per_slice or PROFILES[profile].budget_per_slice),
        patience=int(PROFILES[profile].patience if patience is None else patience),
    )
    if not methods and not groups and PROFILES[profile].methods:
        methods = list(PROFILES[profile].methods)
    selected = select_methods(list(methods) if methods else None, list(groups) if groups else None)
    records: list[dict] = []
    examples: dict[str, list[np.ndarray]] = {}
    for method in selected:
        record, evaluation = _run_row(method, method.name, out / "datalist.json", method.groups, ctx)
        records.append(record)
        if evaluation is not None:
            examples[next(iter(method.groups.values()))] = evaluation.examples
    cross = cross_dataset_datalists(split_subsets(data), out / "cross") if cross_dataset else []
    by_name = {m.name: m for m in METHODS}
    for a, b, path in cross:
        for name in CROSS_DATASET_METHODS:
            method = by_name[name]
            if methods and name not in methods:
                continue
            label = f"{next(iter(method.groups.values()))}: {a} -> {b}"
            record, _ = _run_row(method, f"{name}__{a}_to_{b}", path, {"cross_dataset": label}, ctx)
            records.append(record)
    header = [
        f"- profile: `{profile}`; datalist: `{source}`; seed: {seed}; device: {ctx.device}; "
        f"test images: {len(ctx.items(out / 'datalist.json'))}",
        f"- wall time: {time.perf_counter() - wall:.0f} s (all rows, including the embedding cache)",
    ]
    header += budget_lines(ctx.budget_per_slice, int(base.get_parsed_content("views_per_image")), ctx.patience)
    header += weights_lines(_weights_note(base), tiny=profile == "tiny")
    header.append(
        "- Zero-shot SAM gives each automatic mask the class of the ground truth it overlaps most (nearest class "
        "when none): it reads the labels, an upper bound for SAM's masks."
    )
    failed = [r for r in records if "error" in r]
    if failed:
        header.append("- failed rows: " + "; ".join(f"{r['name']} ({r['error']})" for r in failed))
    rows = table_rows([r for r in records if "error" not in r], class_names)
    paths = {
        "results.csv": write_csv(out / "results.csv", rows),
        "results.md": atomic_write_text(out / "results.md", format_markdown(rows, class_names, header)),
    }
    summary = {
        "profile": profile,
        "datalist": str(source),
        "seed": seed,
        "class_names": class_names,
        "records": records,
    }
    summary["overrides"] = {k: v for k, v in base_overrides.items()}
    paths["results.json"] = atomic_write_json(out / "results.json", summary)
    curves = {
        next(iter(r["groups"].values())): r["curve"]
        for r in records
        if r.get("curve") and "cross_dataset" not in r["groups"]
    }
    paths["learning_curves.png"] = plot_learning_curves(curves, out / "learning_curves.png")
    test_items = ctx.items(out / "datalist.json")[: PROFILES[profile].qualitative]
    paths["qualitative.png"] = plot_qualitative(
        [i.image[0].numpy() for i in test_items],
        [i.label for i in test_items],
        examples,
        class_names,
        out / "qualitative.png",
    )
    logger.info("[experiments] done in %.0f s: %s", time.perf_counter() - wall, out / "results.md")
    return paths

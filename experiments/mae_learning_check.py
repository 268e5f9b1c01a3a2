"""A CPU check that MAE pre-training learns on real EM: the bundle's recipe with a CPU-sized ViT.

``python -m experiments.mae_learning_check --out experiments/results/mae_learning_check`` runs the bundle's
``pretraining`` (``pretrain_mae.yaml`` + ``experiments/configs/pretrain_sstem.yaml``: sections 0-14 of the shared
ssTEM sample, normalised targets, mask ratio 0.5, the step schedule) with a ViT small enough for a CPU
(:data:`CPU_CHECK_ARCH`: 64 wide, one block, 32x32 crops of 4-pixel patches at the tiny arch's canvas scale) and
writes the loss curve (JSON + PNG, with the
predict-nothing level) and the reconstructions. The real archs cost 10-100 times more per step; what this shows
is that the recipe and the code leave the predict-nothing plateau on this data, not how good a 512-wide encoder
gets. The architecture is registered in ``MAE_ARCHITECTURES`` only while the check runs (ScSAM cannot embed with
a 64-wide encoder); ``tests/experiments/test_mae_learning_check.py`` runs the same function.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scsam_monai.networks import encoders

__all__ = ["CPU_CHECK_ARCH", "CPU_CHECK_SETTINGS", "cpu_check_arch", "run_learning_check", "main"]

REPO = Path(__file__).resolve().parents[1]
SSTEM_RAW = REPO.parent / "shared" / "data" / "drosophila-vnc-sstem" / "raw"

#: The CPU-sized ViT of the check (name ``"cpu_check"``).
CPU_CHECK_ARCH: dict = {
    "canvas": 256,
    "tile_size": 128,
    "fov": 32,
    "patch_size": 4,
    "embed_dim": 64,
    "depth": 1,
    "num_heads": 4,
    "mlp_ratio": 4.0,
}

#: Bundle overrides of the check: the recipe's optimizer and schedule at a CPU budget.
CPU_CHECK_SETTINGS: dict = {
    "device": "$torch.device('cpu')",
    "amp": False,
    "num_workers": 0,
    "mae_arch": "cpu_check",
    "decoder_embed_dim": 64,
    "decoder_depth": 1,
    "decoder_num_heads": 4,
    "batch_size": 32,
    "learning_rate": 0.003,
    "warmup_steps": 50,
    "max_steps": 1000,
    "steps_per_epoch": 100,
    "png_interval": 2,
    "save_interval": 1000,
}


@contextmanager
def cpu_check_arch(name: str = "cpu_check") -> Iterator[str]:
    """Register :data:`CPU_CHECK_ARCH` as ``name`` in ``MAE_ARCHITECTURES`` while the block runs."""
    if name in encoders.MAE_ARCHITECTURES:
        raise ValueError(f"MAE arch {name!r} already exists; the check registers its own architecture.")
    encoders.MAE_ARCHITECTURES[name] = dict(CPU_CHECK_ARCH)
    try:
        yield name
    finally:
        encoders.MAE_ARCHITECTURES.pop(name, None)


def run_learning_check(
    out_dir: str | Path, *, image_dir: str | Path = SSTEM_RAW, work_dir: str | Path | None = None, **overrides
) -> dict:
    """Pre-train the CPU-sized MAE through the bundle and return its loss history (``mae_loss.json``).

    Args:
        out_dir: folder of ``mae_loss.json``, ``mae_loss.png`` and ``mae_reconstruction.png``.
        image_dir: the ssTEM sections (``pretrain_sstem.yaml`` keeps sections 0-14).
        work_dir: folder of checkpoints, TensorBoard logs and the exported encoder (None: a temporary folder,
            removed afterwards).
        overrides: further bundle settings (e.g. ``max_steps``).

    Raises:
        FileNotFoundError: ``image_dir`` does not exist.
    """
    from monai.bundle import ConfigWorkflow

    if not Path(image_dir).is_dir():
        raise FileNotFoundError(f"{image_dir}: the ssTEM sections are not there (../shared/data of the repository).")
    out = Path(out_dir)
    scratch = Path(tempfile.mkdtemp(prefix="mae_check_")) if work_dir is None else Path(work_dir)
    configs = [str(REPO / "bundle/configs/pretrain_mae.yaml"), str(REPO / "experiments/configs/pretrain_sstem.yaml")]
    settings = {
        **CPU_CHECK_SETTINGS,
        "image_dir": str(image_dir),
        "output_dir": str(scratch / "eval"),
        "ckpt_dir": str(scratch / "checkpoints"),
        "export_path": str(scratch / "mae_encoder.pth"),
        **overrides,
    }
    try:
        with cpu_check_arch(str(settings["mae_arch"])):
            workflow = ConfigWorkflow(
                config_file=configs,
                meta_file=str(REPO / "bundle/configs/metadata.json"),
                logging_file=False,
                run_id="pretraining",
                workflow_type=None,
                **settings,
            )
            workflow.initialize()
            workflow.run()
        out.mkdir(parents=True, exist_ok=True)
        for name in ("mae_loss.json", "mae_loss.png", "mae_reconstruction.png"):
            source = scratch / "eval" / name
            if source.is_file():
                shutil.copyfile(source, out / name)
        return json.loads((out / "mae_loss.json").read_text())
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m experiments.mae_learning_check --out DIR [--max-steps N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder of the loss curve (JSON, PNG) and reconstructions")
    parser.add_argument("--image-dir", default=str(SSTEM_RAW), help="the ssTEM raw sections")
    parser.add_argument("--max-steps", type=int, default=CPU_CHECK_SETTINGS["max_steps"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    history = run_learning_check(args.out, image_dir=args.image_dir, max_steps=args.max_steps, seed=args.seed)
    print(
        f"step {history['step'][-1]}: loss {history['loss'][-1]:.4f}, predicting nothing "
        f"{history['predict_nothing'][-1]:.4f}; curve and reconstructions in {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

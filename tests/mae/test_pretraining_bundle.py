"""The MAE pre-training through MONAI's bundle runner (demo profile, shortened): outputs, loss, export, resume.

Also on real EM (the Drosophila VNC ssTEM sections in ../shared/data/, skipped when absent).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys

from scsam_monai.networks.encoders import FrozenMaeEncoder
from tests.helpers import NATIVE_BF16_ONLY, run_bundle
from tests.helpers import REAL_EM_SAMPLE as REAL_EM

REPO = Path(__file__).resolve().parents[2]
CONFIGS = [str(REPO / "bundle/configs/pretrain_mae.yaml"), str(REPO / "bundle/configs/pretrain_demo.yaml")]
META = str(REPO / "bundle/configs/metadata.json")

# a few small synthetic slices: 2 iterations of 8 crops per epoch
SMALL = {"batch_size": 8, "crops_per_image": 2, "num_workers": 0}


@pytest.fixture(scope="module")
def dataset_dir(synthetic_dataset) -> Path:
    """A synthetic data set of 6 training, 2 validation and 1 test slices of 96 x 96 (shared: runs write elsewhere)."""
    return synthetic_dataset(num_train=6, num_val=2, num_test=1, size=96, seed=3)


def _workflow(configs: list[str] = CONFIGS, defaults: dict = SMALL, **override) -> ConfigWorkflow:
    """The pre-training workflow of ``configs``, initialised, with ``defaults`` then ``override`` applied."""
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=META,
        logging_file=False,
        run_id="pretraining",
        workflow_type=None,
        **{k: str(v) if isinstance(v, Path) else v for k, v in {**defaults, **override}.items()},
    )
    workflow.initialize()
    return workflow


def _loss(path: Path) -> dict:
    return json.loads((path / "mae_loss.json").read_text())


@pytest.fixture(scope="module")
def pretrained(dataset_dir, tmp_path_factory) -> tuple[Path, Path, str]:
    """One pre-training run through the bundle command line (the user's command), 4 short epochs."""
    work = tmp_path_factory.mktemp("mae_cli")
    out, export = work / "out", work / "models" / "mae_encoder.pth"
    overrides = {**SMALL, "dataset_dir": dataset_dir, "output_dir": out, "export_path": export, "max_epochs": 4}
    overrides.update(save_interval=2, png_interval=2, learning_rate=0.002)
    result = run_bundle("pretraining", CONFIGS, overrides, cwd=work, timeout=600)
    return out, export, result.stdout + result.stderr


def test_one_bundle_command_pretrains_and_exports_the_encoder(pretrained):
    out, export, log = pretrained
    assert "ignoring non-scalar" not in log and "RANDOM" not in log
    history = _loss(out)
    assert history["epoch"] == [1, 2, 3, 4]
    assert history["loss"][-1] < 0.8 * history["loss"][0], history  # the loss falls on synthetic EM
    assert (out / "mae_reconstruction.png").stat().st_size > 5000
    assert (out / "mae_loss.png").stat().st_size > 1000
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard log"
    checkpoints = {p.name for p in (out / "checkpoints").iterdir()}
    assert {"checkpoint_epoch=2.pt", "checkpoint_epoch=4.pt", "mae_checkpoint_final.pt"} <= checkpoints

    # the export is what FrozenMaeEncoder loads (weights_only), and embeds any image into 512x64x64
    record = torch.load(export, weights_only=True)["mae_architecture"]
    assert record["arch"] == "tiny" and record["epoch"] == 4
    encoder = FrozenMaeEncoder(arch="tiny", checkpoint=export)
    assert encoder.cache_key.startswith("mae-tiny-t128-") and "random" not in encoder.cache_key
    for shape in [(2, 1, 96, 96), (1, 1, 96, 150), (1, 3, 300, 120)]:
        embedding = encoder(torch.rand(shape))
        assert embedding.shape == (shape[0], 512, 64, 64) and torch.isfinite(embedding).all()
    # the full training checkpoint holds the same encoder weights
    same = FrozenMaeEncoder(arch="tiny", checkpoint=out / "checkpoints" / "mae_checkpoint_final.pt")
    for k, v in encoder.backbone.state_dict().items():
        assert torch.equal(same.backbone.state_dict()[k], v), k


def test_scsam_trains_on_the_pretrained_mae_embeddings_through_the_bundle(pretrained, dataset_dir, tmp_path):
    _, export, _ = pretrained
    configs = [str(REPO / "bundle/configs/train.yaml"), str(REPO / "bundle/configs/demo.yaml")]
    overrides = {
        "dataset_dir": dataset_dir,
        "output_dir": tmp_path / "out",
        "cache_dir": tmp_path / "cache",
        "mae_checkpoint": export,
        "mae_allow_random_weights": False,
        "views_per_image": 1,
        "train#batch_size": 4,
        "train#trainer#max_epochs": 1,
    }
    result = run_bundle("training", configs, overrides, cwd=tmp_path, timeout=600)
    log = result.stdout + result.stderr
    assert "FrozenMaeEncoder(arch='tiny') is using RANDOM" not in log  # the MAE stream is the pre-trained one
    assert (tmp_path / "out" / "models" / "training" / "checkpoint_final.pt").is_file()
    key = FrozenMaeEncoder(arch="tiny", checkpoint=export).cache_key
    assert any(key in str(p) for p in (tmp_path / "cache").rglob("*")), "no embeddings cached under the MAE's key"


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(dataset_dir, tmp_path):
    common = {"dataset_dir": dataset_dir, "max_epochs": 4, "png_interval": 0}
    full = _workflow(
        **common, output_dir=tmp_path / "full", export_path=tmp_path / "full.pt", save_interval=1, keep_checkpoints=None
    )
    full.run()

    resumed_ckpts = tmp_path / "resumed" / "checkpoints"
    resumed_ckpts.mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "checkpoint_epoch=2.pt", resumed_ckpts)
    resumed = _workflow(**common, output_dir=tmp_path / "resumed", export_path=tmp_path / "resumed.pt", resume=True)
    trainer = resumed.parser.get_parsed_content("train#trainer")
    epochs_run: list[int] = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs_run.append(engine.state.epoch))
    resumed.run()

    assert epochs_run == [3, 4]  # started from the saved epoch 2
    assert trainer.state.epoch == 4 and trainer.state.iteration == 4 * 2
    assert _loss(tmp_path / "resumed") == _loss(tmp_path / "full")  # history restored, then the same epochs
    net_full, net_resumed = (w.parser.get_parsed_content("network") for w in (full, resumed))
    for k, v in net_full.state_dict().items():
        assert torch.equal(net_resumed.state_dict()[k], v), k
    opt_full, opt_resumed = (w.parser.get_parsed_content("optimizer").state_dict() for w in (full, resumed))
    for index, state in opt_full["state"].items():
        assert int(opt_resumed["state"][index]["step"]) == int(state["step"]) == 8
        assert torch.equal(opt_resumed["state"][index]["exp_avg"], state["exp_avg"])
    assert opt_resumed["param_groups"][0]["lr"] == opt_full["param_groups"][0]["lr"]
    assert torch.load(tmp_path / "resumed.pt", weights_only=True)["mae_architecture"]["epoch"] == 4


def test_resume_without_a_checkpoint_is_a_clear_error(dataset_dir, tmp_path):
    workflow = _workflow(dataset_dir=dataset_dir, output_dir=tmp_path, resume=True, max_epochs=1)
    with pytest.raises(RuntimeError) as info:  # MONAI's config parser wraps the error
        workflow.run()
    cause = info.value.__cause__
    assert isinstance(cause, FileNotFoundError) and "no checkpoint" in str(cause) and str(tmp_path) in str(cause)


@pytest.mark.skipif(not (REAL_EM / "raw").is_dir(), reason="real EM sample ../shared/data/drosophila-vnc-sstem absent")
def test_pretraining_loss_falls_on_real_em_slices(tmp_path):
    workflow = _workflow(
        image_dir=REAL_EM / "raw",
        output_dir=tmp_path / "out",
        export_path=tmp_path / "mae_encoder.pth",
        crops_per_image=1,
        batch_size=10,
        max_epochs=4,
        png_interval=0,
        learning_rate=0.002,
    )
    assert len(workflow.parser.get_parsed_content("train#datalist")) == 20  # the 20 sections, one item each
    workflow.run()
    history = _loss(tmp_path / "out")
    assert history["loss"][-1] < 0.8 * history["loss"][0], history
    encoder = FrozenMaeEncoder(arch="tiny", checkpoint=tmp_path / "mae_encoder.pth")
    assert encoder(torch.rand(1, 1, 1024, 1024)).shape == (1, 512, 64, 64)


REAL_EM_OVERLAY = [
    str(REPO / "bundle/configs/pretrain_mae.yaml"),
    str(REPO / "experiments/configs/pretrain_real_em.yaml"),
]


def _real_em_workflow(dataset_dir: Path, **override) -> ConfigWorkflow:
    """The real-EM report's pre-training (pretrain_mae.yaml + pretrain_real_em.yaml) on a CPU, initialised."""
    return _workflow(REAL_EM_OVERLAY, {}, dataset_dir=dataset_dir, device="$torch.device('cpu')", **override)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_real_em_overlay_autocasts_in_bf16_only_where_the_cpu_runs_it_natively(native_bf16, monkeypatch, dataset_dir):
    """pretrain_real_em.yaml: bf16 autocast on a CPU with native bf16 (0.42 s per step in the report), else float32."""
    from scsam_monai.networks import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    parser = _real_em_workflow(dataset_dir).parser
    assert parser.get_parsed_content("amp") is native_bf16
    assert parser.get_parsed_content("train#iteration").amp_dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    assert parser.get_parsed_content("train#trainer").amp is native_bf16
    # the report's budget: 1,500 steps of 16 crops, 30 epochs of 50 steps, the encoder exported at the last epoch
    assert parser.get_parsed_content("max_steps") == 1500 and parser.get_parsed_content("steps_per_epoch") == 50
    assert parser.get_parsed_content("max_epochs") % parser.get_parsed_content("save_interval") == 0
    assert parser.get_parsed_content("datalist_splits") == ["training", "validation"]


@NATIVE_BF16_ONLY
def test_real_em_overlay_pretrains_in_bf16_on_this_cpu(dataset_dir, tmp_path):
    """A few steps of the real-EM overlay's bf16 pre-training run, fall and export a loadable encoder."""
    workflow = _real_em_workflow(
        dataset_dir,
        output_dir=tmp_path / "out",
        image_normalization="per_image",  # the synthetic slices are not scsam-prepare output
        batch_size=8,
        max_steps=12,
        steps_per_epoch=4,
        warmup_steps=2,
        save_interval=3,
        png_interval=0,
    )
    assert workflow.parser.get_parsed_content("amp") is True
    workflow.run()
    history = _loss(tmp_path / "out")
    assert all(torch.isfinite(torch.tensor(history["loss"]))) and history["loss"][-1] < history["loss"][0], history
    encoder = FrozenMaeEncoder(arch="tiny", checkpoint=tmp_path / "out" / "mae_encoder.pth")
    assert encoder(torch.rand(1, 1, 256, 256)).shape == (1, 512, 64, 64)


def test_centred_targets_through_the_bundle(dataset_dir, tmp_path):
    """``--norm_pix_loss mean`` reaches the MAE, its predict-nothing level is the masked patches' own variance, and
    the exported encoder records it."""
    workflow = _workflow(
        dataset_dir=dataset_dir,
        output_dir=tmp_path / "out",
        export_path=tmp_path / "mae_encoder.pth",
        norm_pix_loss="mean",
        max_epochs=1,
        png_interval=1,
    )
    network = workflow.parser.get_parsed_content("network_def")
    assert network.norm_pix_loss == "mean"
    trainer = workflow.parser.get_parsed_content("train#trainer")
    # centred targets: predicting nothing scores the mean (biased) variance of the masked patches' normalised
    # pixels, computed here from each iteration's images and masks, independently of the network's targets
    expected: list[float] = []

    def masked_patch_variance(engine) -> None:
        images, mask = engine.state.output[CommonKeys.IMAGE], engine.state.output["mask"]
        p = network.patch_size
        patches = ((images - network.pixel_mean) / network.pixel_std).unfold(2, p, p).unfold(3, p, p)
        variance = patches.flatten(-2).var(dim=-1, unbiased=False).flatten(1)  # (B, N) row-major, as the mask
        expected.append(float((variance * mask).sum() / mask.sum()))

    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, masked_patch_variance)
    reported: list[float] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: reported.append(float(engine.state.output["predict_nothing"]))
    )
    workflow.run()
    history = _loss(tmp_path / "out")
    assert all(torch.isfinite(torch.tensor(history["loss"] + history["predict_nothing"])))
    assert len(expected) == len(reported) == 2  # one epoch of 2 iterations
    assert reported == pytest.approx(expected, rel=1e-5)
    assert history["predict_nothing"] == pytest.approx([sum(expected) / len(expected)], rel=1e-5)
    assert 0.0 < history["predict_nothing"][0] < 1.0
    record = torch.load(tmp_path / "mae_encoder.pth", weights_only=True)["mae_architecture"]
    assert record["norm_pix_loss"] == "mean"
    assert (tmp_path / "out" / "mae_reconstruction.png").is_file()

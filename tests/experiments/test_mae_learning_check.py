"""The MAE pre-training learns on real EM: normalised-target loss clearly below the predict-nothing level.

Runs ``experiments.mae_learning_check`` (the bundle's ``pretrain_mae.yaml`` + ``pretrain_sstem.yaml``: sections
0-14 of the shared ssTEM sample, never the test sections 16-19; the recipe's step schedule) with its CPU-sized ViT.
With normalised targets, predicting nothing scores 15/16 = 0.9375 per 16-pixel patch; the network first settles
there (a saddle: at initialisation the masked tokens attend to every patch alike and carry no local information)
and leaves it after a few hundred steps at the check's learning rate. The test fails when it never does (a
learning rate too low, too few steps, a bug in masking, targets or decoder). Skipped when the sample
(``../shared/data/drosophila-vnc-sstem``) is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from monai.bundle import ConfigParser

from experiments.mae_learning_check import REPO, SSTEM_RAW, cpu_check_arch, run_learning_check
from scsam_monai.networks.encoders import MAE_ARCHITECTURES


@pytest.mark.skipif(not SSTEM_RAW.is_dir(), reason="real EM sample ../shared/data/drosophila-vnc-sstem absent")
def test_normalised_target_loss_falls_clearly_below_predicting_nothing_on_sstem(tmp_path):
    history = run_learning_check(tmp_path / "out", work_dir=tmp_path / "work", png_interval=0)
    assert history["step"] == [100 * k for k in range(1, 11)]
    assert history["lr"][-1] < 1e-5  # the cosine reached ~0 at the budget's last step: the schedule counts steps
    nothing, loss = history["predict_nothing"][-1], history["loss"][-1]
    assert nothing == pytest.approx(15 / 16, abs=0.01), history
    assert loss < 0.9 and loss < nothing - 0.05, history  # clearly below predicting nothing
    assert (tmp_path / "out" / "mae_reconstruction.png").stat().st_size > 5000
    assert "cpu_check" not in MAE_ARCHITECTURES  # registered only during the check


def test_the_check_pretrains_on_sections_0_to_14_only_and_unregisters_its_arch(tmp_path):
    for z in range(20):
        tifffile.imwrite(tmp_path / f"{z:02d}.tif", np.full((8, 8), z, dtype=np.uint8))
    parser = ConfigParser()
    parser.read_config(
        [str(REPO / "bundle/configs/pretrain_mae.yaml"), str(REPO / "experiments/configs/pretrain_sstem.yaml")]
    )
    parser["image_dir"] = str(tmp_path)
    items = parser.get_parsed_content("train#datalist")
    assert [int(str(item["image"])[-6:-4]) for item in items] == list(range(15))
    assert parser.get_parsed_content("norm_pix_loss") is True and parser.get_parsed_content("mask_ratio") == 0.5
    with cpu_check_arch() as name:
        assert MAE_ARCHITECTURES[name]["embed_dim"] == 64
        with pytest.raises(ValueError, match="already exists"):
            with cpu_check_arch(name):
                pass
    assert "cpu_check" not in MAE_ARCHITECTURES

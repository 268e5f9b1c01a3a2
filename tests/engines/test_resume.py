"""Interrupted training: a run killed mid-epoch and resumed reaches the same weights as an uninterrupted one.

The kill comes at a known point (``tests.helpers.SigkillAfterCheckpoint``), so the claim is tested on any machine.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
import yaml

from scsam_monai.engines.resume import RngState
from tests.helpers import run_bundle

pytestmark = pytest.mark.slow

CONFIGS = ["train.yaml", "demo.yaml"]


def test_rng_state_round_trip_is_weights_only_loadable(tmp_path):
    import random

    import numpy as np

    rng = RngState()
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    torch.save(rng.state_dict(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    rng.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert (np.random.rand(3) == expected[1]).all()
    assert random.random() == expected[2]


def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path, repo_root, synthetic_dataset):
    synthetic_dataset(tmp_path / "data", num_train=4, num_val=1, num_test=0, size=96, seed=5)  # its embedding cache
    common = {
        "dataset_dir": tmp_path / "data",
        "views_per_image": 1,
        "train#batch_size": 2,
        "train#trainer#max_epochs": 3,
        "num_workers": 0,
    }
    env = {"PYTHONWARNINGS": "ignore"}
    # fill the embedding cache first, so that both training runs start from the same state
    straight = {**common, "output_dir": tmp_path / "straight"}
    for run_id in ("precompute", "training"):
        run_bundle(run_id, CONFIGS, straight, cwd=tmp_path, env=env, timeout=600)

    # killed at a known point: one iteration into epoch 2, after last.pt holds epoch 1 (not a race with the clock)
    interrupted = {**common, "output_dir": tmp_path / "interrupted"}
    last = tmp_path / "interrupted" / "models" / "training" / "last.pt"
    kill = tmp_path / "kill.yaml"
    handler = {"_target_": "tests.helpers.SigkillAfterCheckpoint", "path": str(last), "epoch": 1}
    kill.write_text(yaml.safe_dump({"+train#handlers_every_rank": [handler]}))
    killed = run_bundle(
        "training",
        [*CONFIGS, kill],
        interrupted,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))},
        timeout=600,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["trainer"] == {"epoch": 1, "iteration": 2}
    assert not (tmp_path / "interrupted" / "models" / "training" / "checkpoint_final.pt").exists()

    resumed = run_bundle("training", CONFIGS, {**interrupted, "resume": True}, cwd=tmp_path, env=env, timeout=600)
    assert "Resumed from" in resumed.stdout + resumed.stderr

    a = torch.load(tmp_path / "straight" / "models" / "training" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["trainer"] == b["trainer"] == {"epoch": 3, "iteration": 6}
    for key, value in a["network"].items():
        torch.testing.assert_close(b["network"][key], value, rtol=0, atol=1e-6, msg=key)
    assert a["learning_curve"]["epoch"] == b["learning_curve"]["epoch"] == [1, 2, 3]

"""Test of the MAE pre-training throughput measurement (benchmarks.mae_throughput)."""

from __future__ import annotations

import pytest

from benchmarks.mae_throughput import MAE_CROPS_PER_S_TARGET, mae_pretraining_throughput


def test_throughput_reports_crops_and_steps_per_second_of_the_resident_path():
    result = mae_pretraining_throughput("tiny", device="cpu", batch_size=2, num_slices=3, warmup=1, repeats=2)
    assert result["arch"] == "tiny" and result["batch_size"] == 2 and result["crop_size"] == 64
    assert result["slice_size"] == 256  # the tiny arch's canvas: what pre-training keeps resident
    assert result["crops_per_s"] == pytest.approx(2 * result["steps_per_s"])
    assert result["crops_per_s"] > 0 and result["step_seconds"]["n"] == 2
    assert result["data_crops_per_s"] > result["crops_per_s"]  # cutting crops costs less than a training step
    assert result["target_crops_per_s"] == MAE_CROPS_PER_S_TARGET and result["meets_target"] is None
    assert result["amp_dtype"] is None  # no autocast on a CPU

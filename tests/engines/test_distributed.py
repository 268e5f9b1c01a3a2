"""Distributed (DDP) pieces: sharded embedding precompute, failure propagation, weight consistency.

The process-group tests start two real gloo ranks with ``torch.multiprocessing``; the bundle test runs
``torchrun --nproc_per_node 2`` on the multi-GPU overlay with the tiny profile.
"""

from __future__ import annotations

import os
import re
import sys
import threading

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Engine

from scsam_monai.bundle_command import bundle_command
from scsam_monai.engines.distributed import (
    DistributedError,
    WeightConsistencyCheck,
    destroy_distributed,
    init_distributed,
    parameter_fingerprint,
    sharded_precompute_embeddings,
)
from tests.helpers import free_port, run_command


def test_outside_a_process_group_sharding_is_the_plain_call():
    calls = []

    def precompute(datalist, **kwargs):
        calls.append((list(datalist), kwargs))
        return [{"item": d} for d in datalist]

    assert sharded_precompute_embeddings([1, 2, 3], precompute=precompute, seed=4) == [{"item": i} for i in (1, 2, 3)]
    assert calls == [([1, 2, 3], {"seed": 4})]


def test_init_without_torchrun_says_how_to_launch(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DistributedError, match="torchrun"):
        init_distributed("gloo")


def test_parameter_fingerprint_sees_any_change_of_a_trainable_weight():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    net[1].requires_grad_(False)
    before = parameter_fingerprint(net)
    with torch.no_grad():
        net[1].weight += 1  # frozen: not compared
    assert parameter_fingerprint(net) == before
    with torch.no_grad():
        net[0].bias[0] += 1e-7
    assert parameter_fingerprint(net) != before


def _rank_main(rank: int, world: int, port: int, scenario: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    init_distributed("gloo")
    try:
        if scenario == "precompute":
            seen = []

            def precompute(datalist, **kwargs):
                seen.append(list(datalist))
                if datalist[0] == "bad.tif":  # a reader error on the first item of a share
                    raise ValueError("bad.tif: truncated TIFF")
                return [{"image": d} for d in datalist]

            items = ["a.tif", "b.tif", "c.tif"]
            records = sharded_precompute_embeddings(items, precompute=precompute, progress=True)
            error = None
            try:  # rank 0's share fails, rank 1's does not; every rank must stop, none may hang
                sharded_precompute_embeddings(["bad.tif", "a.tif", "b.tif", "bad.tif"], precompute=precompute)
            except DistributedError as err:
                error = str(err)
            results[rank] = {"seen": seen, "records": records, "error": error}  # a Manager dict: assign whole
        elif scenario == "weights":
            torch.manual_seed(rank)  # different weights on each rank: the check must stop the run
            net = torch.nn.Linear(2, 2)
            engine = Engine(lambda e, b: None)
            engine.state.epoch, engine.state.epoch_length = 1, 1
            try:
                WeightConsistencyCheck(net)(engine)
                results[rank] = None
            except DistributedError as err:
                results[rank] = str(err)
    finally:
        destroy_distributed()  # the bundle's finalize: a barrier, the tqdm monitor stopped, the group destroyed
        destroy_distributed()  # a second call does nothing
        daemons = [t.name for t in threading.enumerate() if t.daemon]
        results[f"shutdown{rank}"] = {"initialized": dist.is_initialized(), "daemon_threads": daemons}


def _spawn(scenario: str) -> dict:
    results = mp.Manager().dict()
    mp.start_processes(_rank_main, args=(2, free_port(), scenario, results), nprocs=2, start_method="spawn")
    return dict(results)


def test_ranks_share_the_precompute_and_one_ranks_failure_stops_all():
    results = _spawn("precompute")
    # each rank embeds its share, then the ranks exchange records: all get the whole list, in order
    assert results[0]["seen"][0] == ["a.tif", "c.tif"] and results[1]["seen"][0] == ["b.tif"]
    assert results[0]["records"] == results[1]["records"] == [{"image": d} for d in ("a.tif", "b.tif", "c.tif")]
    # and no image is read twice: one call per rank for each datalist (the second one is the failing list)
    assert results[0]["seen"] == [["a.tif", "c.tif"], ["bad.tif", "b.tif"]]
    assert results[1]["seen"] == [["b.tif"], ["a.tif", "bad.tif"]]
    for rank in (0, 1):
        assert "rank 0: ValueError: bad.tif: truncated TIFF" in results[rank]["error"]  # share: bad, b
        assert "rank 1:" not in results[rank]["error"]  # share: a, bad (our fake fails on a first item only)
        # both ranks left the group cleanly, with no daemon thread (the progress bar's monitor) left running
        assert results[f"shutdown{rank}"] == {"initialized": False, "daemon_threads": []}


def test_weight_check_stops_ranks_whose_weights_differ():
    results = _spawn("weights")
    assert all("weights differ" in results[r] for r in (0, 1)), results


@pytest.mark.slow
def test_torchrun_two_ranks_train_and_rank0_saves(tmp_path, synthetic_dataset):
    synthetic_dataset(tmp_path / "data", num_train=6, num_val=3, num_test=1, size=128, seed=11)  # its embedding cache
    overrides = {"dataset_dir": tmp_path / "data", "output_dir": tmp_path / "out", "views_per_image": 2}
    overrides.update({"train#batch_size": 2, "train#trainer#max_epochs": 2})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    torchrun += ["--log_dir", str(tmp_path / "logs"), "--tee", "3"]

    def run(**more) -> str:  # the user's command line: torchrun ... -m monai.bundle run training ...
        bundle = bundle_command("training", ["train.yaml", "demo.yaml", "multi_gpu_train.yaml"], overrides=more)
        result = run_command([*torchrun, *bundle[1:]], cwd=tmp_path, env={"OMP_NUM_THREADS": 1})
        return result.stdout + result.stderr

    log = run(**overrides)
    _check_two_rank_run(tmp_path, log)
    # --resume true: every rank loads rank 0's last.pt and goes on with epoch 3
    log = run(**{**overrides, "train#trainer#max_epochs": 3, "resume": True})
    for rank in (0, 1):
        assert re.search(rf"\[default{rank}\]:.*Resumed from .*last.pt at epoch 2", log), log[-6000:]
        assert f"Rank {rank} of 2: epoch 3 done" in log and f"Rank {rank} of 2: epoch 2 done" not in log
    assert "All 2 ranks hold the same weights after epoch 3" in log
    assert torch.load(tmp_path / "out/models/training/last.pt", weights_only=True)["trainer"]["epoch"] == 3


def _check_two_rank_run(tmp_path, log: str) -> None:
    for rank in (0, 1):
        # every rank trained both epochs, on its half of the 12 views (6 images x 2): 3 batches of 2
        for epoch in (1, 2):
            assert f"Rank {rank} of 2: epoch {epoch} done, 3 iterations in it" in log, log[-6000:]
        # and embedded its share of the images (computed, not all taken from the cache)
        computed = re.findall(rf"\[default{rank}\]:.*Embedding cache .*: (\d+) embeddings computed", log)
        assert computed and int(computed[0]) > 0, log[-6000:]
    assert log.count("All 2 ranks hold the same weights after epoch") == 2
    out = tmp_path / "out"
    for name in ("model.pt", "training/checkpoint_final.pt", "training/last.pt"):
        assert (out / "models" / name).is_file(), name
    assert [p.name for p in (out / "models").glob("*.pt")] == ["model.pt"]  # only the served weights
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)  # loads into the plain head
    last = torch.load(out / "models" / "training" / "last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 2 and not any(k.startswith("module.") for k in last["network"])
    assert (out / "learning_curve.png").is_file()
    writers = {p.name.split(".")[-2] for p in out.glob("events.out.tfevents.*")}
    assert len(writers) == 1, writers  # TensorBoard files from rank 0's process only
    logged = [line for line in log.splitlines() if "Trainable parameters" in line]
    assert logged and all(line.startswith("[default0]") for line in logged)  # rank-0 handlers on rank 0 only

"""Tests of scsam_monai.benchmark: the report's fields, the naive reference loops, the measuring tools.

No test asserts a timing: the machines that run tests are shared and noisy.
"""

from __future__ import annotations

import json

import pytest
import torch

from scsam_monai.benchmark import RATIO_KEYS, get_profile
from scsam_monai.benchmark.cli import build_parser, main
from scsam_monai.benchmark.measure import count_flops, summarize, time_interleaved
from scsam_monai.benchmark.naive import naive_decode, naive_forward_with_aux
from scsam_monai.benchmark.report import check_targets, compute_ratios, render_markdown
from scsam_monai.networks.scsam import ScSAMHead

G = 16


def _head() -> ScSAMHead:
    torch.manual_seed(0)
    return ScSAMHead(grid_size=G, canvas_size=4 * G).eval()


@pytest.mark.parametrize("mode", ["per_class", "per_prompt"])
def test_naive_loops_decode_like_the_batched_head(mode):
    head = _head()
    features = torch.randn(2, 256, G, G)
    with torch.no_grad():
        batched = head.decode(features)
        looped = naive_decode(head, features, mode)
    assert looped.shape == batched.shape == (2, 3, 4 * G, 4 * G)
    torch.testing.assert_close(looped, batched, rtol=1e-4, atol=1e-5)


def test_naive_training_forward_gives_the_same_gradients():
    head = _head().train()
    sam, mae = torch.randn(2, 256, G, G), torch.randn(2, 512, G, G)
    label = torch.randint(0, 4, (2, 1, 4 * G, 4 * G))
    grads = []
    for forward in (head.forward_with_aux, lambda s, m, lab: naive_forward_with_aux(head, s, m, lab)):
        head.zero_grad()
        logits, aux = forward(sam, mae, label)
        (logits.square().mean() + aux["class_embeddings"].mean()).backward()
        grads.append(head.prompt_encoder.prototypes.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="mode"):
        naive_decode(head, torch.randn(1, 256, G, G), "per_pixel")


def test_interleaved_timing_and_summary():
    calls = []
    samples = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b"]  # warm-up, then rounds in rotating order
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    s = summarize([2.0, 4.0, 6.0], per=2)
    assert s["median"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0 and s["n"] == 3 and s["iqr"] == 1.0


def test_flop_count_of_a_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    flops, out = count_flops(lambda: a @ b)
    assert flops == 2 * 8 * 16 * 4 and out.shape == (8, 4)


def test_ratios_and_targets_from_section_results():
    def s(median):
        return {"median": median}

    results = {
        "per_image": {
            "seconds_per_image": {"sam_encoder": s(1.0), "mae_encoder": s(0.5), "head": s(0.06), "full": s(1.6)}
        },
        "training": {"batched": {"images_per_s": 9.0}, "naive_per_class": {"images_per_s": 3.0}},
        "memory": {"checkpoints": [{"slices": 100, "peak_rss_bytes": 100}, {"slices": 1000, "peak_rss_bytes": 102}]},
        "flops": {"encoder_fraction_of_matmul": 0.4},
    }
    ratios = compute_ratios(results)
    assert set(RATIO_KEYS) <= set(ratios)
    assert ratios["full_over_sam"] == pytest.approx(1.6)
    assert ratios["full_over_encoders"] == pytest.approx(1.6 / 1.5)
    assert ratios["head_over_encoders"] == pytest.approx(0.04)
    assert ratios["batched_over_naive_training"] == pytest.approx(3.0)
    assert ratios["memory_1000_over_100_slices"] == pytest.approx(1.02)
    targets = check_targets(ratios)
    assert all(t["met"] for t in targets.values())
    assert compute_ratios({})["full_over_sam"] is None


def test_cli_overrides_change_the_profile_only_where_given():
    args = build_parser().parse_args(["--profile", "full", "--out", "x", "--train-batch", "8", "--memory-slices", "2"])
    profile = get_profile(args.profile).with_overrides(train_batch=args.train_batch, memory_slices=args.memory_slices)
    assert profile.train_batch == 8 and profile.memory_slices == 2 and profile.sam_arch == "vit_b"
    with pytest.raises(ValueError, match="profile"):
        get_profile("huge")


@pytest.mark.slow
def test_tiny_profile_writes_every_figure(tmp_path, capsys):
    """The tiny profile end to end (about a minute on 2 CPU cores): fields only, never timings."""
    # one torch thread: on a shared 2-core machine two threads often wait for each other
    assert main(["--profile", "tiny", "--out", str(tmp_path), "--device", "cpu", "--threads", "1"]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(RATIO_KEYS) <= set(report["ratios"])
    for key in RATIO_KEYS:
        assert isinstance(report["ratios"][key], float) and report["ratios"][key] > 0, key
    assert report["random_weights"] is True and "RANDOM" in report["weights"]["sam_encoder"]
    per = report["per_image"]["seconds_per_image"]
    assert {"sam_encoder", "mae_encoder", "head", "full"} <= set(per)
    assert all(per[k]["n"] == report["profile"]["repeats"] for k in per)
    assert report["per_image"]["flops_per_image"]["sam_encoder"] > 0
    assert {"batched", "naive_per_class"} <= set(report["training"])
    assert report["training"]["batched"]["images_per_s"] > 0
    assert report["cache"]["images_per_s"] > 0
    assert [m["slices"] for m in report["memory"]["checkpoints"]] == [1, 10]  # N and 10 N of the tiny profile
    assert all(m["peak_rss_bytes"] > 0 for m in report["memory"]["checkpoints"])
    assert report["flops"]["matmul"]["float32"]["flops_per_s"] > 0
    assert 0 < report["flops"]["encoder_fraction_of_matmul"]
    assert set(report["targets"]) <= set(report["ratios"])
    assert any("1 and 10 slices" in note for note in report["notes"])
    markdown = (tmp_path / "benchmark.md").read_text()
    assert markdown == render_markdown(report)
    for key in RATIO_KEYS:
        assert f"`{key}`" in markdown
    assert "head_over_encoders" in capsys.readouterr().out

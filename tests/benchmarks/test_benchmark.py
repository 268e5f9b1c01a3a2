"""Tests of benchmarks: the report's fields, the naive reference loops, the measuring tools.

No test asserts a timing: the machines that run tests are shared and noisy.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import benchmarks.sam_check as sam_check_module
from benchmarks import RATIO_KEYS, get_profile
from benchmarks.cli import build_parser, main
from benchmarks.measure import count_flops, summarize, time_interleaved
from benchmarks.per_class_decoding import naive_decode, naive_forward_with_aux
from benchmarks.report import check_targets, compute_ratios, matmul_fractions, render_markdown
from benchmarks.run import encoder_parameters
from benchmarks.sam_check import main as sam_check_main
from benchmarks.sections import reference_sam_encoder
from scsam_monai.networks.build import build_scsam_head
from scsam_monai.networks.sam_attention import set_sam_attention
from scsam_monai.networks.scsam import ScSAMHead
from tests.helpers import tiny_encoder

G = 16


def _head() -> ScSAMHead:
    torch.manual_seed(0)
    return build_scsam_head(grid_size=G, canvas_size=4 * G).eval()


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
        "volume_pipeline": {"pipeline_over_model": 0.9},
    }
    ratios = compute_ratios(results)
    assert set(RATIO_KEYS) <= set(ratios)
    assert ratios["full_over_sam"] == pytest.approx(1.6)
    assert ratios["full_over_encoders"] == pytest.approx(1.6 / 1.5)
    assert ratios["head_over_encoders"] == pytest.approx(0.04)
    assert ratios["batched_over_naive_training"] == pytest.approx(3.0)
    assert ratios["memory_1000_over_100_slices"] == pytest.approx(1.02)
    assert ratios["pipeline_over_model"] == pytest.approx(0.9)
    targets = check_targets(ratios)
    assert all(t["met"] for t in targets.values())
    assert check_targets({**ratios, "pipeline_over_model": 0.8})["pipeline_over_model"]["met"] is False
    assert compute_ratios({})["full_over_sam"] is None


def test_encoder_speedup_and_matmul_fractions_use_each_encoders_dtype():
    def s(median):
        return {"median": median}

    seconds = {"sam_encoder": s(2.0), "sam_encoder_reference": s(6.0), "mae_encoder": s(1.0), "head": s(0.1)}
    flops = {"sam_encoder": 400.0, "mae_encoder": 50.0, "head": 5.0}
    matmul = {
        "float32": {"flops_per_s": 100.0},
        "bfloat16": {"flops_per_s": 400.0},
        "reference": "float32",
        "sam": "bfloat16",
    }
    fractions = matmul_fractions(flops, seconds, matmul)
    assert fractions["sam_fraction_of_matmul"] == pytest.approx(400 / 2 / 400)  # against the bf16 rate
    assert fractions["mae_fraction_of_matmul"] == pytest.approx(50 / 1 / 100)  # against the float32 rate
    # time at the rates of their dtypes over the time taken: (400/400 + 50/100) / (2 + 1)
    assert fractions["encoder_fraction_of_matmul"] == pytest.approx(1.5 / 3)
    assert fractions["sam_reference_fraction_of_float32_matmul"] == pytest.approx(400 / 6 / 100)
    same = matmul_fractions(flops, seconds, {**matmul, "sam": "float32"})
    assert same["encoder_fraction_of_matmul"] == pytest.approx(450 / 3 / 100)  # one dtype: FLOPs / time / rate
    ratios = compute_ratios({"per_image": {"seconds_per_image": seconds}, "flops": fractions})
    assert ratios["encoder_speedup_over_reference"] == pytest.approx(3.0)
    assert ratios["sam_fraction_of_matmul"] == pytest.approx(0.5)
    assert ratios["encoder_speedup_over_reference_amp"] is None  # no autocast reference timed
    cpu, gpu = check_targets(ratios, "cpu"), check_targets(ratios, "cuda")
    assert cpu["encoder_speedup_over_reference"]["met"] is True and "sam_fraction_of_matmul" not in cpu
    assert gpu["sam_fraction_of_matmul"]["met"] is True and "encoder_speedup_over_reference" not in gpu
    slower = compute_ratios({"per_image": {"seconds_per_image": {**seconds, "sam_encoder_reference": s(4.0)}}})
    assert check_targets(slower, "cpu")["encoder_speedup_over_reference"]["met"] is False  # 2.0 < 2.5


def test_reference_sam_encoder_is_segment_anythings_in_fp32_with_the_same_weights():
    encoder = tiny_encoder("sam", precision="bf16")
    reference = reference_sam_encoder(encoder)
    images = torch.rand(1, 1, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = reference(images)  # autocast switched off inside: float32 whatever the caller does
    with torch.no_grad():
        expected = set_sam_attention(copy.deepcopy(encoder.encoder), "reference")(encoder.preprocess(images))
        ours = encoder(images)
    assert torch.equal(out, expected)
    assert encoder.attention == "fused" and encoder.compute_dtype("cpu") == torch.bfloat16
    assert 0 < float((ours - out).norm() / out.norm()) < 0.02  # bf16: rounding only


def test_encoder_parameters_are_counted_on_the_meta_device_like_the_built_encoders():
    sam = tiny_encoder("sam")
    mae = tiny_encoder("mae")
    built = sum(p.numel() for encoder in (sam, mae) for p in encoder.parameters())
    assert encoder_parameters("tiny", "tiny") == built == 4_275_776
    # SAM vit_b's image encoder (89,670,912, as in sam_vit_b_01ec64.pth) + the paper's MAE ViT (25,483,776)
    assert encoder_parameters("vit_b", "mae_vit_512") == 89_670_912 + 25_483_776


def test_cli_overrides_change_the_profile_only_where_given():
    args = build_parser().parse_args(["--profile", "full", "--out", "x", "--train-batch", "8", "--memory-slices", "2"])
    profile = get_profile(args.profile).with_overrides(
        train_batch=args.train_batch, memory_slices=args.memory_slices, memory_slices_cpu=args.memory_slices
    )
    assert profile.train_batch == 8 and profile.memory_slices == profile.memory_slices_cpu == 2
    assert profile.sam_arch == "vit_b"
    full = get_profile("full")  # the volume pipeline: 100 / 1000 ViT-B slices on a GPU, 1 / 10 on a CPU
    assert (full.memory_slices, full.memory_slices_cpu) == (100, 1)
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
    pipe = report["volume_pipeline"]  # segment_inputs on a TIFF stack on disk against the model alone
    assert pipe["pipeline_over_model"] == report["ratios"]["pipeline_over_model"] > 0
    assert [r["slices"] for r in pipe["pipeline"]] == [1, 10] and pipe["image_normalization"] == "prepared"
    mae = report["mae_pretraining"]
    assert mae["arch"] == "tiny" and mae["crops_per_s"] > 0 and mae["data_crops_per_s"] > 0
    sam = report["per_image"]["sam_encoder"]
    assert sam["attention"] == "fused" and sam["dtype"] == report["environment"]["sam_dtype"]
    assert report["flops"]["matmul"][sam["dtype"]]["flops_per_s"] > 0  # the rate of the dtype the SAM encoder used
    assert "sam_encoder_reference" in per and "encoder_speedup_over_reference" in report["targets"]
    assert all(0 < v for v in report["per_image"]["cpu_busy_threads"].values())
    assert 0 < report["flops"]["encoder_fraction_of_matmul"]
    assert set(report["targets"]) <= set(report["ratios"])
    assert any("1 and 10 slices" in note for note in report["notes"])
    # the note on the tiny encoders states the sizes this run counted, not a fixed figure
    sizes = report["sizes"]
    assert sizes["encoder_parameters"] == encoder_parameters("tiny", "tiny")
    assert sizes["full_encoder_parameters"] == encoder_parameters("vit_b", "mae_vit_512")
    (note,) = [n for n in report["notes"] if n.startswith("Tiny encoders")]
    share = sizes["encoder_parameters"] / sizes["full_encoder_parameters"]
    assert f"{sizes['encoder_parameters']:,} parameters, {share:.1%} of the" in note, note
    flops = report["per_image"]["flops_per_image"]
    head_over_tiny = flops["head"] / (flops["sam_encoder"] + flops["mae_encoder"])
    assert f"({head_over_tiny:.2f} times their FLOPs per image in this run)" in note, note
    markdown = (tmp_path / "benchmark.md").read_text()
    assert markdown == render_markdown(report)
    for key in RATIO_KEYS:
        assert f"`{key}`" in markdown
    assert "head_over_encoders" in capsys.readouterr().out


def test_sam_check_compares_the_fast_paths_with_segment_anything(tmp_path, capsys, monkeypatch):
    """The GPU check's equality part on a CPU (tiny SAM, no compile): the same code the GPU runs, fields only."""
    args = ["--out", str(tmp_path), "--arch", "tiny", "--device", "cpu", "--batch", "1", "--repeats", "1"]
    assert sam_check_main([*args, "--no-compile", "--threads", "1"]) == 0
    report = json.loads((tmp_path / "sam_check.json").read_text())
    assert report["passed"] and report["checks"]["fused_fp32_vs_reference_fp32"]["rel_l2"] < 1e-4
    assert {"reference_fp32", "fused_fp32"} <= set(report["seconds_per_image"])
    assert report["speedup_over_reference"]["reference_fp32"] == pytest.approx(1.0)
    assert report["flops_per_image"] > 0 and report["sam_fraction_of_matmul"] > 0
    assert "PASS fused_fp32_vs_reference_fp32" in capsys.readouterr().out
    # a failed check makes the command fail and say so
    report["checks"]["fused_fp32_vs_reference_fp32"]["passed"] = report["passed"] = False
    monkeypatch.setattr(sam_check_module, "run_sam_check", lambda **kwargs: report)
    assert sam_check_main([*args, "--no-compile"]) == 1
    assert "FAIL fused_fp32_vs_reference_fp32" in capsys.readouterr().out

"""nnU-Net-style planning of DynUNet."""

from __future__ import annotations

import pytest
import torch

from scsam_monai.experiments.planning import plan_dynunet
from scsam_monai.experiments.supervised import nnunet_dynunet


def test_isotropic_patch_pools_down_to_the_smallest_feature_map():
    plan = plan_dynunet((128, 128))
    # 128 -> 64 -> 32 -> 16 -> 8 -> 4: five poolings, then the bottleneck
    assert plan["strides"] == [[1, 1]] + [[2, 2]] * 5
    assert plan["kernel_size"] == [[3, 3]] * 6
    assert plan["upsample_kernel_size"] == [[2, 2]] * 5
    assert plan["filters"] == [32, 64, 128, 256, 512, 512]  # doubled, capped at 512


def test_anisotropic_axis_waits_with_pooling_and_gets_flat_kernels():
    plan = plan_dynunet((64, 128), spacing=(8.0, 2.0))
    assert plan["kernel_size"][0] == [1, 3]  # the coarse axis is 4x the fine one
    assert plan["strides"][1] == [1, 2]  # only the fine axis is pooled first
    assert plan["strides"][2] == [2, 2]  # now within a factor 2: both


def test_pool_cap_and_non_square_sizes():
    plan = plan_dynunet((512, 256), max_pools=3, base_filters=8)
    assert plan["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2]]
    assert plan["filters"] == [8, 16, 32, 64]


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        plan_dynunet((18, 18))  # 18 -> 9, and 9 (>= 8) cannot be halved
    with pytest.raises(ValueError, match="differ in length"):
        plan_dynunet((32, 32), spacing=(1.0,))
    with pytest.raises(ValueError, match="positive"):
        plan_dynunet((0, 32))


def test_planned_dynunet_runs_and_keeps_the_size():
    net = nnunet_dynunet(patch_size=(32, 32), out_channels=4, base_filters=4).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 32)).shape == (1, 4, 32, 32)


def test_deep_supervision_outputs_are_weighted_in_training_and_absent_in_evaluation():
    from monai.losses import DiceCELoss

    from scsam_monai.experiments.supervised import StackedDeepSupervisionLoss

    net = nnunet_dynunet(patch_size=(64, 64), out_channels=4, base_filters=4)
    target = torch.randint(0, 4, (2, 1, 64, 64))
    stacked = net.train()(torch.rand(2, 1, 64, 64))
    assert stacked.shape == (2, 3, 4, 64, 64)  # full-size output + 2 deep-supervision heads
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = StackedDeepSupervisionLoss(base)
    expected = sum(w * base(stacked[:, i], target) for i, w in enumerate((1.0, 0.5, 0.25)))
    assert torch.allclose(loss(stacked, target), expected)
    with torch.no_grad():
        single = net.eval()(torch.rand(1, 1, 64, 64))
    assert single.shape == (1, 4, 64, 64)
    assert torch.allclose(loss(single, target[:1]), base(single, target[:1]))

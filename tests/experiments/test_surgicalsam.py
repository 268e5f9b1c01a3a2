"""SurgicalSAM-style head: SAM* without the aligner."""

from __future__ import annotations

import pytest
import torch

from scsam_monai.experiments.surgicalsam import SurgicalSAMHead
from scsam_monai.networks.scsam import ScSAMHead, count_trainable_parameters


def test_features_are_the_raw_sam_embedding_and_only_the_aligner_is_gone():
    head = SurgicalSAMHead(canvas_size=256, grid_size=16)
    sam_star = ScSAMHead(canvas_size=256, grid_size=16, streams="sam_only")
    embedding = torch.randn(2, 256, 16, 16)
    assert torch.equal(head.encode_features(embedding, None).features, embedding)
    aligner = count_trainable_parameters(sam_star.fusion)
    assert count_trainable_parameters(head) == count_trainable_parameters(sam_star) - aligner
    assert head(embedding, None).shape == (2, 3, 64, 64)


def test_needs_the_sam_stream():
    with pytest.raises(ValueError, match="sam_only"):
        SurgicalSAMHead(streams="both")
    with pytest.raises(ValueError, match="SAM embedding"):
        SurgicalSAMHead(canvas_size=256, grid_size=16)(None, torch.randn(1, 512, 16, 16))

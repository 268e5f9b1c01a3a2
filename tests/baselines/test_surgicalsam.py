"""SurgicalSAM head: SurgicalSAM's prototype prompt encoder and SAM's decoder on the raw SAM embedding."""

from __future__ import annotations

import pytest
import torch

from scsam_monai.baselines.surgicalsam import PrototypePromptEncoder, SurgicalSAMHead, build_surgicalsam_head
from scsam_monai.networks.build import build_scsam_head
from scsam_monai.networks.scsam import count_trainable_parameters


def _points(n=256):
    return {
        "positive_embedding": torch.randn(n),
        "negative_embedding": torch.randn(n),
        "no_mask_embedding": torch.randn(n),
    }


def test_class_activation_is_the_unnormalised_dot_product_with_the_prototype():
    torch.manual_seed(0)
    encoder = PrototypePromptEncoder(num_classes=2, feature_dim=8, grid_size=4, num_tokens=3)
    features = torch.randn(2, 8, 4, 4) * 3.0  # not unit norm: a cosine similarity would differ
    sim = encoder.similarity(features)
    expected = torch.stack([(features * p[None, :, None, None]).sum(1) for p in encoder.prototypes], dim=1)
    assert torch.allclose(sim, expected, atol=1e-5)
    activated = encoder.activate(features)  # (B, C, g*g, N) = V + V * S_k, nothing after it
    tokens = features.flatten(2).transpose(1, 2)
    for k in range(2):
        assert torch.allclose(activated[:, k], tokens + tokens * sim[:, k].flatten(1).unsqueeze(-1), atol=1e-5)


def test_dense_and_sparse_prompts_follow_surgicalsams_construction():
    torch.manual_seed(0)
    b, c, n, g, t = 2, 3, 8, 4, 2
    encoder = PrototypePromptEncoder(num_classes=c, feature_dim=n, grid_size=g, num_tokens=t, dense_hidden=4)
    features = torch.randn(b, n, g, g)
    points = _points(n)
    prompts = encoder(features, **points)
    activated = encoder.activate(features)
    # dense: two 1x1 convolutions of the prompted class's activated features, row b*C + k
    grid = activated[1, 2].T.reshape(1, n, g, g)
    dense = encoder.dense_fc_2(torch.relu(encoder.dense_fc_1(grid)))
    assert torch.allclose(prompts.dense[1 * c + 2], dense[0], atol=1e-5)
    # sparse: every class's T tokens; the positive embedding on the prompted class's, the negative on the others'
    tokens = encoder.sparse_fc_2(torch.relu(encoder.sparse_fc_1(activated[0].reshape(c, g * g, n))))  # (C, T, N)
    sparse = prompts.sparse[0 * c + 1].reshape(c, t, n)
    assert torch.allclose(sparse[1], tokens[1] + points["positive_embedding"], atol=1e-5)
    assert torch.allclose(sparse[0], tokens[0] + points["negative_embedding"], atol=1e-5)
    assert torch.allclose(sparse[2], tokens[2] + points["negative_embedding"], atol=1e-5)
    assert prompts.dense.shape == (b * c, n, g, g) and prompts.sparse.shape == (b * c, c * t, n)


def test_no_residual_mlp_and_what_trains():
    head = build_surgicalsam_head(canvas_size=256, grid_size=16)
    names = {name for name, _ in head.prompt_encoder.named_parameters()}
    assert names == {"prototypes", "dense_fc_1.weight", "dense_fc_1.bias", "dense_fc_2.weight", "dense_fc_2.bias",
                     "sparse_fc_1.weight", "sparse_fc_1.bias", "sparse_fc_2.weight", "sparse_fc_2.bias"}  # fmt: skip
    embedding = torch.randn(2, 256, 16, 16)
    label = torch.randint(0, 4, (2, 1, 64, 64))
    logits, aux = head(embedding, None, label=label)
    (logits.sum() + aux["prototypes"].sum()).backward()
    for name, parameter in head.prompt_encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # SurgicalSAM's point embeddings are frozen copies of SAM's (requires_grad=False, detached): no gradient
    for parameter in head.sam_prompt_encoder.parameters():
        assert not parameter.requires_grad and parameter.grad is None


def test_features_are_the_raw_sam_embedding_and_the_prompt_encoder_is_surgicalsams():
    head = build_surgicalsam_head({"fusion": "fafm", "streams": "sam_only"}, canvas_size=256, grid_size=16)
    sam_star = build_scsam_head({"streams": "sam_only"}, canvas_size=256, grid_size=16)
    assert isinstance(head, SurgicalSAMHead) and isinstance(head.prompt_encoder, PrototypePromptEncoder)
    embedding = torch.randn(2, 256, 16, 16)
    assert torch.equal(head.encode_features(embedding, None).features, embedding)
    assert count_trainable_parameters(head.fusion) == 0
    assert count_trainable_parameters(head.mask_decoder) == count_trainable_parameters(sam_star.mask_decoder)
    # prototypes C x N, dense 256->128->256 (1x1), sparse (g*g)->128->T over positions
    expected = 3 * 256 + (256 * 128 + 128) + (128 * 256 + 256) + (16 * 16 * 128 + 128) + (128 * 4 + 4)
    assert count_trainable_parameters(head.prompt_encoder) == expected
    assert head(embedding, None).shape == (2, 3, 64, 64)


def test_refuses_what_surgicalsam_does_not_have():
    with pytest.raises(ValueError, match="streams='sam_only'"):
        build_surgicalsam_head({"streams": "both"})
    with pytest.raises(ValueError, match="residual=True"):
        build_surgicalsam_head(canvas_size=256, grid_size=16, residual=False)
    with pytest.raises(ValueError, match="unknown switch 'fussion'"):
        build_surgicalsam_head({"fussion": "concat"})
    with pytest.raises(ValueError, match="SAM embedding"):
        build_surgicalsam_head(canvas_size=256, grid_size=16)(None, torch.randn(1, 512, 16, 16))

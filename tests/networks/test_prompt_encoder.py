"""Tests of scsam_monai.networks.prompt_encoder."""

from __future__ import annotations

import pytest
import torch

from scsam_monai.networks.prompt_encoder import ClassPromptEncoder

N, G, C, T = 32, 8, 3, 2


def _encode(encoder: ClassPromptEncoder, features: torch.Tensor):
    pos, neg, no_mask = torch.ones(N), -torch.ones(N), torch.full((N,), 0.5)
    return encoder(features, positive_embedding=pos, negative_embedding=neg, no_mask_embedding=no_mask)


def _encoder(**kwargs) -> ClassPromptEncoder:
    torch.manual_seed(0)
    return ClassPromptEncoder(num_classes=C, feature_dim=N, grid_size=G, num_tokens=T, **kwargs)


def test_prompt_shapes_image_major_rows():
    out = _encode(_encoder(), torch.randn(2, N, G, G))
    assert out.dense.shape == (2 * C, N, G, G)
    assert out.sparse.shape == (2 * C, C * T, N)
    assert out.similarity.shape == (2, C, G, G)


def test_similarity_is_cosine():
    encoder = _encoder()
    features = torch.randn(1, N, G, G)
    sim = encoder.similarity(features)
    f = features[0, :, 3, 5]
    p = encoder.prototypes[1]
    expected = torch.dot(f, p) / (f.norm() * p.norm())
    torch.testing.assert_close(sim[0, 1, 3, 5], expected)
    assert sim.abs().max() <= 1 + 1e-5


def test_positive_embedding_marks_the_prompted_class_tokens():
    """Row b*C+k: class k's tokens carry +pos, the others -> neg; so rows differ by exactly 2 at swapped blocks."""
    out = _encode(_encoder(), torch.randn(1, N, G, G))
    sparse = out.sparse.reshape(C, C, T, N)  # (prompted k, class j, token, N)
    # prompted class 0 vs prompted class 1: class-0 tokens differ by pos - neg = +2, class-1 tokens by -2
    torch.testing.assert_close(sparse[0, 0] - sparse[1, 0], torch.full((T, N), 2.0))
    torch.testing.assert_close(sparse[0, 1] - sparse[1, 1], torch.full((T, N), -2.0))
    torch.testing.assert_close(sparse[0, 2], sparse[1, 2])


def test_dense_only_and_sparse_only_modes():
    features = torch.randn(1, N, G, G)
    dense_only = _encode(_encoder(prompts="dense"), features)
    assert dense_only.sparse.shape == (C, 0, N)
    sparse_only = _encode(_encoder(prompts="sparse"), features)
    torch.testing.assert_close(sparse_only.dense, torch.full((C, N, G, G), 0.5))
    with pytest.raises(ValueError, match="prompts"):
        _encoder(prompts="boxes")


def test_residual_switch_changes_class_activation():
    features = torch.randn(1, N, G, G)
    with_res = _encode(_encoder(residual=True), features).dense
    without = _encode(_encoder(residual=False), features).dense
    assert not torch.allclose(with_res, without)


def test_gradients_reach_prototypes_and_heads():
    encoder = _encoder()
    out = _encode(encoder, torch.randn(2, N, G, G))
    (out.dense.square().mean() + out.sparse.square().mean()).backward()
    assert encoder.prototypes.grad.abs().sum() > 0
    assert encoder.sparse_head[0].weight.grad.abs().sum() > 0
    assert encoder.dense_head[0].weight.grad.abs().sum() > 0


def test_wrong_grid_is_refused():
    with pytest.raises(ValueError, match="8x8"):
        _encode(_encoder(), torch.randn(1, N, 4, 4))

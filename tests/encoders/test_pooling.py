"""Attention-MIL and mean pooling on real tile features of one TCGA slide (tests/fixtures/mil)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from biossl.encoders.pooling import GatedAttentionMIL, MeanPool, build_pooling
from biossl.errors import InputError


@pytest.fixture(scope="module")
def bags(fixtures: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Three padded bags of K=16 real 512-d tile features: full, 10 real + padding, empty."""
    feats = torch.from_numpy(np.load(fixtures / "mil" / "tcga_ad_6964_feats32.npy"))
    x = torch.stack([feats[:16], feats[16:32], feats[8:24]])
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0] = True
    mask[1, :10] = True
    return x, mask


def poolers(out_dim: int | None = None) -> list[GatedAttentionMIL | MeanPool]:
    torch.manual_seed(0)
    return [GatedAttentionMIL(512, out_dim=out_dim, hidden_dim=32), MeanPool(512, out_dim=out_dim)]


@pytest.mark.parametrize("out_dim", [None, 24])
def test_padding_has_zero_weight_and_cannot_leak(
    bags: tuple[torch.Tensor, torch.Tensor], out_dim: int | None
) -> None:
    x, mask = bags
    for pool in poolers(out_dim):
        pooled, weights = pool(x, mask)
        assert pooled.shape == (3, pool.out_dim) and weights.shape == (3, 16)
        assert torch.all(weights[~mask] == 0)
        assert torch.allclose(weights[:2].sum(dim=1), torch.ones(2))
        garbage = x.clone()
        garbage[~mask] = float("nan")
        again, _ = pool(garbage, mask)
        assert torch.equal(again, pooled)
        # Padding is invisible: bag 1 pooled alone, unpadded, gives the same embedding.
        alone, _ = pool(x[1:2, :10], mask[1:2, :10])
        assert torch.allclose(alone, pooled[1:2], atol=1e-6)


def test_all_padding_bag_gives_zeros_and_finite_gradients(bags: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = bags
    for pool in poolers(out_dim=24):
        inputs = x.clone().requires_grad_(True)
        pooled, weights = pool(inputs, mask)
        assert torch.all(pooled[2] == 0) and torch.all(weights[2] == 0)
        pooled.sum().backward()
        assert inputs.grad is not None and torch.isfinite(inputs.grad).all()
        assert torch.all(inputs.grad[2] == 0) and inputs.grad[0].abs().sum() > 0
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in pool.parameters())


def test_permutation_invariance(bags: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = bags
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(2))
    for pool in poolers():
        pooled, weights = pool(x, mask)
        pooled_p, weights_p = pool(x[:, perm], mask[:, perm])
        assert torch.allclose(pooled_p, pooled, atol=1e-6)
        assert torch.allclose(weights_p, weights[:, perm])


def test_gated_attention_formula_and_mean(bags: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = bags
    attention, mean = poolers()
    assert isinstance(attention, GatedAttentionMIL)
    h = x[1, :10]
    with torch.no_grad():
        score = attention.attn_w(torch.tanh(attention.attn_v(h)) * torch.sigmoid(attention.attn_u(h)))
        a = torch.softmax(score.squeeze(-1), dim=0)
        pooled, weights = attention(x, mask)
    assert torch.allclose(weights[1, :10], a, atol=1e-6)
    assert torch.allclose(pooled[1], a @ h, atol=1e-5)
    assert not torch.allclose(weights[1, :10], torch.full((10,), 0.1))  # attention is not uniform
    mean_pooled, _ = mean(x, mask)
    assert torch.allclose(mean_pooled[:2], torch.stack([x[0].mean(0), h.mean(0)]), atol=1e-6)


def test_bad_inputs_rejected(bags: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = bags
    with pytest.raises(ValueError, match="mask"):
        MeanPool(512)(x, mask[:, :3])
    with pytest.raises(InputError, match="unknown pooling"):
        build_pooling("max", 512)
    assert isinstance(build_pooling("attention", 512), GatedAttentionMIL)

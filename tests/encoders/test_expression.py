"""Expression models on real scaled PBMC values (scanpy's bundled pbmc68k_reduced)."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch

from biossl.encoders import ENCODERS

NAMES = ["expression/transformer", "expression/mlp"]


@pytest.fixture(scope="module")
def pbmc() -> torch.Tensor:
    adata = sc.datasets.pbmc68k_reduced()  # 700 cells x 765 genes, ships inside scanpy
    return torch.from_numpy(np.asarray(adata.X[:32, :96], dtype=np.float32))


def _mask(x: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(x.shape, generator=gen) > 0.3


@pytest.mark.parametrize("name", NAMES)
def test_unobserved_genes_do_not_change_embed(name: str, pbmc: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = ENCODERS.build(name, n_genes=96, embed_dim=32).eval()
    gm = _mask(pbmc)
    with torch.no_grad():
        a = model.embed(pbmc, gene_mask=gm)
        other = pbmc.masked_fill(~gm, float("nan"))
        b = model.embed(other, gene_mask=gm)
        c = model.embed(pbmc + (~gm) * 10.0, gene_mask=gm)
        d = model.embed(pbmc + gm * 1.0, gene_mask=gm)
    assert a.shape == (32, 32) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, d)


@pytest.mark.parametrize("name", NAMES)
def test_masked_loss_ignores_unobserved_and_learns(name: str, pbmc: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = ENCODERS.build(name, n_genes=96, embed_dim=32, mask_ratio=0.25)
    gm = _mask(pbmc)
    torch.manual_seed(5)
    before = model.masked_loss(pbmc, gene_mask=gm)
    torch.manual_seed(5)
    again = model.masked_loss(pbmc + (~gm) * 100.0, gene_mask=gm)
    assert torch.isfinite(before) and before.item() > 0
    assert again.item() == pytest.approx(before.item(), rel=1e-5)
    before.backward()
    first = next(model.encoder.parameters()) if name.endswith("mlp") else model.gene_embedding.weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(25):
        opt.zero_grad()
        model.masked_loss(pbmc, gene_mask=gm).backward()
        opt.step()
    torch.manual_seed(5)
    after = model.masked_loss(pbmc, gene_mask=gm)
    assert after.item() < 0.8 * before.item(), (before.item(), after.item())


def test_shape_errors() -> None:
    model = ENCODERS.build("expression/transformer", n_genes=10)
    with pytest.raises(ValueError, match="n_genes=10"):
        model.embed(torch.zeros(2, 12))
    with pytest.raises(ValueError, match="gene_mask shape"):
        model.embed(torch.zeros(2, 10), gene_mask=torch.ones(2, 9, dtype=torch.bool))

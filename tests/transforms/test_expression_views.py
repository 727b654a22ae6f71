from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from biossl.errors import InputError
from biossl.transforms import make_views
from biossl.transforms.expression_views import (
    ComposeExpression,
    GaussianNoise,
    GeneDropout,
    LibrarySizeScale,
    space_for_transform,
)


@pytest.fixture(scope="module")
def zscores(fixtures: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Real TCGA-KIRC z-scores (20 x 200) with every 7th gene of odd rows unobserved (NaN)."""
    df = pd.read_csv(fixtures / "expression" / "tcga_kirc_extract.csv")
    x = torch.tensor(df.filter(like="_rnaseq").to_numpy(dtype=np.float32))
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1::2, ::7] = False
    return x.masked_fill(~mask, float("nan")), mask


@pytest.fixture(scope="module")
def counts(fixtures: Path) -> np.ndarray:
    """Real raw UMI counts of 150 PBMCs x 765 genes."""
    adata = ad.read_h5ad(fixtures / "expression" / "pbmc68k_counts.h5ad")
    return np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X, dtype=np.float64)


def _seed(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(s)


def _same_unobserved(out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, out_mask: torch.Tensor) -> None:
    assert bool(torch.isnan(out[~mask]).all())  # NaN values of unobserved genes stay as they were
    assert not bool((out_mask & ~mask).any())  # no unobserved gene becomes observed


@pytest.mark.parametrize(
    "view",
    [GeneDropout(), GaussianNoise(p=1.0), LibrarySizeScale(space="log1p", p=1.0)],
    ids=lambda v: type(v).__name__,
)
def test_views_never_touch_unobserved_genes(view: torch.nn.Module, zscores: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = zscores
    data = x.abs() if isinstance(view, LibrarySizeScale) else x  # log counts are >= 0
    out, out_mask = view(data, mask, _seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out_mask.dtype == torch.bool
    _same_unobserved(out, data, mask, out_mask)
    assert not torch.equal(out[mask], data[mask])
    again, _ = view(data, mask, _seed(0))
    assert torch.equal(torch.nan_to_num(again), torch.nan_to_num(out))


def test_gene_dropout_zeroes_and_marks(zscores: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = zscores
    out, out_mask = GeneDropout(rate=0.3)(x, mask, _seed(1))
    dropped = mask & ~out_mask
    assert 0.2 < float(dropped.sum() / mask.sum()) < 0.4
    assert bool((out[dropped] == 0).all())
    kept = out_mask
    assert torch.equal(out[kept], x[kept])
    unmarked, same_mask = GeneDropout(rate=0.3, mark=False)(x, mask, _seed(1))
    assert torch.equal(same_mask, mask) and bool((unmarked[dropped] == 0).all())


def test_library_scaling_is_exact_depth_change_on_real_counts(counts: np.ndarray) -> None:
    depth = counts.sum(1, keepdims=True)
    y = torch.tensor(np.log1p(counts / depth * 1e4), dtype=torch.float64)
    mask = torch.ones_like(y, dtype=torch.bool)
    out, _ = LibrarySizeScale(max_fold=2.0, space="log1p", p=1.0)(y, mask, _seed(2))
    zero = y == 0
    assert bool((out[zero] == 0).all())  # a gene with no reads stays without reads
    factor = torch.expm1(out) / torch.expm1(y)  # every expressed gene of a cell scales by one c
    factor = torch.where(zero, torch.nan, factor)
    c = torch.nanmean(factor, dim=1, keepdim=True)
    assert float(torch.nan_to_num(factor - c).abs().max()) < 1e-6
    assert float(c.min()) >= 0.5 - 1e-9 and float(c.max()) <= 2.0 + 1e-9 and float(c.std()) > 0.1
    # log2(1 + x) tables follow the same depth change
    y2 = torch.log2(1 + torch.tensor(counts))
    out2, _ = LibrarySizeScale(max_fold=2.0, space="log2p", p=1.0)(y2, mask, _seed(2))
    c2 = (torch.exp2(out2) - 1) / (torch.exp2(y2) - 1)
    assert torch.allclose(torch.nanmean(c2, dim=1, keepdim=True), c, atol=1e-6)


def test_zscore_space_has_no_library_scaling(zscores: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(InputError, match="z-scored"):
        LibrarySizeScale(space="zscore")
    views = make_views("expression", "strong")
    assert isinstance(views, ComposeExpression)
    assert not any(isinstance(v, LibrarySizeScale) for v in views.views)
    log_views = make_views("expression", space="log1p")
    assert isinstance(log_views, ComposeExpression)
    assert any(isinstance(v, LibrarySizeScale) for v in log_views.views)
    assert space_for_transform("normalize_total(1e4)+log1p") == "log1p"
    assert space_for_transform("none") == "zscore"
    x, mask = zscores
    out, out_mask = views(x.view(4, 5, 200), mask.view(4, 5, 200), _seed(3))  # bag layout
    assert out.shape == (4, 5, 200)
    _same_unobserved(out.view(20, 200), x, mask, out_mask.view(20, 200))


def test_make_views_expression_two_views_differ(zscores: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = zscores
    views = make_views("expression")
    (_, ma), (_, mb) = views(x, mask), views(x, mask)
    assert not torch.equal(ma, mb)
    none, none_mask = make_views("expression", "none")(x, mask)
    assert torch.equal(none_mask, mask) and torch.equal(torch.nan_to_num(none), torch.nan_to_num(x))
    with pytest.raises(InputError, match="value space"):
        make_views("expression", space="counts")

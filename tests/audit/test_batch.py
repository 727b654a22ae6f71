"""Batch-mixing metrics: silhouette, iLISI-style mixing and the robustness index.

Hand-checked small cases, then real data (scanpy's bundled ``pbmc68k_reduced``): its louvain clusters
used as a "batch" are the worst possible mixing, random pseudo-sites the best.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from biossl.audit.batch import ilisi, robustness_index, silhouette_by_batch
from biossl.audit.probes import neighbours, prepare_column


@pytest.fixture(scope="module")
def pbmc() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PCA(16) of the 700 cells, louvain cluster, cell type)."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    x = np.asarray(adata.X, dtype=np.float64)
    xc = x - x.mean(axis=0)
    emb = xc @ np.linalg.svd(xc, full_matrices=False)[2][:16].T
    return emb, adata.obs["louvain"].astype(str).to_numpy(), adata.obs["bulk_labels"].astype(str).to_numpy()


def test_inverse_simpson_by_hand() -> None:
    # 4 patients, batches a a b b; neighbour lists given by hand (k = 2).
    col = prepare_column(np.array(["a", "a", "b", "b"], dtype=object), np.array(["p0", "p1", "p2", "p3"]),
                         column="batch", min_groups=2)
    idx = np.array([[1, 2], [0, 3], [0, 3], [2, 1]])
    res = ilisi(idx, col, n_random=20)
    # Row 0 sees a,b -> 1/(0.25+0.25) = 2; row 1 sees a,b -> 2; row 2 sees a,b -> 2; row 3 sees b,a -> 2.
    assert res["ilisi"] == pytest.approx(2.0) and res["ilisi_norm"] == pytest.approx(1.0)
    same = np.array([[1, 1], [0, 0], [3, 3], [2, 2]])  # each row sees only its own batch: no mixing
    res = ilisi(same, col, n_random=20)
    assert res["ilisi"] == pytest.approx(1.0) and res["ilisi_norm"] == pytest.approx(0.0)
    assert 1.0 <= res["ilisi_random"] <= 2.0 and res["n_batches"] == 2 and res["k"] == 2


def test_silhouette_is_sklearns_cosine_silhouette_and_nan_for_one_batch(pbmc: tuple) -> None:
    emb, louvain, _ = pbmc
    centred = emb - emb.mean(0)
    assert silhouette_by_batch(emb, louvain) == pytest.approx(silhouette_score(centred, louvain, metric="cosine"))
    assert np.isnan(silhouette_by_batch(emb, np.zeros(len(emb))))
    sub = silhouette_by_batch(emb, louvain, max_rows=300, seed=1)
    assert sub == pytest.approx(silhouette_score(centred, louvain, metric="cosine", sample_size=300, random_state=1))


def test_clustered_batches_mix_worse_than_random_ones(pbmc: tuple) -> None:
    emb, louvain, _ = pbmc
    cells = np.array([f"c{i}" for i in range(len(emb))])
    clustered = prepare_column(louvain, cells, column="louvain", min_groups=5)
    idx = neighbours(emb[clustered.rows], clustered.groups, 15)
    bad = ilisi(idx, clustered, n_random=20)
    assert bad["ilisi"] < 1.5 and bad["ilisi_ratio"] < 0.3  # louvain clusters are the neighbourhoods
    assert silhouette_by_batch(emb[clustered.rows], clustered.codes) > 0.1
    random = prepare_column(np.random.default_rng(0).integers(0, 3, len(emb)).astype(str), cells, column="site",
                            min_groups=5)
    good = ilisi(neighbours(emb, random.groups, 15), random, n_random=20)
    assert good["ilisi_ratio"] == pytest.approx(1.0, abs=0.05) and good["ilisi_norm"] > 0.7
    assert abs(silhouette_by_batch(emb, random.codes)) < 0.02


def test_robustness_index_by_hand_and_on_real_cells(pbmc: tuple) -> None:
    idx = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    label = np.array([0, 0, 1, 1])
    batch = np.array([0, 1, 0, 1])
    r = robustness_index(idx, label, batch)
    # Label shares: row0 (1:0 yes, 2:1 no) 1/2, row1 1/2, row2 1/2, row3 1/2 -> 0.5; expected 0.5 -> kappa 0.
    # Batch shares: row0 (1:1 no, 2:0 yes) 1/2, ... -> 0.5 -> kappa 0.
    assert r["label_share"] == pytest.approx(0.5) and r["kappa_label"] == pytest.approx(0.0)
    assert r["robustness"] == pytest.approx(0.0)
    r = robustness_index(np.array([[1], [0], [3], [2]]), label, batch)  # neighbours share the label, never the batch
    assert r["kappa_label"] == pytest.approx(1.0) and r["kappa_batch"] == pytest.approx(-1.0)
    assert r["robustness"] == pytest.approx(2.0)
    # Missing values (-1) are skipped as queries.
    assert robustness_index(np.array([[1], [0], [3], [2]]), np.array([0, 0, -1, 1]), batch)["n_rows"] == 3

    emb, _, celltype = pbmc
    codes = np.unique(celltype, return_inverse=True)[1]
    site = np.random.default_rng(0).integers(0, 3, len(emb))
    idx = neighbours(emb, np.arange(len(emb)), 15)
    real = robustness_index(idx, codes, site)
    assert real["kappa_label"] > 0.4 and abs(real["kappa_batch"]) < 0.05 and real["robustness"] > 0.4

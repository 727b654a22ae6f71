"""Known-answer tests of the audit on real expression profiles (issue 6, validity).

Data: scanpy's bundled ``pbmc68k_reduced`` (700 real PBMC profiles x 765 genes; no network). Cells are
dealt into 140 pseudo-donors (the patients the audit groups by), donors into 3 pseudo-sites at random in
each repeat: without a signature the site is unrelated to the profiles. The signature adds ``delta`` x
the gene's sd to a fresh random set of 50 genes in every cell of site 0. Embeddings: PCA(16) fitted on
the cohort (seeded randomized SVD), which a user could audit exactly so. Every repeat uses its own
seed, so the measured rates are deterministic; ``benchmarks/audit_known_answer.py`` runs the power
curve with more repeats.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta
from sklearn.utils.extmath import randomized_svd

from biossl.audit.run import audit_embeddings

ALPHA, REPEATS, B, DELTA, GENES = 0.05, 100, 199, 0.5, 50
N_DONORS, N_SITES = 140, 3


@pytest.fixture(scope="module")
def pbmc() -> tuple[np.ndarray, np.ndarray]:
    import scanpy as sc

    x = np.asarray(sc.datasets.pbmc68k_reduced().X, dtype=np.float64)
    donor = np.random.default_rng(12345).permutation(len(x)) % N_DONORS
    return x, donor


def _pca(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=0)
    return xc @ randomized_svd(xc, 16, n_iter=4, random_state=0)[2].T


def _cohort(x: np.ndarray, donor: np.ndarray, delta: float, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([repeat, 7])
    site = (rng.permutation(N_DONORS) % N_SITES)[donor]
    genes = rng.choice(x.shape[1], GENES, replace=False)
    out = x.copy()
    out[np.ix_(site == 0, genes)] += delta * x[:, genes].std(axis=0)
    return out, site


def _audit(emb: np.ndarray, site: np.ndarray, donor: np.ndarray, repeat: int) -> dict:
    obs = pd.DataFrame({"site": [f"site_{s}" for s in site], "donor": [f"D{d:03d}" for d in donor]},
                       index=[f"cell{i}" for i in range(len(site))])
    adata = ad.AnnData(X=np.zeros((len(site), 1), dtype=np.float32), obs=obs)
    adata.obsm["X_fused"] = emb
    return audit_embeddings(adata, ["site"], group_column="donor", n_permutations=B, seed=repeat, alpha=ALPHA)


def _interval(k: int, n: int) -> tuple[float, float]:
    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return lo, hi


def test_false_positive_rate_without_a_signature_is_at_most_alpha(pbmc: tuple[np.ndarray, np.ndarray]) -> None:
    x, donor = pbmc
    emb = _pca(x)  # no signature: the same embedding every repeat, only the sites change
    logging.disable(logging.WARNING)
    try:
        results = [_audit(emb, _cohort(x, donor, 0.0, r)[1], donor, r) for r in range(REPEATS)]
    finally:
        logging.disable(logging.NOTSET)
    flagged = sum(r["verdict"] == "fail" for r in results)
    entries = [r["keys"][0]["columns"]["site"] for r in results]
    significant = sum(e["p_bonferroni"] < ALPHA for e in entries)
    p_linear = np.array([e["linear"]["p_value"] for e in entries])
    lo, hi = _interval(significant, REPEATS)
    print(f"\nFPR over {REPEATS} signature-free repeats: verdict fail {flagged}/{REPEATS}, Bonferroni p < {ALPHA} "
          f"{significant}/{REPEATS} (95% CI {lo:.3f}-{hi:.3f}); mean linear p {p_linear.mean():.3f}")
    assert flagged / REPEATS <= ALPHA
    assert significant / REPEATS <= ALPHA
    # The exact permutation p-value is uniform under the null: its mean is near 1/2, not piled up near 0.
    assert 0.4 < p_linear.mean() < 0.65  # ties and the +1 make it slightly conservative (above 1/2)
    assert (p_linear < ALPHA).mean() <= 2 * ALPHA
    # Chance is what the probes score without a signature.
    ba = np.array([e["linear"]["balanced_accuracy"] for e in entries])
    assert abs(ba.mean() - 1 / N_SITES) < 0.03


def test_power_at_the_chosen_effect_size_is_at_least_095(pbmc: tuple[np.ndarray, np.ndarray]) -> None:
    x, donor = pbmc
    logging.disable(logging.WARNING)
    try:
        results = []
        for r in range(REPEATS):
            profiles, site = _cohort(x, donor, DELTA, r)
            results.append(_audit(_pca(profiles), site, donor, r))
    finally:
        logging.disable(logging.NOTSET)
    flagged = sum(r["verdict"] == "fail" for r in results)
    lo, hi = _interval(flagged, REPEATS)
    excess = np.mean([r["keys"][0]["columns"]["site"]["max_excess"] for r in results])
    print(f"\npower at delta {DELTA} sd on {GENES} genes: {flagged}/{REPEATS} (95% CI {lo:.3f}-{hi:.3f}); "
          f"mean excess over chance {excess:.3f}")
    assert flagged / REPEATS >= 0.95

"""Known-answer protocol of the audit: its power and false-positive rate on real profiles with a planted site.

Data: scanpy's bundled ``pbmc68k_reduced`` (700 real PBMC profiles x 765 genes, scaled; no network),
:func:`load_pbmc`. The cells are dealt at random (numpy generator seeded 12345) into
:data:`N_DONORS` = 140 pseudo-donors of 5 cells, the patients the audit groups by. Each **repeat**
``r`` (numpy generator seeded ``(r, 7)``, :func:`pseudo_sites`) deals the donors at random into
:data:`N_SITES` = 3 pseudo-sites, so without a signature the site is unrelated to the profiles (the
null), and plants the site signature: ``delta`` x the gene's sd (over all cells) added to a fresh
random set of ``n_genes`` genes in every cell of site 0.

Embeddings (both PCA(16) by sklearn's randomized SVD, 4 power iterations, seed 0: deterministic):

- ``"fixed"``: a frozen linear encoder, the PCA loadings fitted once on the signature-free profiles
  and applied to every perturbed cohort (as a pretrained encoder would be);
- ``"refit"``: PCA fitted on each perturbed cohort (what a user auditing PCA embeddings would run).

Each repeat runs :func:`biossl.audit.run.audit_embeddings` on the ``site`` column (``group_column``
the donor, seed ``r``). :func:`known_answer` returns the verdicts and the site entries of every repeat:
"flagged" = the audit's verdict is fail; "significant" = the Bonferroni p-value alone is below
``alpha``. At ``delta = 0`` both are false-positive rates; :func:`clopper_pearson` gives their exact
binomial intervals. ``benchmarks/audit_known_answer.py`` prints the power curve and
``tests/audit/test_known_answer.py`` checks the rate at ``delta = 0`` and the power at one effect size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from biossl.audit.run import FAIL, audit_embeddings

N_DONORS, N_SITES, DIM = 140, 3, 16
#: Seed of the cells' deal into pseudo-donors.
DONOR_SEED = 12345
Embedding = Literal["fixed", "refit"]


def load_pbmc() -> tuple[np.ndarray, np.ndarray]:
    """(profiles ``[700, 765]`` float64, pseudo-donor index per cell) of scanpy's ``pbmc68k_reduced``."""
    import scanpy as sc

    x = np.asarray(sc.datasets.pbmc68k_reduced().X, dtype=np.float64)
    donor = np.random.default_rng(DONOR_SEED).permutation(len(x)) % N_DONORS
    return x, donor


def pca_basis(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, ``[genes, 16]`` loadings): randomized PCA with a fixed seed (deterministic)."""
    from sklearn.utils.extmath import randomized_svd

    mu = x.mean(axis=0)
    return mu, randomized_svd(x - mu, DIM, n_iter=4, random_state=0)[2].T


def pseudo_sites(x: np.ndarray, donor: np.ndarray, delta: float, n_genes: int, repeat: int,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(profiles with the signature of site 0, site index per cell) of one repeat."""
    rng = np.random.default_rng([repeat, 7])
    site = (rng.permutation(N_DONORS) % N_SITES)[donor]
    genes = rng.choice(x.shape[1], n_genes, replace=False)
    out = x.copy()
    out[np.ix_(site == 0, genes)] += delta * x[:, genes].std(axis=0)
    return out, site


def audit_sites(emb: np.ndarray, site: np.ndarray, donor: np.ndarray, *, seed: int, n_permutations: int,
                alpha: float = 0.05) -> dict[str, Any]:
    """:func:`~biossl.audit.run.audit_embeddings` of ``emb`` (as ``X_fused``) on ``site``, grouped by donor."""
    obs = pd.DataFrame({"site": [f"site_{s}" for s in site], "donor": [f"D{d:03d}" for d in donor]},
                       index=[f"cell{i}" for i in range(len(site))])
    adata = ad.AnnData(X=np.zeros((len(site), 1), dtype=np.float32), obs=obs)
    adata.obsm["X_fused"] = emb
    return audit_embeddings(adata, ["site"], group_column="donor", n_permutations=n_permutations, seed=seed,
                            alpha=alpha)


@dataclass
class KnownAnswer:
    """Outcome of :func:`known_answer`: counts over the repeats and every repeat's ``site`` entry."""

    embedding: str
    delta: float
    repeats: int
    alpha: float
    flagged: int = 0
    significant: int = 0
    seconds: float = 0.0
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def flagged_rate(self) -> float:
        """Share of repeats whose verdict is fail (power; the false-positive rate at ``delta = 0``)."""
        return self.flagged / self.repeats

    @property
    def significant_rate(self) -> float:
        """Share of repeats whose Bonferroni p-value is below ``alpha``."""
        return self.significant / self.repeats

    def mean(self, probe: str, value: str = "balanced_accuracy") -> float:
        """Mean over repeats of one probe's value (``linear`` / ``knn``; e.g. ``p_value``)."""
        return float(np.mean([e[probe][value] for e in self.entries]))


def known_answer(x: np.ndarray, donor: np.ndarray, *, delta: float, embedding: Embedding = "fixed",
                 repeats: int = 200, n_permutations: int = 199, n_genes: int = 50, alpha: float = 0.05,
                 basis: tuple[np.ndarray, np.ndarray] | None = None) -> KnownAnswer:
    """Audit ``repeats`` pseudo-site cohorts with a signature of ``delta`` sd (see the module docstring).

    Args:
        x: Profiles ``[cells, genes]`` (:func:`load_pbmc`).
        donor: Pseudo-donor index per cell.
        delta: Signature size in gene sd (0: the null).
        embedding: ``"fixed"`` (PCA of the signature-free profiles) or ``"refit"`` (PCA of each cohort).
        repeats: Cohorts audited, seeds ``0 .. repeats - 1``.
        n_permutations: Permutations of each p-value.
        n_genes: Genes carrying the signature.
        alpha: Significance level of the audit.
        basis: :func:`pca_basis` of ``x`` for ``"fixed"``, when already computed.

    Raises:
        ValueError: an unknown ``embedding``.
    """
    if embedding not in ("fixed", "refit"):
        raise ValueError(f"embedding must be 'fixed' or 'refit'; got {embedding!r}")
    fixed = (basis or pca_basis(x)) if embedding == "fixed" else None
    out = KnownAnswer(embedding=embedding, delta=float(delta), repeats=repeats, alpha=alpha)
    t0 = time.perf_counter()
    for r in range(repeats):
        profiles, site = pseudo_sites(x, donor, delta, n_genes, r)
        mu, loadings = fixed or pca_basis(profiles)
        emb = (profiles - mu) @ loadings
        res = audit_sites(emb, site, donor, seed=r, n_permutations=n_permutations, alpha=alpha)
        entry = res["keys"][0]["columns"]["site"]
        out.flagged += res["verdict"] == FAIL
        out.significant += entry["p_bonferroni"] < alpha
        out.entries.append(entry)
    out.seconds = time.perf_counter() - t0
    return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) ``level`` interval of a binomial rate ``k / n``."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


__all__ = ["DIM", "N_DONORS", "N_SITES", "KnownAnswer", "audit_sites", "clopper_pearson", "known_answer",
           "load_pbmc", "pca_basis", "pseudo_sites"]

"""Known-answer benchmark of ``biossl audit``: power and false-positive rate on real expression profiles.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit_known_answer.py [--repeats 200] [--permutations 199]
        [--deltas 0,0.2,0.3,0.4,0.5,0.75] [--genes 50] [--embedding fixed,refit]

Data: scanpy's ``pbmc68k_reduced`` (700 real PBMC profiles x 765 genes, scaled; ships with scanpy, no
network). The cells are dealt at random into 140 pseudo-donors of 5 cells (the patients: the audit groups
by them), and in each repeat the donors are dealt at random into 3 pseudo-sites, so without a signature
the site is unrelated to the profiles (the null). The site signature: ``delta`` x the gene's sd added to a
fresh random set of ``--genes`` genes in every cell of site 0. Each repeat draws new sites and genes.

Embeddings:
- ``fixed``: a frozen linear encoder, PCA(16) loadings fitted once on the signature-free profiles and
  applied to every perturbed cohort (as a pretrained encoder would be);
- ``refit``: PCA(16) fitted on each perturbed cohort (what a user auditing PCA embeddings would run).

Both PCAs are sklearn's randomized SVD (4 power iterations, seed 0): deterministic.

Each repeat runs :func:`biossl.audit.run.audit_embeddings` on the ``site`` column (alpha 0.05, max excess
0.10, seed = the repeat). "flagged" = the audit's verdict is fail; "p < alpha" = the Bonferroni p-value
alone. At ``delta = 0`` both are false-positive rates; 95% Clopper-Pearson intervals in brackets.
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy.stats import beta
from sklearn.utils.extmath import randomized_svd

from biossl.audit.run import audit_embeddings

N_DONORS, N_SITES, DIM = 140, 3, 16


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def load() -> tuple[np.ndarray, np.ndarray]:
    """(profiles [700, 765], pseudo-donor index per cell)."""
    x = np.asarray(sc.datasets.pbmc68k_reduced().X, dtype=np.float64)
    donor = np.random.default_rng(12345).permutation(len(x)) % N_DONORS
    return x, donor


def pca_basis(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, [genes, 16] loadings): randomized PCA with a fixed seed (deterministic)."""
    mu = x.mean(axis=0)
    return mu, randomized_svd(x - mu, DIM, n_iter=4, random_state=0)[2].T


def cohort(x: np.ndarray, donor: np.ndarray, delta: float, n_genes: int, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """(perturbed profiles, site per cell) of one repeat."""
    rng = np.random.default_rng([repeat, 7])
    site = (rng.permutation(N_DONORS) % N_SITES)[donor]
    genes = rng.choice(x.shape[1], n_genes, replace=False)
    out = x.copy()
    out[np.ix_(site == 0, genes)] += delta * x[:, genes].std(axis=0)
    return out, site


def audit_once(emb: np.ndarray, site: np.ndarray, donor: np.ndarray, repeat: int, b: int) -> dict:
    obs = pd.DataFrame({"site": [f"site_{s}" for s in site], "donor": [f"D{d:03d}" for d in donor]},
                       index=[f"cell{i}" for i in range(len(site))])
    adata = ad.AnnData(X=np.zeros((len(site), 1), dtype=np.float32), obs=obs)
    adata.obsm["X_fused"] = emb
    return audit_embeddings(adata, ["site"], group_column="donor", n_permutations=b, seed=repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=199)
    parser.add_argument("--deltas", default="0,0.2,0.3,0.4,0.5,0.75")
    parser.add_argument("--genes", type=int, default=50)
    parser.add_argument("--embedding", default="fixed,refit")
    args = parser.parse_args()
    x, donor = load()
    mu, basis = pca_basis(x)
    print(f"pbmc68k_reduced: {x.shape[0]} cells x {x.shape[1]} genes, {N_DONORS} pseudo-donors, {N_SITES} sites; "
          f"signature on {args.genes} genes of site 0; {args.repeats} repeats, B = {args.permutations}\n")
    print("| embedding | delta (sd) | flagged (fail) | p < alpha | linear bal. acc. | kNN bal. acc. | s / repeat |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.embedding.split(","):
        for delta in (float(d) for d in args.deltas.split(",")):
            flagged = significant = 0
            lin, knn = [], []
            t0 = time.perf_counter()
            for r in range(args.repeats):
                profiles, site = cohort(x, donor, delta, args.genes, r)
                if kind == "fixed":
                    emb = (profiles - mu) @ basis
                else:
                    m, v = pca_basis(profiles)
                    emb = (profiles - m) @ v
                res = audit_once(emb, site, donor, r, args.permutations)
                entry = res["keys"][0]["columns"]["site"]
                flagged += res["verdict"] == "fail"
                significant += entry["p_bonferroni"] < 0.05
                lin.append(entry["linear"]["balanced_accuracy"])
                knn.append(entry["knn"]["balanced_accuracy"])
            secs = (time.perf_counter() - t0) / args.repeats
            n = args.repeats
            f_lo, f_hi = clopper_pearson(flagged, n)
            s_lo, s_hi = clopper_pearson(significant, n)
            print(f"| {kind} | {delta:g} | {flagged / n:.3f} [{f_lo:.3f}, {f_hi:.3f}] | {significant / n:.3f} "
                  f"[{s_lo:.3f}, {s_hi:.3f}] | {np.mean(lin):.3f} | {np.mean(knn):.3f} | {secs:.2f} |", flush=True)


if __name__ == "__main__":
    main()

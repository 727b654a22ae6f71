"""TCGA site audit: do expression embeddings encode the tissue-source site, next to the subtype?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tcga_site_audit.py ../shared/data [--permutations 999]
        [--embeddings emb.h5ad --key X_expression] [--out DIR]

For each PORPOISE cohort (``tcga_porpoise/tcga_<cancer>_all_clean.csv.zip``; one row per patient,
deduplicated by ``case_id``) and for KIRC + KIRP pooled, runs :func:`biossl.audit.run.audit_embeddings` on
the ``site`` column (TCGA's tissue-source site: the submitting hospital) with ``oncotree_code`` as the
biology label where the cohort has at least two subtypes with 5 patients. Embeddings:

- default: PCA(16) of the cohort's RNA-seq columns (``*_rnaseq``), each column z-scored within the
  cohort, PCA fitted on the cohort's patients (what a user auditing PCA features would run);
- ``--embeddings``: an ``.h5ad`` from ``biossl embed`` of the manifest that
  ``benchmarks/tcga_expression.py`` writes (patients = ``case_id``), key ``--key``, restricted to each
  cohort's patients.

Sites (and subtypes) with fewer than 5 patients are left out of their probes (5 folds). Prints one
markdown table; with ``--out`` each cohort's ``audit.json`` and ``report.html`` land in ``DIR/<cohort>``.
"""

from __future__ import annotations

import argparse
import logging
import time
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from biossl.audit.run import audit_embeddings, write_audit

CANCERS = ("blca", "brca", "coadread", "gbmlgg", "hnsc", "kirc", "kirp", "lihc")
COHORTS: dict[str, tuple[str, ...]] = {**{c.upper(): (c,) for c in CANCERS}, "KIRC+KIRP": ("kirc", "kirp")}


def read_cohort(data: Path, cancers: tuple[str, ...]) -> pd.DataFrame:
    """Metadata and RNA-seq columns of the cohort's patients (genes shared by all its tables)."""
    frames = []
    for cancer in cancers:
        path = data / "tcga_porpoise" / f"tcga_{cancer}_all_clean.csv.zip"
        with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as fh:
            df = pd.read_csv(fh)
        keep = ["case_id", "site", "oncotree_code"] + [c for c in df.columns if c.endswith("_rnaseq")]
        frames.append(df[keep])
    return pd.concat(frames, join="inner").drop_duplicates("case_id").set_index("case_id")


def pca_embedding(table: pd.DataFrame, dim: int = 16) -> np.ndarray:
    x = table[[c for c in table.columns if c.endswith("_rnaseq")]].to_numpy(dtype=np.float64)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    return z @ vt[:dim].T


def _fmt(entry: dict, probe: str) -> str:
    if entry.get("verdict") == "not tested":
        return "not tested"
    r = entry[probe]
    return f"{r['balanced_accuracy']:.3f} / {r['chance']:.3f} (p {r['p_value']:.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the shared data folder (holds tcga_porpoise/)")
    parser.add_argument("--permutations", type=int, default=999)
    parser.add_argument("--embeddings", type=Path, default=None, help=".h5ad from `biossl embed` (default: PCA(16))")
    parser.add_argument("--key", default="X_expression", help="obsm key of --embeddings")
    parser.add_argument("--out", type=Path, default=None, help="write each cohort's audit.json and report.html here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    given = ad.read_h5ad(args.embeddings) if args.embeddings else None
    source = f"{args.embeddings}:{args.key}" if given is not None else "PCA(16) of z-scored RNA-seq"
    print(f"embeddings: {source}; site vs oncotree_code; 5 folds, k 15, B = {args.permutations}, alpha 0.05, "
          "max excess 0.10\n")
    print("| cohort | patients | sites (>= 5 pts) | site linear: bal. acc. / chance (p) | site kNN | site verdict | "
          "subtypes | oncotree_code linear | oncotree_code kNN | red flag | silhouette (site) | robustness | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cancers in COHORTS.items():
        t0 = time.perf_counter()
        table = read_cohort(args.data, cancers)
        obs = table[["site", "oncotree_code"]].astype(str)
        if given is not None:
            names = set(given.obs_names)
            ids = [p for p in table.index if p in names]
            obs, emb = obs.loc[ids], np.asarray(given[ids].obsm[args.key], dtype=np.float64)
        else:
            emb = pca_embedding(table)
        adata = ad.AnnData(X=np.zeros((len(obs), 1), dtype=np.float32), obs=obs)
        adata.obsm["X_fused"] = emb
        counts = obs["oncotree_code"].value_counts()
        label = "oncotree_code" if (counts >= 5).sum() >= 2 else None
        result = audit_embeddings(adata, ["site"], label=label, n_permutations=args.permutations, source=name)
        if args.out:
            write_audit(result, args.out / name)
        key = result["keys"][0]
        site = key["columns"]["site"]
        lab = key["columns"].get(label, {}) if label else {}
        batch = key["batch"].get("site", {})
        rob = (batch.get("robustness") or {}).get("robustness")
        n_sites = len(site.get("classes", {}))
        subtypes = ", ".join(f"{c} {n}" for c, n in counts.items() if n >= 5) if label else f"one ({counts.index[0]})"
        print(f"| {name} | {len(obs)} | {n_sites} | {_fmt(site, 'linear')} | {_fmt(site, 'knn')} | {site['verdict']} | "
              f"{subtypes} | {_fmt(lab, 'linear') if label else 'n/a'} | {_fmt(lab, 'knn') if label else 'n/a'} | "
              f"{'yes' if site.get('red_flag') else 'no'} | {batch.get('silhouette', float('nan')):.3f} | "
              f"{'n/a' if rob is None else f'{rob:.3f}'} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()

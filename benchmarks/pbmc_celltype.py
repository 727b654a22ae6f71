"""Single-cell: PBMC cell-type linear probe, pretrained expression encoder vs raw-gene baselines (issue 5).

    .venv/bin/python benchmarks/pbmc_celltype.py [--steps 1500] [--work DIR] [--config PATH]

Data: ``scanpy.datasets.pbmc68k_reduced()`` (700 real PBMCs x 765 genes, shipped inside scanpy; its
``X`` is already log-normalised and scaled, so biossl reads it as normalised). Every cell is a
"patient" of the manifest (one expression row each); its label is ``bulk_labels`` (cell types with
at least 10 cells kept). Drives the CLI: ``biossl pretrain`` (no labels), ``biossl embed``, then
``biossl finetune --task subtype`` with 5 stratified folds: a linear probe on the frozen embedding
against PCA(16) + logistic regression and an L2 logistic regression on all 765 standardised genes
(``linear_all_logreg``, penalty by inner CV per training fold) on the same cells and folds. Prints one
table. ``--baselines-only``: no pretraining or embedding, only the two baselines on the same folds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import scanpy as sc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli import run_biossl as run  # noqa: E402


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "pbmc")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "pretrain" / "pbmc_expression.yaml")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--baselines-only", action="store_true", help="skip pretraining and the probe")
    args = parser.parse_args()
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)

    adata = sc.datasets.pbmc68k_reduced()
    adata.obs["patient_id"] = adata.obs_names.astype(str)
    keep = adata.obs["bulk_labels"].value_counts()
    keep = keep[keep >= 10].index
    h5ad = work / "pbmc68k_reduced.h5ad"
    adata.write_h5ad(h5ad)
    pd.DataFrame({"patient_id": adata.obs_names, "modality": "expression", "path": h5ad.name}).to_csv(
        work / "manifest.csv", index=False)
    labels = adata.obs.loc[adata.obs["bulk_labels"].isin(keep), ["patient_id", "bulk_labels"]]
    labels.rename(columns={"bulk_labels": "cell_type"}).to_csv(work / "labels.csv", index=False)
    print(f"{adata.n_obs} cells x {adata.n_vars} genes; {len(labels)} labelled in {len(keep)} types", flush=True)

    if not args.baselines_only:
        run(["pretrain", "--config", str(args.config), "--data.manifest", str(work / "manifest.csv"),
             "--data.work_dir", str(work / "work"), "--trainer.default_root_dir", str(work / "pretrain"),
             "--trainer.max_steps", str(args.steps)], work / "logs" / "pretrain.log")
        run(["embed", "--checkpoint", str(work / "pretrain" / "checkpoints" / "last.ckpt"), "--manifest",
             str(work / "manifest.csv"), "--work-dir", str(work / "work"), "--out", str(work / "embeddings.h5ad")],
            work / "logs" / "embed.log")
    probe = [] if args.baselines_only else ["--embeddings", str(work / "embeddings.h5ad"), "--embedding",
                                            "X_expression"]
    out = work / ("celltype_baselines.json" if args.baselines_only else "celltype.json")
    run(["finetune", *probe, "--labels",
         str(work / "labels.csv"), "--task", "subtype", "--label-column", "cell_type", "--folds", "5",
         "--baseline-features", str(h5ad), "--out", str(out)], work / "logs" / "finetune.log")
    res = json.loads(out.read_text())["methods"]
    print("| method | macro AUROC | balanced accuracy |")
    print("|---|---|---|")
    for name, entry in res.items():
        cells = [f"{entry['summary'][k]['mean']:.3f} ± {entry['summary'][k]['sd']:.3f}"
                 for k in ("macro_auroc", "balanced_accuracy")]
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()

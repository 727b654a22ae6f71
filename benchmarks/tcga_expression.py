"""TCGA expression: survival per cancer and subtype in mixed cohorts, pretrained probe vs raw-feature baselines.

    .venv/bin/python benchmarks/tcga_expression.py ../shared/data [--steps 2000] [--work DIR]
        [--config configs/pretrain/tcga_expression.yaml] [--skip-pretrain]

Drives the documented CLI end to end (issue 5, benchmarks 1 and 2):

1. writes a manifest of every patient of the eight PORPOISE tables (``tcga_porpoise/*.csv.zip``, one
   expression row per patient, the table's ``site`` and ``oncotree_code`` as metadata) and one
   labels table per cancer (``time`` = ``survival_months``, ``event`` = 1 - ``censorship``);
2. ``biossl pretrain`` on all patients pooled (no labels used; every patient, including each cancer's
   test folds, is unlabelled data for pretraining: transductive, as in the issue);
3. ``biossl embed`` of every patient;
4. per cancer, ``biossl finetune --task survival`` with PORPOISE's 5 published folds: a linear Cox
   probe on the frozen embedding, against two baselines on the raw table in the same run, on the
   same patients and folds: PCA(16) + Cox (lifelines, penalizer 1) and a ridge Cox on all standardised
   genes (``linear_all_cox``, penalty by inner CV per training fold); scored by Harrell's c-index,
   Uno's c-index and the integrated Brier score;
5. subtype (``oncotree_code``) where a cohort mixes subtypes (BRCA, COADREAD, GBMLGG, and KIRC + KIRP
   pooled): ``biossl finetune --task subtype`` with 5 stratified folds, probe vs PCA(16) + logistic
   regression and an L2 logistic regression on all standardised genes (``linear_all_logreg``).

``--baselines-only`` skips pretraining and embedding and runs only the two raw-table baselines, on
the same patients and folds (PORPOISE's survival folds; subtype and ``--group-by`` folds are made from
the same patients and seed): minutes, no checkpoint needed.

Prints one summary table; JSON results land in ``<work>/results``. MCAT's published BLCA c-indices
(``tcga_mcat/results_cindex``) are printed alongside for reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli import run_biossl as run  # noqa: E402

CANCERS = ("blca", "brca", "coadread", "gbmlgg", "hnsc", "kirc", "kirp", "lihc")
SUBTYPE_COHORTS = {"BRCA": ("brca",), "COADREAD": ("coadread",), "GBMLGG": ("gbmlgg",), "KIRC+KIRP": ("kirc", "kirp")}
META = ["case_id", "site", "oncotree_code", "survival_months", "censorship"]




def read_table(path: Path) -> pd.DataFrame:
    """The metadata columns of a PORPOISE table, one row per patient."""
    with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as fh:
        df = pd.read_csv(fh, usecols=lambda c: c in META)
    return df.drop_duplicates("case_id").reset_index(drop=True)


def write_inputs(data: Path, work: Path) -> dict[str, pd.DataFrame]:
    """Manifest of every patient and a labels table per cancer."""
    tables = {}
    rows = []
    for cancer in CANCERS:
        path = data / "tcga_porpoise" / f"tcga_{cancer}_all_clean.csv.zip"
        df = read_table(path)
        df["cancer"] = cancer
        tables[cancer] = df
        for r in df.itertuples():
            rows.append({"patient_id": r.case_id, "modality": "expression", "path": str(path.resolve()),
                         "site": r.site, "oncotree_code": r.oncotree_code, "cancer": cancer})
        labels = pd.DataFrame({"patient_id": df["case_id"], "time": df["survival_months"],
                               "event": 1 - df["censorship"], "oncotree_code": df["oncotree_code"],
                               "site": df["site"]})
        labels.to_csv(work / f"labels_{cancer}.csv", index=False)
    manifest = pd.DataFrame(rows)
    dup = manifest["patient_id"].duplicated(keep=False)
    if dup.any():  # a case in two tables: keep its first cancer
        manifest = manifest[~manifest["patient_id"].duplicated()]
    manifest.to_csv(work / "manifest.csv", index=False)
    return tables


def combined_table(data: Path, cancers: tuple[str, ...], work: Path) -> Path:
    """The raw table of one cancer, or the genes shared by several pooled into one CSV (PCA baseline input)."""
    paths = [data / "tcga_porpoise" / f"tcga_{c}_all_clean.csv.zip" for c in cancers]
    if len(paths) == 1:
        return paths[0]
    out = work / f"rnaseq_{'_'.join(cancers)}.csv"
    if not out.exists():
        frames = []
        for path in paths:
            with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as fh:
                df = pd.read_csv(fh)
            frames.append(df[["case_id"] + [c for c in df.columns if c.endswith("_rnaseq")]])
        pooled = pd.concat(frames, join="inner").drop_duplicates("case_id")
        tmp = out.with_suffix(".tmp")
        pooled.to_csv(tmp, index=False)
        tmp.rename(out)
    return out


def main() -> None:
    """Run the benchmark and print the summary table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the shared data folder (holds tcga_porpoise/, tcga_mcat/)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "tcga")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "pretrain" / "tcga_expression.yaml")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--skip-pretrain", action="store_true", help="reuse <work>/pretrain/checkpoints/last.ckpt")
    parser.add_argument("--pretrain-arg", action="append", default=[], metavar="ARG",
                        help="extra `biossl pretrain` argument, e.g. --pretrain-arg=--model.embed_dim=16 (repeatable)")
    parser.add_argument("--modes", default="probe",
                        help="biossl finetune --mode: probe (default), or e.g. probe,finetune,scratch")
    parser.add_argument("--finetune-arg", action="append", default=[], metavar="ARG",
                        help="extra `biossl finetune` argument for every task, e.g. --finetune-arg=--l2=1.0")
    parser.add_argument("--group-by", default=None, metavar="COL",
                        help="site-preserving folds: 5 folds made with `biossl finetune --group-by COL` (e.g. site) "
                             "for every task, instead of PORPOISE's survival folds; results in <work>/results_by_COL")
    parser.add_argument("--baselines-only", action="store_true",
                        help="no pretraining or embedding: only PCA(16) and the all-features baseline, same folds; "
                             "results in <work>/results_baselines[_by_COL]")
    args = parser.parse_args()
    work = args.work.resolve()
    results = work / ("results" + ("_baselines" if args.baselines_only else "")
                      + ("" if args.group_by is None else f"_by_{args.group_by}"))
    results.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    tables = write_inputs(args.data.resolve(), work)
    if args.modes != "probe" and not args.baselines_only:  # fine-tuning and scratch train the checkpoint's encoders
        ckpt = work / "pretrain" / "checkpoints" / "last.ckpt"
        args.finetune_arg += ["--mode", args.modes, "--checkpoint", str(ckpt), "--manifest",
                              str(work / "manifest.csv"), "--work-dir", str(work / "work")]
    n = sum(len(t) for t in tables.values())
    print(f"{n} patients in {len(tables)} TCGA tables; manifest {work / 'manifest.csv'}", flush=True)

    ckpt = work / "pretrain" / "checkpoints" / "last.ckpt"
    emb = work / "embeddings.h5ad"
    probe = [] if args.baselines_only else ["--embeddings", str(emb), "--embedding", "X_expression"]
    if not (args.skip_pretrain or args.baselines_only):
        secs = run(["pretrain", "--config", str(args.config), "--data.manifest", str(work / "manifest.csv"),
                    "--data.work_dir", str(work / "work"), "--trainer.default_root_dir", str(work / "pretrain"),
                    "--trainer.max_steps", str(args.steps), *args.pretrain_arg], work / "logs" / "pretrain.log")
        print(f"pretrain: {args.steps} steps in {secs / 60:.1f} min", flush=True)
    if not args.baselines_only:
        secs = run(["embed", "--checkpoint", str(ckpt), "--manifest", str(work / "manifest.csv"),
                    "--work-dir", str(work / "work"), "--out", str(emb)], work / "logs" / "embed.log")
        print(f"embed: {secs:.0f} s", flush=True)

    survival = []
    for cancer in CANCERS:
        out = results / f"survival_{cancer}.json"
        table = args.data.resolve() / "tcga_porpoise" / f"tcga_{cancer}_all_clean.csv.zip"
        splits = args.data.resolve() / "tcga_porpoise" / "splits" / "5foldcv" / f"tcga_{cancer}"
        folds = ["--splits", str(splits)] if args.group_by is None else ["--folds", "5", "--group-by", args.group_by]
        run(["finetune", *probe, "--labels", str(work / f"labels_{cancer}.csv"), "--task", "survival", *folds,
             "--baseline-features", str(table), "--out", str(out), *args.finetune_arg],
            work / "logs" / f"survival_{cancer}.log")
        survival.append((cancer, json.loads(out.read_text())))
    subtype = []
    for name, cancers in SUBTYPE_COHORTS.items():
        labels = pd.concat([pd.read_csv(work / f"labels_{c}.csv") for c in cancers])
        labels = labels.dropna(subset=["oncotree_code"])
        counts = labels["oncotree_code"].value_counts()
        labels = labels[labels["oncotree_code"].isin(counts[counts >= 10].index)]  # classes with >= 10 patients
        path = work / f"labels_subtype_{name}.csv"
        labels.to_csv(path, index=False)
        out = results / f"subtype_{name}.json"
        baseline = combined_table(args.data.resolve(), cancers, work)
        argv = ["finetune", *probe, "--labels", str(path),
                "--task", "subtype", "--label-column", "oncotree_code", "--folds", "5",
                *([] if args.group_by is None else ["--group-by", args.group_by]),
                "--baseline-features", str(baseline), "--out", str(out), *args.finetune_arg]
        run(argv, work / "logs" / f"subtype_{name}.log")
        subtype.append((name, len(labels), dict(counts[counts >= 10]), json.loads(out.read_text())))
    print_summary(survival, subtype, args.data.resolve(),
                  folds="PORPOISE 5 folds" if args.group_by is None else f"5 {args.group_by}-preserving folds")


def _metric(result: dict, method: str, key: str) -> str:
    entry = result.get("methods", {}).get(method)
    s = entry["summary"].get(key) if entry else None
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.3f} ± {s['sd']:.3f}" if s.get("sd") is not None else f"{s['mean']:.3f}"


def print_summary(survival: list, subtype: list, data: Path, folds: str = "PORPOISE 5 folds") -> None:
    """One table per benchmark, a column per method that ran (probe, finetune, scratch, the two baselines)."""
    methods = list(survival[0][1]["methods"]) if survival else []
    print(f"\nSurvival (c-index, {folds}, mean ± sd)")
    print("| cancer | patients | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for cancer, res in survival:
        cells = " | ".join(_metric(res, m, "c_index") for m in methods)
        print(f"| {cancer.upper()} | {res.get('n_patients', '?')} | {cells} |")
    print(f"\nSurvival, censoring-robust (Uno's c-index / integrated Brier score, lower is better; {folds})")
    print("| cancer | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for cancer, res in survival:
        cells = " | ".join(f"{_metric(res, m, 'uno_c')} / {_metric(res, m, 'integrated_brier')}" for m in methods)
        print(f"| {cancer.upper()} | {cells} |")
    mcat = data / "tcga_mcat" / "results_cindex"
    if mcat.is_dir():
        print(f"(MCAT's published BLCA results: {mcat})")
    methods = list(subtype[0][3]["methods"]) if subtype else []
    sub_folds = "5 stratified folds" if folds.startswith("PORPOISE") else folds
    print(f"\nSubtype (oncotree_code, {sub_folds}, balanced accuracy / macro AUROC)")
    print("| cohort | patients | classes | " + " | ".join(methods) + " |")
    print("|---|---|---|" + "---|" * len(methods))
    for name, n, classes, res in subtype:
        cells = " | ".join(f"{_metric(res, m, 'balanced_accuracy')} / {_metric(res, m, 'macro_auroc')}"
                           for m in methods)
        print(f"| {name} | {n} | {len(classes)} | {cells} |")


if __name__ == "__main__":
    main()

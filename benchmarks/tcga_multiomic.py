"""Joint cross-modal pretraining on a real paired cohort: TCGA RNA + CNV + mutations of the same patients.

    .venv/bin/python benchmarks/tcga_multiomic.py ../shared/data [--cancers blca,brca,...] [--steps 2000]
        [--work DIR] [--variants a,b,c,d] [--skip-pretrain]

Drives the ``biossl`` command line only. The data folder holds PORPOISE-format tables
(``tcga_<cancer>_all_clean.csv.zip`` with ``case_id``, ``site``, ``oncotree_code``, ``survival_months``,
``censorship`` and ``*_rnaseq`` / ``*_cnv`` / ``*_mut`` columns), directly or under ``tcga_porpoise/``,
and optionally their 5-fold splits (``splits/5foldcv/tcga_<cancer>/splits_<k>.csv``; without them,
5 folds stratified by event are made). ``--cancers`` picks the tables (default: every one found).

1. **Inputs.** One table per cancer and modality: ``rna`` (continuous z-scores), ``cnv`` (categorical
   GISTIC calls; a cancer without CNV columns has no ``cnv`` rows, a modality missing for real),
   ``mut`` (binary). One manifest of every patient (kinds and value types in its columns). A seeded
   ``--holdout`` share of each cancer's patients is kept out of pretraining: retrieval is scored on them.
2. **Pretraining**, all cancers pooled, no labels; one config per variant:
   (a) RNA alone (``configs/pretrain/tcga_multiomic_a.yaml``, the expression recipe kept so far);
   (b) RNA + CNV + mutations, within-modality objectives only (``_b``);
   (c) (b) plus the cross-modal CLIP term (``_c``);
   (d) (c) with the CNV and mutations of a seeded half of the pretraining patients removed (``_d``).
3. ``biossl embed`` of every patient with each checkpoint.
4. **Tasks**, per cancer: survival (PORPOISE folds) and subtype (``oncotree_code`` classes with >= 10
   patients, where a cancer has two or more); subtype of pooled pairs of cancers (consecutive in the
   ``--cancers`` order, or ``--pairs``). One ``biossl finetune`` call per task probes ``X_fused`` and
   ``X_rna`` of every variant side by side (``--l2 auto``: the penalty chosen by inner CV on each
   training fold), with PCA(16) of RNA and the all-genes ridge on RNA; a second call gives the
   multi-table baselines: PCA16(RNA)+PCA8(CNV)+PCA8(MUT) and early fusion (the ridge on all three
   tables side by side). The *nested* column picks, per outer fold, the probe (variant and key) whose
   inner-CV score is best, so no test patient chooses it. Survival is repeated with 5 site-preserving
   folds (``--group-by site``).
5. **Retrieval** (``biossl retrieval``) on the held-out patients: the rank of a patient's own CNV (and
   mutation) embedding among all held-out patients' given the RNA embedding, pooled and within each
   cancer (pooled retrieval is helped by cancer type alone; within a cancer it is not).
6. **Missing modalities at test time**: (c) embedded from an RNA-only manifest (no CNV, no mutations
   for any patient), probed on ``X_fused``, against (a) on the same patients.

Prints the tables (markdown) and writes them to ``<work>/summary.md``, the JSON results under
``<work>/results`` and the plots under ``<work>/plots``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli import run_biossl as run  # noqa: E402

SUFFIX = {"rna": "_rnaseq", "cnv": "_cnv", "mut": "_mut"}
VALUE_TYPE = {"rna": "continuous", "cnv": "categorical", "mut": "binary"}
META = ["case_id", "site", "oncotree_code", "survival_months", "censorship"]
VARIANTS = {"a": "RNA alone", "b": "3 tables, within-modality only", "c": "3 tables + cross-modal",
            "d": "(c), half the CNV/mut removed"}
MIN_CLASS = 10
PROBE = "linear_probe"
#: Probes that repeat another: (a) has one modality (X_fused is its X_rna, unit length), and (c) from an
#: RNA-only manifest has the same X_rna as (c) from the full one.
DUPLICATES = ("a:X_fused",)
#: The probes each task scores: what the goals compare. (b)'s X_rna is not among them: without the
#: cross-modal term nothing reaches the RNA encoder from the other tables, so it repeats (a)'s.
PROBES = ("a:X_rna", "b:X_fused", "c:X_fused", "c:X_rna", "d:X_fused")
#: The probes' L2 grid, chosen per training fold by inner CV (1e-3 ... 1e4: on the 64-d embeddings, the
#: default grid's top, 1e3, was often chosen).
PROBE_L2 = "1e-3,1e-2,1e-1,1,10,100,1000,10000"
#: --reuse: keep the embeddings and results a previous run left in --work (only the tables are redrawn).
REUSE = False


def find_tables(data: Path, cancers: list[str] | None) -> dict[str, Path]:
    """``{cancer: table}`` of the PORPOISE-format tables in ``data`` (or ``data/tcga_porpoise``)."""
    folder = data / "tcga_porpoise" if (data / "tcga_porpoise").is_dir() else data
    found = {p.name.removeprefix("tcga_").removesuffix("_all_clean.csv.zip"): p
             for p in sorted(folder.glob("tcga_*_all_clean.csv.zip"))}
    if not found:
        sys.exit(f"no tcga_<cancer>_all_clean.csv.zip tables in {folder}")
    if cancers:
        missing = [c for c in cancers if c not in found]
        if missing:
            sys.exit(f"--cancers {missing}: no table in {folder} (found {sorted(found)})")
        return {c: found[c] for c in cancers}
    return found


def read_cancer(path: Path) -> pd.DataFrame:
    """One row per patient (the first of its slides)."""
    with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as fh:
        df = pd.read_csv(fh)
    return df.drop_duplicates("case_id").reset_index(drop=True)


def write_inputs(tables: dict[str, Path], work: Path, holdout: float, seed: int) -> dict[str, Any]:
    """Per-cancer modality tables, manifests, labels and the held-out patients."""
    rng = np.random.default_rng(seed)
    (work / "tables").mkdir(parents=True, exist_ok=True)
    rows, labels_all, held, info = [], [], [], {}
    seen: set[str] = set()
    for cancer, path in tables.items():
        df = read_cancer(path)
        df = df[~df["case_id"].isin(seen)]  # a case in two tables keeps its first cancer
        seen |= set(df["case_id"])
        files = {}
        for modality, suffix in SUFFIX.items():
            cols = [c for c in df.columns if c.endswith(suffix)]
            if not cols:
                continue
            out = work / "tables" / f"{modality}_{cancer}.csv"
            table = df[["case_id", *cols]].rename(columns={"case_id": "patient_id"})
            table.columns = ["patient_id", *(c.removesuffix(suffix) for c in cols)]
            table.to_csv(out, index=False)
            files[modality] = out
        info[cancer] = {"patients": len(df), "features": {m: int(pd.read_csv(f, nrows=0).shape[1] - 1)
                                                           for m, f in files.items()}, "files": files}
        n_held = int(round(holdout * len(df)))
        held_ids = set(rng.choice(df["case_id"].to_numpy(), size=n_held, replace=False)) if n_held else set()
        held += [{"patient_id": p, "cancer": cancer} for p in sorted(held_ids)]
        for r in df.itertuples():
            for modality, f in files.items():
                rows.append({"patient_id": r.case_id, "modality": modality, "kind": "table",
                             "value_type": VALUE_TYPE[modality], "path": str(f.resolve()), "site": r.site,
                             "cancer": cancer, "oncotree_code": r.oncotree_code})
        labels = pd.DataFrame({"patient_id": df["case_id"], "time": df["survival_months"],
                               "event": 1 - df["censorship"], "oncotree_code": df["oncotree_code"],
                               "site": df["site"], "cancer": cancer})
        labels.to_csv(work / f"labels_{cancer}.csv", index=False)
        labels_all.append(labels)
    manifest = pd.DataFrame(rows)
    held_df = pd.DataFrame(held)
    held_df.to_csv(work / "heldout.csv", index=False)
    for cancer in tables:
        held_df[held_df["cancer"] == cancer].to_csv(work / f"heldout_{cancer}.csv", index=False)
    train = manifest[~manifest["patient_id"].isin(set(held_df["patient_id"]))]
    manifest.to_csv(work / "manifest.csv", index=False)
    manifest[manifest["modality"] == "rna"].to_csv(work / "manifest_rna.csv", index=False)
    train.to_csv(work / "manifest_pretrain.csv", index=False)
    train[train["modality"] == "rna"].to_csv(work / "manifest_pretrain_a.csv", index=False)
    patients = np.array(sorted(set(train["patient_id"])))
    drop = set(np.random.default_rng(seed + 1).choice(patients, size=len(patients) // 2, replace=False))
    half = train[~(train["patient_id"].isin(drop) & train["modality"].isin(["cnv", "mut"]))]
    half.to_csv(work / "manifest_pretrain_d.csv", index=False)
    return {"cancers": info, "n_patients": int(manifest["patient_id"].nunique()), "n_heldout": len(held_df),
            "n_pretrain": len(patients), "d_removed": len(drop), "labels": pd.concat(labels_all)}


def subtype_cohorts(tables: dict[str, Path], labels: pd.DataFrame, pairs: list[tuple[str, ...]]) -> dict[str, tuple]:
    """Per-cancer subtype tasks (two or more classes of >= MIN_CLASS patients) and the pooled pairs."""
    out = {}
    for cohort in [(c,) for c in tables] + pairs:
        lab = labels[labels["cancer"].isin(cohort)].dropna(subset=["oncotree_code"])
        counts = lab["oncotree_code"].value_counts()
        keep = counts[counts >= MIN_CLASS].index
        if len(keep) >= 2:
            out["+".join(c.upper() for c in cohort)] = (cohort, lab[lab["oncotree_code"].isin(keep)])
    return out


def _folds(data_tables: Path, cancer: str) -> list[str]:
    folder = data_tables.parent / "splits" / "5foldcv" / f"tcga_{cancer}"
    return ["--splits", str(folder)] if folder.is_dir() else ["--folds", "5"]


def finetune_task(name: str, task: str, labels: Path, folds: list[str], tables: list[Path],
                  embeddings: dict[str, Path], work: Path, results: Path, l2: str) -> dict[str, Any]:
    """Two ``biossl finetune`` calls on the same folds: probes + RNA baselines, then the multi-table baselines."""
    kind = ["--task", task] + (["--label-column", "oncotree_code"] if task == "subtype" else [])
    emb = [f"--embeddings={v}={p}" for v, p in embeddings.items()]
    out1, out2 = results / f"{name}.json", results / f"{name}_multi.json"
    if REUSE and out1.exists() and out2.exists():
        return merge(json.loads(out1.read_text()), json.loads(out2.read_text()), len(tables))
    probes = ",".join(k for k in PROBES if k.split(":")[0] in embeddings)
    run(["finetune", *emb, "--embedding", probes, "--labels", str(labels), *kind, *folds,
         "--l2", l2, "--baseline-features", str(tables[0]), "--out", str(out1)],
        work / "logs" / f"{name}.log")
    comps = ",".join(["16"] + ["8"] * (len(tables) - 1))
    run(["finetune", "--labels", str(labels), *kind, *folds, *(f"--baseline-features={t}" for t in tables),
         "--baseline-components", comps, "--out", str(out2)], work / "logs" / f"{name}_multi.log")
    return merge(json.loads(out1.read_text()), json.loads(out2.read_text()), len(tables))


def merge(main: dict[str, Any], multi: dict[str, Any], n_tables: int) -> dict[str, Any]:
    """One result: the second call's methods renamed (``early_fusion``, ``pca16+8+8``)."""
    if main["folds"]["assignment"] != multi["folds"]["assignment"]:
        sys.exit("the two finetune calls of a task used different folds")
    for name, entry in multi["methods"].items():
        if n_tables == 1:
            continue  # only RNA: the same baselines as the first call
        new = "early_fusion" if name.startswith("linear_all") else "pca_per_table"
        main["methods"][new] = entry
    return main


def metric_of(result: dict[str, Any]) -> str:
    """c-index for survival, macro AUROC for subtype."""
    return "c_index" if result["task"] == "survival" else "macro_auroc"


def nested_score(result: dict[str, Any], probes: list[str]) -> tuple[float, list[str]]:
    """Per outer fold, the probe with the best inner-CV score; the mean of their outer scores."""
    metric = metric_of(result)
    scores, chosen = [], []
    n_folds = len(result["methods"][probes[0]]["folds"])
    def inner(name: str, k: int) -> float:
        cv = result["methods"][name]["folds"][k].get("fit", {}).get("inner_cv", {})
        vals = [v for v in cv.values() if v is not None and np.isfinite(v)]
        return max(vals) if vals else -np.inf

    for k in range(n_folds):
        best = max(probes, key=lambda name: inner(name, k))
        chosen.append(best)
        value = result["methods"][best]["folds"][k].get(metric)
        if value is not None and np.isfinite(value):
            scores.append(value)
    return float(np.mean(scores)), chosen


def mean_of(result: dict[str, Any], method: str) -> float:
    """A method's mean headline metric over folds (NaN when absent)."""
    entry = result["methods"].get(method)
    s = entry["summary"].get(metric_of(result)) if entry else None
    return float(s["mean"]) if s and s.get("mean") is not None else float("nan")


def baselines_of(result: dict[str, Any]) -> list[str]:
    """The raw-feature baselines of a merged result."""
    return [m for m in result["methods"] if not m.startswith(PROBE)]


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table."""
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def task_rows(results: dict[str, dict[str, Any]], variants: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per task: every probe, the nested choice, every baseline, the best baseline."""
    rows, columns = [], []
    for name, res in results.items():
        probes = [m for m in res["methods"] if m.startswith(PROBE + ":")]
        base = baselines_of(res)
        row: dict[str, Any] = {"task": name, "patients": res.get("n_patients", "?")}
        for v in variants:
            for key in ("X_fused", "X_rna"):
                m = f"{PROBE}:{v}:{key}"
                if m in res["methods"] and f"{v}:{key}" not in DUPLICATES:
                    row[f"{v}:{key}"] = mean_of(res, m)
        candidates = [p for p in probes if p.split(":", 1)[1] not in DUPLICATES]
        row["nested"], chosen = nested_score(res, candidates)
        row["nested chose"] = ", ".join(f"{c.split(':', 1)[1]}×{chosen.count(c)}" for c in dict.fromkeys(chosen))
        for b in base:
            row[b] = mean_of(res, b)
        row["best baseline"] = max(row[b] for b in base)
        rows.append(row)
        for c in row:
            if c not in columns:
                columns.append(c)
    return rows, columns


def plot_tasks(rows: list[dict[str, Any]], methods: list[str], path: Path, title: str) -> None:
    """Grouped bars: one group per task, one bar per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(7.0, 1.1 * len(rows)), 4.2), dpi=130)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ax.bar(np.arange(len(rows)) + i * width, [r.get(m, np.nan) for r in rows], width, label=m)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
    ax.set_xticklabels([r["task"] for r in rows], rotation=30, ha="right", fontsize="small")
    ax.set_ylim(0.45, 1.0)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="x-small", ncol=2, frameon=False)
    fig.tight_layout()
    from biossl.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def main() -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with PORPOISE-format tables (or with tcga_porpoise/)")
    parser.add_argument("--cancers", default=None, help="comma-separated cancers (default: every table found)")
    parser.add_argument("--pairs", default=None, help="pooled subtype pairs, e.g. kirc+kirp,coadread+gbmlgg "
                        "(default: consecutive cancers of --cancers)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "multiomic")
    parser.add_argument("--variants", default="a,b,c,d")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--holdout", type=float, default=0.15, help="share of each cancer held out of pretraining")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pretrain", action="store_true", help="reuse <work>/pretrain_<v>/checkpoints/last.ckpt")
    parser.add_argument("--no-site-folds", action="store_true", help="skip the site-preserving survival table")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the embeddings and result files already in --work (with --skip-pretrain: "
                             "only print the tables again)")
    parser.add_argument("--jobs", type=int, default=2, help="finetune calls at a time, one thread each (default 2)")
    parser.add_argument("--probe-l2", default=None, help=f"the probes' --l2 grid (default {PROBE_L2})")
    args = parser.parse_args()
    t_start = time.perf_counter()
    work = args.work.resolve()
    results_dir, plots = work / "results", work / "plots"
    for d in (results_dir, plots, work / "logs"):
        d.mkdir(parents=True, exist_ok=True)
    l2 = args.probe_l2 or PROBE_L2
    global REUSE
    REUSE = args.reuse
    tables = find_tables(args.data.resolve(), args.cancers.split(",") if args.cancers else None)
    cancers = list(tables)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.pairs:
        pairs = [tuple(p.split("+")) for p in args.pairs.split(",")]
    else:
        pairs = [tuple(cancers[i:i + 2]) for i in range(0, len(cancers) - 1, 2)]
    inputs = write_inputs(tables, work, args.holdout, args.seed)
    print(f"{inputs['n_patients']} patients in {len(cancers)} cancers ({', '.join(cancers)}); "
          f"{inputs['n_pretrain']} pretrain, {inputs['n_heldout']} held out; (d) drops CNV/mut of "
          f"{inputs['d_removed']}", flush=True)
    times: dict[str, float] = {}

    manifests = {"a": "manifest_pretrain_a.csv", "b": "manifest_pretrain.csv", "c": "manifest_pretrain.csv",
                 "d": "manifest_pretrain_d.csv"}
    embeddings: dict[str, Path] = {}
    for v in variants:
        ckpt = work / f"pretrain_{v}" / "checkpoints" / "last.ckpt"
        if not args.skip_pretrain:
            times[f"pretrain {v}"] = run(
                ["pretrain", "--config", str(ROOT / "configs" / "pretrain" / f"tcga_multiomic_{v}.yaml"),
                 "--data.manifest", str(work / manifests[v]), "--data.work_dir", str(work / "work"),
                 "--trainer.default_root_dir", str(work / f"pretrain_{v}"), "--trainer.max_steps", str(args.steps)],
                work / "logs" / f"pretrain_{v}.log")
            print(f"pretrain ({v}): {times[f'pretrain {v}'] / 60:.1f} min", flush=True)
        embeddings[v] = work / f"embeddings_{v}.h5ad"
        manifest = work / ("manifest_rna.csv" if v == "a" else "manifest.csv")
        if REUSE and embeddings[v].exists():
            continue
        times[f"embed {v}"] = run(["embed", "--checkpoint", str(ckpt), "--manifest", str(manifest),
                                   "--work-dir", str(work / "work"), "--out", str(embeddings[v])],
                                  work / "logs" / f"embed_{v}.log")

    data_tables = next(iter(tables.values()))
    t0 = time.perf_counter()
    jobs: list[tuple[str, str, tuple]] = []  # (table, row name, finetune_task arguments)
    for cancer in cancers:
        files = [inputs["cancers"][cancer]["files"][m] for m in SUFFIX if m in inputs["cancers"][cancer]["files"]]
        jobs.append(("survival", cancer.upper(), (f"survival_{cancer}", "survival", work / f"labels_{cancer}.csv",
                                                  _folds(data_tables, cancer), files, embeddings)))
        if not args.no_site_folds:
            main_runs = {v: p for v, p in embeddings.items() if v in ("a", "c")}  # the main comparison only
            jobs.append(("site", cancer.upper(), (f"survival_{cancer}_by_site", "survival",
                                                  work / f"labels_{cancer}.csv", ["--folds", "5", "--group-by", "site"],
                                                  files, main_runs)))
    for name, (cohort, lab) in subtype_cohorts(tables, inputs["labels"], pairs).items():
        path = work / f"labels_subtype_{name}.csv"
        lab.to_csv(path, index=False)
        files = []
        for m in SUFFIX:  # pooled cohorts: one table per modality with the features all their cancers share
            parts = [pd.read_csv(inputs["cancers"][c]["files"][m]) for c in cohort
                     if m in inputs["cancers"][c]["files"]]
            if len(parts) == len(cohort):
                out = work / "tables" / f"{m}_{'_'.join(cohort)}.csv"
                joined = pd.concat(parts, join="inner")
                if joined.shape[1] > 1:
                    joined.to_csv(out, index=False)
                    files.append(out)
        jobs.append(("subtype", name, (f"subtype_{name}", "subtype", path, ["--folds", "5"], files, embeddings)))
    if args.jobs > 1:  # the probes' fits are single-threaded: one thread per call, args.jobs calls at a time
        os.environ["OMP_NUM_THREADS"] = "1"
    done: dict[str, dict[str, Any]] = {"survival": {}, "site": {}, "subtype": {}}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(finetune_task, *spec, work, results_dir, l2): (kind, name) for kind, name, spec in jobs}
        for future in as_completed(futures):
            kind, name = futures[future]
            done[kind][name] = future.result()
            print(f"{kind} {name}: done ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
    order = {(kind, name): i for i, (kind, name, _) in enumerate(jobs)}  # the tables in the jobs' order
    survival, site, subtype = ({k: d[k] for k in sorted(d, key=lambda n, kind=kind: order[(kind, n)])}
                               for kind, d in done.items())
    times["finetune (all tasks)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    retrieval: dict[str, Any] = {}
    for v in [v for v in variants if v != "a"]:
        out = results_dir / f"retrieval_{v}.json"
        if not (REUSE and out.exists()):
            run(["retrieval", "--embeddings", str(embeddings[v]), "--keys", "X_rna,X_cnv,X_mut", "--patients",
                 str(work / "heldout.csv"), "--out", str(out), "--plot", str(plots / f"retrieval_{v}.png")],
                work / "logs" / f"retrieval_{v}.log")
        retrieval[(v, "pooled")] = json.loads(out.read_text())
        for cancer in cancers:
            held = pd.read_csv(work / f"heldout_{cancer}.csv")
            if len(held) < 10:
                continue
            out = results_dir / f"retrieval_{v}_{cancer}.json"
            if REUSE and out.exists():
                retrieval[(v, cancer)] = json.loads(out.read_text())
                continue
            keys = "X_rna,X_cnv,X_mut" if "cnv" in inputs["cancers"][cancer]["files"] else "X_rna,X_mut"
            run(["retrieval", "--embeddings", str(embeddings[v]), "--keys", keys, "--patients",
                 str(work / f"heldout_{cancer}.csv"), "--out", str(out)], work / "logs" / f"retrieval_{v}_{cancer}.log")
            retrieval[(v, cancer)] = json.loads(out.read_text())
    times["retrieval"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_start
    report(survival, site, subtype, retrieval, variants, inputs, times, work, plots)


def report(survival: dict, site: dict, subtype: dict, retrieval: dict, variants: list[str], inputs: dict,
           times: dict[str, float], work: Path, plots: Path) -> None:
    """Print and write the tables, the goals and the plots."""
    parts = [f"# TCGA multi-omic benchmark ({inputs['n_patients']} patients; {inputs['n_pretrain']} pretrain, "
             f"{inputs['n_heldout']} held out)\n",
             table([{"cancer": c.upper(), "patients": i["patients"], **{m: n for m, n in i["features"].items()}}
                    for c, i in inputs["cancers"].items()], ["cancer", "patients", "rna", "cnv", "mut"])]
    rows_s, cols_s = task_rows(survival, variants)
    parts += ["\n## Survival (c-index, PORPOISE folds, mean over folds)\n", table(rows_s, cols_s)]
    if site:
        rows_g, cols_g = task_rows(site, [v for v in variants if v in ("a", "c")])
        parts += ["\n## Survival, 5 site-preserving folds\n", table(rows_g, cols_g)]
    rows_t, cols_t = task_rows(subtype, variants) if subtype else ([], [])
    if subtype:
        parts += ["\n## Subtype (macro AUROC, 5 stratified folds)\n", table(rows_t, cols_t)]
    ret_rows = []
    for (v, scope), res in retrieval.items():
        for e in res["pairs"]:
            if e["query"] == "X_rna":
                ret_rows.append({"variant": v, "patients": scope, "pair": f"rna → {e['target'][2:]}", "n": e["n"],
                                 "R@1": e["recall"]["1"], "R@10": e["recall"]["10"], "chance@10": e["chance"]["10"],
                                 "median rank": e["median_rank"], "chance median": e["chance_median_rank"]})
    parts += ["\n## Cross-modal retrieval on held-out patients\n",
              table(ret_rows, ["variant", "patients", "pair", "n", "R@1", "R@10", "chance@10", "median rank",
                               "chance median"])]
    parts += ["\n## Goals\n", goals(rows_s, rows_t, ret_rows, variants)]
    parts += ["\n## Runtime\n", table([{"step": k, "minutes": v / 60} for k, v in times.items()], ["step", "minutes"])]
    text = "\n".join(parts) + "\n"
    print(text)
    (work / "summary.md").write_text(text)
    main_methods = [m for m in ("a:X_rna", "b:X_fused", "c:X_fused", "c:X_rna", "d:X_fused", "nested",
                                "best baseline") if rows_s and m in rows_s[0]]
    plot_tasks(rows_s, main_methods, plots / "survival.png", "survival c-index per cancer (PORPOISE folds)")
    if rows_t:
        plot_tasks(rows_t, main_methods, plots / "subtype.png", "subtype macro AUROC")


def goals(rows_s: list[dict], rows_t: list[dict], ret_rows: list[dict], variants: list[str]) -> str:
    """The issue's goals, counted on the survival table (and retrieval), each marked met or not met."""
    n = len(rows_s)
    lines = []
    if {"b", "c"} <= set(variants):
        beats_base = sum(r["c:X_fused"] >= r["best baseline"] for r in rows_s)
        beats_b = sum(r["c:X_fused"] > r["b:X_fused"] for r in rows_s)
        lines.append(f"- (c) X_fused at or above the best baseline (PCA16 RNA, ridge RNA, PCA16+8+8, early fusion): "
                     f"{beats_base}/{n} cancers (goal 6/8 or 3/4 of them): "
                     f"{'met' if beats_base >= 0.75 * n else 'not met'}")
        lines.append(f"- (c) X_fused above (b) X_fused: {beats_b}/{n} (goal 3/4): "
                     f"{'met' if beats_b >= 0.75 * n else 'not met'}")
    if {"a", "c"} <= set(variants):
        above = sum(r["c:X_rna"] > r["a:X_rna"] for r in rows_s)
        mean_diff = float(np.mean([r["c:X_rna"] - r["a:X_rna"] for r in rows_s]))
        lines.append(f"- (c) X_rna above (a) X_rna (also: (c) for patients whose CNV and mutations are absent, "
                     f"whose X_fused is X_rna / |X_rna|): {above}/{n} cancers, mean difference {mean_diff:+.3f}: "
                     f"{'met' if above > n / 2 and mean_diff > 0 else 'not met'}")
    if {"c", "d"} <= set(variants):
        diffs = [r["c:X_fused"] - r["d:X_fused"] for r in rows_s]
        close = sum(abs(d) <= 0.01 for d in diffs)
        verdict = ("met" if close >= 0.75 * n else "met on the mean only" if abs(np.mean(diffs)) <= 0.01
                   else "not met")
        lines.append(f"- (d) within 0.01 of (c) on X_fused: mean gap {np.mean(diffs):+.3f}, largest "
                     f"{max(diffs, key=abs):+.3f}, within 0.01 on {close}/{n} cancers: {verdict}")
    pooled = [r for r in ret_rows if r["variant"] == "c" and r["patients"] == "pooled"]
    if pooled:
        lines.append("- retrieval recall@10 on held-out patients, (c), pooled: "
                     + "; ".join(f"{r['pair']} {r['R@10']:.3f} vs chance {r['chance@10']:.3f}" for r in pooled))
        within = [r for r in ret_rows if r["variant"] == "c" and r["patients"] != "pooled"]
        if within:
            ratio = np.mean([r["R@10"] / r["chance@10"] for r in within])
            lines.append(f"- within a cancer, (c): mean recall@10 / chance = {ratio:.2f} over {len(within)} "
                         "cancer-pair cells")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

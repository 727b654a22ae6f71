"""Time the all-features baseline (``linear_all_*``) on a wide table: 500 patients x 20,000 features.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/linear_all_timing.py [--patients 500] [--features 20000]

1. One outer fold (400 training, 100 test patients), the whole ``--l2 auto`` grid (3 inner folds x 10
   penalties + the refit, 31 L-BFGS fits): the head on row-space coordinates (the default when
   features outnumber patients) and on all features (``reduce=False``), with the largest gap between
   their predictions (subtype: probabilities; survival: risks centred per fit).
2. ``biossl finetune --baseline-features table.h5ad`` with 5 folds, as a user runs it (PCA(16) and the
   all-features baseline), wall time per task.

The values are standard normal (a wide table's *shape* is what is timed), with a planted signal:
the subtype is the sign of the sum of the first 20 features plus noise, and survival times shorten
with that sum. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli import run_biossl as run  # noqa: E402

from biossl.downstream.methods import L2_GRID, AllFeaturesLinear  # noqa: E402
from biossl.downstream.tasks import Task, subtype_task, survival_task  # noqa: E402


def make_data(n: int, p: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features: n x p standard normal, labels: subtype, time, event), seed 0."""
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.standard_normal((n, p)), index=[f"P{i:04d}" for i in range(n)],
                     columns=[f"g{j}" for j in range(p)])
    signal = x.iloc[:, :20].sum(axis=1).to_numpy()
    labels = pd.DataFrame({"subtype": np.where(signal + 3 * rng.standard_normal(n) > 0, "a", "b"),
                           "time": rng.exponential(30, n) * np.exp(-0.1 * signal),
                           "event": (rng.random(n) < 0.5).astype(int)}, index=x.index)
    return x, labels


def one_fold(x: pd.DataFrame, task: Task, reduce: bool) -> tuple[float, np.ndarray, float]:
    """(seconds, test predictions, chosen penalty) of one outer fold with the whole grid."""
    n = len(task)
    train, test = np.arange(int(0.8 * n)), np.arange(int(0.8 * n), n)
    method = AllFeaturesLinear(x, l2=L2_GRID)
    method.reduce = reduce
    t0 = time.perf_counter()
    prediction = method.fit_predict(task, train, test, seed=0)
    return time.perf_counter() - t0, prediction, float(method.last_fit["l2"])


def main() -> None:
    """Time and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--features", type=int, default=20000)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "linear_all_timing")
    parser.add_argument("--skip-full", action="store_true", help="skip the fit on all features (slow for survival)")
    args = parser.parse_args()
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    x, labels = make_data(args.patients, args.features)
    print(f"{args.patients} patients x {args.features} features", flush=True)
    print("| task | head on | one fold, 31 fits (s) | chosen L2 | max prediction gap |")
    print("|---|---|---|---|---|")
    for kind in ("subtype", "survival"):
        task = subtype_task(labels, "subtype") if kind == "subtype" else survival_task(labels)
        fast, ref, l2 = one_fold(x, task, reduce=True)
        print(f"| {kind} | row-space coordinates | {fast:.1f} | {l2:g} | |", flush=True)
        if not args.skip_full:
            slow, other, l2_full = one_fold(x, task, reduce=False)
            if kind == "survival":
                ref, other = ref - ref.mean(), other - other.mean()
            print(f"| {kind} | all {args.features} features | {slow:.1f} | {l2_full:g} | "
                  f"{np.abs(ref - other).max():.1e} |", flush=True)
    table = work / "table.h5ad"
    if not table.exists():
        adata = ad.AnnData(x.to_numpy(dtype=np.float32), obs=pd.DataFrame({"patient_id": x.index}, index=x.index),
                           var=pd.DataFrame(index=x.columns))
        adata.write_h5ad(table)
    labels.rename_axis("patient_id").reset_index().to_csv(work / "labels.csv", index=False)
    print("\n| task | `biossl finetune`, 5 folds, PCA(16) + all-features baseline (s) |")
    print("|---|---|")
    for kind in ("subtype", "survival"):
        extra = ["--label-column", "subtype"] if kind == "subtype" else []
        secs = run(["finetune", "--labels", str(work / "labels.csv"), "--task", kind, *extra, "--folds", "5",
                    "--baseline-features", str(table), "--out", str(work / f"{kind}.json")],
                   work / "logs" / f"{kind}.log")
        print(f"| {kind} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()

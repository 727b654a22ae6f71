"""Choose the TCGA pretraining recipe without the test folds (nested selection over recipes).

    .venv/bin/python benchmarks/tcga_select.py r1=<work1>/results r2=<work2>/results r3=<work3>/results

Each ``<name>=<folder>`` holds the ``survival_*.json`` / ``subtype_*.json`` that
``benchmarks/tcga_expression.py --finetune-arg=--l2 --finetune-arg=auto`` wrote for one recipe (same
cohorts, same folds). With ``--l2 auto`` every outer fold of ``biossl finetune`` records the inner 3-fold
CV score of each L2 penalty, computed on that fold's training patients only (the inner folds depend only
on those patients and the seed, so they are the same for every recipe). Here, per task and outer fold,
the recipe whose best inner score is highest is chosen, and its score on the outer test fold is kept:
no test patient influences the choice of recipe or penalty. Prints, per task, that nested score next
to each recipe's own score, the best recipe chosen on the test folds (the optimistic number a
post-hoc choice reports) and the baselines of the same run: PCA(16), and the penalised linear model on all
standardised features (``linear_all_*``, in runs made since it exists; ``n/a`` in older results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

PROBE = "linear_probe"
BASELINES = ("pca16_cox", "pca16_logreg")
ALL_FEATURES = ("linear_all_cox", "linear_all_logreg")


def metric_of(result: dict[str, Any]) -> str:
    """The task's headline metric: c-index for survival, macro AUROC for subtype."""
    return "c_index" if result["task"] == "survival" else "macro_auroc"


def inner_best(fold: dict[str, Any]) -> float:
    """The best inner-CV score of one outer fold (the score of the penalty ``--l2 auto`` chose)."""
    scores = [v for v in fold.get("fit", {}).get("inner_cv", {}).values() if v is not None and np.isfinite(v)]
    if not scores:
        raise SystemExit("a fold has no inner-CV scores: run tcga_expression.py with --finetune-arg=--l2 "
                         "--finetune-arg=auto for every recipe")
    return float(max(scores))


def nested(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per outer fold, the recipe with the best inner score, and its outer score; plus each recipe's scores."""
    names = list(results)
    first = results[names[0]]
    for name in names[1:]:
        if results[name]["folds"]["assignment"] != first["folds"]["assignment"]:
            raise SystemExit(f"recipe {name} was scored on other folds than {names[0]}; rerun on the same splits")
    metric = metric_of(first)
    folds = {name: results[name]["methods"][PROBE]["folds"] for name in names}
    chosen, nested_scores = [], []
    for k in range(len(folds[names[0]])):
        best = max(names, key=lambda n: inner_best(folds[n][k]))
        chosen.append(best)
        nested_scores.append(folds[best][k][metric])
    per_recipe = {n: [f[metric] for f in folds[n]] for n in names}
    baseline = next(b for b in BASELINES if b in first["methods"])
    linear = next((b for b in ALL_FEATURES if b in first["methods"]), None)
    return {"metric": metric, "chosen": chosen, "nested": nested_scores, "recipes": per_recipe,
            "baseline": [f[metric] for f in first["methods"][baseline]["folds"]],
            "all_features": [f[metric] for f in first["methods"][linear]["folds"]] if linear else None}


def _ms(values: list[float] | None) -> str:
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def main() -> None:
    """Print the nested-selection table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", metavar="NAME=FOLDER")
    args = parser.parse_args()
    folders = dict(item.split("=", 1) for item in args.recipes)
    names = list(folders)
    tasks = sorted(set.intersection(*({p.name for p in Path(f).glob("*.json")} for f in folders.values())))
    header = ["task", "metric", "nested (chosen per fold)", *names, "best on test folds", "PCA(16)", "all features"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for task in tasks:
        results = {n: json.loads((Path(folders[n]) / task).read_text()) for n in names}
        r = nested(results)
        oracle = max(names, key=lambda n: np.mean(r["recipes"][n]))
        chosen = ", ".join(f"{n}×{r['chosen'].count(n)}" for n in names if n in r["chosen"])
        row = [task.removesuffix(".json"), r["metric"], f"{_ms(r['nested'])} ({chosen})",
               *(_ms(r["recipes"][n]) for n in names), f"{oracle} {np.mean(r['recipes'][oracle]):.3f}",
               _ms(r["baseline"]), _ms(r["all_features"])]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

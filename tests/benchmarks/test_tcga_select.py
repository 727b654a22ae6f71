"""benchmarks/tcga_select.py: the recipe of each outer fold is chosen by inner-CV scores only."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tcga_select.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("tcga_select", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(inner: list[dict[str, float]], outer: list[float], assignment: dict[str, int]) -> dict[str, Any]:
    folds = [{"fold": k, "c_index": c, "fit": {"l2": 1.0, "inner_cv": s}} for k, (s, c) in enumerate(zip(inner, outer))]
    baseline = [{"fold": k, "c_index": 0.6} for k in range(len(outer))]
    return {"task": "survival", "folds": {"assignment": assignment},
            "methods": {"linear_probe": {"folds": folds}, "pca16_cox": {"folds": baseline}}}


def test_each_fold_takes_the_recipe_with_the_best_inner_score_not_the_best_test_score() -> None:
    select = _load()
    folds = {"p1": 0, "p2": 1}
    # a: better inner score in fold 0, worse test score there; b: better inner score in fold 1
    a = _result([{"0.1": 0.70, "1": 0.65}, {"0.1": 0.50}], [0.55, 0.90], folds)
    b = _result([{"0.1": 0.60}, {"0.1": 0.52, "1": 0.58}], [0.80, 0.60], folds)
    r = select.nested({"a": a, "b": b})
    assert r["metric"] == "c_index"
    assert r["chosen"] == ["a", "b"]
    assert r["nested"] == [0.55, 0.60]  # the chosen recipes' outer scores, not the higher ones of the others
    assert r["baseline"] == [0.6, 0.6]


def test_recipes_scored_on_other_folds_or_without_inner_scores_are_refused() -> None:
    select = _load()
    a = _result([{"0.1": 0.7}], [0.6], {"p1": 0})
    with pytest.raises(SystemExit, match="other folds"):
        select.nested({"a": a, "b": _result([{"0.1": 0.7}], [0.6], {"p1": 1})})
    with pytest.raises(SystemExit, match="l2"):
        select.nested({"a": a, "b": _result([{}], [0.6], {"p1": 0})})

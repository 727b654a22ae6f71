"""Patient-level k-fold cross-validation of downstream methods, summarised as mean ± sd over folds.

Every method is scored on the same patients and the same folds: those with a label and with every
method's inputs (:func:`common_patients`). Folds come from the user (:func:`biossl.data.splits.read_splits`
format, restricted to those patients) or are made stratified by class (subtype) or by event (survival)
with :func:`biossl.data.splits.make_splits`.

Folds where a metric is undefined (a survival test fold with no comparable pair, e.g. no event; a
single class in a subtype test fold: no AUROC) are reported with the metric ``null`` and a ``note``,
and the mean and sd run over the other folds (``n_folds`` says how many). The sd is the sample sd
(ddof 1). Folds made here for survival are stratified by event, so each holds events when there are
at least as many events as folds (fewer is an error).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from biossl.data.keys import PATIENT_ID
from biossl.data.labels import MAX_NAMED
from biossl.data.splits import FOLD, make_splits
from biossl.downstream.methods import Method
from biossl.downstream.tasks import Task
from biossl.errors import InputError

logger = logging.getLogger(__name__)


def common_patients(task: Task, methods: Sequence[Method]) -> Task:
    """Restrict the task to the patients every method can score; the others are recorded as excluded.

    Raises:
        InputError: no labelled patient is left.
    """
    out = task
    for method in methods:
        out = out.subset(sorted(method.patients() & set(out.patients)), reason=f"no_input:{method.name}")
    if not len(out):
        raise InputError(f"none of the {len(task)} labelled patients has the inputs of every method "
                         f"({', '.join(m.name for m in methods)}); check that the labels' patient IDs match "
                         "the embeddings' / feature table's patient IDs")
    return out


def folds_for(task: Task, *, splits: pd.DataFrame | None = None, n_folds: int = 5, seed: int = 0,
              source: str = "") -> tuple[Task, pd.DataFrame]:
    """Folds of the task's patients: the user's ``splits`` restricted to them, or new stratified ones.

    With ``splits``, labelled patients that no fold holds are left out (``excluded["no_fold"]``) and
    split patients without a label or inputs are ignored, both with a warning.

    Returns:
        ``(task restricted to the folds' patients, split table patient_id, fold)``.

    Raises:
        InputError: no split patient is labelled; a fold keeps no patient; fewer patients of a class
            (or fewer events) than folds.
    """
    if splits is not None:
        where = source or "the split table"
        in_splits = set(map(str, splits[PATIENT_ID]))
        ignored = sorted(in_splits - set(task.patients))
        if ignored:
            logger.warning("%d patient(s) of %s have no label or no inputs and are ignored, e.g. %s",
                           len(ignored), where, ignored[:MAX_NAMED])
        restricted = task.subset(sorted(in_splits & set(task.patients)), reason="no_fold")
        if restricted.excluded.get("no_fold"):
            left = restricted.excluded["no_fold"]
            logger.warning("%d labelled patient(s) are in no fold of %s and are left out, e.g. %s", len(left),
                           where, left[:MAX_NAMED])
        if not len(restricted):
            raise InputError(f"no patient of {where} has a label and inputs; check that its patient IDs match "
                             "the labels table")
        table = splits[splits[PATIENT_ID].astype(str).isin(restricted.patients)][[PATIENT_ID, FOLD]]
        table = table.assign(**{PATIENT_ID: table[PATIENT_ID].astype(str)}).sort_values(PATIENT_ID)
        empty = sorted(set(splits[FOLD]) - set(table[FOLD]))
        if empty:
            raise InputError(f"fold(s) {empty} of {where} keep no patient with a label and inputs; "
                             "use splits made for these patients, or --folds K")
        return restricted, table.reset_index(drop=True)
    strata = task.strata()
    counts = strata.value_counts()
    if n_folds < 2:
        raise InputError(f"--folds must be at least 2; got {n_folds}")
    if n_folds > len(task):
        raise InputError(f"--folds {n_folds} is more than the {len(task)} labelled patients; use fewer folds")
    rare = counts[counts < n_folds]
    if task.kind == "survival" and "1" in rare.index:
        raise InputError(f"only {int(rare['1'])} event(s) among {len(task)} patients for {n_folds} folds: every test "
                         f"fold needs an event to score a c-index; use --folds {max(2, int(rare['1']))} or fewer")
    if task.kind == "subtype" and len(rare):
        named = ", ".join(f"{c!r} ({int(n)})" for c, n in rare.items())
        raise InputError(f"class(es) {named} have fewer patients than --folds {n_folds}, so some test folds would "
                         "lack them; use fewer folds, merge rare classes, or leave them out of the labels table")
    stratify = strata if task.kind == "subtype" or len(rare) == 0 else None
    return task, make_splits(task.patients, n_splits=n_folds, labels=stratify, seed=seed)


def summarise(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample sd (ddof 1) over the defined values; ``n_folds`` counts them."""
    ok = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {"mean": float(np.mean(ok)) if ok else None,
            "sd": float(np.std(ok, ddof=1)) if len(ok) > 1 else None, "n_folds": len(ok)}


def _why_undefined(task: Task, test: np.ndarray, metric: str) -> str:
    if metric == "c_index":
        assert task.event is not None and task.time is not None
        if task.event[test].sum() == 0:
            return "no event in the test fold: c-index undefined"
        return ("no comparable pair in the test fold (every event comes after the other test patients' "
                "follow-up ends): c-index undefined")
    return f"one class in the test fold: {metric} undefined"


def cross_validate(task: Task, methods: Sequence[Method], splits: pd.DataFrame, *, seed: int = 0
                   ) -> dict[str, dict[str, Any]]:
    """Fit and score every method on every fold.

    Returns:
        ``{method name: {"settings": ..., "folds": [{"fold", "n_train", "n_test", <metric>: value|None,
        "note"?}], "summary": {<metric>: {"mean", "sd", "n_folds"}}}}``.

    Raises:
        InputError: a survival training fold has no event.
    """
    fold_of = dict(zip(splits[PATIENT_ID].astype(str), splits[FOLD].astype(int)))
    fold_per_patient = np.array([fold_of[p] for p in task.patients])
    results: dict[str, dict[str, Any]] = {m.name: {"settings": m.describe(), "folds": []} for m in methods}
    for k in sorted(set(fold_per_patient)):
        test = np.flatnonzero(fold_per_patient == k)
        train = np.flatnonzero(fold_per_patient != k)
        if task.kind == "survival":
            assert task.event is not None
            if task.event[train].sum() == 0:
                raise InputError(f"fold {k}: none of its {len(train)} training patients had an event, so no survival "
                                 "model can be fitted; use other splits or --folds with fewer folds")
        for method in methods:
            prediction = method.fit_predict(task, train, test, seed=seed)
            scores = task.score(test, prediction)
            row: dict[str, Any] = {"fold": int(k), "n_train": len(train), "n_test": len(test)}
            row.update({name: None if math.isnan(v) else v for name, v in scores.items()})
            notes = [_why_undefined(task, test, name) for name, v in scores.items() if math.isnan(v)]
            if notes:
                row["note"] = "; ".join(notes)
                logger.warning("fold %d, %s: %s; left out of that metric's mean", k, method.name, row["note"])
            results[method.name]["folds"].append(row)
            logger.info("fold %d %-16s %s", k, method.name,
                        "  ".join(f"{n} {v:.3f}" for n, v in scores.items() if not math.isnan(v)))
    for result in results.values():
        result["summary"] = {name: summarise([f[name] for f in result["folds"]]) for name in task.metric_names}
    return results


def summary_table(results: Mapping[str, Mapping[str, Any]], metric_names: Sequence[str]) -> pd.DataFrame:
    """One row per method, ``mean ± sd (n folds)`` per metric."""
    rows = []
    for name, result in results.items():
        row = {"method": name}
        for metric in metric_names:
            s = result["summary"][metric]
            row[metric] = ("n/a" if s["mean"] is None else f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["sd"] is not None
                           else f"{s['mean']:.3f}") + f" ({s['n_folds']} folds)"
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["common_patients", "cross_validate", "folds_for", "summarise", "summary_table"]

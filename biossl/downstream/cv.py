"""Patient-level k-fold cross-validation of downstream methods, summarised as mean ± sd over folds.

Every method is scored on the same patients and the same folds: those with a label and with every
method's inputs (:func:`common_patients`). Folds come from the user (:func:`biossl.data.splits.read_splits`
format, restricted to those patients) or are made stratified by class (subtype) or by event (survival)
with :func:`biossl.data.splits.make_splits`. A user's held-out design (``patient_id, split`` with
train/test) is one "fold": every method trains on the training patients and is scored on the test set
(its ``sd`` is then ``null``).

Folds where a metric is undefined (a survival test fold with no comparable pair, e.g. no event; a
single class in a subtype test fold: no AUROC) are reported with the metric ``null`` and a ``note``,
and the mean and sd run over the other folds (``n_folds`` says how many). The sd is the sample sd
(ddof 1). Folds made here for survival are stratified by event, so each holds events when there are
at least as many events as folds (fewer is an error).

Survival folds are scored with Harrell's c-index (``c_index``, the headline), Uno's IPCW c-index
(``uno_c``) and, for methods that give survival curves (``last_survival``: the probe's and the
all-features heads, the PCA Cox baseline), the integrated Brier score (``integrated_brier``, lower is
better); both censoring-robust metrics estimate the censoring distribution on the fold's training
patients (:mod:`biossl.downstream.metrics`). A method whose inner CV chose a penalty at an end of its
grid is flagged per fold (``fit.l2_at_edge``) and logged as a warning.

**Label fractions** (:func:`subsample_training`, :func:`label_efficiency`). Within each training fold
of ``n`` labelled patients, a fraction ``f`` keeps ``round(f * n)`` of them (halves round up; ``f = 1``
keeps all), stratified: by class for subtype, by event/censored for survival. Each stratum ``s`` first
gets ``floor(f * n_s)``, the patients left go to the strata with the largest remainders (ties: class
order), then every class present in the training fold is raised to at least 1 patient (subtype) and
the events to at least 2 (survival), taking from the stratum with the most patients above its
minimum. Which patients: a permutation of each stratum drawn from numpy's generator seeded
``(seed, fold)``, of which the first ``k_s`` are kept -- so for one seed and fold, smaller fractions
keep subsets of larger ones. The test fold is always scored in full. The training patients a
fraction drops are *unlabelled* for that fit: semi-supervised methods may use them. A fraction
outside (0, 1], or one that keeps fewer patients than classes (subtype) or fewer than 2 (survival),
or a training fold with fewer than 2 events, is an :class:`~biossl.errors.InputError` raised before
anything is fitted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from biossl.data.labels import MAX_NAMED, look_alike_note, look_alikes, warn_look_alikes
from biossl.data.splits import FOLD, TRAIN_ONLY, make_splits
from biossl.downstream.methods import Method
from biossl.downstream.metrics import NonFiniteSurvival, integrated_brier_score, survival_horizon, uno_c_index
from biossl.downstream.tasks import Task
from biossl.errors import InputError
from biossl.keys import PATIENT_ID

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
              source: str = "", groups: Mapping[str, str] | None = None,
              group_name: str = "group") -> tuple[Task, pd.DataFrame]:
    """Folds of the task's patients: the user's ``splits`` restricted to them, or new stratified ones.

    With ``splits``, labelled patients that no fold holds are left out (``excluded["no_fold"]``) and
    split patients without a label or inputs are ignored, both with a warning.

    With ``groups`` (patient -> group, e.g. the submitting ``site``; ``group_name`` names it in
    messages), folds are *group-preserving*: every group's patients are in one fold, so no group is
    in both the training and the test patients of any fold. Folds made here are then
    :class:`~sklearn.model_selection.StratifiedGroupKFold` folds (by class or event, as far as the
    groups allow); the user's ``splits`` are checked instead, and one that puts a group on both sides
    is an error.

    Returns:
        ``(task restricted to the folds' patients, split table patient_id, fold)``.

    Raises:
        InputError: no split patient is labelled; a fold keeps no patient; fewer patients of a class
            (or fewer events) than folds; with ``groups``: a patient without a group, fewer groups than
            folds, a class in fewer groups than folds, or user splits that share a group between
            training and test patients.
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
            warn_look_alikes(left, [*restricted.patients, *ignored], f"the labelled patients in no fold of {where}",
                             "split patient")
        if not len(restricted):
            note = look_alike_note(look_alikes(ignored, task.patients), where, "the labels table")
            raise InputError(f"no patient of {where} has a label and inputs; check that its patient IDs match "
                             f"the labels table{note}")
        table = splits[splits[PATIENT_ID].astype(str).isin(restricted.patients)][[PATIENT_ID, FOLD]]
        table = table.assign(**{PATIENT_ID: table[PATIENT_ID].astype(str)}).sort_values(PATIENT_ID)
        empty = sorted(set(splits[FOLD]) - set(table[FOLD]))
        if TRAIN_ONLY in empty:
            raise InputError(f"no training patient (split train) of {where} has a label and inputs; check that its "
                             "patient IDs match the labels table")
        if empty:
            raise InputError(f"fold(s) {empty} of {where} keep no patient with a label and inputs; "
                             "use splits made for these patients, or --folds K")
        table = table.reset_index(drop=True)
        if groups is not None:  # only the patients the user's folds score need a group
            _check_groups(restricted, groups, group_name)
            _check_group_preserving(table, groups, group_name, where)
        return restricted, table
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
    if groups is None:
        return task, make_splits(task.patients, n_splits=n_folds, labels=stratify, seed=seed)
    _check_groups(task, groups, group_name)
    grouping = {p: str(groups[p]) for p in task.patients}
    n_groups = len(set(grouping.values()))
    if n_groups < n_folds:
        raise InputError(f"only {n_groups} {group_name} value(s) among the {len(task)} labelled patients for "
                         f"--folds {n_folds}: a {group_name} cannot be split across folds; use --folds {n_groups} "
                         f"or fewer (at least 2)")
    return task, make_splits(task.patients, n_splits=n_folds, labels=stratify, groups=grouping, seed=seed)


def _check_groups(task: Task, groups: Mapping[str, str], group_name: str) -> None:
    missing = [p for p in task.patients if p not in groups or pd.isna(groups[p]) or str(groups[p]).strip() == ""]
    if missing:
        raise InputError(f"{len(missing)} labelled patient(s) have no {group_name} value, e.g. {missing[:MAX_NAMED]}; "
                         f"fill the {group_name} column for them or leave them out of the labels table")


def _check_group_preserving(splits: pd.DataFrame, groups: Mapping[str, str], group_name: str, where: str) -> None:
    """Raise when a group has patients in the test fold and in the training patients of some fold."""
    by_group = splits.assign(_g=splits[PATIENT_ID].map(lambda p: str(groups[p]))).groupby("_g")[FOLD]
    folds_of: dict[str, list[int]] = {str(g): sorted({int(x) for x in f}) for g, f in by_group}
    shared = {g: f for g, f in folds_of.items() if len(f) > 1}
    if shared:
        named = ", ".join(f"{g!r} (folds {f})" for g, f in list(shared.items())[:MAX_NAMED])
        raise InputError(f"{len(shared)} {group_name} value(s) have patients in more than one fold of {where}, so they "
                         f"are in the training and the test patients of a fold: {named}; use {group_name}-preserving "
                         f"splits, or drop --splits and let --group-by make them")


#: Survival metrics scored here beside the task's own (Harrell's c-index).
ROBUST_SURVIVAL_METRICS = ("uno_c", "integrated_brier")
NO_CURVES = "the method gives no survival curves: integrated Brier score not computed"


def metric_names(task: Task) -> tuple[str, ...]:
    """Every metric a fold of ``task`` is scored with, the headline first."""
    return (*task.metric_names, *ROBUST_SURVIVAL_METRICS) if task.kind == "survival" else task.metric_names


def fold_scores(task: Task, train: np.ndarray, test: np.ndarray, prediction: np.ndarray,
                survival: Any = None) -> tuple[dict[str, float], dict[str, str]]:
    """``(metric -> value, metric -> why it is undefined)`` of one fold's prediction (:func:`metric_names`).

    ``survival`` are the test patients' survival curves (``times -> [n_test, T]``), if the method gives them.
    """
    scores = task.score(test, prediction)
    if task.kind != "survival":
        return scores, {m: _why_undefined(task, test, m) for m, v in scores.items() if math.isnan(v)}
    assert task.time is not None and task.event is not None
    t_train, e_train, t, e = task.time[train], task.event[train], task.time[test], task.event[test]
    scores["uno_c"] = uno_c_index(t_train, e_train, t, prediction, e)
    diverged = None
    try:
        scores["integrated_brier"] = (integrated_brier_score(t_train, e_train, t, e, survival)
                                      if survival is not None else math.nan)
    except NonFiniteSurvival as exc:
        scores["integrated_brier"], diverged = math.nan, str(exc)
    why = {m: _why_undefined(task, test, m) for m, v in scores.items() if math.isnan(v)}
    if survival is None:
        why["integrated_brier"] = NO_CURVES
    if "uno_c" in why:
        why["uno_c"] = (f"no comparable pair with its earlier time before the horizon "
                        f"{survival_horizon(t_train):.4g} (80th percentile of training follow-up): Uno's c undefined")
    if diverged is not None:
        why["integrated_brier"] = diverged
    elif "integrated_brier" in why and survival is not None:
        why["integrated_brier"] = ("fewer than 2 times of the Brier grid fall inside the test fold's follow-up: "
                                   "integrated Brier score undefined")
    return scores, why


def _edge_warning(method: Method, fold: int, fit: Mapping[str, Any]) -> None:
    """Warn when the inner CV chose a penalty at an end of the grid (``fit["l2_at_edge"]``)."""
    grid = [float(v) for v in fit.get("inner_cv", {})]
    if not fit.get("l2_at_edge") or len(grid) < 2:
        return
    l2 = float(fit["l2"])
    end = "smallest" if l2 == min(grid) else "largest"
    scores = list(fit["inner_cv"].values())
    at = scores[0] if end == "smallest" else scores[-1]
    nxt = scores[1] if end == "smallest" else scores[-2]
    flat = " (its inner-CV score equals the next value's: flat there)" if at == nxt else ""
    option = getattr(method, "l2_option", "the L2 grid")
    logger.warning("%s, fold %d: the inner CV chose L2 %g, the %s of the grid %g ... %g%s; the best penalty may lie "
                   "beyond it: give a wider grid with %s L,L,...", method.name, fold, l2, end, min(grid), max(grid),
                   flat, option)


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


FRACTION_RULE = ("round(f * n) of each training fold's n labelled patients (halves up), stratified by class "
                 "(subtype) or event (survival), at least 1 per class / 2 events; nested across fractions "
                 "for a seed and fold; the test fold is scored in full")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def _fraction_text(fraction: float) -> str:
    return f"{fraction:g}"


def check_fraction(fraction: float) -> None:
    """Raise :class:`InputError` unless ``0 < fraction <= 1``."""
    if not (isinstance(fraction, int | float) and 0.0 < fraction <= 1.0):
        raise InputError(f"--label-fractions: {fraction} is outside (0, 1]; give fractions of each training fold's "
                         "labelled patients, e.g. 0.1,0.25,1")


def _strata(task: Task, train: np.ndarray) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Per stratum of the training patients: positions into ``task``, the minimum kept, a name."""
    if task.kind == "subtype":
        assert task.y is not None
        classes = [c for c in range(len(task.classes)) if (task.y[train] == c).any()]
        return ([train[task.y[train] == c] for c in classes], [1] * len(classes),
                [task.classes[c] for c in classes])
    assert task.event is not None
    events = task.event[train].astype(bool)
    return [train[events], train[~events]], [2, 0], ["events", "censored"]


def _too_few(task: Task, n_keep: int, minimum: int, n: int, fraction: float, fold: int) -> InputError:
    what = (f"fewer than one per class ({minimum} classes)" if task.kind == "subtype"
            else "fewer than the 2 events a survival fit needs")
    lowest = (minimum - 0.5) / n
    return InputError(f"--label-fractions {_fraction_text(fraction)} keeps {n_keep} of the {n} labelled training "
                      f"patients of fold {fold} (round({_fraction_text(fraction)} x {n})), {what}; use fractions of "
                      f"at least {math.ceil(lowest * 1000) / 1000:g} with these folds, or leave that fraction out")


def subsample_training(task: Task, train: np.ndarray, fraction: float, *, seed: int = 0, fold: int = 0) -> np.ndarray:
    """The training positions a label fraction keeps (sorted); the rule is in the module docstring.

    Raises:
        InputError: the fraction is outside (0, 1], keeps fewer patients than classes (subtype) or
            than 2 (survival), or the training fold has fewer than 2 events (survival, fraction < 1).
    """
    check_fraction(fraction)
    train = np.asarray(train, dtype=np.int64)
    if fraction == 1.0:
        return np.sort(train)
    strata, minimum, names = _strata(task, train)
    sizes = np.array([len(s) for s in strata])
    if task.kind == "survival" and sizes[0] < 2:
        raise InputError(f"fold {fold}: only {int(sizes[0])} event(s) among its {len(train)} training patients; "
                         "a label fraction below 1 keeps at least 2 events: use fewer folds (--folds) or "
                         "leave out fractions below 1")
    n_keep = _round_half_up(fraction * len(train))
    need = sum(minimum)
    if n_keep < max(need, 1):
        raise _too_few(task, n_keep, need, len(train), fraction, fold)
    quota = fraction * sizes
    kept = np.floor(quota + 1e-9).astype(int)
    remainder = quota - kept
    for i in sorted(range(len(strata)), key=lambda i: (-remainder[i], i))[: n_keep - int(kept.sum())]:
        kept[i] += 1
    low = [min(m, int(n)) for m, n in zip(minimum, sizes)]
    for i in range(len(strata)):
        while kept[i] < low[i]:
            donor = max(range(len(strata)), key=lambda j: (kept[j] - low[j], -j))
            kept[donor] -= 1
            kept[i] += 1
    rng = np.random.default_rng((seed, fold))
    chosen = [stratum[rng.permutation(len(stratum))[:k]] for stratum, k in zip(strata, kept)]
    return np.sort(np.concatenate(chosen))


def fold_indices(task: Task, splits: pd.DataFrame) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``[(fold, train positions, test positions)]`` of the task's patients.

    Patients of fold :data:`~biossl.data.splits.TRAIN_ONLY` (a held-out design's training set) are in
    every training set and in no test set; that fold is not listed.
    """
    fold_of = dict(zip(splits[PATIENT_ID].astype(str), splits[FOLD].astype(int)))
    fold_per_patient = np.array([fold_of[p] for p in task.patients])
    return [(int(k), np.flatnonzero(fold_per_patient != k), np.flatnonzero(fold_per_patient == k))
            for k in sorted(set(fold_per_patient)) if k != TRAIN_ONLY]


def check_fractions(task: Task, splits: pd.DataFrame, fractions: Sequence[float]) -> None:
    """Fail early (before any fit) if a fraction cannot be applied to a fold (:func:`subsample_training`)."""
    for fraction in fractions:
        for k, train, _ in fold_indices(task, splits):
            subsample_training(task, train, fraction, seed=0, fold=k)


def cross_validate(task: Task, methods: Sequence[Method], splits: pd.DataFrame, *, seed: int = 0,
                   fraction: float = 1.0, unlabelled: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Fit and score every method on every fold.

    Args:
        task: The task, restricted to the patients every method scores (:func:`common_patients`).
        methods: What to fit.
        splits: ``patient_id, fold`` of the task's patients.
        seed: Seed of the fits and of the label subsample.
        fraction: Label fraction of each training fold (:func:`subsample_training`; 1 = all).
        unlabelled: Patients without a label (never in a fold), offered to semi-supervised methods
            with the training patients the fraction drops; each method gets those it has inputs for.

    Returns:
        ``{method name: {"settings": ..., "folds": [{"fold", "n_train", "n_train_labelled", "n_test",
        <metric>: value|None, "note"?, "fit"?}], "summary": {<metric>: {"mean", "sd", "n_folds"}}}}``.

    Raises:
        InputError: a survival training fold has no event; a fraction that cannot be applied.
    """
    from biossl.progress import progress

    results: dict[str, dict[str, Any]] = {m.name: {"settings": m.describe(), "folds": []} for m in methods}
    inputs = {m.name: m.patients() for m in methods}
    plan = []  # every fold checked and subsampled before the first fit
    for k, train_all, test in fold_indices(task, splits):
        if task.kind == "survival":
            assert task.event is not None
            if task.event[train_all].sum() == 0:
                raise InputError(f"fold {k}: none of its {len(train_all)} training patients had an event, so no "
                                 "survival model can be fitted; use other splits or --folds with fewer folds")
        train = subsample_training(task, train_all, fraction, seed=seed, fold=k)
        plan.append((k, train_all, train, test, [task.patients[i] for i in np.setdiff1d(train_all, train)]))
    fits = [(fold, method) for fold in plan for method in methods]
    desc = "cross-validation" if fraction == 1.0 else f"labels {_fraction_text(fraction)}, seed {seed}"
    for (k, train_all, train, test, dropped), method in progress(fits, desc, total=len(fits), unit="fit"):
        pool = [p for p in [*unlabelled, *dropped] if p in inputs[method.name]]
        prediction = method.fit_predict(task, train, test, seed=seed, unlabelled=pool)
        scores, why = fold_scores(task, train, test, prediction, getattr(method, "last_survival", None))
        row: dict[str, Any] = {"fold": int(k), "n_train": len(train_all), "n_train_labelled": len(train),
                               "n_test": len(test)}
        row.update({name: None if math.isnan(v) else v for name, v in scores.items()})
        fit = getattr(method, "last_fit", None)
        if fit:
            row["fit"] = dict(fit)
            _edge_warning(method, k, fit)
        if why:
            row["note"] = "; ".join(why.values())
            undefined = [v for v in why.values() if v != NO_CURVES]
            if undefined:
                logger.warning("fold %d, %s: %s; left out of that metric's mean", k, method.name,
                               "; ".join(undefined))
        results[method.name]["folds"].append(row)
        logger.info("fold %d %-16s %s", k, method.name,
                    "  ".join(f"{n} {v:.3f}" for n, v in scores.items() if not math.isnan(v)))
    for result in results.values():
        result["summary"] = {name: summarise([f[name] for f in result["folds"]]) for name in metric_names(task)}
    return results


def label_efficiency(task: Task, methods: Sequence[Method], splits: pd.DataFrame, fractions: Sequence[float],
                     seeds: Sequence[int], *, unlabelled: Sequence[str] = ()
                     ) -> tuple[dict[str, Any], dict[tuple[float, int], dict[str, dict[str, Any]]]]:
    """Every method at every label fraction and seed, on the same folds.

    Returns:
        ``(section, runs)``: the JSON section ``{"fractions", "seeds", "metric", "rule", "methods": {name:
        {fraction: {"n_train_labelled": [per fold], "runs": [{"seed", "fold", "n_train_labelled", <metrics>}],
        "summary": {<metric>: {"mean", "sd", "n"}}}}}}`` -- mean and sample sd over folds x seeds, ``n``
        the defined values -- and the raw :func:`cross_validate` result per ``(fraction, seed)``.

    Raises:
        InputError: a fraction that cannot be applied to some fold (checked before any fit).
    """
    check_fractions(task, splits, fractions)
    runs: dict[tuple[float, int], dict[str, dict[str, Any]]] = {}
    for fraction in fractions:
        for s in seeds:
            logger.info("label fraction %s, seed %d", _fraction_text(fraction), s)
            runs[(fraction, s)] = cross_validate(task, methods, splits, seed=s, fraction=fraction,
                                                 unlabelled=unlabelled)
    per_method: dict[str, dict[str, Any]] = {}
    for method in methods:
        by_fraction: dict[str, Any] = {}
        for fraction in fractions:
            rows = [{"seed": s, **{k: v for k, v in f.items() if k not in ("n_train", "n_test", "fit")},
                     **{key: f["fit"][key] for key in ("pseudo_label", "l2", "l2_at_edge") if key in f.get("fit", {})}}
                    for s in seeds for f in runs[(fraction, s)][method.name]["folds"]]
            summary = {}
            for metric in metric_names(task):
                stats = summarise([r[metric] for r in rows])
                summary[metric] = {"mean": stats["mean"], "sd": stats["sd"], "n": stats["n_folds"]}
            by_fraction[_fraction_text(fraction)] = {
                "n_train_labelled": [f["n_train_labelled"] for f in runs[(fraction, seeds[0])][method.name]["folds"]],
                "runs": rows, "summary": summary}
        per_method[method.name] = by_fraction
    section = {"fractions": [float(f) for f in fractions], "seeds": [int(s) for s in seeds],
               "metric": task.metric_names[0], "rule": FRACTION_RULE,
               "sd": "sample sd over folds x seeds (ddof 1); undefined values left out (n)", "methods": per_method}
    return section, runs


def label_efficiency_table(section: Mapping[str, Any], metric: str | None = None) -> pd.DataFrame:
    """One row per method, ``mean ± sd`` of ``metric`` (default the headline one) per fraction."""
    metric = metric or section["metric"]
    rows = []
    for name, by_fraction in section["methods"].items():
        row = {"method": name}
        for fraction, entry in by_fraction.items():
            s = entry["summary"][metric]
            row[fraction] = ("n/a" if s["mean"] is None else f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["sd"] is not None
                             else f"{s['mean']:.3f}")
        rows.append(row)
    return pd.DataFrame(rows)


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


__all__ = ["FRACTION_RULE", "ROBUST_SURVIVAL_METRICS", "check_fraction", "check_fractions", "common_patients",
           "cross_validate", "fold_indices", "fold_scores", "folds_for", "label_efficiency", "label_efficiency_table",
           "metric_names", "subsample_training", "summarise", "summary_table"]

"""Label fractions (counts, strata, nesting, errors), label-efficiency summaries and the semi-supervised probe.

On the demo cohort's real expression and labels: 24 patients, 12 CCRCC / 12 PRCC, 8 deaths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl.data.expression import read_expression
from biossl.data.labels import read_labels
from biossl.downstream.cv import cross_validate, fold_indices, folds_for, label_efficiency, subsample_training
from biossl.downstream.methods import LinearProbe, PCABaseline, feature_frame
from biossl.downstream.tasks import Task, subtype_task, survival_task
from biossl.errors import InputError


@pytest.fixture(scope="module")
def expression(demo_cohort: Path) -> pd.DataFrame:
    adata = read_expression(demo_cohort / "expression.csv", aggregate="mean")
    return feature_frame(adata.X, list(adata.obs["patient_id"]), what="demo expression")


@pytest.fixture(scope="module")
def labels(demo_cohort: Path) -> pd.DataFrame:
    return read_labels(demo_cohort / "labels.csv")


def _folds(task: Task) -> tuple[Task, pd.DataFrame]:
    return folds_for(task, n_folds=3, seed=0)


def test_subtype_fractions_keep_the_documented_counts_stratified_and_nested(labels: pd.DataFrame) -> None:
    task, folds = _folds(subtype_task(labels, "subtype"))
    assert task.y is not None
    for k, train, _ in fold_indices(task, folds):
        assert len(train) == 16 and np.bincount(task.y[train]).tolist() == [8, 8]
        kept = {f: subsample_training(task, train, f, seed=3, fold=k) for f in (0.1, 0.25, 0.5, 1.0)}
        # round(f x 16): 0.1 -> 2 (1.6), 0.25 -> 4, 0.5 -> 8, 1 -> all 16; half from each class.
        assert {f: np.bincount(task.y[idx], minlength=2).tolist() for f, idx in kept.items()} == {
            0.1: [1, 1], 0.25: [2, 2], 0.5: [4, 4], 1.0: [8, 8]}
        assert set(kept[0.1]) < set(kept[0.25]) < set(kept[0.5]) < set(kept[1.0]) == set(train)  # nested
        assert np.array_equal(kept[0.25], subsample_training(task, train, 0.25, seed=3, fold=k))  # repeatable
    _, train, _ = fold_indices(task, folds)[0]
    draws = {tuple(subsample_training(task, train, 0.25, seed=s, fold=0)) for s in range(5)}
    assert len(draws) > 1  # the seed picks the patients


def test_survival_fractions_keep_at_least_two_events(labels: pd.DataFrame) -> None:
    task, folds = _folds(survival_task(labels))
    assert task.event is not None
    for k, train, _ in fold_indices(task, folds):
        events = int(task.event[train].sum())
        assert len(train) == 16 and events in (5, 6)
        small = subsample_training(task, train, 0.1, seed=0, fold=k)  # round(1.6) = 2 patients
        assert len(small) == 2 and task.event[small].sum() == 2  # raised to the 2-event minimum
        half = subsample_training(task, train, 0.5, seed=0, fold=k)
        # 6 events: quotas 3 + 5. 5 events: floors 2 + 5, the 8th patient to the tied remainders' first (events).
        assert len(half) == 8 and task.event[half].sum() == 3


@pytest.mark.parametrize(("kind", "fraction", "message"), [
    ("subtype", 0.0, "--label-fractions: 0.0 is outside (0, 1]"),
    ("subtype", 1.5, "--label-fractions: 1.5 is outside (0, 1]"),
    ("subtype", 0.05, "--label-fractions 0.05 keeps 1 of the 16 labelled training patients of fold 0 (round(0.05 x "
                      "16)), fewer than one per class (2 classes); use fractions of at least 0.094"),
    ("survival", 0.05, "fewer than the 2 events a survival fit needs; use fractions of at least 0.094"),
])
def test_bad_fractions_are_input_errors_before_any_fit(labels: pd.DataFrame, expression: pd.DataFrame, kind: str,
                                                       fraction: float, message: str) -> None:
    task = subtype_task(labels, "subtype") if kind == "subtype" else survival_task(labels)
    task, folds = _folds(task)
    probe = LinearProbe(expression)
    with pytest.raises(InputError) as err:
        label_efficiency(task.subset(task.patients), [probe], folds, [1.0, fraction], [0])
    assert message in str(err.value)
    assert probe.last_fit == {}  # nothing was fitted, not even the valid fraction


def test_label_efficiency_summarises_folds_times_seeds(labels: pd.DataFrame, expression: pd.DataFrame) -> None:
    task = subtype_task(labels, "subtype").subset(list(expression.index))  # the 21 patients with expression
    task, folds = _folds(task)
    methods = [LinearProbe(expression, name="probe"), PCABaseline(expression, n_components=4, name="pca")]
    section, runs = label_efficiency(task, methods, folds, [0.25, 1.0], [0, 1])
    assert section["fractions"] == [0.25, 1.0] and section["seeds"] == [0, 1] and section["metric"] == "macro_auroc"
    n_train = [f["n_train"] for f in runs[(1.0, 0)]["probe"]["folds"]]
    for name in ("probe", "pca"):
        quarter, full = section["methods"][name]["0.25"], section["methods"][name]["1"]
        assert full["n_train_labelled"] == n_train
        assert quarter["n_train_labelled"] == [int(np.floor(0.25 * n + 0.5)) for n in n_train]
        assert len(quarter["runs"]) == 6 and {(r["seed"], r["fold"]) for r in quarter["runs"]} == {
            (s, k) for s in (0, 1) for k in (0, 1, 2)}
        values = [r["macro_auroc"] for r in quarter["runs"] if r["macro_auroc"] is not None]
        summary = quarter["summary"]["macro_auroc"]
        assert summary["n"] == len(values) and summary["mean"] == pytest.approx(np.mean(values))
        assert summary["sd"] == pytest.approx(np.std(values, ddof=1))
    # The full-label run of a seed is the plain cross-validation of that seed.
    assert runs[(1.0, 0)] == cross_validate(task, methods, folds, seed=0)


def test_semi_supervised_probe_trains_on_unlabelled_and_dropped_patients(labels: pd.DataFrame,
                                                                         expression: pd.DataFrame) -> None:
    # Four patients with expression lose their label: they are the unlabelled pool.
    hidden = ["DEMO-02", "DEMO-09", "DEMO-14", "DEMO-20"]
    task = subtype_task(labels.drop(index=hidden), "subtype").subset(list(expression.index))
    task, folds = _folds(task)
    plain = LinearProbe(expression, name="probe")
    semi = LinearProbe(expression, name="probe+pl", semi_supervised=True, pseudo_threshold=0.0)
    result = cross_validate(task, [plain, semi], folds, seed=0, fraction=0.5, unlabelled=hidden)
    for row in result["probe+pl"]["folds"]:
        pl = row["fit"]["pseudo_label"]
        # Unlabelled = the 4 hidden patients + the training labels the fraction dropped.
        assert pl["n_unlabelled"] == 4 + row["n_train"] - row["n_train_labelled"]
        # Threshold 0: every unlabelled row gets a pseudo-label and enters PseudoLabelLoss.
        assert pl["used_fraction_per_round"] == [1.0, 1.0, 1.0] and pl["unsupervised_loss"] > 0
    assert "fit" not in result["probe"]["folds"][0]
    k, train, test = fold_indices(task, folds)[0]
    half = subsample_training(task, train, 0.5, seed=0, fold=k)
    alone = semi.fit_predict(task, half, test, seed=0)
    assert np.allclose(alone, plain.fit_predict(task, half, test, seed=0))  # no pool: the plain probe exactly
    with_pool = semi.fit_predict(task, half, test, seed=0, unlabelled=hidden)
    assert not np.allclose(with_pool, alone)  # the unlabelled patients change the fit
    with pytest.raises(InputError, match="--semi-supervised applies to --task subtype only"):
        semi.fit_predict(survival_task(labels).subset(task.patients), train, test, seed=0, unlabelled=hidden)

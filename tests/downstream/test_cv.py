"""Cross-validation on the demo's real expression and labels (TCGA folds: tests/cli/test_embed_finetune.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl.data.expression import read_expression
from biossl.data.labels import read_labels
from biossl.downstream.cv import common_patients, cross_validate, folds_for, summarise
from biossl.downstream.methods import LinearProbe, PCABaseline, feature_frame
from biossl.downstream.tasks import subtype_task, survival_task
from biossl.errors import InputError


@pytest.fixture(scope="module")
def expression(demo_cohort: Path) -> pd.DataFrame:
    adata = read_expression(demo_cohort / "expression.csv", aggregate="mean")
    return feature_frame(adata.X, list(adata.obs["patient_id"]), what="demo expression")


@pytest.fixture
def labels(demo_cohort: Path) -> pd.DataFrame:
    return read_labels(demo_cohort / "labels.csv")


def _split_table(assignment: dict[int, list[str]]) -> pd.DataFrame:
    return pd.DataFrame([(p, k) for k, ps in assignment.items() for p in ps], columns=["patient_id", "fold"])


def test_methods_share_patients_and_folds_and_runs_repeat_exactly(expression: pd.DataFrame,
                                                                   labels: pd.DataFrame) -> None:
    task = subtype_task(labels.drop(index=["DEMO-01"]), "subtype")
    probe = LinearProbe(expression.iloc[:, :64].drop(index=["DEMO-02"]), name="probe")
    baseline = PCABaseline(expression, n_components=4, name="pca")
    task = common_patients(task, [probe, baseline])
    assert "DEMO-02" not in task.patients and task.excluded == {"no_input:probe": ["DEMO-02"]}
    task, folds = folds_for(task, n_folds=3, seed=0)
    first = cross_validate(task, [probe, baseline], folds, seed=0)
    again = cross_validate(task, [probe, baseline], folds, seed=0)
    assert first == again
    for result in first.values():
        assert [f["n_test"] for f in result["folds"]] == folds["fold"].value_counts().sort_index().tolist()
        for name in ("macro_auroc", "balanced_accuracy"):
            assert 0.0 <= result["summary"][name]["mean"] <= 1.0 and result["summary"][name]["n_folds"] == 3
    # Stratified: each test fold holds both subtypes.
    strata = task.strata()
    assert all(strata.loc[list(g["patient_id"])].nunique() == 2 for _, g in folds.groupby("fold"))


def test_user_splits_are_honoured_and_restricted(expression: pd.DataFrame, labels: pd.DataFrame) -> None:
    task = survival_task(labels)
    events = [p for p, e in zip(task.patients, task.event) if e]
    censored = [p for p, e in zip(task.patients, task.event) if not e]
    # Two folds; DEMO-24 in no fold; an unknown patient in a fold is ignored.
    splits = _split_table({0: events[:4] + censored[:8] + ["NOT-A-PATIENT"], 1: events[4:] + censored[8:]})
    splits = splits[splits["patient_id"] != "DEMO-24"]
    restricted, folds = folds_for(task, splits=splits)
    assert "DEMO-24" not in restricted.patients and restricted.excluded["no_fold"] == ["DEMO-24"]
    assert set(folds["patient_id"]) == set(restricted.patients)
    fold_of = dict(zip(folds["patient_id"], folds["fold"]))
    assert all(fold_of[p] == 0 for p in events[:4])


def test_a_test_fold_without_events_is_reported_and_left_out_of_the_mean(expression: pd.DataFrame,
                                                                         labels: pd.DataFrame) -> None:
    task = survival_task(labels)
    events = [p for p, e in zip(task.patients, task.event) if e]
    censored = [p for p, e in zip(task.patients, task.event) if not e]
    splits = _split_table({0: events[:4] + censored[:4], 1: events[4:] + censored[4:8], 2: censored[8:]})
    task, folds = folds_for(task, splits=splits)
    result = cross_validate(task, [PCABaseline(expression, n_components=4, name="pca")], folds)["pca"]
    no_event = result["folds"][2]
    assert no_event["c_index"] is None and "no event in the test fold" in no_event["note"]
    assert result["summary"]["c_index"]["n_folds"] == 2
    assert result["summary"]["c_index"]["mean"] == pytest.approx(
        np.mean([result["folds"][0]["c_index"], result["folds"][1]["c_index"]]))


def test_a_test_fold_whose_event_comes_last_has_no_comparable_pair(expression: pd.DataFrame,
                                                                   labels: pd.DataFrame) -> None:
    task = survival_task(labels)
    assert task.time is not None and task.event is not None
    last = int(np.argmax(np.where(task.event == 1, task.time, -1)))  # DEMO-20: event at 88 months
    shorter = [p for p, t, e in zip(task.patients, task.time, task.event) if not e and t < task.time[last]][:3]
    fold0 = [task.patients[last], *shorter]
    splits = _split_table({0: fold0, 1: [p for p in task.patients if p not in fold0]})
    task, folds = folds_for(task, splits=splits)
    row = cross_validate(task, [PCABaseline(expression, n_components=4, name="pca")], folds)["pca"]["folds"][0]
    assert row["c_index"] is None and "no comparable pair" in row["note"]


def test_a_training_fold_without_events_is_an_error(expression: pd.DataFrame, labels: pd.DataFrame) -> None:
    task = survival_task(labels)
    events = [p for p, e in zip(task.patients, task.event) if e]
    censored = [p for p, e in zip(task.patients, task.event) if not e]
    splits = _split_table({0: events + censored[:4], 1: censored[4:]})
    task, folds = folds_for(task, splits=splits)
    with pytest.raises(InputError, match="fold 0: none of its 12 training patients had an event"):
        cross_validate(task, [PCABaseline(expression, n_components=4)], folds)


def test_fold_requests_that_cannot_be_met(labels: pd.DataFrame) -> None:
    surv = survival_task(labels)
    with pytest.raises(InputError, match=r"only 8 event\(s\) among 24 patients for 10 folds"):
        folds_for(surv, n_folds=10)
    sub = subtype_task(labels.drop(index=[f"DEMO-{i:02d}" for i in range(13, 22)]), "subtype")
    with pytest.raises(InputError, match=r"class\(es\) 'PRCC' \(3\) have fewer patients than --folds 5"):
        folds_for(sub, n_folds=5)
    empty = _split_table({0: ["DEMO-01", "DEMO-02"], 1: ["NOT-A-PATIENT"]})
    with pytest.raises(InputError, match=r"fold\(s\) \[1\] of the split table keep no patient"):
        folds_for(surv, splits=empty)


def test_summary_is_mean_and_sample_sd_over_defined_folds() -> None:
    assert summarise([0.5, 0.7, None, float("nan")]) == {"mean": pytest.approx(0.6),
                                                         "sd": pytest.approx(np.std([0.5, 0.7], ddof=1)),
                                                         "n_folds": 2}
    assert summarise([None]) == {"mean": None, "sd": None, "n_folds": 0}

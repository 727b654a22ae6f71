"""Targets from the real demo labels, and every bad-label case: a clear InputError or the documented handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl.data.labels import read_labels
from biossl.downstream.tasks import subtype_task, survival_task
from biossl.errors import InputError, ManifestError


@pytest.fixture
def labels(demo_cohort: Path) -> pd.DataFrame:
    return read_labels(demo_cohort / "labels.csv")


def test_subtype_and_survival_targets_of_the_demo(labels: pd.DataFrame) -> None:
    sub = subtype_task(labels, "subtype")
    assert sub.classes == ["CCRCC", "PRCC"] and len(sub) == 24
    assert sub.y is not None and np.bincount(sub.y).tolist() == [12, 12]
    assert sub.describe()["classes"] == {"CCRCC": 12, "PRCC": 12}
    surv = survival_task(labels)
    assert surv.event is not None and surv.time is not None
    assert int(surv.event.sum()) == 8 and surv.time.min() == pytest.approx(0.13)
    assert surv.patients == sorted(surv.patients)
    assert surv.strata().value_counts().to_dict() == {"0": 16, "1": 8}


def test_labels_for_unknown_patients_are_an_error_or_dropped(demo_cohort: Path, tmp_path: Path) -> None:
    known = [f"DEMO-{i:02d}" for i in range(1, 21)]  # DEMO-21..24 are not in the embeddings
    with pytest.raises(ManifestError, match=r"4 patient\(s\) not in the embeddings e.h5ad, e.g. \['DEMO-21'"):
        read_labels(demo_cohort / "labels.csv", patients=known, patients_from="the embeddings e.h5ad")
    kept = read_labels(demo_cohort / "labels.csv", patients=known, unknown="drop")
    assert list(kept.index) == known


def test_a_label_column_with_one_class_is_an_error(labels: pd.DataFrame) -> None:
    one = labels.assign(subtype="CCRCC")
    with pytest.raises(InputError, match=r"column 'subtype' has only the class 'CCRCC' among 24"):
        subtype_task(one, "subtype", source="labels.csv")
    with pytest.raises(InputError, match=r"no label column 'grade'.*--label-column"):
        subtype_task(labels, "grade", source="labels.csv")


def test_missing_labels_make_patients_unlabelled(labels: pd.DataFrame) -> None:
    holes = labels.copy()
    holes.loc["DEMO-03", "subtype"] = np.nan
    holes.loc["DEMO-05", "time"] = np.nan
    holes.loc["DEMO-07", "event"] = np.nan
    sub = subtype_task(holes, "subtype")
    assert "DEMO-03" not in sub.patients and sub.excluded == {"no_label": ["DEMO-03"]}
    surv = survival_task(holes)
    assert len(surv) == 22 and surv.excluded == {"no_label": ["DEMO-05", "DEMO-07"]}


@pytest.mark.parametrize(("time", "match"), [(0.0, "must be a positive number, or empty when unknown; 1 row\\(s\\) "
                                                   "are not: .*\\(patient 'DEMO-02'\\) 0.0"),
                                             (-4.0, "must be a positive number"),
                                             ("soon", "must be a positive number")])
def test_survival_times_must_be_positive_numbers(labels: pd.DataFrame, time: object, match: str) -> None:
    bad = labels.astype({"time": object})
    bad.loc["DEMO-02", "time"] = time
    with pytest.raises(ManifestError, match=match):
        survival_task(bad, source="labels.csv")


def test_events_must_be_zero_or_one_and_not_all_censored(labels: pd.DataFrame) -> None:
    with pytest.raises(ManifestError, match="'event' must be 0"):
        survival_task(labels.assign(event=labels["event"] * 2), source="labels.csv")
    with pytest.raises(InputError, match="all 24 labelled patients are censored"):
        survival_task(labels.assign(event=0), source="labels.csv")
    with pytest.raises(InputError, match="no event column 'dead'.*--event-column"):
        survival_task(labels, "time", "dead", source="labels.csv")

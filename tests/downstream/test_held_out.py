"""One held-out test set (``--splits`` table ``patient_id,split`` with train/test/dev), honoured by every method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl.cli import main
from biossl.data.labels import read_labels
from biossl.data.splits import TRAIN_ONLY, check_splits, read_splits, scored_folds
from biossl.downstream.cv import fold_indices, folds_for
from biossl.downstream.tasks import subtype_task
from biossl.errors import ManifestError

DNA_PATIENTS = ["DEMO-01", "DEMO-02", "DEMO-03", "DEMO-04", "DEMO-06", "DEMO-07", "DEMO-09", "DEMO-12",
                "DEMO-14", "DEMO-15", "DEMO-16", "DEMO-17", "DEMO-18", "DEMO-20", "DEMO-21", "DEMO-24"]


def _held_out(demo_cohort: Path, path: Path) -> dict[str, str]:
    """Per class of the demo's DNA patients: 2 test, 1 dev, the rest train."""
    labels = pd.read_csv(demo_cohort / "labels.csv").set_index("patient_id").loc[DNA_PATIENTS, "subtype"]
    split = {}
    for _, group in labels.groupby(labels):
        for i, p in enumerate(sorted(group.index)):
            split[p] = "test" if i < 2 else "DEV" if i == 2 else " Train"
    pd.DataFrame({"patient_id": list(split), "split": list(split.values())}).to_csv(path, index=False)
    return {p: s.strip().lower() for p, s in split.items()}


def test_read_split_table_as_one_fold(demo_cohort: Path, tmp_path: Path) -> None:
    split = _held_out(demo_cohort, tmp_path / "s.csv")
    table = read_splits(tmp_path / "s.csv")
    assert set(table["patient_id"]) == {p for p, s in split.items() if s != "dev"}  # dev left out
    assert dict(zip(table["patient_id"], table["fold"])) == {p: (0 if s == "test" else TRAIN_ONLY)
                                                            for p, s in split.items() if s != "dev"}
    assert scored_folds(table) == [0]
    task = subtype_task(read_labels(demo_cohort / "labels.csv"), "subtype")
    task, folds = folds_for(task, splits=table)
    [(k, train, test)] = fold_indices(task, folds)
    assert k == 0 and sorted(np.array(task.patients)[test]) == sorted(p for p, s in split.items() if s == "test")
    assert sorted(np.array(task.patients)[train]) == sorted(p for p, s in split.items() if s == "train")


@pytest.mark.parametrize(("body", "message"), [
    ("patient_id,split\nA,train\nB,holdout\n", r"patient 'B' \(row 3\) has split 'holdout'"),
    ("patient_id,split\nA,train\nB,dev\n", r"no patient has split 'test'"),
    ("patient_id,split\nA,train\nA,test\n", r"\['A'\] are listed more than once"),
    ("patient_id,split\nA,train\n,test\n", r"row 3 has an empty patient_id"),
])
def test_bad_split_tables_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "s.csv").write_text(body)
    with pytest.raises(ManifestError, match=message):
        read_splits(tmp_path / "s.csv")


def test_check_splits_accepts_train_only_but_not_alone() -> None:
    check_splits(pd.DataFrame({"patient_id": ["A", "B", "C"], "fold": [TRAIN_ONLY, 0, 1]}))
    with pytest.raises(ManifestError, match="held-out design"):
        check_splits(pd.DataFrame({"patient_id": ["A", "B"], "fold": [TRAIN_ONLY, TRAIN_ONLY]}))
    with pytest.raises(ManifestError, match="expected 0..K-1"):
        check_splits(pd.DataFrame({"patient_id": ["A", "B"], "fold": [0, 0]}))


@pytest.mark.integration
def test_finetune_scores_probe_and_kmer_baseline_once_on_the_test_set(
        embedded: Path, demo_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    split = _held_out(demo_cohort, tmp_path / "s.csv")
    out = tmp_path / "r.json"
    code = main(["finetune", "--embeddings", str(embedded), "--embedding", "X_sequence", "--labels",
                 str(demo_cohort / "labels.csv"), "--task", "subtype", "--label-column", "subtype", "--splits",
                 str(tmp_path / "s.csv"), "--manifest", str(demo_cohort / "manifest.csv"), "--baseline-kmer", "3",
                 "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    n_test = sum(s == "test" for s in split.values())
    n_train = sum(s == "train" for s in split.values())
    assert result["folds"]["n_folds"] == 1 and result["folds"]["n_test"] == n_test == 4
    assert result["folds"]["n_train"] == n_train == 10 and "held-out" in result["folds"]["design"]
    assert set(result["methods"]) == {"linear_probe", "kmer3_logreg"}
    for method in result["methods"].values():
        [fold] = method["folds"]
        assert (fold["fold"], fold["n_test"], fold["n_train"]) == (0, n_test, n_train)
        assert method["summary"]["macro_auroc"]["n_folds"] == 1 and method["summary"]["macro_auroc"]["sd"] is None
        assert 0.0 <= fold["macro_auroc"] <= 1.0
    assert "held-out test set (10 train, 4 test" in capsys.readouterr().out

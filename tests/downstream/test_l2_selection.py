"""The probe's L2 penalty chosen by inner cross-validation on each training fold (``--l2 auto``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl.cli import main
from biossl.data.expression import read_expression
from biossl.data.labels import read_labels
from biossl.downstream.cv import cross_validate, folds_for
from biossl.downstream.methods import L2_GRID, LinearProbe, feature_frame
from biossl.downstream.tasks import subtype_task, survival_task


@pytest.fixture(scope="module")
def expression(demo_cohort: Path) -> pd.DataFrame:
    """The demo's real TCGA KIRC/KIRP expression profiles, one row per patient."""
    adata = read_expression(demo_cohort / "expression.csv", aggregate="mean")
    return feature_frame(np.asarray(adata.X), [str(p) for p in adata.obs["patient_id"]], what="demo expression")


@pytest.mark.parametrize("kind", ["subtype", "survival"])
def test_the_penalty_is_chosen_on_training_patients_only(expression: pd.DataFrame, demo_cohort: Path,
                                                         kind: str) -> None:
    labels = read_labels(demo_cohort / "labels.csv", patients=list(expression.index), unknown="drop")
    task = (subtype_task(labels, "subtype") if kind == "subtype" else survival_task(labels))
    task = task.subset([p for p in task.patients if p in expression.index])
    task, folds = folds_for(task, n_folds=3, seed=0)
    probe = LinearProbe(expression, l2=list(L2_GRID))
    first = cross_validate(task, [probe], folds, seed=0)["linear_probe"]["folds"]
    metric = "macro_auroc" if kind == "subtype" else "c_index"
    for row in first:
        fit = row["fit"]
        assert fit["l2"] in L2_GRID and set(fit["inner_cv"]) == {f"{v:g}" for v in L2_GRID}
        best = max(v for v in fit["inner_cv"].values() if not np.isnan(v))
        assert fit["inner_cv"][f"{fit['l2']:g}"] == best  # the best inner score wins
    assert LinearProbe(expression, l2=list(L2_GRID)).describe()["l2"]["grid"] == list(L2_GRID)
    # Scrambling the *test* patients' labels changes no chosen penalty: selection never sees them.
    positions = {p: i for i, p in enumerate(task.patients)}
    for row, (k, fold) in zip(first, folds.groupby("fold"), strict=True):
        test = np.array([positions[p] for p in fold["patient_id"]])
        scrambled = task.subset(task.patients)
        rng = np.random.default_rng(k)
        if kind == "subtype":
            assert scrambled.y is not None
            scrambled.y[test] = scrambled.y[rng.permutation(test)]
        else:
            assert scrambled.time is not None
            scrambled.time[test] = scrambled.time[rng.permutation(test)]
        train = np.setdiff1d(np.arange(len(task)), test)
        again = LinearProbe(expression, l2=list(L2_GRID))
        again.fit_predict(scrambled, train, test, seed=0)
        assert again.last_fit["l2"] == row["fit"]["l2"], metric


def test_cli_l2_auto_reports_the_penalty_of_each_fold(embedded: Path, demo_cohort: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert main(["finetune", "--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--task",
                 "subtype", "--label-column", "subtype", "--folds", "3", "--l2", "auto", "--out", str(out)]) == 0
    probe = json.loads(out.read_text())["methods"]["linear_probe"]
    assert probe["settings"]["l2"]["grid"] == list(L2_GRID)
    assert all(f["fit"]["l2"] in L2_GRID for f in probe["folds"])
    assert main(["finetune", "--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--task",
                 "subtype", "--label-column", "subtype", "--l2", "big", "--out", str(out)]) == 2
    assert "--l2 'big': give a number" in capsys.readouterr().err

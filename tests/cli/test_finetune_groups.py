"""Site-preserving folds in ``biossl finetune --group-by`` (issue 6): no site in both training and test."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from biossl.cli import main
from biossl.downstream.cv import folds_for
from biossl.downstream.tasks import subtype_task
from biossl.errors import InputError


def _sites(demo_cohort: Path) -> dict[str, str]:
    manifest = pd.read_csv(demo_cohort / "manifest.csv")
    return dict(manifest.drop_duplicates("patient_id")[["patient_id", "site"]].itertuples(index=False))


def _finetune(args: list[str], out: Path) -> int:
    return main(["finetune", *args, "--out", str(out)])


@pytest.mark.integration
def test_group_by_site_keeps_every_site_in_one_fold(embedded: Path, demo_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert _finetune(["--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--task", "subtype",
                      "--label-column", "subtype", "--folds", "3", "--group-by", "site"], out) == 0
    result = json.loads(out.read_text())
    folds = result["folds"]
    # The site comes from the embeddings' obs (manifest metadata copied there by `biossl embed`).
    assert folds["grouped_by"]["column"] == "site" and folds["grouped_by"]["from"].startswith("the embeddings")
    sites = _sites(demo_cohort)
    assert folds["grouped_by"]["n_groups"] == len(set(sites.values()))
    folds_of_site: dict[str, set[int]] = {}
    for patient, fold in folds["assignment"].items():
        folds_of_site.setdefault(sites[patient], set()).add(fold)
    assert all(len(f) == 1 for f in folds_of_site.values()), folds_of_site
    assert sorted({f for fs in folds_of_site.values() for f in fs}) == [0, 1, 2]
    # Without --group-by the same seed splits some site across folds (so the option changes something).
    out2 = tmp_path / "plain.json"
    assert _finetune(["--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--task", "subtype",
                      "--label-column", "subtype", "--folds", "3"], out2) == 0
    plain = json.loads(out2.read_text())["folds"]["assignment"]
    spread: dict[str, set[int]] = {}
    for patient, fold in plain.items():
        spread.setdefault(sites[patient], set()).add(fold)
    assert any(len(f) > 1 for f in spread.values())


@pytest.mark.integration
def test_group_column_of_the_labels_table_comes_first(embedded: Path, demo_cohort: Path, tmp_path: Path) -> None:
    labels = pd.read_csv(demo_cohort / "labels.csv")
    labels["hospital"] = [f"H{i % 4}" for i in range(len(labels))]
    path = tmp_path / "labels.csv"
    labels.to_csv(path, index=False)
    out = tmp_path / "r.json"
    assert _finetune(["--embeddings", str(embedded), "--labels", str(path), "--task", "subtype", "--label-column",
                      "subtype", "--folds", "2", "--group-by", "hospital"], out) == 0
    folds = json.loads(out.read_text())["folds"]
    assert folds["grouped_by"]["from"] == "the labels table labels.csv" and folds["grouped_by"]["n_groups"] == 4
    hospital = dict(zip(labels["patient_id"], labels["hospital"]))
    by_hospital: dict[str, set[int]] = {}
    for patient, fold in folds["assignment"].items():
        by_hospital.setdefault(hospital[patient], set()).add(fold)
    assert all(len(f) == 1 for f in by_hospital.values())


@pytest.mark.parametrize(("case", "message"), [
    ("no column", "--group-by scanner: no column 'scanner' in the labels table labels.csv"),
    ("user splits share a site", "are in the training and the test patients of a fold"),
])
def test_group_by_bad_inputs_exit_2(embedded: Path, demo_cohort: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], case: str, message: str) -> None:
    labels = tmp_path / "labels.csv"
    pd.read_csv(demo_cohort / "labels.csv").to_csv(labels, index=False)
    args = ["--embeddings", str(embedded), "--labels", str(labels), "--task", "subtype", "--label-column", "subtype"]
    if case == "no column":
        args += ["--group-by", "scanner"]
    else:
        # Round-robin folds put the three patients of a site (A3, B0, BP have 3) in different folds.
        patients = sorted(pd.read_csv(labels)["patient_id"])
        splits = tmp_path / "splits.csv"
        pd.DataFrame({"patient_id": patients, "fold": [i % 3 for i in range(len(patients))]}).to_csv(splits,
                                                                                                 index=False)
        args += ["--splits", str(splits), "--group-by", "site"]
    out = tmp_path / "r.json"
    assert _finetune(args, out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_too_few_groups_and_patients_without_a_group_are_errors(demo_cohort: Path) -> None:
    labels = pd.read_csv(demo_cohort / "labels.csv").set_index("patient_id")
    task = subtype_task(labels, "subtype")
    two_sites = {p: ("X" if i % 2 else "Y") for i, p in enumerate(task.patients)}
    with pytest.raises(InputError, match="only 2 site value"):
        folds_for(task, n_folds=3, groups=two_sites, group_name="site")
    some = dict(list(_sites(demo_cohort).items())[:-2])
    with pytest.raises(InputError, match="2 labelled patient"):
        folds_for(task, n_folds=3, groups=some, group_name="site")

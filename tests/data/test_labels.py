from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from biossl.data.cohort import Cohort
from biossl.data.labels import read_labels, read_table
from biossl.errors import ManifestError


@pytest.fixture()
def cohort(fixtures: Path) -> Cohort:
    return Cohort.from_manifest(fixtures / "cohort" / "manifest.csv", probe=False)


def test_fixture_labels(fixtures, cohort):
    labels = read_labels(fixtures / "cohort" / "labels.csv", cohort=cohort)
    assert list(labels.index) == cohort.patients
    assert labels.loc["TCGA-2F-A9KO", "time"] == pytest.approx(24.11)
    assert labels["event"].tolist() == [1, 0, 1, 0]
    assert labels["site"].tolist() == ["2F", "4Z", "5N", "BL"]


def test_ids_stay_text_and_numbers_parse(tmp_path):
    path = tmp_path / "l.tsv"
    path.write_text("patient_id\tsubtype\ttime\n001\tA\t3.5\n010\tB\t4\n")
    labels = read_labels(path)
    assert list(labels.index) == ["001", "010"]
    assert labels["time"].dtype.kind == "f" and labels["subtype"].tolist() == ["A", "B"]


def test_parquet_labels_and_id_column(tmp_path):
    pd.DataFrame({"case_id": ["a", "b"], "subtype": ["x", "y"]}).to_parquet(tmp_path / "l.parquet")
    labels = read_labels(tmp_path / "l.parquet", id_column="case_id")
    assert labels["subtype"].to_dict() == {"a": "x", "b": "y"}
    with pytest.raises(ManifestError, match=r"no 'patient_id' column \(found \['case_id', 'subtype'\]\)"):
        read_labels(tmp_path / "l.parquet")


def test_conflicting_duplicates_error_identical_ones_collapse(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("patient_id,subtype\nP1,A\nP1,A\nP2,B\n")
    assert read_labels(path)["subtype"].to_dict() == {"P1": "A", "P2": "B"}
    path.write_text("patient_id,subtype\nP1,A\nP2,B\nP1,C\n")
    with pytest.raises(ManifestError, match=r"\['P1'\] on rows 2, 4"):
        read_labels(path)


def test_unknown_patients_error_or_drop(fixtures, tmp_path, cohort, caplog):
    lines = (fixtures / "cohort" / "labels.csv").read_text()
    extra = "".join(f"X{i:02d},ZZ,BLCA,1.0,1\n" for i in range(12))
    path = tmp_path / "l.csv"
    path.write_text(lines + extra)
    with pytest.raises(ManifestError, match=r"12 patient\(s\) not in the cohort") as info:
        read_labels(path, cohort=cohort)
    assert "X09" in str(info.value) and "X10" not in str(info.value)
    with caplog.at_level(logging.WARNING):
        labels = read_labels(path, cohort=cohort, unknown="drop")
    assert list(labels.index) == cohort.patients and "dropping" in caplog.text


def test_survival_columns_are_checked(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("patient_id,time,event\nP1,3,1\nP2,4,2\n")
    with pytest.raises(ManifestError, match=r"'event' must be 0 .* row 3 \(patient 'P2'\) 2$"):
        read_labels(path)
    path.write_text("patient_id,time,event\nP1,-3,1\nP2,4,0\n")
    with pytest.raises(ManifestError, match=r"'time' must be a non-negative number.* row 2 \(patient 'P1'\) -3$"):
        read_labels(path)


def test_empty_ids_and_bad_formats(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("patient_id,subtype\nP1,A\n,B\n")
    with pytest.raises(ManifestError, match=r"empty patient_id on row\(s\) 3"):
        read_labels(path)
    (tmp_path / "l.xlsx").write_bytes(b"PK")
    with pytest.raises(ManifestError, match="unknown table format '.xlsx'"):
        read_table(tmp_path / "l.xlsx", what="labels table")
    with pytest.raises(ManifestError, match="not found"):
        read_labels(tmp_path / "nope.csv")


def test_real_tcga_table_needs_deduplication(shared_data):
    with pytest.raises(ManifestError, match="deduplicated by patient"):
        read_labels(shared_data / "tcga_porpoise" / "tcga_blca_all_clean.csv.zip", id_column="case_id")

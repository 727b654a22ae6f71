"""``--pseudonymize`` on the reports: ``biossl finetune``'s JSON and ``biossl audit``'s JSON and HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from biossl.cli import main
from biossl.privacy import pseudonym, pseudonymize_record

SALT = "a-test-salt-of-32-characters-xyz"


def test_record_ids_are_replaced_as_keys_values_and_inside_text() -> None:
    ids = ["DEMO-1", "DEMO-10"]
    record = {"assignment": {"DEMO-1": 0, "DEMO-10": 1}, "excluded": ["DEMO-10"],
              "note": "e.g. ['DEMO-1', 'DEMO-10']; file DEMO-1.fasta", "n": 2, "other": "DEMO-100"}
    out = pseudonymize_record(record, ids, SALT.encode())
    p1, p10 = pseudonym("DEMO-1", SALT.encode()), pseudonym("DEMO-10", SALT.encode())
    assert out["assignment"] == {p1: 0, p10: 1} and out["excluded"] == [p10] and out["n"] == 2
    assert out["note"] == f"e.g. ['{p1}', '{p10}']; file {p1}.fasta"
    assert out["other"] == "DEMO-100"  # a longer name is not a patient of this report


@pytest.mark.integration
def test_finetune_and_audit_reports_hold_no_patient_id(embedded: Path, demo_cohort: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOSSL_SALT", SALT)
    patients = list(pd.read_csv(demo_cohort / "labels.csv")["patient_id"])
    out = tmp_path / "ft.json"
    assert main(["finetune", "--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--task",
                 "subtype", "--label-column", "subtype", "--folds", "3", "--pseudonymize", "--out", str(out)]) == 0
    plain = tmp_path / "plain.json"
    assert main(["finetune", "--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--task",
                 "subtype", "--label-column", "subtype", "--folds", "3", "--out", str(plain)]) == 0
    text, plain_text = out.read_text(), plain.read_text()
    assert all(p in plain_text for p in patients)  # the plain report names them ...
    assert not any(p in text for p in patients)  # ... the pseudonymised one does not
    result, reference = json.loads(text), json.loads(plain_text)
    assert result["methods"]["linear_probe"]["summary"] == reference["methods"]["linear_probe"]["summary"]
    assert result["folds"]["assignment"] == {pseudonym(p, SALT.encode()): f
                                             for p, f in reference["folds"]["assignment"].items()}
    audit = tmp_path / "audit"
    code = main(["audit", "--embeddings", str(embedded), "--columns", "site", "--folds", "2", "--permutations", "99",
                 "--pseudonymize", "--out", str(audit)])
    assert code in (0, 1, 3)  # 3: incomplete (site cannot be tested on every modality of the demo)
    for name in ("audit.json", "report.html"):
        page = (audit / name).read_text()
        assert not any(p in page for p in patients), name


def test_pseudonymize_without_a_salt_stops_before_any_work(embedded: Path, demo_cohort: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("BIOSSL_SALT", raising=False)
    assert main(["finetune", "--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--task",
                 "subtype", "--label-column", "subtype", "--pseudonymize", "--out", str(tmp_path / "r.json")]) == 2
    assert "needs a secret salt" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
    assert main(["audit", "--embeddings", str(embedded), "--columns", "site", "--pseudonymize",
                 "--out", str(tmp_path / "a")]) == 2
    assert "needs a secret salt" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_numeric_ids_are_not_replaced_inside_text_and_pseudonyms_stay() -> None:
    salt = SALT.encode()
    out = pseudonymize_record({"note": "5 folds, seed 1", "patients": ["5", "1"], "psn": "psn-abc"},
                              ["5", "1", "psn-abc"], salt)
    assert out["note"] == "5 folds, seed 1"
    assert out["patients"] == [pseudonym("5", salt), pseudonym("1", salt)] and out["psn"] == "psn-abc"

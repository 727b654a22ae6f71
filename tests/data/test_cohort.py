from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from biossl.cli import main
from biossl.data.cohort import Cohort
from biossl.errors import ManifestError, SlideError

P1, P2, P3, P4 = "TCGA-2F-A9KO", "TCGA-4Z-AA7M", "TCGA-5N-A9KI", "TCGA-BL-A0C8"
HEADER = "patient_id,modality,path,site\n"


def _fake_probe(path: Path) -> None:
    if "corrupt" in path.name:
        raise SlideError(f"slide {path} cannot be decoded; it may be truncated")


FAKE = {m: _fake_probe for m in ("wsi", "volume", "expression", "sequence")}


def _table_patients(path: Path) -> set[str]:
    return set(pd.read_csv(path)["case_id"])


def load(path: Path, **kw: object) -> Cohort:
    kw.setdefault("probes", FAKE)
    kw.setdefault("table_patients", _table_patients)
    return Cohort.from_manifest(path, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def folder(tmp_path: Path, fixtures: Path) -> Path:
    """A writable copy of the cohort fixtures."""
    out = tmp_path / "cohort"
    shutil.copytree(fixtures / "cohort", out)
    for f in out.iterdir():
        f.chmod(0o644)
    return out


def write(folder: Path, body: str, name: str = "m.csv") -> Path:
    path = folder / name
    path.write_text(HEADER + body)
    return path


def error_of(path: Path, **kw: object) -> str:
    with pytest.raises(ManifestError) as info:
        load(path, **kw)
    return str(info.value)


def test_fixture_manifest_resolves_relative_paths_from_manifest_folder(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    cohort = load(folder / "manifest.csv")
    assert cohort.patients == [P1, P2, P3, P4]
    assert cohort.modalities_of(P2) == ["volume", "expression", "sequence"]
    assert cohort.files(P1, "wsi") == [folder / "small.svs"]
    assert cohort.files(P3, "wsi") == []
    assert all(Path(p).is_absolute() and Path(p).exists() for p in cohort.table["path"])
    assert cohort.table.loc[cohort.table["patient_id"] == P4, "manifest_row"].tolist() == [8, 9]
    assert cohort.metadata.loc[P1, "site"] == "2F"
    assert cohort.metadata.loc[P1, "slide_mpp"] == 0.5  # NaN on the expression row is not a conflict
    assert cohort.conflicts == {}


def test_summary_counts(folder):
    summary = load(folder / "manifest.csv").summary()
    assert list(summary.columns) == ["wsi", "volume", "expression", "sequence"]
    assert summary.loc[P2].tolist() == [0, 1, 1, 1]
    assert summary.loc["(patients with modality)"].tolist() == [2, 1, 4, 1]


def test_conflicting_metadata_is_kept_per_file_and_reported(folder, caplog):
    path = write(folder, f"{P1},wsi,small.svs,2F\n{P1},wsi,corrupt_no.svs,XX\n")
    (folder / "corrupt_no.svs").write_bytes(b"x")
    cohort = load(path, probe=False)
    assert cohort.conflicts == {"site": [P1]}
    assert "site" not in cohort.metadata.columns
    assert sorted(cohort.table["site"]) == ["2F", "XX"]
    assert "site" in caplog.text and P1 in caplog.text


def test_missing_required_column_lists_found_columns(folder):
    path = folder / "m.csv"
    path.write_text("patient,modality,path\nA,wsi,small.svs\n")
    msg = error_of(path)
    assert "['patient_id']" in msg and "'patient', 'modality', 'path'" in msg


def test_column_names_tolerate_case_and_spaces(folder):
    path = folder / "m.csv"
    path.write_text(" Patient_ID ,MODALITY,Path\nA, WSI ,small.svs\n")
    assert load(path).files("A", "wsi") == [folder / "small.svs"]


def test_unknown_modality_names_row_patient_and_valid_ones(folder):
    msg = error_of(write(folder, f"{P1},slide,small.svs,2F\n"))
    # A name the user chose, without a kind: the row says where to give one and lists the kinds.
    assert "row 2" in msg and P1 in msg and "'slide'" in msg and "has no kind" in msg and "kind column" in msg
    assert "slide, volume, table, sequence, features" in msg


def test_missing_file_names_row_patient_and_resolved_path(folder):
    msg = error_of(write(folder, f"{P1},wsi,small.svs,2F\n{P2},wsi,slides/nope.svs,4Z\n"))
    assert "row 3" in msg and P2 in msg and str(folder / "slides" / "nope.svs") in msg
    assert "row 2" not in msg


def test_duplicate_rows(folder):
    msg = error_of(write(folder, f"{P1},wsi,small.svs,2F\n{P1},WSI,./small.svs,2F\n"))
    assert "row 3" in msg and "duplicate of row 2" in msg and "1 problem" in msg


def test_unreadable_file_uses_the_probe_message(folder):
    (folder / "corrupt.svs").write_bytes(b"not a slide")
    msg = error_of(write(folder, f"{P1},wsi,small.svs,2F\n{P2},wsi,corrupt.svs,4Z\n"))
    assert "row 3" in msg and P2 in msg and "corrupt.svs" in msg and "may be truncated" in msg


def test_expression_patient_must_be_in_its_table(folder):
    body = f"{P1},expression,expression.csv,2F\nTCGA-XX-0000,expression,expression.csv,\n"
    msg = error_of(write(folder, body))
    assert "row 3" in msg and "TCGA-XX-0000" in msg and "not in this expression table (4 patients" in msg


def test_empty_patient_id_and_patient_without_usable_file(folder):
    msg = error_of(write(folder, f"{P1},wsi,small.svs,2F\n,wsi,small.svs,\n{P2},wsi,gone.svs,4Z\n"))
    assert "row 3" in msg and "empty patient_id" in msg
    assert f"patient {P2!r}" in msg and "no usable file: all its 1 row(s) (4) are bad" in msg


def test_empty_manifests(folder):
    assert "no rows" in error_of(write(folder, ""))
    (folder / "e.csv").write_text("")
    assert "is empty" in error_of(folder / "e.csv")


def test_blank_lines_keep_spreadsheet_row_numbers(folder):
    msg = error_of(write(folder, f"{P1},wsi,small.svs,2F\n\n{P2},wsi,gone.svs,4Z\n"))
    assert "row 4" in msg


def test_all_problems_are_collected_and_listed_up_to_20(folder):
    body = "".join(f"P{i:02d},wsi,missing_{i}.svs,\n" for i in range(25))
    msg = error_of(write(folder, f"{P1},wsi,small.svs,2F\n" + body))
    assert "has 50 problem(s)" in msg  # 25 rows + 25 patients left without files
    assert "row 3:" in msg and "row 22:" in msg and "row 23:" not in msg and "... and 30 more" in msg


def test_skip_bad_keeps_good_rows_and_writes_csv_report(folder, tmp_path, caplog):
    path = write(folder, f"{P1},wsi,small.svs,2F\n{P1},wsi,gone.svs,2F\n{P2},mri,x.nii,4Z\n")
    report = tmp_path / "out" / "skipped.csv"
    with caplog.at_level(logging.WARNING):
        cohort = load(path, skip_bad=True, report_path=report)
    assert cohort.patients == [P1]
    assert cohort.files(P1, "wsi") == [folder / "small.svs"]
    rows = pd.read_csv(report)
    assert list(rows.columns) == ["row", "patient_id", "modality", "path", "reason"]
    assert rows["row"].tolist()[:2] == [3, 4] and pd.isna(rows["row"].iloc[2])
    assert rows["patient_id"].tolist() == [P1, P2, P2]
    assert "file not found" in rows["reason"][0] and "no usable file" in rows["reason"][2]
    assert "gone.svs" in caplog.text and not list(report.parent.glob(".*tmp"))


def test_skip_bad_json_report_and_report_written_when_raising(folder, tmp_path):
    path = write(folder, f"{P1},wsi,small.svs,2F\n{P1},wsi,gone.svs,2F\n")
    load(path, skip_bad=True, report_path=tmp_path / "r.json")
    assert [r["row"] for r in json.loads((tmp_path / "r.json").read_text())] == [3]
    with pytest.raises(ManifestError, match=r"listed in .*r2\.csv"):
        load(path, report_path=tmp_path / "r2.csv")
    assert len(pd.read_csv(tmp_path / "r2.csv")) == 1


def test_skip_bad_with_nothing_left_still_errors(folder):
    with pytest.raises(ManifestError, match="no usable row"):
        load(write(folder, f"{P1},wsi,gone.svs,2F\n"), skip_bad=True)


def test_tsv_and_parquet_manifests(folder):
    csv = pd.read_csv(folder / "manifest.csv", dtype=str)
    csv.to_csv(folder / "m.tsv", sep="\t", index=False)
    csv.to_parquet(folder / "m.parquet", index=False)
    expected = load(folder / "manifest.csv").table
    for name in ("m.tsv", "m.parquet"):
        table = load(folder / name).table
        assert table[["patient_id", "modality", "path"]].equals(expected[["patient_id", "modality", "path"]])


def test_probe_off_skips_readers_and_probes_are_cached(folder):
    calls: list[Path] = []
    probes = {m: (lambda p: calls.append(p)) for m in FAKE}
    load(folder / "manifest.csv", probes=probes)
    names = ["anatomical_label.nii.gz", "expression.csv", "promoters.csv", "small.svs"]
    assert sorted(p.name for p in calls) == names  # each file once, though expression.csv is on 4 rows

    def boom(path: Path) -> None:
        raise SlideError("should not be called")

    load(folder / "manifest.csv", probe=False, probes=dict.fromkeys(FAKE, boom))


def test_subset_and_unknown_patients(folder):
    cohort = load(folder / "manifest.csv")
    sub = cohort.subset([P2, P3])
    assert sub.patients == [P2, P3] and len(sub.table) == 4
    with pytest.raises(ManifestError, match="NOPE"):
        cohort.subset(["NOPE"])
    with pytest.raises(ManifestError, match="'NOPE' is not in the cohort"):
        cohort.files("NOPE", "wsi")


def test_fingerprint_is_order_free_and_tracks_files(folder):
    base = load(folder / "manifest.csv").fingerprint()
    lines = (folder / "manifest.csv").read_text().splitlines()
    (folder / "rev.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert load(folder / "rev.csv").fingerprint() == base
    st = (folder / "small.svs").stat()
    os.utime(folder / "small.svs", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load(folder / "manifest.csv").fingerprint() != base


def test_cli_prints_summary_and_maps_errors_to_exit_2(folder, capsys):
    assert main(["cohort", str(folder / "manifest.csv"), "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert P4 in out and "(patients with modality)" in out and "4 patients, 8 files" in out
    bad = write(folder, f"{P1},wsi,gone.svs,2F\n")
    assert main(["cohort", str(bad), "--no-probe"]) == 2
    assert "row 2" in capsys.readouterr().err


@pytest.mark.parametrize("modality", ["wsi", "volume", "expression", "sequence"])
def test_real_probes(folder, modality):
    module = pytest.importorskip(f"biossl.data.{modality}")
    if not hasattr(module, "probe"):
        pytest.skip(f"biossl.data.{modality} has no probe yet")
    probes = {**FAKE, modality: module.probe}
    kw: dict[str, object] = {"probes": probes}
    if modality == "expression":
        kw["table_patients"] = module.table_patients
    cohort = load(folder / "manifest.csv", **kw)
    assert cohort.patients == [P1, P2, P3, P4]
    target = {"wsi": "small.svs", "volume": "anatomical_label.nii.gz", "expression": "expression.csv",
              "sequence": "promoters.csv"}[modality]
    (folder / target).write_bytes(b"\x00garbage\xff" * 3)
    importlib.invalidate_caches()
    msg = error_of(folder / "manifest.csv", **kw)
    assert target in msg and "unreadable" in msg

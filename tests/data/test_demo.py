"""The bundled demo cohort is what its README says: real files, missing modalities, shared pairs, real table pairs."""

from __future__ import annotations

import filecmp
import itertools
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl import keys
from biossl.cli import main
from biossl.data.cohort import Cohort
from biossl.data.demo import DEMO_DIR, DEMO_LABELS, DEMO_MANIFEST, build_demo_cohort

#: Patients per modality (README.md's counts).
COUNTS = {"cnv": 10, "expression": 21, "mut": 21, "sequence": 16, "volume": 10, "wsi": 8}
#: The demo's table modalities: the same TCGA case's tables, so their pairs are real.
TABLES = ("expression", "cnv", "mut")


def test_demo_cohort_validates_with_real_readers() -> None:
    cohort = Cohort.from_manifest(DEMO_MANIFEST)  # probes every file with its modality's reader
    assert len(cohort.patients) == 24
    counts = cohort.table.groupby(keys.MODALITY)[keys.PATIENT_ID].nunique().to_dict()
    assert counts == COUNTS
    per_patient = [len(cohort.modalities_of(p)) for p in cohort.patients]
    assert min(per_patient) >= 1 and max(per_patient) == len(COUNTS)
    assert sum(n < len(COUNTS) for n in per_patient) >= 12, "many patients must lack a modality"


def test_every_pair_of_modalities_shares_patients() -> None:
    m = pd.read_csv(DEMO_MANIFEST)
    sets = m.groupby("modality")["patient_id"].agg(set)
    assert set(sets.index) == set(COUNTS)
    for a, b in itertools.combinations(sets.index, 2):
        assert len(sets[a] & sets[b]) >= 2, (a, b)


def test_real_table_pairs_cover_most_patients() -> None:
    """Expression + mutations for most expression patients, expression + copy number for most KIRC ones."""
    m = pd.read_csv(DEMO_MANIFEST)
    sets = m.groupby("modality")["patient_id"].agg(set)
    kirc = set(pd.read_csv(DEMO_LABELS).query("subtype == 'CCRCC'")["patient_id"])
    assert len(sets["expression"] & sets["mut"]) >= 0.8 * len(sets["expression"])
    assert sets["cnv"] <= kirc, "KIRP has no copy-number table in PORPOISE: no cnv row for a KIRP patient"
    assert len(sets["expression"] & sets["cnv"]) >= 0.7 * len(kirc & sets["expression"])
    assert sets["mut"] != set(m["patient_id"]) and sets["cnv"] != kirc, "some patients lack a table"


def test_labels_cover_every_patient_with_subtype_and_survival() -> None:
    labels = pd.read_csv(DEMO_LABELS)
    manifest = pd.read_csv(DEMO_MANIFEST)
    assert set(labels["patient_id"]) == set(manifest["patient_id"])
    assert set(labels["subtype"]) == {"CCRCC", "PRCC"}
    assert (labels["time"] > 0).all() and set(labels["event"]) <= {0, 1} and labels["event"].sum() > 0
    assert manifest.groupby("patient_id")["site"].nunique().max() == 1
    assert manifest.groupby("patient_id")["tcga_case"].nunique().max() == 1


def test_demo_is_small() -> None:
    total = sum(f.stat().st_size for f in DEMO_DIR.rglob("*") if f.is_file())
    assert total < 20 * 1024 * 1024
    assert sum((DEMO_DIR / f).stat().st_size for f in ("cnv.csv", "mut_kirc.csv", "mut_kirp.csv")) < 10_000


def test_cohort_command_shows_the_kinds_and_value_types(capsys: pytest.CaptureFixture[str]) -> None:
    """``biossl cohort`` (thorough value checks) reads cnv as a categorical table and mut as a binary one."""
    assert main(["cohort", str(DEMO_MANIFEST)]) == 0
    out = capsys.readouterr().out
    assert "24 patients, 86 files" in out
    expected = {"wsi": "slide", "volume": "volume", "cnv": r"table \(categorical\)", "expression": "table",
                "mut": r"table \(binary\)", "sequence": "sequence"}
    for modality, kind in expected.items():
        n = COUNTS[modality]
        assert re.search(rf"^\s*{modality}\s+{kind}\s+{n} patients\s+{n} files\s*$", out, re.M), (modality, out)
    manifest = pd.read_csv(DEMO_MANIFEST, keep_default_na=False)
    legacy = manifest[manifest["modality"].isin(keys.MODALITIES)]
    assert (legacy["kind"] == "").all() and (legacy["value_type"] == "").all(), "legacy names keep their own kinds"
    new = manifest[~manifest["modality"].isin(keys.MODALITIES)]
    assert set(zip(new["modality"], new["kind"], new["value_type"])) == {("cnv", "table", "categorical"),
                                                                        ("mut", "table", "binary")}


def test_mutation_files_differ_in_panel_and_each_varies() -> None:
    """One file per cancer (the panels differ); biossl masks a gene that a patient's panel lacks."""
    from biossl.kinds.table import read_table_values

    tables = {name: pd.read_csv(DEMO_DIR / name).set_index("patient_id")
              for name in ("mut_kirc.csv", "mut_kirp.csv", "cnv.csv")}
    for name, table in tables.items():
        assert (table.nunique() > 1).any(), f"{name}: no gene varies"
    assert (tables["cnv.csv"].nunique() > 1).all(), "cnv.csv: a gene with one call only"
    carried = pd.concat([tables["mut_kirc.csv"], tables["mut_kirp.csv"]]).fillna(0).sum()
    assert (carried > 0).all(), "a mutation gene no demo patient carries"
    kirc, kirp = set(tables["mut_kirc.csv"].columns), set(tables["mut_kirp.csv"].columns)
    assert kirc != kirp and kirc & kirp
    adata, _ = read_table_values(DEMO_DIR / "mut_kirc.csv", keys.BINARY)
    assert set(np.unique(np.asarray(adata.X))) == {0.0, 1.0}


def _porpoise(shared: Path, cancer: str) -> pd.DataFrame:
    path = shared / "tcga_porpoise" / f"tcga_{cancer}_all_clean.csv.zip"
    with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as fh:
        return pd.read_csv(fh, low_memory=False).drop_duplicates("case_id").set_index("case_id")


def test_table_rows_are_the_real_porpoise_values_of_the_same_tcga_case(shared_data: Path) -> None:
    """Every cnv / mut / expression row holds PORPOISE's values of the patient's own TCGA case (manifest tcga_case)."""
    manifest = pd.read_csv(DEMO_MANIFEST)
    case = manifest.groupby("patient_id")["tcga_case"].first()
    cancer = pd.read_csv(DEMO_LABELS).set_index("patient_id")["subtype"].map({"CCRCC": "kirc", "PRCC": "kirp"})
    source = {c: _porpoise(shared_data, c) for c in ("kirc", "kirp")}
    files = {"cnv.csv": "_cnv", "mut_kirc.csv": "_mut", "mut_kirp.csv": "_mut", "expression.csv": "_rnaseq"}
    checked = 0
    for name, suffix in files.items():
        table = pd.read_csv(DEMO_DIR / name).set_index("patient_id")
        for patient, row in table.iterrows():
            tcga = source[cancer[patient]].loc[case[patient]]
            if name.startswith("mut_"):
                assert name == f"mut_{cancer[patient]}.csv", (patient, name)
            np.testing.assert_allclose(row.to_numpy(float), tcga[[g + suffix for g in table.columns]].to_numpy(float),
                                       atol=5e-5, err_msg=f"{name}, {patient} ({case[patient]})")
            checked += 1
        listed = set(manifest.loc[manifest["path"] == name, "patient_id"])
        if name == "expression.csv":  # the table holds all 24 cases; 3 have no expression row in the manifest
            assert listed < set(table.index)
        else:
            assert listed == set(table.index), f"{name}: the manifest's rows and the file's patients differ"
    assert checked == 10 + 21 + 24


def test_rebuild_is_deterministic_and_gives_the_committed_files(shared_data: Path, tmp_path: Path) -> None:
    """Two rebuilds are byte-identical; so are they and the committed files (the slides written by tifffile name
    the biossl version in their header, so those are compared between the rebuilds only)."""
    first, second = tmp_path / "a", tmp_path / "b"
    build_demo_cohort(shared_data, first)
    build_demo_cohort(shared_data, second)
    built = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(DEMO_DIR) for p in DEMO_DIR.rglob("*") if p.is_file() and p.name != "README.md")
    assert built == committed
    for rel in built:
        assert filecmp.cmp(first / rel, second / rel, shallow=False), f"{rel} differs between two rebuilds"
        if not (rel.parent.name == "slides" and rel.name.startswith("DEMO-")):
            assert filecmp.cmp(first / rel, DEMO_DIR / rel, shallow=False), f"{rel}: rebuild the demo cohort"

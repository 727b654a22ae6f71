"""Sequence tables shared by many patients (a ``patient_id`` column): each patient gets only its own rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import biossl.data.sequence as sequence_module
from biossl import keys
from biossl.data.bags import BagSpec, PatientBagDataset
from biossl.data.cohort import Cohort
from biossl.data.sequence import encode, patient_sequences, read_sequences, table_patients
from biossl.downstream.kmers import patient_kmer_frequencies
from biossl.errors import ManifestError, SequenceError

SPEC = BagSpec(windows=64, window_length=32, modalities=(keys.SEQUENCE,))


def _demo_dna(demo_cohort: Path) -> dict[str, list[str]]:
    """The demo patients' promoters, read from their own FASTA files."""
    manifest = pd.read_csv(demo_cohort / "manifest.csv")
    rows = manifest[manifest["modality"] == "sequence"]
    return {p: [r.sequence for r in read_sequences(demo_cohort / f)] for p, f in zip(rows["patient_id"], rows["path"])}


def _table_cohort(folder: Path, table: pd.DataFrame, patients: list[str], *, name: str = "dna.csv") -> Path:
    table.to_csv(folder / name, index=False)
    manifest = folder / "manifest.csv"
    pd.DataFrame({"patient_id": patients, "modality": "sequence", "path": name}).to_csv(manifest, index=False)
    return manifest


def test_demo_table_gives_each_patient_the_same_windows_and_kmers_as_its_fasta(demo_cohort: Path,
                                                                                 tmp_path: Path) -> None:
    dna = _demo_dna(demo_cohort)
    table = pd.DataFrame([(p, s) for p, seqs in dna.items() for s in seqs], columns=["patient_id", "sequence"])
    table = table.sample(frac=1.0, random_state=0)  # row order must not matter
    manifest = _table_cohort(tmp_path, table, sorted(dna))
    from_table = Cohort.from_manifest(manifest)
    from_fasta = Cohort.from_manifest(demo_cohort / "manifest.csv").subset(sorted(dna))
    assert from_table.patients == sorted(dna) and len(from_table.patients) == 16
    a = PatientBagDataset(from_table, spec=SPEC, train=False)
    b = PatientBagDataset(from_fasta, spec=SPEC, train=False)
    for p in sorted(dna):
        wins_a, wins_b = a.sources["sequence"].seqs[p], b.sources["sequence"].seqs[p]
        assert sorted(map(tuple, wins_a.tolist())) == sorted(map(tuple, wins_b.tolist()))
        assert {r.sequence for r in patient_sequences(tmp_path / "dna.csv", p)} == set(dna[p])
    pd.testing.assert_frame_equal(patient_kmer_frequencies(from_table, 4), patient_kmer_frequencies(from_fasta, 4))


def test_fasta_and_plain_tables_are_still_one_patients_file(demo_cohort: Path, fixtures: Path) -> None:
    fasta = demo_cohort / "sequences" / "DEMO-01.fasta"
    assert table_patients(fasta) is None and patient_sequences(fasta, "anyone") == read_sequences(fasta)
    plain = fixtures / "sequence" / "gue_prom_core_all_dev40.csv"
    assert table_patients(plain) is None and len(patient_sequences(plain, "DEMO-01")) == 40


@pytest.mark.shared
def test_gue_slice_one_patient_per_sequence_read_once(shared_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    gue = pd.read_csv(shared_data / "dna_gue" / "prom_prom_core_all" / "dev.csv", nrows=300)
    gue.insert(0, "patient_id", [f"dev-{i:04d}" for i in range(len(gue))])
    manifest = _table_cohort(tmp_path, gue, list(gue["patient_id"]))
    reads: list[Path] = []
    original = sequence_module._read_records
    monkeypatch.setattr(sequence_module, "_read_records", lambda path: reads.append(path) or original(path))
    cohort = Cohort.from_manifest(manifest)
    dataset = PatientBagDataset(cohort, spec=BagSpec(windows=1, window_length=70, modalities=(keys.SEQUENCE,)))
    assert len(reads) == 1  # validation and bags: one read of the 300-row table
    assert len(dataset) == 300
    for i in (0, 17, 299):
        p = f"dev-{i:04d}"
        np.testing.assert_array_equal(dataset.sources["sequence"].seqs[p], encode(gue.loc[i, "sequence"])[None])
        assert [r.label for r in patient_sequences(tmp_path / "dna.csv", p)] == [int(gue.loc[i, "label"])]
    item = dataset[(5, 0)]
    assert item[keys.SEQUENCE][keys.X].shape == (1, 70)


def test_patient_missing_from_the_table_names_file_patient_and_column(tmp_path: Path) -> None:
    table = pd.DataFrame({"patient_id": ["P1", "P2"], "sequence": ["ACGTACGT", "TTGGCCAA"]})
    manifest = _table_cohort(tmp_path, table, ["P1", "P2", "P3"])
    with pytest.raises(ManifestError) as info:
        Cohort.from_manifest(manifest)
    msg = str(info.value)
    assert "row 4" in msg and "'P3'" in msg and "dna.csv" in msg and "patient_id" in msg
    assert "P1" not in msg.split("row 4")[0]  # only P3 is a problem
    cohort = Cohort.from_manifest(manifest, skip_bad=True)
    assert cohort.patients == ["P1", "P2"]
    with pytest.raises(SequenceError, match=r"dna\.csv: patient 'P9' has no row in column 'patient_id'"):
        patient_sequences(tmp_path / "dna.csv", "P9")


def test_table_without_sequence_column_or_with_empty_patient(tmp_path: Path) -> None:
    manifest = _table_cohort(tmp_path, pd.DataFrame({"patient_id": ["P1"], "seq": ["ACGT"]}), ["P1"])
    with pytest.raises(ManifestError,
                       match=r"dna\.csv: unreadable sequence file: no 'sequence' column; "
                             r"columns are \['patient_id', 'seq'\]"):
        Cohort.from_manifest(manifest)
    (tmp_path / "empty_id.csv").write_text("patient_id,sequence\nP1,ACGT\n,ACGG\n")
    with pytest.raises(SequenceError, match=r"empty_id\.csv: line 3: empty 'patient_id'"):
        read_sequences(tmp_path / "empty_id.csv")

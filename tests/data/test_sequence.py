from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl.data.sequence import (
    count_ambiguous,
    decode,
    encode,
    pad_batch,
    probe,
    read_sequences,
    reverse_complement,
    windows,
)
from biossl.errors import SequenceError
from biossl.keys import MASK_TOKEN, PAD_TOKEN

CSV = "sequence/gue_prom_core_all_dev40.csv"
FASTA = "sequence/gue_prom_300_tata_dev12.fa"


def test_token_ids_follow_keys() -> None:
    np.testing.assert_array_equal(encode("ACGTN"), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(encode("acgtn"), [1, 2, 3, 4, 5])
    assert encode("A").dtype == np.int64
    assert decode(np.array([1, 2, 3, 4, 5, MASK_TOKEN, PAD_TOKEN, PAD_TOKEN])) == "ACGTN?"


def test_iupac_codes_read_as_n_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    np.testing.assert_array_equal(encode("ArYsWkMbDhVg"), [1, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 3])
    assert count_ambiguous("ACRYGTNn") == 2  # N is not an ambiguity code here
    path = tmp_path / "amb.fasta"
    path.write_text(">one some description\nACGTRY\nACGT\n>two\nACGTN\n>three\nkkA\n")
    with caplog.at_level(logging.WARNING, logger="biossl.data.sequence"):
        records = read_sequences(path)
    assert [r.id for r in records] == ["one", "two", "three"]
    assert [r.sequence for r in records] == ["ACGTRYACGT", "ACGTN", "KKA"]
    assert [r.n_ambiguous for r in records] == [2, 0, 2]
    assert "4 IUPAC ambiguity codes read as N in 2 of 3 records" in caplog.text


def test_read_csv_fixture(fixtures: Path) -> None:
    records = read_sequences(fixtures / CSV)
    assert len(records) == 40
    assert {len(r.sequence) for r in records} == {70}
    assert sorted(r.label for r in records if r.label is not None) == [0] * 20 + [1] * 20
    assert records[0].id == "0" and isinstance(records[0].label, int)
    first = str(pd.read_csv(fixtures / CSV).loc[0, "sequence"])
    assert records[0].sequence == first and decode(encode(first)) == first


def test_read_fasta_plain_and_gzip(fixtures: Path) -> None:
    plain = read_sequences(fixtures / FASTA)
    assert len(plain) == 12 and plain[0].id == "tata_dev_0"
    assert {len(r.sequence) for r in plain} == {300} and plain[0].label is None
    assert read_sequences(fixtures / (FASTA + ".gz")) == plain
    probe(fixtures / FASTA)


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        (
            "x.fa",
            ">rec1\nACGT\n>bad_rec\nACGXT\n",
            r"x\.fa: record 'bad_rec' has invalid character 'X' at position 4",
        ),
        ("x.fa", ">r\nACGU\n", r"'U' at position 4 \(RNA\? write T for U\)"),
        ("x.fa", ">r\nAC\n>empty\n>s\nA\n", r"record 'empty' has an empty sequence"),
        ("x.fa", "ACGT\n>r\nA\n", r"line 1: sequence before the first '>'"),
        (
            "x.csv",
            "id,sequence\na,ACGT\nb,AC-GT\n",
            r"x\.csv: record 'b' \(line 3\) has invalid character '-'.*gap",
        ),
        ("x.csv", "id,sequence\na,ACGT\nb,\n", r"record 'b' \(line 3\) has an empty sequence"),
        ("x.csv", "id,seq\na,ACGT\n", r"no 'sequence' column; columns are \['id', 'seq'\]"),
        ("x.csv", "sequence,label\n", r"no sequences found"),
        ("x.fa", "", r"no sequences found"),
        ("x.txt", "ACGT", r"unknown sequence format"),
        ("x.csv", "sequence\nACGTé\n", r"invalid character 'é' at position 5"),
    ],
)
def test_bad_files_name_file_record_and_character(tmp_path: Path, name: str, text: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SequenceError, match=pattern):
        probe(path)


def test_reverse_complement(fixtures: Path) -> None:
    assert decode(reverse_complement(encode("AACGTN"))) == "NACGTT"
    records = read_sequences(fixtures / CSV) + read_sequences(fixtures / FASTA)
    for rec in records:
        tokens = encode(rec.sequence)
        rc = reverse_complement(tokens)
        assert not np.array_equal(rc, tokens)
        np.testing.assert_array_equal(reverse_complement(rc), tokens)
    batch = pad_batch([encode(r.sequence) for r in records], 320)
    rc = reverse_complement(batch)
    assert (rc == PAD_TOKEN).sum(axis=1).tolist() == (batch == PAD_TOKEN).sum(axis=1).tolist()
    assert (rc[:, -1] == PAD_TOKEN).all()  # padding stays at the end
    assert decode(rc[0]) == decode(reverse_complement(encode(records[0].sequence)))
    np.testing.assert_array_equal(reverse_complement(rc), batch)
    masked = np.array([1, MASK_TOKEN, 3, 0])
    np.testing.assert_array_equal(reverse_complement(masked), [2, MASK_TOKEN, 4, 0])


@pytest.mark.parametrize(("length", "stride"), [(128, 128), (128, 100), (64, 1), (300, 50), (512, 512)])
def test_windows_cover_the_whole_sequence(fixtures: Path, length: int, stride: int) -> None:
    tokens = encode(read_sequences(fixtures / FASTA)[3].sequence)
    w = windows(tokens, length, stride)
    assert w.shape[1] == length and w.dtype == np.int64
    if len(tokens) <= length:
        assert w.shape[0] == 1 and decode(w[0]) == decode(tokens)
        return
    assert not (w == PAD_TOKEN).any()
    starts = [*range(0, len(tokens) - length + 1, stride)]
    if starts[-1] + length < len(tokens):
        starts.append(len(tokens) - length)  # last window aligned to the end
    assert w.shape[0] == len(starts)
    covered = np.zeros(len(tokens), dtype=bool)
    for s, row in zip(starts, w):
        np.testing.assert_array_equal(row, tokens[s : s + length])
        covered[s : s + length] = True
    assert covered.all()


def test_windows_and_pad_batch_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stride"):
        windows(encode("ACGT" * 10), 8, 9)
    with pytest.raises(ValueError, match="use windows"):
        pad_batch([encode("ACGTACGT")], 4)
    out = pad_batch([encode("AC"), encode("GTA")], 4)
    np.testing.assert_array_equal(out, [[1, 2, 0, 0], [3, 4, 1, 0]])


@pytest.mark.shared
@pytest.mark.parametrize(
    ("task", "n", "bp"), [("prom_prom_core_all", 5920, 70), ("prom_prom_300_tata", 613, 300)]
)
def test_gue_dev_sets(shared_data: Path, fixtures: Path, task: str, n: int, bp: int) -> None:
    records = read_sequences(shared_data / "dna_gue" / task / "dev.csv")
    assert len(records) == n and {len(r.sequence) for r in records} == {bp}
    assert {r.label for r in records} == {0, 1}
    if task == "prom_prom_300_tata":
        assert [r.sequence for r in read_sequences(fixtures / FASTA)] == [r.sequence for r in records[:12]]

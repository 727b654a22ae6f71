"""DNA sequences: reading FASTA/CSV files and turning sequences into token ids.

Token ids follow :mod:`biossl.keys`: PAD=0, A=1, C=2, G=3, T=4, N=5, MASK=6. Lower case is
folded to upper case; the other IUPAC ambiguity codes (R Y S W K M B D H V) are read as N and counted
(:attr:`SequenceRecord.n_ambiguous`, and a log line per file). Any other character is an error.

**One file per patient, or one table for many.** A FASTA file, or a CSV/TSV table without a
``patient_id`` column, holds one patient's sequences: every record belongs to the manifest row's
patient. A CSV/TSV table *with* a ``patient_id`` column may hold many patients (like an expression
table): a manifest row pointing to it gives its patient only the rows with that ``patient_id``
(:func:`patient_sequences`), so one table can serve a manifest of one "patient" per sequence. Each
file is read and validated once per process (cached by path, size and modification time).
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from biossl.errors import SequenceError
from biossl.keys import NUCLEOTIDES, PAD_TOKEN
from biossl.tokens import N_TOKEN, reverse_complement_tokens

log = logging.getLogger(__name__)

IUPAC_AMBIGUOUS = "RYSWKMBDHV"
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas")
TABLE_SUFFIXES = (".csv", ".tsv")
_HINTS = {"U": " (RNA? write T for U)", "-": " (alignment gap? remove gaps)", ".": " (alignment gap?)"}

_ENCODE = np.full(256, -1, dtype=np.int64)
for _i, _base in enumerate(NUCLEOTIDES, start=1):
    _ENCODE[ord(_base)] = _ENCODE[ord(_base.lower())] = _i
for _code in IUPAC_AMBIGUOUS:
    _ENCODE[ord(_code)] = _ENCODE[ord(_code.lower())] = N_TOKEN
#: Characters per token id for :func:`decode` (PAD is dropped, MASK shows as "?").
_DECODE = np.array(["", *NUCLEOTIDES, "?"])
#: Column of a CSV/TSV sequence table that names each row's patient.
PATIENT_COLUMN = "patient_id"
_CACHE: dict[tuple[str, int, int], _Parsed] = {}
_CACHE_SIZE = 32


@dataclass(frozen=True)
class SequenceRecord:
    """One DNA sequence: its id, its letters (upper case) and an optional label."""

    id: str
    sequence: str
    label: int | str | None = None
    patient: str | None = None

    @property
    def n_ambiguous(self) -> int:
        """Number of IUPAC ambiguity codes other than N (they are read as N)."""
        return count_ambiguous(self.sequence)


def count_ambiguous(sequence: str) -> int:
    """Count the IUPAC codes R Y S W K M B D H V (either case) in ``sequence``."""
    upper = sequence.upper()
    return sum(upper.count(code) for code in IUPAC_AMBIGUOUS)


def encode(
    sequence: str, *, source: str | Path = "<sequence>", record: str = "?", line: int | None = None
) -> np.ndarray:
    """Turn letters into ``int64`` token ids.

    Args:
        sequence: DNA letters; case is ignored.
        source: File named in error messages.
        record: Record id named in error messages.
        line: Line of the file the record is on, if known (named in error messages).

    Raises:
        SequenceError: the sequence is empty or has a character that is not a nucleotide/IUPAC code.
    """
    where = f"{source}: record {record!r}" + (f" (line {line})" if line is not None else "")
    if not sequence:
        raise SequenceError(f"{where} has an empty sequence; remove it or fill it in")
    raw = sequence.encode("ascii", errors="replace")  # non-ASCII becomes "?" and fails below
    tokens = _ENCODE[np.frombuffer(raw, dtype=np.uint8)]
    bad = np.flatnonzero(tokens < 0)
    if bad.size:
        pos = int(bad[0])
        char = sequence[pos]  # "replace" keeps one byte per character, so positions line up
        raise SequenceError(
            f"{where} has invalid character {char!r} at position {pos + 1}"
            f"{_HINTS.get(char.upper(), '')}; allowed: A C G T N and IUPAC codes {IUPAC_AMBIGUOUS} "
            "(read as N)"
        )
    return tokens


def decode(tokens: np.ndarray | Sequence[int]) -> str:
    """Turn token ids back into letters; PAD is dropped, MASK is shown as ``?``.

    Raises:
        ValueError: a token id outside ``0..6``.
    """
    ids = np.asarray(tokens, dtype=np.int64).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= len(_DECODE)):
        raise ValueError(f"token ids must be in 0..{len(_DECODE) - 1}, got {ids.min()}..{ids.max()}")
    return "".join(_DECODE[ids].tolist())


def reverse_complement(tokens: np.ndarray) -> np.ndarray:
    """Reverse-complement token ids (1-D, or 2-D row by row).

    A<->T and C<->G are swapped, N, PAD and MASK keep their ids. Trailing padding stays at the end:
    only the part before it is reversed, so a padded batch stays left-aligned. Applying this twice
    gives back the input.
    """
    import torch

    x = np.asarray(tokens, dtype=np.int64)
    if x.ndim not in (1, 2):
        raise ValueError(f"reverse_complement takes 1-D or 2-D tokens, got shape {x.shape}")
    out = reverse_complement_tokens(torch.from_numpy(np.atleast_2d(x).copy())).numpy()
    return out[0] if x.ndim == 1 else out


def windows(tokens: np.ndarray, length: int, stride: int | None = None) -> np.ndarray:
    """Cut a 1-D token array into windows ``[n, length]`` that cover the whole sequence.

    Windows start at ``0, stride, 2*stride, ...``; if the last of these stops short of the end, one
    more window is **aligned to the end** (it overlaps its neighbour more), so no window but a
    too-short sequence's single one holds padding. A sequence shorter than ``length`` gives one
    window padded at the end with PAD.

    Args:
        tokens: 1-D token ids.
        length: Window length.
        stride: Step between window starts, ``1..length`` (default ``length``: no overlap).

    Raises:
        ValueError: ``length`` < 1, ``stride`` outside ``1..length`` or ``tokens`` not 1-D.
    """
    x = np.asarray(tokens, dtype=np.int64)
    stride = length if stride is None else stride
    if length < 1 or not 1 <= stride <= length or x.ndim != 1:
        raise ValueError(
            f"need 1-D tokens, length >= 1 and 1 <= stride <= length; got {x.shape}, {length}, {stride}"
        )
    if x.size <= length:
        return pad_batch([x], length)
    starts = list(range(0, x.size - length + 1, stride))
    if starts[-1] + length < x.size:
        starts.append(x.size - length)
    return np.stack([x[s : s + length] for s in starts])


def pad_batch(sequences: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Stack token arrays into ``int64 [B, length]``, padding at the end with PAD.

    Raises:
        ValueError: a sequence is longer than ``length`` (cut it with :func:`windows` first).
    """
    out = np.full((len(sequences), length), PAD_TOKEN, dtype=np.int64)
    for i, seq in enumerate(sequences):
        if len(seq) > length:
            raise ValueError(f"sequence {i} has {len(seq)} tokens > length {length}; use windows() first")
        out[i, : len(seq)] = seq
    return out


@dataclass(frozen=True)
class _Parsed:
    """A file's records and, for a table with a patient column, the records per patient."""

    records: tuple[SequenceRecord, ...]
    by_patient: dict[str, tuple[SequenceRecord, ...]] | None


def _parsed(path: str | Path) -> _Parsed:
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        raise SequenceError(f"{path}: sequence file not found; check the path in the manifest")
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    parsed = _CACHE.get(key)
    if parsed is None:
        records = _read_records(path)
        by_patient: dict[str, list[SequenceRecord]] | None = None
        if records[0].patient is not None:
            by_patient = {}
            for rec in records:
                by_patient.setdefault(str(rec.patient), []).append(rec)
        parsed = _CACHE[key] = _Parsed(
            tuple(records), None if by_patient is None else {p: tuple(r) for p, r in by_patient.items()}
        )
        while len(_CACHE) > _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
    return parsed


def read_sequences(path: str | Path) -> list[SequenceRecord]:
    """Read and validate every record of a FASTA or CSV/TSV file.

    FASTA (``.fa .fasta .fna .fas``, optionally ``.gz``): the id is the header up to the first space.
    CSV/TSV (optionally compressed): column ``sequence`` is required, ``id``, ``label`` and
    ``patient_id`` are optional (without ``id`` a record's id is its 0-based row number; with
    ``patient_id`` each record's :attr:`SequenceRecord.patient` is set, see :func:`patient_sequences`).

    Raises:
        SequenceError: unreadable or empty file, missing ``sequence`` column, an empty sequence or an
            invalid character (the message names the file, the record and the character).
    """
    return list(_parsed(path).records)


def table_patients(path: str | Path) -> frozenset[str] | None:
    """Patients of a sequence table with a ``patient_id`` column; ``None`` for a one-patient file.

    Raises:
        SequenceError: the file cannot be read (see :func:`read_sequences`).
    """
    by_patient = _parsed(path).by_patient
    return None if by_patient is None else frozenset(by_patient)


def patient_sequences(path: str | Path, patient: str) -> list[SequenceRecord]:
    """The records of ``path`` that belong to ``patient``.

    For a FASTA file or a table without a ``patient_id`` column, that is every record (the file is
    the patient's); for a table with one, the rows whose ``patient_id`` is ``patient``.

    Raises:
        SequenceError: the file cannot be read, or it is a table with a ``patient_id`` column that has
            no row of ``patient`` (the message names the file, the patient and the column).
    """
    parsed = _parsed(path)
    if parsed.by_patient is None:
        return list(parsed.records)
    rows = parsed.by_patient.get(str(patient))
    if rows is None:
        examples = sorted(parsed.by_patient)[:3]
        raise SequenceError(
            f"{path}: patient {patient!r} has no row in column {PATIENT_COLUMN!r} of this sequence table "
            f"({len(parsed.by_patient)} patients, e.g. {examples}); fix the patient_id in the manifest or "
            "in the table, or drop the manifest row"
        )
    return list(rows)


def probe(path: str | Path) -> None:
    """Check that ``path`` reads as a valid sequence file; raise :class:`SequenceError` if not."""
    _parsed(path)


def _read_records(path: Path) -> list[SequenceRecord]:
    name = path.name.lower()
    for ext in (".gz", ".zip", ".bz2", ".xz"):
        name = name.removesuffix(ext)
    try:
        if name.endswith(FASTA_SUFFIXES):
            records = _read_fasta(path)
        elif name.endswith(TABLE_SUFFIXES):
            records = _read_table(path, sep="\t" if name.endswith(".tsv") else ",")
        else:
            raise SequenceError(f"{path}: unknown sequence format; use {FASTA_SUFFIXES} or {TABLE_SUFFIXES}")
    except (OSError, UnicodeDecodeError, EOFError, pd.errors.ParserError) as exc:
        raise SequenceError(f"{path}: cannot read sequence file ({exc})") from exc
    if not records:
        raise SequenceError(f"{path}: no sequences found")
    ambiguous = [r.n_ambiguous for r in records]
    if any(ambiguous):
        log.warning("%s: %d IUPAC ambiguity codes read as N in %d of %d records",
                    path, sum(ambiguous), sum(1 for a in ambiguous if a), len(records))  # fmt: skip
    return records


def _read_fasta(path: Path) -> list[SequenceRecord]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    records: list[SequenceRecord] = []
    header: str | None = None
    chunks: list[str] = []

    def flush() -> None:
        if header is not None:
            seq = "".join(chunks)
            encode(seq, source=path, record=header)
            records.append(SequenceRecord(header, seq.upper()))

    with opener(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                flush()
                header, chunks = (line[1:].split() or [""])[0], []
                if not header:
                    raise SequenceError(f"{path}: line {number}: FASTA header without an id")
            elif header is None:
                raise SequenceError(
                    f"{path}: line {number}: sequence before the first '>' header; not FASTA?"
                )
            else:
                chunks.append("".join(line.split()))
    flush()
    return records


def _read_table(path: Path, *, sep: str) -> list[SequenceRecord]:
    """A CSV/TSV sequence table; ``sequence``, ``id`` and ``patient_id`` are text (``0012`` stays ``"0012"``).

    Column names are matched ignoring case, surrounding spaces and a byte-order mark (a ``Patient_ID``
    column is the patient column, not a column that makes the table every patient's own).
    """
    from biossl.data.labels import read_table

    text = ("sequence", "id", PATIENT_COLUMN)
    df = read_table(path, what="sequence table", text_columns=text, error=SequenceError)
    df = df.rename(columns={c: c.lower() for c in df.columns if c.lower() in (*text, "label")})
    if "sequence" not in df.columns:
        raise SequenceError(f"{path}: no 'sequence' column; columns are {list(df.columns)}. A sequence table "
                            f"needs a column 'sequence' (and optionally {PATIENT_COLUMN!r}, 'id', 'label')")
    for col in text:
        if col in df.columns:
            df[col] = df[col].map(lambda v: "" if pd.isna(v) else str(v))
    lines = [int(i) + 2 for i in df.index]
    df = df.reset_index(drop=True)
    ids = df["id"].astype(str).tolist() if "id" in df.columns else [str(i) for i in range(len(df))]
    patients: list[str | None] = [None] * len(df)
    if PATIENT_COLUMN in df.columns:
        patients = [p.strip() for p in df[PATIENT_COLUMN].astype(str)]
        empty = [i for i, p in enumerate(patients) if not p]
        if empty:
            raise SequenceError(f"{path}: line {lines[empty[0]]}: empty {PATIENT_COLUMN!r} ({len(empty)} row(s) in "
                                "all); give every row its patient or drop the column")
    labels: list[int | str | None] = [None] * len(df)
    if "label" in df.columns:
        raw = df["label"].replace("", np.nan)
        numeric = pd.to_numeric(raw, errors="coerce")
        if numeric.notna().equals(raw.notna()) and bool((numeric.dropna() % 1 == 0).all()):
            labels = [None if pd.isna(v) else int(v) for v in numeric]
        else:
            labels = [None if pd.isna(v) else str(v) for v in raw]
    records = []
    for row, (rid, seq, label, patient) in enumerate(zip(ids, df["sequence"].astype(str), labels, patients)):
        seq = seq.strip()
        encode(seq, source=path, record=rid, line=lines[row])
        records.append(SequenceRecord(rid, seq.upper(), label, patient))
    return records

"""DNA k-mer counts and the k-mer logistic-regression baseline for sequence tasks.

:func:`kmer_counts` counts every overlapping k-mer of each sequence (case folded; windows holding a
letter other than A, C, G, T -- N or another IUPAC code -- are skipped). Columns are the ``4**k``
k-mers in lexicographic order over ``ACGT`` (:func:`kmer_names`: ``AAAA, AAAC, ..., TTTT``).

**Canonical or not.** By default (``canonical=False``) a k-mer and its reverse complement are separate
features: promoters and other functional elements are read on one strand, relative to the TSS, so
orientation carries signal (this is how the GUE 4-mer logistic-regression baseline is usually
reported). ``canonical=True`` adds each k-mer's count to its reverse complement's and keeps the
lexicographically smaller of the two as the column -- strand-symmetric features for reads of
unknown orientation (136 columns for k = 4 instead of 256).

:class:`KmerBaseline` turns each patient's sequences (all records of the patient's sequence files,
or its rows of a table with a ``patient_id`` column, pooled) into k-mer *frequencies* (counts over
the patient's total), standardises them on the training fold and fits scikit-learn's logistic
regression (balanced class weights, ``C``) -- a classification baseline on the same patients and
folds as the other methods.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from biossl import keys
from biossl.downstream.tasks import Task
from biossl.errors import InputError
from biossl.tokens import COMPLEMENT

#: Largest k accepted (4**8 = 65,536 columns).
MAX_K = 8
_BASES = "ACGT"
_CODE = np.full(256, -1, dtype=np.int64)
for _i, _b in enumerate(_BASES):
    _CODE[ord(_b)] = _CODE[ord(_b.lower())] = _i
#: Code (0..3 over ``ACGT``) of each code's complement, from the token table (token id = code + 1).
_COMPLEMENT_CODE = np.array([COMPLEMENT[keys.NUCLEOTIDES.index(b) + 1] - 1 for b in _BASES], dtype=np.int64)


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k-mer length must be between 1 and {MAX_K} (4**k features); got {k}")


def kmer_names(k: int, *, canonical: bool = False) -> list[str]:
    """Column names of :func:`kmer_counts`: the ``4**k`` k-mers in lexicographic order.

    Canonical: only the lexicographically smaller k-mer of each reverse-complement pair.
    """
    _check_k(k)
    names = ["".join(t) for t in itertools.product(_BASES, repeat=k)]
    if not canonical:
        return names
    return [names[i] for i in _canonical_columns(k)[0]]


def _reverse_complement_index(k: int) -> np.ndarray:
    """Index of the reverse complement of each k-mer index."""
    idx = np.arange(4**k)
    digits = (idx[:, None] // 4 ** np.arange(k - 1, -1, -1)) % 4  # [4**k, k], most significant first
    rc = _COMPLEMENT_CODE[digits][:, ::-1]  # complemented, then reversed
    return (rc * 4 ** np.arange(k - 1, -1, -1)).sum(axis=1)


def _canonical_columns(k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept k-mer indices, their reverse-complement indices)``; a kept index is <= its reverse complement."""
    rc = _reverse_complement_index(k)
    keep = np.flatnonzero(np.arange(4**k) <= rc)
    return keep, rc[keep]


def kmer_counts(sequences: Iterable[str], k: int = 4, *, canonical: bool = False) -> np.ndarray:
    """Overlapping k-mer counts per sequence.

    Args:
        sequences: DNA letters (any case). Windows holding anything but A, C, G, T are not counted.
        k: k-mer length (1..:data:`MAX_K`).
        canonical: Merge each k-mer with its reverse complement (see the module docstring).

    Returns:
        ``int64`` ``[n_sequences, 4**k]`` (canonical: ``[n_sequences, n_canonical]``), columns as
        :func:`kmer_names`. A sequence shorter than ``k`` has a row of zeros.
    """
    _check_k(k)
    seqs = list(sequences)
    out = np.zeros((len(seqs), 4**k), dtype=np.int64)
    weights = 4 ** np.arange(k - 1, -1, -1)
    for row, seq in enumerate(seqs):
        codes = _CODE[np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)]
        if len(codes) < k:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(codes, k)
        valid = windows[(windows >= 0).all(axis=1)]
        out[row] = np.bincount(valid @ weights, minlength=4**k)
    if not canonical:
        return out
    keep, rc = _canonical_columns(k)
    merged = out[:, keep] + out[:, rc]
    palindromic = keep == rc
    merged[:, palindromic] = out[:, keep[palindromic]]
    return merged


def patient_kmer_frequencies(cohort: Any, k: int = 4, *, canonical: bool = False) -> pd.DataFrame:
    """Per patient, the k-mer frequencies of all records of its sequence files (rows sum to 1).

    A sequence table with a ``patient_id`` column gives each patient only its own rows
    (:func:`biossl.data.sequence.patient_sequences`).

    Patients without sequence files (or whose sequences hold no valid k-mer) are left out.

    Raises:
        InputError: no patient of the cohort has a sequence.
    """
    from biossl.data.sequence import patient_sequences

    rows, patients = [], []
    for p in cohort.patients:
        files: Sequence[Path] = [f for m in cohort.of_kind(keys.SEQUENCE) for f in cohort.files(p, m)]
        if not files:
            continue
        seqs = [r.sequence for f in files for r in patient_sequences(f, p)]
        counts = kmer_counts(seqs, k, canonical=canonical).sum(0)
        if counts.sum() == 0:
            continue
        rows.append(counts / counts.sum())
        patients.append(str(p))
    if not rows:
        raise InputError(f"--baseline-kmer: no patient of the cohort has a DNA sequence file (a modality of "
                         f"kind {keys.SEQUENCE!r}) with a k-mer of length {k}; drop --baseline-kmer or add sequences")
    return pd.DataFrame(np.stack(rows), index=pd.Index(patients, name="patient_id"),
                        columns=kmer_names(k, canonical=canonical))


class KmerBaseline:
    """k-mer frequencies + standardisation + logistic regression (balanced class weights), subtype tasks only.

    Args:
        features: Patients x k-mer frequencies (:func:`patient_kmer_frequencies`).
        k: The k-mer length, for the report.
        canonical: Whether columns are canonical, for the report.
        c: Inverse L2 strength of the logistic regression.
        name: Name in reports (the CLI uses ``kmer<k>_logreg``).
    """

    def __init__(self, features: pd.DataFrame, *, k: int = 4, canonical: bool = False, c: float = 1.0,
                 name: str | None = None) -> None:
        self.features, self.k, self.canonical, self.c = features, k, canonical, c
        self.name = name or f"kmer{k}_logreg"

    def patients(self) -> set[str]:
        """Patients with DNA sequences."""
        return set(map(str, self.features.index))

    def describe(self) -> dict[str, Any]:
        """Settings for the report."""
        return {"method": "k-mer frequencies of the patient's DNA + standardise + logistic regression",
                "k": self.k, "canonical": self.canonical, "n_features": int(self.features.shape[1]),
                "logreg_C": self.c, "class_weight": "balanced"}

    def fit_predict(self, task: Task, train: np.ndarray, test: np.ndarray, *, seed: int,
                    unlabelled: Sequence[str] = ()) -> np.ndarray:
        """Fit on ``train``; class probabilities for ``test``."""
        from biossl.downstream.methods import balanced_logreg, one_thread_if_small, standardise

        if task.kind != "subtype" or task.y is None:
            raise InputError("--baseline-kmer is a classification baseline (k-mer logistic regression); "
                             "use it with --task subtype")
        x = self.features.loc[task.patients].to_numpy(dtype=np.float64)
        with one_thread_if_small(x.size):
            x_train, x_test = standardise(x[train], x[test])
            return balanced_logreg(x_train, task.y[train], x_test, len(task.classes), c=self.c, seed=seed)


__all__ = ["MAX_K", "KmerBaseline", "kmer_counts", "kmer_names", "patient_kmer_frequencies"]

"""k-mer counts against hand counts on real promoters (demo FASTA, GUE), and the k-mer baseline on the demo."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl.data.cohort import Cohort
from biossl.data.labels import read_labels
from biossl.data.sequence import read_sequences
from biossl.downstream.cv import common_patients, cross_validate, folds_for
from biossl.downstream.kmers import KmerBaseline, kmer_counts, kmer_names, patient_kmer_frequencies
from biossl.downstream.tasks import subtype_task, survival_task
from biossl.errors import InputError

COMPLEMENT = str.maketrans("ACGT", "TGCA")


def _reference(seq: str, k: int) -> Counter[str]:
    """Count by slicing, one window at a time (the obvious, slow way)."""
    return Counter(seq[i:i + k] for i in range(len(seq) - k + 1) if set(seq[i:i + k]) <= set("ACGT"))


def _revcomp(kmer: str) -> str:
    return kmer.translate(COMPLEMENT)[::-1]


def test_hand_count_of_the_first_demo_promoter(demo_cohort: Path) -> None:
    record = read_sequences(demo_cohort / "sequences" / "DEMO-01.fasta")[0]
    assert record.sequence.startswith("GTGCCGGGCG")
    # GTGCCGGGCG, by hand: GT TG GC CC CG GG GG GC CG -> GC 2, CG 2, GG 2, GT 1, TG 1, CC 1.
    row = kmer_counts([record.sequence[:10]], 2)[0]
    names = kmer_names(2)
    assert dict((n, int(c)) for n, c in zip(names, row) if c) == {"GC": 2, "CG": 2, "GG": 2, "GT": 1, "TG": 1,
                                                                   "CC": 1}
    # Canonical 2-mers: GC and CG are their own reverse complements; GG folds into CC, GT into AC, TG into CA.
    canon = dict(zip(kmer_names(2, canonical=True), kmer_counts([record.sequence[:10]], 2, canonical=True)[0]))
    assert {n: int(c) for n, c in canon.items() if c} == {"GC": 2, "CG": 2, "CC": 3, "AC": 1, "CA": 1}


def test_counts_equal_window_by_window_counts_on_every_demo_fasta(demo_cohort: Path) -> None:
    files = sorted((demo_cohort / "sequences").glob("*.fasta"))
    seqs = [r.sequence for f in files for r in read_sequences(f)]
    assert len(files) == 16 and len(seqs) == 128 and {len(s) for s in seqs} == {70}
    names = kmer_names(4)
    assert len(names) == 256 and names[:3] == ["AAAA", "AAAC", "AAAG"] and names[-1] == "TTTT"
    counts = kmer_counts(seqs, 4)
    assert counts.shape == (128, 256) and counts.dtype == np.int64
    assert (counts.sum(axis=1) == 67).all()  # 70 - 4 + 1 windows, all ACGT
    for row, seq in zip(counts, seqs):
        ref = _reference(seq, 4)
        assert {n: int(c) for n, c in zip(names, row) if c} == dict(ref)
    canon_names = kmer_names(4, canonical=True)
    canon = kmer_counts(seqs, 4, canonical=True)
    assert canon.shape == (128, 136) and (canon.sum(axis=1) == 67).all()
    for row, seq in zip(canon[:8], seqs[:8]):
        ref = _reference(seq, 4)
        for name, c in zip(canon_names, row):
            rc = _revcomp(name)
            assert c == ref[name] + (ref[rc] if rc != name else 0)


@pytest.mark.shared
def test_counts_equal_window_by_window_counts_on_gue_promoters(shared_data: Path) -> None:
    table = pd.read_csv(shared_data / "dna_gue" / "prom_prom_300_tata" / "test.csv", nrows=200)
    seqs = table["sequence"].tolist()
    counts = kmer_counts(seqs, 4)
    names = kmer_names(4)
    assert (counts.sum(axis=1) == np.array([len(s) - 3 for s in seqs])).all()
    for row, seq in zip(counts, seqs):
        assert {n: int(c) for n, c in zip(names, row) if c} == dict(_reference(seq, 4))
    assert (kmer_counts(seqs[:20], 6).sum(axis=1) == np.array([len(s) - 5 for s in seqs[:20]])).all()


def test_windows_with_other_letters_are_skipped_and_k_is_checked() -> None:
    # Semantics on literal strings: lower case counts, N breaks windows, a short sequence counts nothing.
    assert kmer_counts(["acgNacgt"], 3)[0].sum() == 3  # acg, acg, cgt
    assert kmer_counts(["AC"], 3)[0].sum() == 0
    with pytest.raises(InputError, match="between 1 and 8"):
        kmer_counts(["ACGT"], 9)


def test_kmer_baseline_scores_the_demo_patients_with_dna(demo_cohort: Path) -> None:
    cohort = Cohort.from_manifest(demo_cohort / "manifest.csv")
    freqs = patient_kmer_frequencies(cohort, 4)
    assert freqs.shape == (16, 256) and np.allclose(freqs.sum(axis=1), 1.0)
    # DEMO-01's row is its 8 promoters' pooled counts over 8 x 67 windows.
    pooled = kmer_counts([r.sequence for r in read_sequences(demo_cohort / "sequences" / "DEMO-01.fasta")], 4).sum(0)
    assert np.allclose(freqs.loc["DEMO-01"].to_numpy(), pooled / 536)
    labels = read_labels(demo_cohort / "labels.csv")
    baseline = KmerBaseline(freqs)
    task = common_patients(subtype_task(labels, "subtype"), [baseline])
    assert len(task) == 16 and len(task.excluded["no_input:kmer4_logreg"]) == 8
    task, folds = folds_for(task, n_folds=2, seed=0)
    result = cross_validate(task, [baseline], folds)["kmer4_logreg"]
    assert [f["n_test"] for f in result["folds"]] == [8, 8]
    assert all(0.0 <= f["macro_auroc"] <= 1.0 for f in result["folds"])
    with pytest.raises(InputError, match="--baseline-kmer is a classification baseline"):
        baseline.fit_predict(survival_task(labels).subset(task.patients), np.arange(8), np.arange(8, 16), seed=0)


def test_kmer_baseline_is_the_shared_balanced_logistic_regression(demo_cohort: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from biossl.downstream.methods import balanced_logreg, standardise

    freqs = patient_kmer_frequencies(Cohort.from_manifest(demo_cohort / "manifest.csv"), 3)
    baseline = KmerBaseline(freqs, k=3, c=0.5)
    task = common_patients(subtype_task(read_labels(demo_cohort / "labels.csv"), "subtype"), [baseline])
    train, test = np.arange(0, len(task), 2), np.arange(1, len(task), 2)
    proba = baseline.fit_predict(task, train, test, seed=3)
    x_train, x_test = standardise(*(freqs.loc[task.patients].to_numpy(dtype=np.float64)[i] for i in (train, test)))
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000, random_state=3).fit(x_train, task.y[train])
    assert proba.shape == (len(test), len(task.classes))
    assert np.allclose(proba[:, ref.classes_], ref.predict_proba(x_test)) and np.allclose(proba.sum(axis=1), 1.0)
    # A class without training patients (here a third, index 0) gets probability 0; the others keep theirs.
    shifted = balanced_logreg(x_train, task.y[train] + 1, x_test, len(task.classes) + 1, c=0.5, seed=3)
    assert np.all(shifted[:, 0] == 0) and np.allclose(shifted[:, 1:], proba)

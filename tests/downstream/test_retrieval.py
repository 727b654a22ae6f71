"""Cross-modal retrieval ranks: known answers (a perfect pairing, ties, a patient lacking a modality)."""

from __future__ import annotations

import numpy as np
import pytest

from biossl.downstream.retrieval import cross_modal_retrieval, pair_summary, retrieval_ranks
from biossl.errors import InputError


def test_a_perfect_pairing_ranks_every_patient_first() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    ranks = retrieval_ranks(x, 3.0 * x + 1e-6 * rng.normal(size=x.shape))  # cosine ignores the scale
    assert (ranks == 1).all()
    s = pair_summary(ranks)
    assert s["recall"] == {"1": 1.0, "5": 1.0, "10": 1.0}
    assert s["chance"]["10"] == pytest.approx(10 / 50)


def test_a_reversed_pairing_ranks_every_patient_last() -> None:
    x = np.eye(6)
    ranks = retrieval_ranks(x, -x + 0.5)  # own target least similar
    assert (ranks == 6).all()


def test_constant_targets_tie_and_rank_in_the_middle_never_first() -> None:
    x = np.random.default_rng(1).normal(size=(9, 4))
    ranks = retrieval_ranks(x, np.ones((9, 4)))
    assert np.allclose(ranks, 5.0)  # 1 + 8 ties / 2


def test_unrelated_embeddings_retrieve_at_chance() -> None:
    rng = np.random.default_rng(2)
    ranks = np.concatenate([retrieval_ranks(rng.normal(size=(100, 16)), rng.normal(size=(100, 16)))
                            for _ in range(20)])
    assert np.mean(ranks <= 10) == pytest.approx(0.10, abs=0.03)
    assert np.median(ranks) == pytest.approx(50.5, abs=6)


def test_patients_lacking_a_modality_are_left_out_of_that_pair() -> None:
    x = np.random.default_rng(3).normal(size=(5, 3))
    y = x.copy()
    y[4] = np.nan
    pairs = cross_modal_retrieval({"X_a": x, "X_b": y}, ["p1", "p2", "p3", "p4", "p5"])
    assert [(p["query"], p["target"], p["n"]) for p in pairs] == [("X_a", "X_b", 4), ("X_b", "X_a", 4)]
    assert pairs[0]["patients"] == ["p1", "p2", "p3", "p4"]


def test_embeddings_of_different_widths_are_refused() -> None:
    with pytest.raises(InputError, match="different widths"):
        cross_modal_retrieval({"X_a": np.zeros((3, 2)), "X_b": np.zeros((3, 4))}, ["p1", "p2", "p3"])

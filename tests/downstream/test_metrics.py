"""Metrics against slow hand-written definitions, on fixed inputs and on the real demo labels."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biossl.downstream.metrics import balanced_accuracy, concordance_index, macro_auroc


def harrell_reference(time: list[float], risk: list[float], event: list[int]) -> float:
    """Comparable pair: the shorter time is an event. Concordant: that patient has the higher risk; ties 1/2."""
    num = den = 0.0
    for i, j in itertools.permutations(range(len(time)), 2):
        if event[i] and time[i] < time[j]:
            den += 1
            num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


def auroc_reference(positive: list[bool], score: list[float]) -> float:
    pos = [s for p, s in zip(positive, score) if p]
    neg = [s for p, s in zip(positive, score) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_cindex_matches_harrell_on_real_demo_labels(demo_cohort: Path) -> None:
    labels = pd.read_csv(demo_cohort / "labels.csv")
    time, event = labels["time"].tolist(), labels["event"].tolist()
    # A risk score with ties: the subtype (CCRCC = 1) plus a coarse rounding of the time.
    risk = [(s == "CCRCC") + round(-t / 40) for s, t in zip(labels["subtype"], time)]
    assert concordance_index(time, risk, event) == pytest.approx(harrell_reference(time, risk, event))
    assert concordance_index(time, [-t for t in time], event) == 1.0
    assert concordance_index(time, time, event) == 0.0


def test_cindex_undefined_without_events() -> None:
    assert math.isnan(concordance_index([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [0, 0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        concordance_index([1.0, 2.0], [0.1, float("nan")], [1, 1])


def test_macro_auroc_is_the_mean_of_one_vs_rest_aurocs() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    proba = np.array([[.7, .2, .1], [.3, .4, .3], [.2, .5, .3], [.5, .3, .2],
                      [.1, .1, .8], [.3, .3, .4], [.4, .3, .3], [.3, .3, .4]])
    expected = np.mean([auroc_reference(list(y == c), list(proba[:, c])) for c in range(3)])
    assert macro_auroc(y, proba) == pytest.approx(expected)
    # A class absent from y is skipped; one class left -> undefined.
    assert macro_auroc(y[y != 2], proba[y != 2]) == pytest.approx(
        np.mean([auroc_reference(list(y[y != 2] == c), list(proba[y != 2][:, c])) for c in range(2)]))
    assert math.isnan(macro_auroc(np.array([1, 1]), proba[:2]))


def test_balanced_accuracy_is_mean_recall() -> None:
    y = [0, 0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 0, 1, 1, 0, 1]
    assert balanced_accuracy(y, predicted) == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    assert math.isnan(balanced_accuracy([], []))

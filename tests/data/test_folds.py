"""One fold-making implementation (``biossl.data.splits``: ``kfold``, ``fold_rows``, ``deal_folds``).

Its callers (patient splits, the heads' inner CV, the audit's probes and artifact heads) keep the folds
they had before the code was shared: the same seed gives the same folds, so recorded numbers hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from biossl.audit.probes import group_folds
from biossl.data.splits import deal_folds, fold_rows, kfold, make_splits
from biossl.errors import InputError


@pytest.fixture(scope="module")
def subtypes(demo_cohort: Path) -> np.ndarray:
    return pd.read_csv(demo_cohort / "labels.csv")["subtype"].astype(str).to_numpy()


@pytest.mark.parametrize("seed", [0, 1, 17])
def test_stratified_pairs_are_sklearns(subtypes: np.ndarray, seed: int) -> None:
    k = int(min(5, pd.Series(subtypes).value_counts().min()))
    want = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(subtypes)), subtypes))
    got = fold_rows(kfold(len(subtypes), k, labels=subtypes, seed=seed))
    assert len(got) == len(want) == k
    for (tr, te), (tr2, te2) in zip(got, want):
        assert np.array_equal(tr, tr2) and np.array_equal(te, te2)


def test_make_splits_uses_kfold(subtypes: np.ndarray) -> None:
    patients = [f"P{i:02d}" for i in range(len(subtypes))]
    table = make_splits(patients, n_splits=3, labels=dict(zip(patients, subtypes)), seed=4)
    assert table["fold"].tolist() == kfold(len(patients), 3, labels=subtypes, seed=4).tolist()


def test_dealt_folds_are_the_audits() -> None:
    for n in (2, 5, 13, 40):
        for seed in (0, 3):
            k = min(5, n)
            before = np.empty(n, dtype=np.int64)  # the detectability folds' formula before it was shared
            before[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
            assert np.array_equal(deal_folds(np.arange(n), k, seed), before)
    groups = np.repeat(np.arange(12), 3)
    assert np.array_equal(group_folds(groups, 4, seed=3), deal_folds(groups, 4, seed=3))
    with pytest.raises(InputError, match="3 groups for 5 folds"):
        deal_folds(np.arange(3), 5, 0)

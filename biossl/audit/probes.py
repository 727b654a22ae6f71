"""Nuisance probes: how well a metadata column (site, scanner, batch) can be predicted from the embeddings.

Rows are patients, or instances of patients (tiles, cells) with a *group* per row: the patient.
Every probe is grouped: no group is ever on both sides of a prediction, and permutations move
whole groups. Two probes score each column, both as **balanced accuracy** (the mean over classes
of the recall, over every row's out-of-fold prediction; Brodersen et al. 2010) against **chance**
``1 / n_classes`` (what any prediction that ignores the embedding scores in expectation).

**Linear probe.** Groups are dealt at random into ``K`` folds (a permutation of the groups drawn
from numpy's generator seeded ``seed``, dealt round-robin), *independently of the labels*. In each
fold the features are centred and scaled with the training rows' mean and sd, and a one-vs-rest
ridge (least-squares) classifier is fitted to the one-hot labels with the fixed penalty
``lambda = ridge * n_train`` (default ``ridge = 0.1``, i.e. a tenth of each standardised feature's
sum of squares). Its scores estimate ``P(class | x)``; the prediction is the class with the
largest ``score / training frequency`` (the centred score divided by the class's training
frequency: the Bayes rule for balanced accuracy), so a majority class is not favoured. The
out-of-fold scores are ``Z_te M Y_tr`` with ``M = (Z_trᵀ Z_tr + lambda I)⁻¹ Z_trᵀ``, which depends
on the embeddings only: a permutation of the labels only permutes the rows of ``Y_tr``.

**kNN probe.** Each row's ``k`` nearest neighbours by cosine similarity of the centred embeddings,
taken from *other groups only* (leave-one-group-out); ``k`` is capped at half the number of rows
outside the largest group (a neighbourhood, not the whole cohort: when ``k`` reaches every other row,
leaving a row out makes its own class the rarest among its neighbours, and the probe predicts
against it). The prediction is the class with the most neighbour votes, each vote weighted by
``1 / (rows of its class)`` (balanced); ties go to the first class in sorted order.

**Permutation test.** ``B`` permutations of the labels across groups (numpy generator seeded
``(seed, 1)``; every group keeps one label and its rows move together), scored with the *same*
folds, operators and neighbour lists. ``p = (1 + #{T_b >= T_obs}) / (1 + B)``. Because the folds and
neighbours never depend on the labels, this p-value is exact (valid at every ``B``) under the null
hypothesis that the labels are exchangeable across groups given the embeddings. (Stratified folds
would depend on the labels and make the fixed-fold test only approximate; that is why folds are
dealt at random.)

**Margin over the null.** A probe's *excess* is its balanced accuracy minus the **mean of its
permutation null** (``null_mean``), not minus ``1 / n_classes``: on few patients the null of a probe
can sit far below ``1 / n_classes`` (a leave-one-group-out kNN predicts *against* a row's own class
when that class has few groups: 0.03 against 1/6 on the demo), so a margin over ``1 / n_classes`` would
hide a real signal. ``excess_over_chance`` (over ``1 / n_classes``) is kept beside it. Without
permutations (``B = 0``) the excess falls back to the margin over chance.

**Smallest detectable effect** (:func:`critical_value`). With ``B`` permutations the p-value is
``(1 + #{T_b >= T_obs}) / (1 + B)``, so a probe is significant at the one-sided level ``a`` (``alpha / 2``,
Bonferroni over the two probes) exactly when ``T_obs`` is above the ``(k + 1)``-th largest null value,
``k`` the largest integer with ``(1 + k) / (1 + B) < a``: the null's upper ``a`` quantile in the
permutation test's own terms. That *critical* balanced accuracy minus ``null_mean`` is the
``min_detectable_excess``: no smaller excess can be significant at this cohort size, these class sizes
and this ``alpha`` (a true effect of that size is detected about half the time: it is a significance
threshold, the effect at 50 % power). It grows as the cohort shrinks (a wider null). When even a
balanced accuracy of 1 cannot be significant (too few permutation units) it is infinite (``None`` in JSON).

**Labels** (:func:`prepare_column`): missing values are dropped (counted); a nuisance column must be
constant within a group (a biology label may vary, e.g. cell types within a donor: its permutations
then move single rows, and its p-value is approximate); classes held by fewer than ``min_groups``
groups (default: ``max(2, K)``) are dropped with a warning that names them; fewer than 2 classes left
is an :class:`InputError`.

**Reuse.** Folds, fold operators and neighbour lists depend on the embedding rows, their groups and
the settings only, so :class:`ProbeCache` builds them once per kept row subset of an embedding and
every column with those rows shares them (identical results, less work).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from biossl.data.splits import deal_folds
from biossl.downstream.methods import standardise
from biossl.errors import InputError

logger = logging.getLogger(__name__)

#: Default ridge penalty per training row on standardised features.
RIDGE = 0.1
#: Permutations scored at once (bounds memory: chunk x rows x classes).
_CHUNK = 64
_MAX_NAMED = 10


@dataclass(frozen=True)
class Column:
    """One column's labels, ready for the probes (rows with a missing value or a dropped class removed)."""

    name: str
    rows: np.ndarray  # positions of the kept rows in the input
    codes: np.ndarray  # class index per kept row
    classes: list[str]
    groups: np.ndarray  # group index (0..G-1) per kept row
    group_names: list[str]
    dropped_missing: int = 0
    dropped_classes: dict[str, int] = field(default_factory=dict)  # class -> its number of groups
    #: unit of the permutations per row: the group, or the row when the column varies within groups
    units: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        """Number of classes kept."""
        return len(self.classes)

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (no per-row arrays)."""
        counts = np.bincount(self.codes, minlength=self.n_classes)
        pairs = np.unique(np.stack([self.groups, self.codes]), axis=1)
        gcounts = np.bincount(pairs[1], minlength=self.n_classes)
        return {"column": self.name, "n_rows": int(len(self.rows)), "n_groups": len(self.group_names),
                "classes": {c: {"rows": int(r), "groups": int(g)} for c, r, g in zip(self.classes, counts, gcounts)},
                "dropped_missing": int(self.dropped_missing), "dropped_classes": dict(self.dropped_classes),
                "varies_within_groups": self.varies_within_groups}

    @property
    def varies_within_groups(self) -> bool:
        """Whether the permutation units are rows (the column varies within a group) rather than groups."""
        return self.units is not None

    def permutation_units(self) -> np.ndarray:
        """Unit index (0..U-1) of each row: its group, or the row itself when the column varies within groups."""
        return self.groups if self.units is None else self.units

    def group_labels(self) -> np.ndarray:
        """Class index of each permutation unit."""
        units = self.permutation_units()
        out = np.empty(int(units.max()) + 1, dtype=np.int64)
        out[units] = self.codes
        return out


def prepare_column(values: pd.Series | np.ndarray, groups: np.ndarray, *, column: str, min_groups: int,
                   where: str = "the embeddings", allow_varying: bool = False, log: bool = True) -> Column:
    """Clean one column for the probes (see the module docstring).

    Args:
        values: One value per row (any dtype; missing = NaN/None).
        groups: One group name per row (the patient).
        column: The column's name, for messages.
        min_groups: Classes held by fewer groups are dropped.
        where: The input, for messages.
        allow_varying: Accept a column that varies within a group (a cell-level biology label); its
            permutations then move single rows, which is approximate when rows of a group are alike.
        log: Log what is dropped (off for a dry check).

    Raises:
        InputError: no value at all, a value that varies within a group (unless ``allow_varying``), or fewer
            than 2 classes left.
    """
    series = pd.Series(np.asarray(values, dtype=object))
    missing = series.isna().to_numpy() | (series.astype(str).str.strip() == "").to_numpy()
    n = len(series)
    if missing.all():
        raise InputError(f"column {column!r} of {where} has no value on any of its {n} rows; fill it in, or audit "
                         "another column")
    if missing.any() and log:
        logger.warning("column %r: %d of %d rows have no value and are left out of its probes", column,
                       int(missing.sum()), n)
    keep = np.flatnonzero(~missing)
    text = series.iloc[keep].astype(str).str.strip().to_numpy()
    grp = np.asarray(groups, dtype=object)[keep].astype(str)
    frame = pd.DataFrame({"g": grp, "v": text})
    varying = frame.groupby("g")["v"].nunique()
    varying = varying[varying > 1]
    if len(varying) and allow_varying:
        if log:
            logger.info("column %r varies within %d group(s): its permutations move single rows (approximate p-value)",
                        column, len(varying))
    elif len(varying):
        raise InputError(f"column {column!r} of {where} takes several values within one group (e.g. "
                         f"{list(varying.index[:_MAX_NAMED])}); audit it with rows at the level where it is constant, "
                         "or choose another --group-column")
    per_group = frame.drop_duplicates(["g", "v"])
    n_groups = per_group["v"].value_counts()
    rare = n_groups[n_groups < min_groups]
    dropped = {str(c): int(k) for c, k in sorted(rare.items())}
    kept_classes = sorted(str(c) for c in n_groups.index if c not in rare.index)
    if len(kept_classes) < 2:
        raise InputError(
            f"column {column!r} of {where}: {len(kept_classes)} class(es) held by at least {min_groups} patients "
            f"({', '.join(kept_classes) or 'none'}; {len(n_groups)} value(s) in all), a probe needs 2; use fewer "
            "--folds, merge rare values, or audit another column")
    if dropped and log:
        named = ", ".join(f"{c!r} ({k})" for c, k in list(dropped.items())[:_MAX_NAMED])
        more = f" and {len(dropped) - _MAX_NAMED} more" if len(dropped) > _MAX_NAMED else ""
        logger.warning("column %r: %d class(es) held by fewer than %d patients are left out of its probes: %s%s",
                       column, len(dropped), min_groups, named, more)
    in_kept = np.isin(text, kept_classes)
    rows = keep[in_kept]
    codes = np.searchsorted(np.asarray(kept_classes, dtype=object), text[in_kept]).astype(np.int64)
    group_names, group_codes = np.unique(grp[in_kept], return_inverse=True)
    return Column(name=column, rows=rows, codes=codes, classes=kept_classes, groups=group_codes.astype(np.int64),
                  group_names=[str(g) for g in group_names], dropped_missing=int(missing.sum()),
                  dropped_classes=dropped, units=np.arange(len(rows)) if len(varying) else None)


@dataclass(frozen=True)
class ProbeResult:
    """One probe's score on one column."""

    probe: str
    balanced_accuracy: float
    chance: float
    p_value: float
    n_permutations: int
    null_mean: float
    null_q95: float
    #: Balanced accuracy an observation must exceed to be significant at ``critical_level`` (inf: none can).
    null_critical: float = float("nan")
    #: One-sided level of ``null_critical`` (``alpha / 2`` in the audit: Bonferroni over two probes).
    critical_level: float = float("nan")

    @property
    def excess_over_chance(self) -> float:
        """Balanced accuracy above chance (``1 / n_classes``)."""
        return self.balanced_accuracy - self.chance

    @property
    def excess(self) -> float:
        """Balanced accuracy above the permutation null's mean (above chance when there is no null)."""
        if np.isfinite(self.null_mean):
            return self.balanced_accuracy - self.null_mean
        return self.excess_over_chance

    @property
    def min_detectable_excess(self) -> float:
        """Smallest excess over the null mean that can be significant (inf: none; nan: not computed)."""
        return self.null_critical - self.null_mean

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record (an infinite detectable excess is ``None``: nothing can be significant)."""
        mde = self.min_detectable_excess
        return {**asdict(self), "null_critical": None if np.isinf(self.null_critical) else self.null_critical,
                "excess": self.excess, "excess_over_null": self.excess, "excess_over_chance": self.excess_over_chance,
                "min_detectable_excess": None if np.isinf(mde) else mde}


def balanced_accuracy_many(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced accuracy of each row of ``[B, n]`` label and prediction arrays (classes absent from a row skipped)."""
    y_true, y_pred = np.atleast_2d(y_true), np.atleast_2d(y_pred)
    b = y_true.shape[0]
    key = (np.arange(b)[:, None] * n_classes + y_true).ravel()
    total = np.bincount(key, minlength=b * n_classes).reshape(b, n_classes)
    correct = np.bincount(key, weights=(y_true == y_pred).ravel(), minlength=b * n_classes).reshape(b, n_classes)
    present = total > 0
    recall = np.where(present, correct / np.maximum(total, 1), 0.0)
    return recall.sum(axis=1) / present.sum(axis=1)


def permutation_p(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + B)`` (a tolerance of 1e-12 counts ties as ties)."""
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def critical_value(null: np.ndarray, level: float) -> float:
    """Balanced accuracy an observation must exceed for ``p < level`` against ``null`` (module docstring).

    ``inf`` when no value can reach ``level`` (too few permutations, or a null that reaches 1).
    """
    null = np.sort(np.asarray(null, dtype=np.float64))[::-1]
    k = math.ceil(level * (1 + len(null)) - 1 - 1e-9) - 1  # largest k with (1 + k) / (1 + B) < level
    if k < 0 or len(null) == 0:
        return float("inf")
    critical = float(null[k])  # k < B since level < 1; observed > critical <=> #{null >= observed} <= k
    return float("inf") if critical >= 1.0 - 1e-12 else critical


def permuted_labels(column: Column, n_permutations: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks ``[b, n]`` of labels permuted across groups (the same sequence for every chunk size and probe)."""
    rng = np.random.default_rng([seed, 1])
    glab = column.group_labels()
    units = column.permutation_units()
    done = 0
    while done < n_permutations:
        b = min(_CHUNK, n_permutations - done)
        perms = np.stack([glab[rng.permutation(len(glab))] for _ in range(b)])
        yield perms[:, units]
        done += b


def group_folds(groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each row (:func:`~biossl.data.splits.deal_folds`); fewer patients than folds is an error."""
    n_groups = int(groups.max()) + 1
    if n_groups < n_folds:
        raise InputError(f"{n_groups} patients for {n_folds} folds; use --folds {max(2, n_groups)} or fewer")
    return deal_folds(groups, n_folds, seed)


class LinearProbe:
    """Precomputed fold operators of the grouped ridge probe; :meth:`predict` scores many label vectors at once."""

    name = "linear"

    def __init__(self, x: np.ndarray, groups: np.ndarray, *, n_folds: int = 5, seed: int = 0,
                 ridge: float = RIDGE) -> None:
        self.folds = group_folds(groups, n_folds, seed)
        self.n = len(x)
        self.ops: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        x = np.asarray(x, dtype=np.float64)
        for f in range(n_folds):
            te, tr = np.flatnonzero(self.folds == f), np.flatnonzero(self.folds != f)
            ztr, zte = standardise(x[tr], x[te])
            lam = ridge * len(tr)
            if ztr.shape[1] <= len(tr):
                m = np.linalg.solve(ztr.T @ ztr + lam * np.eye(ztr.shape[1]), ztr.T)
            else:  # dual form: Zᵀ (Z Zᵀ + λI)⁻¹, the same operator
                m = np.linalg.solve(ztr @ ztr.T + lam * np.eye(len(tr)), ztr).T  # (K symmetric)
            self.ops.append((te, tr, zte, m))

    def predict(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Out-of-fold predictions ``[b, n]`` for label vectors ``y`` ``[b, n]``."""
        y = np.atleast_2d(y)
        b = y.shape[0]
        pred = np.empty((b, self.n), dtype=np.int64)
        for te, tr, zte, m in self.ops:
            onehot = np.zeros((len(tr), b, n_classes))
            onehot[np.arange(len(tr))[:, None], np.arange(b)[None, :], y[:, tr].T] = 1.0
            freq = onehot.mean(axis=0)  # [b, C]
            scores = (zte @ (m @ onehot.reshape(len(tr), b * n_classes))).reshape(len(te), b, n_classes)
            with np.errstate(divide="ignore", invalid="ignore"):
                scores = np.where(freq > 0, scores / np.where(freq > 0, freq, 1.0), -np.inf)
            pred[:, te] = scores.argmax(axis=2).T
        return pred


def neighbours(x: np.ndarray, groups: np.ndarray, k: int, *, block: int = 1024) -> np.ndarray:
    """``[n, k]`` indices of each row's nearest rows of *other* groups by cosine similarity (centred features).

    Raises:
        InputError: fewer than 2 groups.
    """
    x = np.asarray(x, dtype=np.float64)
    z = x - x.mean(axis=0)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    z = z / np.where(norm > 0, norm, 1.0)
    n = len(z)
    largest = int(np.bincount(groups).max())
    k = min(k, (n - largest) // 2)
    if k < 1:
        raise InputError(f"{n} rows in {int(groups.max()) + 1} patient(s): a grouped kNN needs at least 3 patients, "
                         "and 2 rows outside the largest patient")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sim = z[start:stop] @ z.T
        sim[groups[start:stop, None] == groups[None, :]] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(top, order, axis=1)
    return out


class KnnProbe:
    """Leave-one-group-out cosine kNN; :meth:`predict` votes with fixed neighbour lists."""

    name = "knn"

    def __init__(self, x: np.ndarray, groups: np.ndarray, *, k: int = 15) -> None:
        self.idx = neighbours(x, groups, k)
        self.k = self.idx.shape[1]

    def predict(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Predictions ``[b, n]`` for label vectors ``y`` ``[b, n]`` (votes weighted by 1 / class rows)."""
        y = np.atleast_2d(y)
        b, n = y.shape
        votes = y[:, self.idx].reshape(b * n, self.k)
        key = (np.arange(b * n)[:, None] * n_classes + votes).ravel()
        counts = np.bincount(key, minlength=b * n * n_classes).reshape(b, n, n_classes).astype(np.float64)
        rows = np.stack([np.bincount(r, minlength=n_classes) for r in y]).astype(np.float64)  # [b, C]
        weights = np.where(rows > 0, 1.0 / np.maximum(rows, 1.0), 0.0)
        return (counts * weights[:, None, :]).argmax(axis=2)


def run_probe(probe: LinearProbe | KnnProbe, column: Column, *, n_permutations: int, seed: int,
              critical_level: float = 0.025) -> ProbeResult:
    """Observed balanced accuracy, exact permutation p-value and critical value of one probe on one column.

    Args:
        probe: A probe built on the column's rows.
        column: The labels.
        n_permutations: Permutations of the null.
        seed: Seed of the permutations.
        critical_level: One-sided level of ``null_critical`` (the audit's ``alpha / 2``).
    """
    c = column.n_classes
    observed = float(balanced_accuracy_many(column.codes, probe.predict(column.codes, c), c)[0])
    null = np.concatenate([balanced_accuracy_many(y, probe.predict(y, c), c)
                           for y in permuted_labels(column, n_permutations, seed)]) if n_permutations else np.zeros(0)
    return ProbeResult(probe=probe.name, balanced_accuracy=observed, chance=1.0 / c,
                       p_value=permutation_p(observed, null) if len(null) else float("nan"),
                       n_permutations=int(n_permutations),
                       null_mean=float(null.mean()) if len(null) else float("nan"),
                       null_q95=float(np.quantile(null, 0.95)) if len(null) else float("nan"),
                       null_critical=critical_value(null, critical_level) if len(null) else float("nan"),
                       critical_level=float(critical_level))


class ProbeCache:
    """The probes of one embedding, built once per subset of its rows and shared by the columns that keep it.

    A probe's fold operators and neighbour lists depend on the embedding rows, their groups and the
    settings, never on the labels; columns with the same kept rows (the usual case: site, scanner,
    batch and the biology label over the same patients) share them. A column that drops rows (missing
    values, dropped classes) gets probes of its own subset. ``built`` counts the probes constructed.

    Args:
        x: ``[n, d]`` embedding, every input row (a column's ``rows`` index into it).
        n_folds: Folds of the linear probe.
        k: Neighbours of the kNN probe.
        seed: Seed of the folds (and, in :meth:`probe_column`, of the permutations).
        ridge: Ridge penalty per training row.
    """

    def __init__(self, x: np.ndarray, *, n_folds: int = 5, k: int = 15, seed: int = 0, ridge: float = RIDGE) -> None:
        self.x = np.asarray(x, dtype=np.float64)
        self.n_folds, self.k, self.seed, self.ridge = n_folds, k, seed, ridge
        self._linear: dict[tuple[bytes, bytes], LinearProbe] = {}
        self._knn: dict[tuple[bytes, bytes], KnnProbe] = {}
        self.built = {LinearProbe.name: 0, KnnProbe.name: 0}

    @staticmethod
    def _key(rows: np.ndarray, groups: np.ndarray) -> tuple[bytes, bytes]:
        return np.asarray(rows, dtype=np.int64).tobytes(), np.asarray(groups, dtype=np.int64).tobytes()

    def linear(self, rows: np.ndarray, groups: np.ndarray) -> LinearProbe:
        """The linear probe of ``x[rows]`` grouped by ``groups`` (codes ``0..G-1``, one per row)."""
        key = self._key(rows, groups)
        if key not in self._linear:
            self._linear[key] = LinearProbe(self.x[rows], groups, n_folds=self.n_folds, seed=self.seed,
                                            ridge=self.ridge)
            self.built[LinearProbe.name] += 1
        return self._linear[key]

    def knn(self, rows: np.ndarray, groups: np.ndarray) -> KnnProbe:
        """The kNN probe of ``x[rows]`` grouped by ``groups`` (codes ``0..G-1``, one per row)."""
        key = self._key(rows, groups)
        if key not in self._knn:
            self._knn[key] = KnnProbe(self.x[rows], groups, k=self.k)
            self.built[KnnProbe.name] += 1
        return self._knn[key]

    def probes(self, column: Column) -> tuple[LinearProbe, KnnProbe]:
        """Both probes of a column's kept rows.

        Raises:
            InputError: too few groups for the folds or the neighbours.
        """
        return self.linear(column.rows, column.groups), self.knn(column.rows, column.groups)

    def probe_column(self, column: Column, *, n_permutations: int = 1000) -> dict[str, ProbeResult]:
        """Both probes' results on one column (permutations seeded with ``seed``)."""
        return {p.name: run_probe(p, column, n_permutations=n_permutations, seed=self.seed)
                for p in self.probes(column)}


def probe_column(x: np.ndarray, column: Column, *, n_folds: int = 5, k: int = 15, n_permutations: int = 1000,
                 seed: int = 0, ridge: float = RIDGE) -> dict[str, ProbeResult]:
    """Both probes on one column (``x`` holds every input row; the column's kept rows are used).

    Builds the probes for this column alone; use one :class:`ProbeCache` for several columns of ``x``.
    """
    return ProbeCache(x, n_folds=n_folds, k=k, seed=seed, ridge=ridge).probe_column(column,
                                                                                  n_permutations=n_permutations)


__all__ = ["RIDGE", "Column", "KnnProbe", "LinearProbe", "ProbeCache", "ProbeResult", "balanced_accuracy_many",
           "critical_value", "group_folds", "neighbours", "permutation_p", "permuted_labels", "prepare_column",
           "probe_column", "run_probe"]

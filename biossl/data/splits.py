"""Patient-level k-fold splits: made (stratified, grouped by site), read from users' files, saved.

A split table is a DataFrame with columns ``patient_id`` and ``fold`` (0..K-1): each patient is in
exactly one fold; fold ``k``'s test set is its patients, its training set every other patient.

**Held-out test set.** Fold :data:`TRAIN_ONLY` (-1) holds patients that are always trained on and never
tested. A user's table ``patient_id, split`` with values ``train`` / ``test`` (and optionally ``dev``,
also spelt ``val``, ``valid`` or ``validation``) is read as one fixed split (:func:`read_splits`):
``train`` patients get fold -1, ``test`` patients fold 0, so there is a single "fold" that trains on
the training set and scores the test set. ``dev`` patients are left out of the split (neither trained
on nor scored): keep them for choices made before looking at the test set.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from biossl.data.labels import MAX_NAMED, look_alike_note, look_alikes, read_table, warn_look_alikes
from biossl.errors import InputError, ManifestError
from biossl.io import atomic_path
from biossl.keys import PATIENT_ID

logger = logging.getLogger(__name__)

FOLD = "fold"
#: Column of a held-out split table (values train / test / dev).
SPLIT = "split"
#: Fold of patients that are always in training and never tested (a held-out design's training set).
TRAIN_ONLY = -1
_SPLIT_VALUES = {"train": TRAIN_ONLY, "test": 0}
_DEV_VALUES = ("dev", "val", "valid", "validation")
_PORPOISE_NAME = re.compile(r"splits_(\d+)\.csv$")


def _per_patient(values: Mapping[str, Hashable] | pd.Series, patients: list[str], what: str) -> np.ndarray:
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    series.index = series.index.map(str)
    missing = [p for p in patients if p not in series.index or pd.isna(series.get(p))]
    if missing:
        raise InputError(f"{len(missing)} patient(s) have no {what}, e.g. {missing[:MAX_NAMED]}; give every "
                         f"patient a {what} or leave those patients out of the split")
    return series.loc[patients].astype(str).to_numpy()


def kfold(n: int, n_folds: int, *, labels: Sequence[Hashable] | np.ndarray | None = None,
          groups: Sequence[Hashable] | np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Fold ``0 .. n_folds - 1`` of each of ``n`` rows: biossl's one k-fold assignment.

    scikit-learn's shuffled splitters seeded ``seed``: :class:`~sklearn.model_selection.StratifiedGroupKFold`
    with ``labels`` and ``groups``, :class:`~sklearn.model_selection.StratifiedKFold` with ``labels``,
    :class:`~sklearn.model_selection.GroupKFold` with ``groups``, else :class:`~sklearn.model_selection.KFold`.
    Rows of one group share a fold; folds keep the class proportions as far as the groups allow. The
    patient splits (:func:`make_splits`), the inner CV of the downstream heads and the audit's heads
    all call it, so one seed gives the same folds everywhere. The caller checks the counts (sklearn's
    own ``ValueError`` otherwise).

    Returns:
        ``int64 [n]``.
    """
    x = np.zeros(n)
    y = None if labels is None else np.asarray(labels)
    g = None if groups is None else np.asarray(groups)
    if y is not None and g is not None:
        folds = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(x, y, g)
    elif y is not None:
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, y)
    elif g is not None:
        folds = GroupKFold(n_folds, shuffle=True, random_state=seed).split(x, groups=g)
    else:
        folds = KFold(n_folds, shuffle=True, random_state=seed).split(x)
    fold = np.full(n, -1, dtype=np.int64)
    for k, (_, test) in enumerate(folds):
        fold[test] = k
    return fold


def fold_rows(fold: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(training rows, test rows)]`` of folds ``0 .. K-1`` of a fold-per-row array, both sorted.

    For :func:`kfold`'s folds these are exactly the pairs the scikit-learn splitter yields.
    """
    fold = np.asarray(fold)
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(int(fold.max()) + 1)]


def deal_folds(groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each row: the groups ``0 .. G-1`` shuffled (numpy generator seeded ``seed``), dealt round-robin.

    The audit's folds (its grouped probes; its clean-vs-corrupted detectability with ``groups = arange(n)``):
    group-preserving and label-blind, with fold sizes that differ by at most one group.

    Raises:
        InputError: fewer groups than folds.
    """
    groups = np.asarray(groups, dtype=np.int64)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    if n_groups < n_folds:
        raise InputError(f"{n_groups} groups for {n_folds} folds; use {max(2, n_groups)} folds or fewer")
    order = np.random.default_rng(seed).permutation(n_groups)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[order] = np.arange(n_groups) % n_folds
    return fold_of_group[groups]


def make_splits(
    patients: Sequence[str],
    *,
    n_splits: int = 5,
    labels: Mapping[str, Hashable] | pd.Series | None = None,
    groups: Mapping[str, Hashable] | pd.Series | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Assign each patient to one of ``n_splits`` folds, reproducibly for a given ``seed``.

    Args:
        patients: Patient IDs (order does not matter; they are sorted first).
        n_splits: Number of folds (at least 2).
        labels: ``patient -> class``; folds then keep the class proportions (stratified).
        groups: ``patient -> group`` (for example the TCGA ``site``); all patients of a group land in
            one fold, so no group is in both the training and the test set of any fold.
        seed: Shuffling seed.

    Returns:
        DataFrame ``patient_id, fold`` sorted by patient.

    Raises:
        InputError: duplicate patients, a patient without label/group, a class with fewer patients
            (or groups) than folds, or fewer groups than folds.
    """
    ids = sorted(str(p) for p in patients)
    dup = sorted({p for p in ids if ids.count(p) > 1}) if len(set(ids)) < len(ids) else []
    if dup:
        raise InputError(f"patients listed more than once: {dup[:MAX_NAMED]}; give each patient once")
    if n_splits < 2 or n_splits > len(ids):
        raise InputError(f"n_splits={n_splits} is invalid for {len(ids)} patients; use 2..{len(ids)} folds")
    y = _per_patient(labels, ids, "label") if labels is not None else None
    g = _per_patient(groups, ids, "group") if groups is not None else None
    if g is not None and len(set(g)) < n_splits:
        raise InputError(f"only {len(set(g))} groups ({sorted(set(g))[:MAX_NAMED]}) for {n_splits} folds: "
                         "a group cannot be split across folds; lower n_splits or group more coarsely")
    if y is not None:
        unit = "groups" if g is not None else "patients"
        for cls in sorted(set(y)):
            n = len(set(g[y == cls])) if g is not None else int((y == cls).sum())
            if n < n_splits:
                raise InputError(f"class {cls!r} has only {n} {unit}, fewer than n_splits={n_splits}, so "
                                 "some folds would lack it; merge rare classes, use fewer folds or no labels")
    out = pd.DataFrame({PATIENT_ID: ids, FOLD: kfold(len(ids), n_splits, labels=y, groups=g, seed=seed)})
    check_splits(out, groups=None if g is None else dict(zip(ids, g)))
    return out


def check_splits(
    splits: pd.DataFrame, *, groups: Mapping[str, Hashable] | None = None, source: str = ""
) -> None:
    """Check a split table: one fold per patient, folds 0..K-1 all used, each given group in one fold.

    Besides 0..K-1 (K >= 2), fold :data:`TRAIN_ONLY` (-1, always trained on) may be used; then K >= 1
    (a single held-out test fold) is enough.

    Raises:
        ManifestError: naming the patients (or groups) at fault.
    """
    where = f" in {source}" if source else ""
    missing = [c for c in (PATIENT_ID, FOLD) if c not in splits.columns]
    if missing:
        raise ManifestError(f"split table{where} lacks column(s) {missing}; found {list(splits.columns)}")
    folds_of = splits.groupby(PATIENT_ID)[FOLD].agg(lambda f: sorted(set(f)))
    twice = folds_of[folds_of.map(len) > 1]
    if len(twice):
        named = [f"{p} (folds {f})" for p, f in twice.head(MAX_NAMED).items()]
        raise ManifestError(f"{len(twice)} patient(s) are in more than one fold{where}: {', '.join(named)}; "
                            "a patient must be in exactly one fold")
    used = sorted(set(splits[FOLD]))
    tested = [f for f in used if f != TRAIN_ONLY]
    if not tested or tested != list(range(len(tested))) or len(used) < 2:
        raise ManifestError(f"folds{where} are {used}; expected 0..K-1 with K >= 2 and none empty, or a held-out "
                            f"design: fold {TRAIN_ONLY} (train only) with test fold(s) 0..K-1, both non-empty")
    if groups is not None:
        folds_per_group = splits.groupby(splits[PATIENT_ID].map(groups))[FOLD].nunique()
        spread = sorted(map(str, folds_per_group.index[folds_per_group > 1]))
        if spread:
            raise ManifestError(f"group(s) {spread[:MAX_NAMED]} are spread over several folds{where}")


def scored_folds(splits: pd.DataFrame) -> list[int]:
    """The folds that are scored, sorted: every fold but :data:`TRAIN_ONLY`."""
    return sorted(int(f) for f in set(splits[FOLD]) if int(f) != TRAIN_ONLY)


def is_held_out(splits: pd.DataFrame) -> bool:
    """Whether the table is a held-out design (some patients are train-only)."""
    return bool((splits[FOLD] == TRAIN_ONLY).any())


def train_test(splits: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """Return ``(train_patients, test_patients)`` of one fold, each sorted."""
    folds = scored_folds(splits)
    if fold not in folds:
        raise InputError(f"fold {fold} does not exist; the splits have folds {folds}")
    test = splits[FOLD] == fold
    return sorted(splits.loc[~test, PATIENT_ID]), sorted(splits.loc[test, PATIENT_ID])


def read_splits(path: str | Path, *, patients: Collection[str] | None = None) -> pd.DataFrame:
    """Read user-given folds: a table ``patient_id, fold`` or ``patient_id, split``, or a PORPOISE folder.

    A table ``patient_id, split`` (values ``train``, ``test``, optionally ``dev``; case ignored) is one
    held-out split: ``train`` becomes fold :data:`TRAIN_ONLY`, ``test`` fold 0, ``dev`` is left out
    (see the module docstring).

    A PORPOISE/CLAM folder holds one file per fold with columns ``train`` and ``val`` (patient IDs);
    fold ``k``'s ``val`` patients become fold ``k``. The files must form a k-fold partition: no
    patient in ``train`` and ``val`` of one file, in two files' ``val``, or missing from a fold.

    Args:
        path: The table, or the folder of ``splits_{k}.csv`` files.
        patients: When given (e.g. ``cohort.patients``), split patients outside it are an error.

    Raises:
        ManifestError: naming the file and the patient at fault.
    """
    path = Path(path)
    if path.is_dir():
        out = _read_porpoise(path)
    else:
        table = read_table(path, what="split file", text_columns=[PATIENT_ID, "train", "val", SPLIT])
        if {"train", "val"} <= set(table.columns):
            raise ManifestError(f"{path} holds one fold (train/val columns); pass the folder that holds "
                                "all of splits_0.csv .. splits_{K-1}.csv")
        if PATIENT_ID in table.columns and SPLIT in table.columns and FOLD not in table.columns:
            out = _held_out(table, path)
            check_splits(out, source=str(path))
            return _restrict(out, path, patients)
        if PATIENT_ID not in table.columns or FOLD not in table.columns:
            raise ManifestError(f"split file {path} needs columns patient_id and fold (k-fold), or patient_id and "
                                f"split (train/test[/dev], one held-out test set); found {list(table.columns)}. "
                                "Or pass a folder of PORPOISE splits_{k}.csv files")
        if not pd.api.types.is_integer_dtype(table[FOLD]):
            raise ManifestError(f"split file {path}: column fold must hold whole numbers 0..K-1")
        out = table[[PATIENT_ID, FOLD]].astype({FOLD: int})
    check_splits(out, source=str(path))
    return _restrict(out, path, patients)


def _restrict(out: pd.DataFrame, path: Path, patients: Collection[str] | None) -> pd.DataFrame:
    if patients is not None:
        known = {str(p) for p in patients}
        extra = sorted(set(out[PATIENT_ID]) - known)
        if extra:
            note = look_alike_note(look_alikes(extra, known - set(out[PATIENT_ID])), "the split file", "the cohort")
            raise ManifestError(f"{path} names {len(extra)} patient(s) not in the cohort, "
                                f"e.g. {extra[:MAX_NAMED]}{note}")
        left = sorted(known - set(out[PATIENT_ID]))
        if left:
            logger.warning("%d cohort patient(s) are in no fold of %s and are left out, e.g. %s", len(left), path,
                           left[:MAX_NAMED])
            warn_look_alikes(left, list(out[PATIENT_ID]), f"the cohort in no fold of {path}", "split patient")
    return out.sort_values(PATIENT_ID).reset_index(drop=True)


def _held_out(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``patient_id, split`` (train/test/dev) -> ``patient_id, fold`` (train -1, test 0, dev left out)."""
    ids = table[PATIENT_ID].map(lambda v: "" if pd.isna(v) else str(v).strip())
    values = table[SPLIT].map(lambda v: "" if pd.isna(v) else str(v).strip().lower())
    empty = ids == ""
    if empty.any():
        raise ManifestError(f"split file {path}: row {int(empty.to_numpy().argmax()) + 2} has an empty patient_id; "
                            "give every row its patient")
    bad = ~values.isin([*_SPLIT_VALUES, *_DEV_VALUES])
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise ManifestError(f"split file {path}: patient {ids.iloc[i]!r} (row {i + 2}) has split "
                            f"{table[SPLIT].iloc[i]!r} ({int(bad.sum())} bad row(s) in all); column split takes "
                            f"train, test or dev ({'/'.join(_DEV_VALUES)} are left out)")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ManifestError(f"split file {path}: patient(s) {sorted(set(dup))[:MAX_NAMED]} are listed more than once; "
                            "give each patient one split")
    dev = values.isin(_DEV_VALUES)
    if dev.any():
        logger.info("%s: %d dev patient(s) are left out of the split (neither trained on nor scored)",
                    path, int(dev.sum()))
    for name in _SPLIT_VALUES:
        if not (values == name).any():
            raise ManifestError(f"split file {path}: no patient has split {name!r}; a held-out design needs both "
                                "train and test patients")
    keep = ~dev
    folds = values[keep].map(_SPLIT_VALUES).astype(int).to_numpy()
    return pd.DataFrame({PATIENT_ID: ids[keep].to_numpy(), FOLD: folds})


def _read_porpoise(folder: Path) -> pd.DataFrame:
    files = {int(m.group(1)): f for f in folder.iterdir() if (m := _PORPOISE_NAME.search(f.name))}
    if sorted(files) != list(range(len(files))) or len(files) < 2:
        raise ManifestError(f"{folder}: expected files splits_0.csv .. splits_{{K-1}}.csv (K >= 2), "
                            f"found {sorted(f.name for f in files.values())}")
    trains: dict[int, set[str]] = {}
    rows = []
    for k, file in sorted(files.items()):
        table = read_table(file, what="split file", text_columns=["train", "val"])
        if not {"train", "val"} <= set(table.columns):
            raise ManifestError(f"split file {file} needs columns train and val; found {list(table.columns)}")
        train_ids, val = (table[c].dropna().astype(str).tolist() for c in ("train", "val"))
        for col, ids in (("train", train_ids), ("val", val)):
            dup = sorted({p for p in ids if ids.count(p) > 1})
            if dup:
                raise ManifestError(f"{file}: patient(s) {dup[:MAX_NAMED]} appear twice in column {col}")
        both = sorted(set(train_ids) & set(val))
        if both:
            raise ManifestError(f"{file}: patient {both[0]} is in both train and val"
                                f"{f' (and {len(both) - 1} more)' if len(both) > 1 else ''}; "
                                "a fold's training and test patients must differ")
        trains[k] = set(train_ids)
        rows += [(p, k) for p in val]
    out = pd.DataFrame(rows, columns=[PATIENT_ID, FOLD])
    check_splits(out, source=str(folder))
    everyone = set(out[PATIENT_ID])
    for k, train in trains.items():
        stray = sorted(train - everyone)
        if stray:
            raise ManifestError(f"{files[k]}: patient {stray[0]} is in train but in no file's val column, "
                                "so it is never tested; the files do not form a k-fold partition")
        left = sorted(everyone - train - set(out.loc[out[FOLD] == k, PATIENT_ID]))
        if left:
            raise ManifestError(f"{files[k]}: patient {left[0]} ({len(left)} in all) is neither in train nor "
                                "in val; every patient of other folds' val must train in this fold")
    return out


def save_splits(splits: pd.DataFrame, path: str | Path) -> None:
    """Check and write a split table atomically (``.parquet`` as Parquet, else CSV)."""
    check_splits(splits)
    path = Path(path)
    table = splits[[PATIENT_ID, FOLD]].sort_values(PATIENT_ID)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".parquet", ".pq"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)

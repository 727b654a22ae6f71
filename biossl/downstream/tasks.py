"""Downstream tasks: validated per-patient targets and how a fold's predictions are scored.

Handling of bad or missing labels (each tested):

* a patient whose label (subtype) or time/event (survival) cell is empty is *unlabelled* for the
  task: left out, counted in ``excluded["no_label"]`` and logged (semi-supervised modes will use them);
* a label column with a single class, a survival time that is not a number or is <= 0, an event that
  is not 0/1, or no event at all among the labelled patients: :class:`~biossl.errors.InputError`
  naming the file, the column and the patients;
* a *test* fold without an event -- or whose events all come after the other test patients'
  follow-up ends -- has no comparable pair, so its c-index is undefined: it is reported as ``null``
  with the reason and left out of the mean (see :mod:`biossl.downstream.cv`); a *training* fold
  without an event cannot fit a survival head and is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from biossl.data.labels import MAX_NAMED, check_survival_columns
from biossl.downstream.metrics import balanced_accuracy, concordance_index, macro_auroc
from biossl.errors import InputError

logger = logging.getLogger(__name__)

TaskKind = Literal["subtype", "survival"]
TASKS: tuple[str, ...] = ("subtype", "survival")


@dataclass
class Task:
    """Targets of one task for a sorted list of patients.

    Attributes:
        kind: ``"subtype"`` or ``"survival"``.
        patients: Sorted patient IDs with a usable label.
        classes: Class names in index order (subtype).
        y: Class index per patient (subtype).
        time: Follow-up time per patient (survival).
        event: 1 = event observed, 0 = censored (survival).
        columns: The labels-table columns the targets came from.
        excluded: Patients left out, by reason (``{"no_label": [...]}``).
    """

    kind: TaskKind
    patients: list[str]
    classes: list[str] = field(default_factory=list)
    y: np.ndarray | None = None
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    columns: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.patients)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics :meth:`score` returns, the first being the headline one."""
        return ("c_index",) if self.kind == "survival" else ("macro_auroc", "balanced_accuracy")

    def subset(self, patients: Sequence[str], *, reason: str = "") -> Task:
        """The task restricted to ``patients`` (kept sorted); the others are recorded under ``reason``."""
        keep = set(patients)
        idx = np.array([i for i, p in enumerate(self.patients) if p in keep], dtype=np.int64)
        left = [p for p in self.patients if p not in keep]
        excluded = {k: list(v) for k, v in self.excluded.items()}
        if left and reason:
            excluded[reason] = excluded.get(reason, []) + left
        return Task(self.kind, [self.patients[i] for i in idx], list(self.classes),
                    None if self.y is None else self.y[idx], None if self.time is None else self.time[idx],
                    None if self.event is None else self.event[idx], dict(self.columns), excluded)

    def index(self, patients: Sequence[str]) -> np.ndarray:
        """Positions of ``patients`` in :attr:`patients`."""
        where = {p: i for i, p in enumerate(self.patients)}
        return np.array([where[p] for p in patients], dtype=np.int64)

    def strata(self) -> pd.Series:
        """What folds are stratified by: the class (subtype) or the event indicator (survival)."""
        if self.kind == "subtype":
            assert self.y is not None
            values = [self.classes[i] for i in self.y]
        else:
            assert self.event is not None
            values = [str(int(e)) for e in self.event]
        return pd.Series(values, index=self.patients)

    def target(self, idx: np.ndarray, *, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """The targets of the patients at ``idx`` as tensors for a head's loss."""
        if self.kind == "subtype":
            assert self.y is not None
            return {"y": torch.as_tensor(self.y[idx], dtype=torch.long)}
        assert self.time is not None and self.event is not None
        return {"time": torch.as_tensor(self.time[idx], dtype=dtype),
                "event": torch.as_tensor(self.event[idx], dtype=dtype)}

    def score(self, idx: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
        """Metrics of a prediction for the patients at ``idx`` (``nan`` where undefined).

        ``prediction`` is class probabilities ``[n, C]`` (subtype) or a risk score ``[n]`` (survival).
        """
        if self.kind == "subtype":
            assert self.y is not None
            y = self.y[idx]
            return {"macro_auroc": macro_auroc(y, prediction),
                    "balanced_accuracy": balanced_accuracy(y, np.argmax(prediction, axis=1))}
        assert self.time is not None and self.event is not None
        return {"c_index": concordance_index(self.time[idx], prediction, self.event[idx])}

    def describe(self) -> dict[str, object]:
        """Counts for reports: patients, classes with their sizes, or events."""
        out: dict[str, object] = {"task": self.kind, "n_patients": len(self), **self.columns}
        if self.kind == "subtype":
            assert self.y is not None
            out["classes"] = {c: int((self.y == i).sum()) for i, c in enumerate(self.classes)}
        else:
            assert self.event is not None
            out["n_events"] = int(self.event.sum())
        return out


def _column(labels: pd.DataFrame, column: str, source: str | Path, role: str, flag: str) -> pd.Series:
    if column not in labels.columns:
        raise InputError(f"labels table {source} has no {role} column {column!r} (columns: {list(labels.columns)}); "
                         f"name the right one with {flag}")
    return labels[column]


def _unlabelled(mask: pd.Series, what: str, source: str | Path) -> list[str]:
    missing = sorted(map(str, mask.index[mask]))
    if missing:
        logger.warning("labels table %s: %d patient(s) have no %s and are left out as unlabelled, e.g. %s",
                       source, len(missing), what, missing[:MAX_NAMED])
    return missing


def subtype_task(labels: pd.DataFrame, column: str, *, source: str | Path = "<labels>") -> Task:
    """A subtype task from a labels table indexed by patient (:func:`biossl.data.labels.read_labels`).

    Class names are the column's values as text, sorted. Empty cells are unlabelled patients.

    Raises:
        InputError: the column is missing, or fewer than 2 classes are left.
    """
    values = _column(labels, column, source, "label", "--label-column")
    missing = _unlabelled(values.isna(), f"{column!r} label", source)
    kept = values.dropna().astype(str).str.strip()
    classes = sorted(set(kept))
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no value at all"
        raise InputError(f"labels table {source}: column {column!r} has {found} among {len(kept)} labelled "
                         "patient(s); a subtype task needs at least 2 classes. Pick another --label-column "
                         "or add patients of other classes")
    code = {c: i for i, c in enumerate(classes)}
    kept = kept.sort_index()
    return Task("subtype", [str(p) for p in kept.index], classes,
                y=np.array([code[v] for v in kept], dtype=np.int64), columns={"label_column": column},
                excluded={"no_label": missing} if missing else {})


def survival_task(labels: pd.DataFrame, time_column: str = "time", event_column: str = "event", *,
                  source: str | Path = "<labels>") -> Task:
    """A survival task: times must be positive numbers and events 0/1; empty cells are unlabelled patients.

    Raises:
        InputError: a column is missing, a time is not a number or is <= 0, an event is not 0/1, or
            no labelled patient had an event (c-index and Cox need at least one).
    """
    time = _column(labels, time_column, source, "survival time", "--time-column")
    event = _column(labels, event_column, source, "event", "--event-column")
    check_survival_columns(labels, source, time=time_column, event=event_column, positive=True)
    missing = _unlabelled(time.isna() | event.isna(), f"{time_column!r} or {event_column!r}", source)
    ok = (time.notna() & event.notna()).to_numpy()
    patients = [str(p) for p in labels.index[ok]]
    order = np.argsort(patients, kind="stable")
    t = pd.to_numeric(time[ok]).to_numpy(dtype=np.float64)[order]
    e = event[ok].astype(float).to_numpy(dtype=np.float64)[order]
    if len(e) and e.sum() == 0:
        raise InputError(f"labels table {source}: all {len(e)} labelled patients are censored ({event_column!r} is 0 "
                         "everywhere); survival heads and the c-index need observed events. Check the column "
                         "(1 = event observed; a TCGA 'censorship' column is the opposite: event = 1 - censorship)")
    if not len(e):
        raise InputError(f"labels table {source}: no patient has both {time_column!r} and {event_column!r}")
    return Task("survival", [patients[i] for i in order], time=t, event=e,
                columns={"time_column": time_column, "event_column": event_column},
                excluded={"no_label": missing} if missing else {})


__all__ = ["TASKS", "Task", "TaskKind", "subtype_task", "survival_task"]

"""Synthetic artifact probes: how far, how visibly and how harmfully each known corruption moves the embeddings.

For every modality of the model that at least two patients of the cohort have, every artifact of
:mod:`biossl.transforms.artifacts` and every strength, each patient's bag is embedded clean and
corrupted **from the same instance draw** (each batch is read once, as ``biossl embed`` draws it:
bag spec of the checkpoint, instances seeded ``(seed, 0, patient index)``), with the model's pooled
embedding of that modality (``PatientEncoder.encode_batch``, the space of ``obsm["X_<modality>"]``).
The corruption of patient ``i`` is a function of ``(seed, modality, artifact, i, strength)`` alone:
its random parts are seeded per patient, independently of the strength (so a larger strength
corrupts a superset or scales the same change), and site-like signatures (stain cast, batch shift)
use ``signature_seed = seed``, the same direction for every patient. Only real instances change.

Each record (JSON-safe; ``None`` where a value is undefined or not run) has:

- ``modality``, ``artifact``, ``strength``, ``parameter`` (the physical setting, e.g. ``sigma 1.5 px``),
  ``n_patients`` (patients with the modality);
- ``drift``: the median over patients of ``||e_corrupted - e_clean||`` divided by the median
  Euclidean distance between the clean embeddings of two different patients (all pairs). 0 = no
  movement; 1 = the artifact moves a patient as far as another patient typically is.
  ``drift_q90``: the same with the 90th percentile of the per-patient movements;
- ``detectability``: AUROC of a linear probe separating clean from corrupted embeddings, out of
  fold: patients are dealt at random (numpy generator seeded ``seed``) into ``min(n_folds, n)``
  folds and a patient's clean and corrupted embedding are always in the same fold; per fold the
  features are standardised with the training rows and an L2 logistic regression (``C = 1``) is
  fitted; the AUROC is over all out-of-fold scores. 0.5 = undetectable (exactly 0.5 when the
  artifact leaves every embedding unchanged), 1 = always detectable;
- ``stability`` (with labels only, else ``None`` and ``stability_note`` says why): a linear head
  (the same standardised logistic regression) is fitted on the *clean* embeddings of the labelled
  patients in stratified ``min(n_folds, smallest class)``-fold cross-validation (sklearn
  ``StratifiedKFold``, shuffled with ``seed``); each patient is predicted by the head of the fold
  that held it out, from its clean and from its corrupted embedding. ``stability`` is the share of
  labelled patients whose predicted class is **unchanged** (1 = no prediction changes);
  ``n_labelled``, and ``accuracy_clean`` / ``accuracy_corrupted``: balanced accuracy of those
  out-of-fold predictions.

It is kept cheap: each batch is read once; per modality it is encoded once clean and once per
(artifact, strength), only that modality's encoder running.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy.spatial.distance import pdist

from biossl import keys
from biossl.data.splits import deal_folds, fold_rows, kfold
from biossl.downstream.embed import BatchTransform, embed_views
from biossl.encoders.patient import PatientEncoder, PatientModel
from biossl.errors import InputError
from biossl.kinds import KINDS, get_kind
from biossl.transforms.artifacts import apply_artifact, check_strength, describe

logger = logging.getLogger(__name__)

DEFAULT_STRENGTHS: tuple[float, ...] = (0.25, 0.5, 1.0)
#: One-line definitions of the record's metrics (for reports).
DEFINITIONS: dict[str, str] = {
    "drift": "median over patients of ||corrupted - clean|| embedding distance / median distance between two "
             "patients' clean embeddings (1 = as far as another patient)",
    "detectability": "out-of-fold AUROC of a linear probe telling clean from corrupted embeddings, grouped by "
                     "patient (0.5 = undetectable)",
    "stability": "share of labelled patients whose cross-validated linear head prediction is unchanged by the "
                 "artifact (1 = no prediction changes)",
}


def _names(artifacts: Sequence[str] | None, kinds: Mapping[str, str]) -> dict[str, list[str]]:
    """Artifact names per modality, from its kind's artifacts (names are unique across kinds)."""
    per_kind = {k: list(get_kind(k).artifacts) for k in set(kinds.values())}
    if artifacts is None:
        return {m: per_kind[k] for m, k in kinds.items()}
    known = {name: k for k in KINDS.names() for name in get_kind(k).artifacts}
    unknown = [a for a in artifacts if a not in known]
    if unknown:
        listed: dict[str, list[str]] = {}
        for name, k in known.items():
            listed.setdefault(k, []).append(name)
        raise InputError(f"unknown artifact(s) {unknown}; known: "
                         + "; ".join(f"{k}: {', '.join(n)}" for k, n in listed.items()))
    return {m: [a for a in per_kind[k] if a in set(artifacts)] for m, k in kinds.items()}


def _patient_seed(seed: int, modality: str, artifact: str, index: int) -> int:
    parts = [seed, zlib.crc32(modality.encode()), zlib.crc32(artifact.encode()), index]
    return int(np.random.SeedSequence(parts).generate_state(1)[0])



def _corrupt(entry: dict[str, torch.Tensor], modality: str, artifact: str, strength: float,
             indices: Sequence[int], *, seed: int, space: str, kind: str) -> dict[str, torch.Tensor]:
    x = entry[keys.X].clone()
    gm = entry.get(keys.GENE_MASK)
    for row, (index, present) in enumerate(zip(indices, entry[keys.PRESENT].tolist())):
        if not present:
            continue
        gen = torch.Generator().manual_seed(_patient_seed(seed, modality, artifact, index))
        x[row] = apply_artifact(kind, artifact, entry[keys.X][row], strength, gen, mask=entry[keys.MASK][row],
                                gene_mask=None if gm is None else gm[row], space=space, signature_seed=seed)
    return {**entry, keys.X: x}


def _only(batch: dict[str, Any], modality: str, entry: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The batch with one modality's entry only (so that only its encoder runs)."""
    return {"patient_id": batch["patient_id"], keys.METADATA: batch[keys.METADATA], modality: entry}


def expression_space_of(dataset: Any) -> str:
    """The value space of a dataset's expression (the transforms its tables got on reading; nothing re-read)."""
    from biossl.transforms.expression_views import space_for_transform

    transforms = getattr(dataset, "expression_transforms", None)
    if not transforms:
        return "zscore"
    spaces = {space_for_transform(t) for t in transforms.values()}
    if len(spaces) > 1:
        logger.warning("expression tables in different value spaces (%s); artifacts treat all as z-scores", spaces)
    return spaces.pop() if len(spaces) == 1 else "zscore"


def _fit(x: np.ndarray, y: np.ndarray) -> Any:
    """Standardised L2 logistic regression (``C = 1``) fitted on ``x``, ``y``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(x, y)


def detectability(clean: np.ndarray, corrupted: np.ndarray, *, n_folds: int = 5, seed: int = 0) -> float | None:
    """Out-of-fold AUROC of a linear probe separating ``clean`` from ``corrupted`` rows (paired by patient)."""
    from sklearn.metrics import roc_auc_score

    n = len(clean)
    if n < 2:
        return None
    folds = deal_folds(np.arange(n), min(n_folds, n), seed)
    scores = np.empty(2 * n)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        x = np.concatenate([clean[tr], corrupted[tr]])
        y = np.repeat([0, 1], int(tr.sum()))
        probe = _fit(x, y)
        scores[:n][te], scores[n:][te] = probe.decision_function(clean[te]), probe.decision_function(corrupted[te])
    return float(roc_auc_score(np.repeat([0, 1], n), scores))


class _Heads:
    """Cross-validated linear heads on clean embeddings, to measure how often predictions change."""

    def __init__(self, clean: np.ndarray, labels: Sequence[Any] | None, *, n_folds: int, seed: int) -> None:
        self.note: str | None = None
        self.rows = np.zeros(0, dtype=np.int64)
        self.folds: list[tuple[np.ndarray, np.ndarray]] = []
        self.heads: list[Any] = []
        if labels is None:
            self.note = "not run: no labels given"
            return
        known = np.array([not pd.isna(v) for v in labels], dtype=bool)
        self.rows = np.flatnonzero(known)
        y = np.array([str(v) for v in np.asarray(labels, dtype=object)[self.rows]])
        classes, counts = np.unique(y, return_counts=True)
        k = min(n_folds, int(counts.min())) if len(classes) >= 2 else 0
        if k < 2:
            self.note = (f"not run: needs 2 classes with >= 2 labelled patients each; got "
                         f"{dict(zip(classes.tolist(), counts.tolist()))}")
            return
        self.y, self.classes = y, classes
        self.folds = fold_rows(kfold(len(self.rows), k, labels=y, seed=seed))
        self.clean = clean[self.rows]
        self.heads = [_fit(self.clean[tr], y[tr]) for tr, _ in self.folds]  # fitted once, used for every artifact

    def score(self, corrupted: np.ndarray) -> dict[str, Any]:
        from biossl.downstream.metrics import balanced_accuracy

        if not self.folds:
            return {"stability": None, "stability_note": self.note, "n_labelled": int(len(self.rows))}
        pred_clean = np.empty(len(self.rows), dtype=object)
        pred_corr = np.empty(len(self.rows), dtype=object)
        x_corr = corrupted[self.rows]
        for head, (_, te) in zip(self.heads, self.folds):
            pred_clean[te], pred_corr[te] = head.predict(self.clean[te]), head.predict(x_corr[te])
        return {"stability": float(np.mean(pred_clean == pred_corr)), "stability_note": None,
                "n_labelled": int(len(self.rows)),
                "accuracy_clean": balanced_accuracy(self.y, pred_clean.astype(str)),
                "accuracy_corrupted": balanced_accuracy(self.y, pred_corr.astype(str))}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def artifact_audit(
    module: PatientModel,
    dataset: Any,
    *,
    modalities: Sequence[str] | None = None,
    artifacts: Sequence[str] | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    labels: Mapping[str, Any] | pd.Series | None = None,
    expression_space: str | None = None,
    n_folds: int = 5,
    batch_size: int = 8,
    num_workers: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Embedding drift, detectability and downstream stability under every synthetic artifact (module doc).

    Args:
        module: A checkpoint's :class:`~biossl.encoders.patient.PatientEncoder` (or any
            :class:`~biossl.encoders.patient.PatientModel`); put in eval mode on ``device``.
        dataset: The cohort's :class:`~biossl.data.bags.PatientBagDataset` as the module reads it
            (:func:`biossl.downstream.embed.open_cohort`).
        modalities: Modalities to audit (default: the module's that the cohort has).
        artifacts: Artifact names (default: all of each audited modality).
        strengths: Strengths in [0, 1].
        labels: Patient id -> biology label (e.g. subtype) for ``stability``; ``None``: not run.
        expression_space: ``log1p``, ``log2p`` or ``zscore``; default: read from the cohort's tables.
        n_folds: Folds of the detectability probe and of the stability head.
        batch_size: Patients per forward pass.
        num_workers: DataLoader workers.
        seed: Seed of the per-patient corruption, the signatures and the folds.
        device: Where the model runs (corruptions are made on CPU).

    Returns:
        One record per (modality, artifact, strength), in that order (see the module docstring).

    Raises:
        InputError: a strength outside [0, 1], an unknown artifact or modality the module does not encode.
    """
    started = time.monotonic()
    strengths = sorted({check_strength(s) for s in strengths})
    encoded = list(module.modality_specs)
    kind_of = {m: module.kind_of(m) for m in encoded}
    if modalities is not None:
        bad = [m for m in modalities if m not in encoded]
        if bad:
            raise InputError(f"the model does not encode modality(ies) {bad}; it encodes {', '.join(encoded)}")
    wanted = [m for m in encoded if modalities is None or m in modalities]
    names = _names(artifacts, {m: kind_of[m] for m in wanted})
    tables = any(kind_of[m] == keys.TABLE for m in wanted)
    space = expression_space or (expression_space_of(dataset) if tables else "zscore")
    skipped: set[str] = set()

    def clean_view(m: str) -> BatchTransform:
        def view(batch: dict[str, Any], indices: list[int]) -> dict[str, Any] | None:
            entry = batch.get(m)
            if entry is None:
                return None
            if kind_of[m] == keys.SLIDE and entry[keys.X].ndim != 5:
                skipped.add(m)  # cached tile features, not pixels
                return None
            return _only(batch, m, entry)
        return view

    def corrupt_view(m: str, name: str, s: float) -> BatchTransform:
        def view(batch: dict[str, Any], indices: list[int]) -> dict[str, Any] | None:
            entry = batch.get(m)
            if entry is None or (kind_of[m] == keys.SLIDE and entry[keys.X].ndim != 5):
                return None
            return _only(batch, m, _corrupt(entry, m, name, s, indices, seed=seed, space=space, kind=kind_of[m]))
        return view

    # Each batch is read once; per modality it is encoded clean and once per (artifact, strength).
    views: dict[Hashable, tuple[Sequence[str], BatchTransform | None]] = {}
    for m in wanted:
        if names[m]:
            views[(m, None, None)] = ([m], clean_view(m))
            views.update({(m, name, s): ([m], corrupt_view(m, name, s)) for name in names[m] for s in strengths})
    n = len(dataset)
    embedded = embed_views(module, dataset, views, fuse=False, batch_size=batch_size, num_workers=num_workers,
                           seed=seed, device=device)
    if skipped:
        logger.warning("slide bags are cached tile features, not pixels: no tile artifacts (modalities %s skipped)",
                       ", ".join(sorted(skipped)))
    patients = list(getattr(dataset, "patients", range(n)))
    records: list[dict[str, Any]] = []
    for m in wanted:
        emb, has, _ = embedded.get((m, None, None), ({}, {}, None))
        order = np.flatnonzero(has[m]) if m in has else np.zeros(0, dtype=np.int64)
        if len(order) < 2:
            if m not in skipped:
                logger.info("modality %s: %d patient(s) in the cohort, skipped (needs 2)", m, len(order))
            continue
        x_clean = emb[m][order]
        scale = float(np.median(pdist(x_clean)))  # distances between two patients (n x n x d never built)
        label_values = None if labels is None else [labels.get(patients[i]) for i in order]
        heads = _Heads(x_clean, label_values, n_folds=n_folds, seed=seed)
        for name in names[m]:
            for s in strengths:
                x_corr = embedded[(m, name, s)][0][m][order]
                moved = np.linalg.norm(x_corr - x_clean, axis=1)
                records.append({
                    "modality": m, "artifact": name, "strength": float(s), "parameter": describe(kind_of[m], name, s),
                    "n_patients": len(order),
                    "drift": _finite(np.median(moved) / scale) if scale > 0 else None,
                    "drift_q90": _finite(np.quantile(moved, 0.9) / scale) if scale > 0 else None,
                    "between_patient_distance": _finite(scale),
                    "detectability": detectability(x_clean, x_corr, n_folds=n_folds, seed=seed),
                    **heads.score(x_corr),
                })
    logger.info("artifact audit: %d records (%s) in %.1f s", len(records),
                ", ".join(m for m in wanted if (m, None, None) in embedded and embedded[(m, None, None)][1][m].any()),
                time.monotonic() - started)
    return records


def artifact_audit_from_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path,
    *,
    labels: str | Path | None = None,
    label_column: str | None = None,
    id_column: str = keys.PATIENT_ID,
    unknown_labels: Literal["error", "drop"] = "error",
    modalities: Sequence[str] | None = None,
    artifacts: Sequence[str] | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    work_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    skip_bad: bool = False,
    expression_space: str | None = None,
    n_folds: int = 5,
    batch_size: int = 8,
    num_workers: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """:func:`artifact_audit` of a cohort with a pretraining checkpoint (bags drawn as ``biossl embed`` draws them).

    Args:
        checkpoint: ``.ckpt`` written by ``biossl pretrain``.
        manifest: The cohort manifest.
        labels: Optional labels table (``patient_id`` + columns) for ``stability``.
        label_column: Its column to use (default ``subtype`` when the table has one).
        id_column: The labels table's patient column.
        unknown_labels: Labelled patients absent from the cohort: ``"error"`` or ``"drop"`` (warning).
        work_dir: Tile coordinates and scan cache (default: :func:`biossl.downstream.embed.default_work_dir`).
        features_dir: Cached tile features for feature-cache checkpoints (no tile artifacts then).
        skip_bad: Skip unreadable manifest rows with a warning.
        modalities: As :func:`artifact_audit`.
        artifacts: As :func:`artifact_audit`.
        strengths: As :func:`artifact_audit`.
        expression_space: As :func:`artifact_audit`.
        n_folds: As :func:`artifact_audit`.
        batch_size: As :func:`artifact_audit`.
        num_workers: As :func:`artifact_audit`.
        seed: As :func:`artifact_audit`.
        device: As :func:`artifact_audit`.

    Raises:
        InputError: a bad checkpoint, manifest or labels table, or a label column the table lacks.
    """
    from biossl.data.labels import read_labels
    from biossl.downstream.embed import open_cohort

    for s in strengths:  # fail before anything is loaded
        check_strength(s)
    _names(artifacts, {k: k for k in KINDS.names()})  # unknown artifact names fail before anything is loaded
    checkpoint, manifest = Path(checkpoint), Path(manifest)
    module = PatientEncoder.from_checkpoint(checkpoint)
    dataset, _, _, _ = open_cohort(module, checkpoint, manifest, work_dir=work_dir, features_dir=features_dir,
                                   skip_bad=skip_bad, batch_size=batch_size, num_workers=num_workers, seed=seed)
    label_map: dict[str, Any] | None = None
    if labels is not None:
        table = read_labels(labels, patients=dataset.patients, patients_from=f"the cohort {manifest}",
                            unknown=unknown_labels, id_column=id_column)
        column = label_column or ("subtype" if "subtype" in table.columns else None)
        if column is None or column not in table.columns:
            raise InputError(f"labels table {labels} has no column {column or 'subtype'!r} (found "
                             f"{list(table.columns)}); name the biology label with label_column")
        label_map = {str(p): (None if pd.isna(v) else v) for p, v in table[column].items()}
    elif label_column is not None:
        raise InputError(f"label column {label_column!r} given without a labels table")
    return artifact_audit(module, dataset, modalities=modalities, artifacts=artifacts, strengths=strengths,
                          labels=label_map, expression_space=expression_space, n_folds=n_folds,
                          batch_size=batch_size, num_workers=num_workers, seed=seed, device=device)


__all__ = ["DEFAULT_STRENGTHS", "DEFINITIONS", "artifact_audit", "artifact_audit_from_checkpoint", "detectability",
           "expression_space_of"]

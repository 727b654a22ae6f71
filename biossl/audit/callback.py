"""Nuisance probes during pretraining, to see whether the representation learns the site as it trains.

:class:`NuisanceProbe` is a Lightning callback. Every ``every_n_epochs`` epochs (or every
``every_n_steps`` optimiser steps) it embeds the patients held out of pretraining
(``data.holdout``, :class:`~biossl.modules.datamodule.BagDataModule`) with the current weights, runs
the grouped linear and kNN probes of :mod:`biossl.audit.probes` on each metadata column (``site``,
``scanner``, ...) and logs, for each embedding (``X_fused`` and each modality's ``X_<modality>``)::

    probe/<column>/<key>/linear_bacc   probe/<column>/<key>/knn_bacc   probe/<column>/<key>/chance

and, with ``n_permutations > 0``, ``.../linear_p`` and ``.../knn_p``. A rising ``linear_bacc`` on
held-out patients means the encoders are learning to tell the hospitals apart.

Without ``data.holdout`` it probes the training patients instead (logged once as a warning): the
probes are still cross-validated, but the encoders have seen those patients.

The callback changes nothing in training: it runs under ``torch.no_grad`` on global rank 0 only,
restores the module's train mode, and forks the torch and numpy random states, so a run with the
callback draws exactly the same batches and weights as one without it. Columns it cannot probe
(fewer than 2 classes with enough patients) are skipped with one warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from biossl import keys
from biossl.encoders.patient import PatientModel
from biossl.errors import InputError

logger = logging.getLogger(__name__)


class NuisanceProbe(pl.Callback):
    """Probe metadata columns on held-out patients during pretraining (see the module docstring).

    Args:
        columns: Manifest metadata columns to probe (e.g. ``["site"]``).
        every_n_epochs: Probe at the end of every n-th epoch (ignored when ``every_n_steps`` is set).
        every_n_steps: Probe after every n-th optimiser step instead.
        embeddings: ``"X_fused"`` and/or ``"X_<modality>"``; default: fused and every modality.
        n_folds: Folds of the linear probe (groups dealt at random, as in ``biossl audit``).
        k: Neighbours of the kNN probe.
        n_permutations: Label permutations for p-values (0: balanced accuracy only).
        batch_size: Patients per forward pass.
        seed: Seed of the folds and permutations.
    """

    def __init__(self, columns: Sequence[str] = ("site",), *, every_n_epochs: int = 1, every_n_steps: int | None = None,
                 embeddings: Sequence[str] | None = None, n_folds: int = 3, k: int = 5, n_permutations: int = 0,
                 batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        if not columns:
            raise InputError("NuisanceProbe needs at least one metadata column, e.g. columns: [site]")
        if every_n_epochs < 1 or (every_n_steps is not None and every_n_steps < 1):
            raise InputError(f"NuisanceProbe: every_n_epochs ({every_n_epochs}) and every_n_steps ({every_n_steps}) "
                             "must be at least 1")
        self.columns = [str(c) for c in columns]
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.embeddings = list(embeddings) if embeddings is not None else None
        self.n_folds, self.k, self.n_permutations = n_folds, k, n_permutations
        self.batch_size, self.seed = batch_size, seed
        #: Every probe run: ``{"step", "epoch", "patients", metric name: value}``.
        self.history: list[dict[str, Any]] = []
        self._warned: set[str] = set()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the columns exist in the cohort before any training step."""
        dataset, _ = self._dataset(trainer)
        if dataset is None:
            return
        meta = dataset.cohort.metadata
        missing = [c for c in self.columns if c not in meta.columns]
        if missing:
            raise InputError(f"NuisanceProbe: column(s) {missing} are not manifest metadata of {dataset.cohort.source} "
                             f"(it has {sorted(meta.columns)}); fix trainer.callbacks' columns")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Probe every ``every_n_steps`` optimiser steps."""
        if self.every_n_steps is not None and trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self.probe(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Probe every ``every_n_epochs`` epochs."""
        if self.every_n_steps is None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.probe(trainer, pl_module)

    def _dataset(self, trainer: pl.Trainer) -> tuple[Any, bool]:
        dm = getattr(trainer, "datamodule", None)
        held = getattr(dm, "holdout_dataset", None)
        if held is not None:
            return held, True
        return getattr(dm, "dataset", None), False

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Embed the probe patients with the current weights, probe each column, log and return the metrics."""
        if trainer.global_rank != 0:
            return {}
        dataset, held_out = self._dataset(trainer)
        if dataset is None:
            self._warn_once("no-data", "NuisanceProbe: the trainer has no BagDataModule; nothing probed")
            return {}
        if not isinstance(pl_module, PatientModel):
            self._warn_once("no-model", "NuisanceProbe: %s does not embed patients (no encode_batch); nothing probed",
                            type(pl_module).__name__)
            return {}
        if not held_out:
            self._warn_once("train", "NuisanceProbe: no patients are held out (data.holdout is 0): probing the "
                            "training patients, which the encoders have seen")
        was_training = pl_module.training
        with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
            np_state = np.random.get_state()
            try:
                metrics = self._probe(dataset, pl_module, pl_module.device)
            finally:
                np.random.set_state(np_state)
                pl_module.train(was_training)
        record = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch), "patients": len(dataset),
                  "held_out": held_out, **metrics}
        self.history.append(record)
        if trainer.logger is not None and metrics:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
        return metrics

    def _probe(self, dataset: Any, model: PatientModel, device: torch.device) -> dict[str, float]:
        from biossl.audit.probes import ProbeCache, prepare_column
        from biossl.downstream.embed import embed_dataset

        modalities = list(keys.canonical_order(model.modality_specs))
        emb, has, fused = embed_dataset(model, dataset, modalities, batch_size=self.batch_size, seed=self.seed,
                                        device=device)
        any_modality = np.any(np.stack([has[m] for m in modalities]), axis=0) if modalities else np.zeros(0, bool)
        inputs = {"X_fused": (fused, any_modality), **{f"X_{m}": (emb[m], has[m]) for m in modalities}}
        wanted = self.embeddings or list(inputs)
        patients = np.asarray(dataset.patients, dtype=object)
        meta = dataset.cohort.metadata.reindex(list(patients))
        metrics: dict[str, float] = {}
        for key in wanted:
            if key not in inputs:
                self._warn_once(f"key:{key}", "NuisanceProbe: no embedding %r (have %s)", key, sorted(inputs))
                continue
            x, rows = inputs[key]
            if rows.sum() < 2 * self.n_folds:
                continue
            cache = ProbeCache(x[rows], n_folds=self.n_folds, k=self.k, seed=self.seed)  # shared by the columns
            for column in self.columns:
                values = meta[column].to_numpy()[rows] if column in meta.columns else None
                if values is None:
                    continue
                try:
                    col = prepare_column(values, patients[rows], column=column, min_groups=max(2, self.n_folds),
                                         where="the probe patients", log=False)
                except InputError as exc:
                    self._warn_once(f"col:{column}:{key}", "NuisanceProbe: %s %s skipped: %s", column, key, exc)
                    continue
                results = cache.probe_column(col, n_permutations=self.n_permutations)
                prefix = f"probe/{column}/{key}"
                metrics[f"{prefix}/chance"] = 1.0 / col.n_classes
                for name, result in results.items():
                    metrics[f"{prefix}/{name}_bacc"] = float(result.balanced_accuracy)
                    if self.n_permutations and not math.isnan(result.p_value):
                        metrics[f"{prefix}/{name}_p"] = float(result.p_value)
        return metrics


__all__ = ["NuisanceProbe"]

"""LightningDataModule over patient bags: validates the cohort, tiles slides once, serves bags.

The cohort is checked in full (the voxels of floating-point NIfTI read for NaN/inf) once per run, in
:meth:`BagDataModule.prepare_data`, which Lightning calls on the first process of each node; every
other opening of the cohort probes file headers only, so a command does not read the whole cohort
before it starts, and the processes of a DDP run do not each read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from biossl import keys
from biossl.data.bags import BagSampler, BagSpec, PatientBagDataset, collate_bags
from biossl.data.cohort import OVERRIDE_SLIDE_MPP, ROW, SLIDE_MPP, Cohort
from biossl.data.wsi import mpp_problem
from biossl.errors import InputError, ManifestError
from biossl.io import write_text_atomic

logger = logging.getLogger(__name__)


class ResumableLoader(DataLoader[Any]):
    """A DataLoader whose position in the epoch is saved in checkpoints.

    Lightning saves ``state_dict()`` with a checkpoint and calls ``load_state_dict()`` before
    iterating again, so a run resumed mid-epoch continues with the batch it would have drawn next.
    The loader runs ahead of training (prefetching), so the count of batches whose optimiser step
    has finished comes from ``progress``, a callable installed by the training module.
    """

    progress: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches of it that training has finished."""
        done = int(self.progress()) if self.progress is not None else 0
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "consumed": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches of the saved epoch that training had finished."""
        sampler = self.sampler
        if isinstance(sampler, BagSampler):
            sampler.resume_from(int(state["epoch"]), int(state["consumed"]) * int(self.batch_size or 1))


class BagDataModule(pl.LightningDataModule):
    """Patient bags from a cohort manifest.

    Slides without tile coordinates are tiled once, in :meth:`prepare_data`, into
    ``<work_dir>/tiles`` (reruns skip finished slides), so pretraining can start from a manifest.
    Tile files are named by each slide's content fingerprint (:func:`biossl.data.tiling.slide_key`), so
    cohorts sharing a work folder never read each other's tiles.
    The cohort's problems are written to ``<work_dir>/skipped_rows.csv`` (:attr:`report_path`), with
    ``skipped_rows.manifest.json`` beside it naming the manifest (resolved path and SHA-256) and the
    report's SHA-256: a report is only ever applied to the manifest it was made from.

    Args:
        manifest: Cohort manifest (CSV/TSV/Parquet).
        work_dir: Folder for tile coordinates and cached scans.
        spec: Instances per patient and their shapes.
        batch_size: Patients per batch (per process).
        num_workers: DataLoader workers; tiles and scans are read inside them.
        seed: Seed of every draw.
        mpp: Target micrometres per pixel of tiles.
        tile_size: Tile edge at ``mpp`` (pixels) written by the tiler.
        min_tissue: Minimum tissue fraction of a kept tile.
        slide_mpp: Level-0 µm/px of slides whose files do not record it (as ``biossl tile --slide-mpp``;
            a slide whose file records it keeps its own). A ``slide_mpp`` column of the manifest gives it
            per slide: a wsi row's value wins over this default, which applies to rows left empty
            (:func:`biossl.data.tiling.manifest_slide_mpp`); the cohort check refuses a row value that
            disagrees with the file's. Slides already tiled with the same ``mpp``, ``tile_size`` and
            ``min_tissue`` are reused without it.
        override_slide_mpp: Level-0 µm/px replacing what every slide's file records (as ``biossl tile
            --override-slide-mpp``; each replacement is logged), for files whose metadata is wrong. An
            ``override_slide_mpp`` column of the manifest gives it per slide (a row's value wins).
        skip_bad: Skip unreadable manifest rows with a warning and a report instead of failing.
        features_dir: Cached tile embeddings from ``biossl cache-features``; slides are then read as
            feature vectors (use the ``features/mlp`` encoder for ``wsi``) and are not tiled again.
        holdout: Fraction of patients held out of pretraining (0 = none), for probes that watch the
            representation on patients it never trained on (:class:`biossl.audit.callback.NuisanceProbe`).
            They are drawn with numpy's generator seeded ``(seed, 7)`` from the sorted patients (at
            least 2 held out, at least 2 left to train on) and served by :attr:`holdout_dataset`, with
            the training patients' gene vocabulary and fixed (first-draw) bags.
        kinds: ``modality -> kind`` (``slide``, ``volume``, ``table``, ``sequence``, ``features``) for
            manifest rows without a ``kind`` cell, e.g. ``{t1: volume, t2: volume, rna: table}``. The legacy
            names ``wsi``, ``volume``, ``expression`` and ``sequence`` need none.
        value_types: ``modality -> value type`` of table modalities (``counts``, ``continuous``,
            ``binary``, ``categorical``) for rows without a ``value_type`` cell.
        modalities: The modalities to serve (``biossl pretrain`` sets it to the keys of
            ``model.modalities``); a name the manifest lacks stops the run naming it. ``None``: all.
    """

    def __init__(
        self,
        manifest: str | Path,
        *,
        work_dir: str | Path = "biossl_work",
        spec: BagSpec | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        mpp: float = 0.5,
        tile_size: int = 256,
        min_tissue: float = 0.5,
        slide_mpp: float | None = None,
        override_slide_mpp: float | None = None,
        skip_bad: bool = False,
        features_dir: str | Path | None = None,
        holdout: float = 0.0,
        kinds: dict[str, str] | None = None,
        value_types: dict[str, str] | None = None,
        modalities: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.modalities = [str(m) for m in modalities] if modalities is not None else None
        self.kinds = {str(k): str(v) for k, v in (kinds or {}).items()}
        self.value_types = {str(k): str(v) for k, v in (value_types or {}).items()}
        if not 0.0 <= holdout < 1.0:
            raise InputError(f"data.holdout must be in [0, 1) (a fraction of patients); got {holdout}")
        self.holdout = float(holdout)
        self.holdout_patients: list[str] = []
        self.holdout_dataset: PatientBagDataset | None = None
        self.manifest = Path(manifest)
        self.work_dir = Path(work_dir)
        self.spec = spec or BagSpec()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.mpp, self.tile_size, self.min_tissue, self.skip_bad = mpp, tile_size, min_tissue, skip_bad
        for name, value in (("slide_mpp", slide_mpp), ("override_slide_mpp", override_slide_mpp)):
            if value is not None and (problem := mpp_problem(value)) is not None:
                raise InputError(f"data.{name} {problem}")
        self.slide_mpp, self.override_slide_mpp = slide_mpp, override_slide_mpp
        self.features_dir = Path(features_dir) if features_dir is not None else None
        self.cohort: Cohort | None = None
        self.dataset: PatientBagDataset | None = None
        self.vocabulary: Any = None
        #: Per modality, what a checkpoint recorded to open it the same way (embedding with a checkpoint).
        self.states: dict[str, dict[str, Any]] | None = None

    @property
    def coords_dir(self) -> Path:
        """Folder of the tile coordinates."""
        return self.work_dir / "tiles"

    @property
    def report_path(self) -> Path:
        """The manifest report: every problem the last cohort check found (CSV, rewritten by each check)."""
        return self.work_dir / "skipped_rows.csv"

    @property
    def report_stamp_path(self) -> Path:
        """What :attr:`report_path` was made from: the manifest's resolved path and SHA-256, the report's SHA-256."""
        return self.work_dir / "skipped_rows.manifest.json"

    def _manifest_stamp(self) -> dict[str, Any]:
        return {"manifest": str(self.manifest.resolve()),
                "manifest_sha256": hashlib.sha256(self.manifest.read_bytes()).hexdigest(),
                "skip_bad": bool(self.skip_bad)}

    def _stamp_report(self) -> None:
        """Record, beside the report just written, which manifest it is of."""
        if self.report_path.is_file():
            report = hashlib.sha256(self.report_path.read_bytes()).hexdigest()
            stamp = {**self._manifest_stamp(), "report_sha256": report}
            write_text_atomic(self.report_stamp_path, json.dumps(stamp, indent=1) + "\n")

    def _report_is_ours(self) -> bool:
        """True if :attr:`report_path` was written for this manifest (same path and content) and is unchanged since."""
        try:
            stamp = json.loads(self.report_stamp_path.read_text())
            report = hashlib.sha256(self.report_path.read_bytes()).hexdigest()
        except (OSError, ValueError):
            return False
        return isinstance(stamp, dict) and stamp == {**self._manifest_stamp(), "report_sha256": report}

    def _kind_options(self) -> dict[str, Any]:
        return {"kinds": self.kinds, "value_types": self.value_types}

    def load_cohort(self) -> Cohort:
        """Validate and return the cohort (cached), probing file headers only (no voxel data is read).

        In a run where :meth:`prepare_data` checked the cohort in full on another process of this node
        (a DDP rank other than the node's first), the rows its report lists are dropped here too, so
        every process trains on the same patients and files.
        """
        if self.cohort is None:
            trainer = self.trainer
            if trainer is not None and trainer.local_rank != 0 and self.report_path.is_file():
                if self._report_is_ours():
                    self.cohort = self._cohort_as_checked()
                else:  # another run's report (another manifest, or changed since): check here, write nothing
                    logger.warning("%s is not the report of manifest %s (%s); checking the cohort on this process",
                                   self.report_path, self.manifest, self.report_stamp_path)
                    self.cohort = Cohort.from_manifest(self.manifest, skip_bad=self.skip_bad, check_values=True,
                                                       **self._kind_options())
            else:
                self.cohort = Cohort.from_manifest(self.manifest, skip_bad=self.skip_bad, report_path=self.report_path,
                                                   **self._kind_options())
                self._stamp_report()
        return self.cohort

    def check_cohort(self) -> Cohort:
        """Validate the cohort in full (voxels of floating-point NIfTI included), write the report, cache it.

        Raises:
            ManifestError: a bad row (unless ``skip_bad``), with every problem listed.
        """
        try:
            self.cohort = Cohort.from_manifest(self.manifest, skip_bad=self.skip_bad, report_path=self.report_path,
                                               check_values=True, **self._kind_options())
        finally:
            self._stamp_report()
        return self.cohort

    def _cohort_as_checked(self) -> Cohort:
        """The header-probed cohort without the rows that the full check (its report) rejected."""
        cohort = Cohort.from_manifest(self.manifest, skip_bad=self.skip_bad, **self._kind_options())
        report = pd.read_csv(self.report_path)
        rejected = set(pd.to_numeric(report["row"], errors="coerce").dropna().astype(int))
        table = cohort.table
        kept = table[~table[ROW].isin(rejected)]
        if rejected & set(table[ROW]) and not self.skip_bad:
            raise ManifestError(f"manifest {self.manifest}: the cohort check of this run found problems, listed in "
                                f"{self.report_path}; fix them or set data.skip_bad true")
        if kept.empty:
            raise ManifestError(f"manifest {self.manifest}: no usable row is left after skipping bad ones "
                                f"(listed in {self.report_path})")
        return Cohort(kept, source=self.manifest)

    def prepare_data(self) -> None:
        """Check the cohort in full, then tile every slide of the cohort that has no coordinates yet.

        A slide's level-0 µm/px is its file's; for a file without it, the manifest's ``slide_mpp``
        column when its row has one, else ``data.slide_mpp``; ``override_slide_mpp`` (column, else
        ``data.override_slide_mpp``) replaces the file's. A slide left without one stops the run with
        a message naming its manifest row and patient.

        Lightning calls this once per run, on the first process of each node, before :meth:`setup`: the
        full check (:meth:`check_cohort`) reads the voxels of floating-point NIfTI, so a scan with NaN
        stops the run before its first step (or, with ``skip_bad``, is skipped and reported). Called
        without a trainer (``biossl embed`` opens a cohort so), it probes headers only; a bad scan is
        then caught when it is read.
        """
        from biossl.data.tiling import manifest_slide_mpp, tile_slides

        cohort = self.check_cohort() if self.trainer is not None else self.load_cohort()
        slides = sorted({f for p in cohort.patients for m in cohort.of_kind(keys.SLIDE) for f in cohort.files(p, m)})
        if slides and self.features_dir is None:
            # A slide without tissue: a warning and an .h5 listing no tiles (the patient's bag has none from it).
            slide_mpp = manifest_slide_mpp(cohort.table, self.slide_mpp, manifest=self.manifest)
            override = manifest_slide_mpp(cohort.table, self.override_slide_mpp, manifest=self.manifest,
                                          column=OVERRIDE_SLIDE_MPP)
            tile_slides(slides, self.coords_dir, mpp=self.mpp, tile_size=self.tile_size,
                        min_tissue=self.min_tissue, slide_mpp=slide_mpp, override_slide_mpp=override,
                        fix_mpp=self._fix_mpp(cohort), keep_empty=True)

    def _fix_mpp(self, cohort: Cohort) -> Callable[[Path], str]:
        """``slide -> what to do`` about a slide without µm/px: names its manifest rows and patients."""
        table = cohort.table[cohort.table[keys.KIND] == keys.SLIDE]
        rows_of: dict[Path, list[str]] = {}
        for patient, path, row in table[[keys.PATIENT_ID, keys.PATH, ROW]].itertuples(index=False):
            rows_of.setdefault(Path(path), []).append(f"row {row} (patient {patient!r})")

        def fix(path: Path) -> str:
            rows = ", ".join(rows_of.get(Path(path), [])) or "its row"
            return (f"manifest {self.manifest}, {rows}: fill the manifest's {SLIDE_MPP} column for it with the "
                    "scanner's level-0 µm/px (0.25 at 40x, 0.5 at 20x), or set --data.slide_mpp (data.slide_mpp "
                    "in the config) for every slide without it")

        return fix

    def setup(self, stage: str | None = None) -> None:
        """Build the bag dataset (and the gene vocabulary when none was given)."""
        if self.dataset is None:
            cohort = self.load_cohort()
            if self.modalities is not None:
                missing = [m for m in self.modalities if m not in cohort.kinds]
                if missing:
                    raise InputError(f"model.modalities names {', '.join(map(repr, missing))}, which manifest "
                                     f"{self.manifest} lacks (its modalities: {', '.join(cohort.modalities)}); "
                                     "fix the name in the config or add the rows")
                unused = [m for m in cohort.modalities if m not in self.modalities]
                if unused:
                    logger.warning("manifest modalities %s are not in model.modalities and are not used", unused)
                self.spec = dataclasses.replace(self.spec, modalities=tuple(self.modalities))
            self.holdout_patients = self._holdout_patients(cohort)
            train = (cohort.subset(sorted(set(cohort.patients) - set(self.holdout_patients)))
                     if self.holdout_patients else cohort)
            self.dataset = PatientBagDataset(
                train, spec=self.spec, coords_dir=self.coords_dir, features_dir=self.features_dir,
                vocabulary=self.vocabulary, states=self.states,
                volume_cache_dir=self.work_dir / "volume_cache", seed=self.seed,
            )
            self.vocabulary = self.dataset.vocabulary
            if self.holdout_patients:
                self.holdout_dataset = PatientBagDataset(
                    cohort.subset(self.holdout_patients), spec=self.spec, coords_dir=self.coords_dir,
                    features_dir=self.features_dir, states=self.dataset.states(),
                    volume_cache_dir=self.work_dir / "volume_cache", seed=self.seed, train=False,
                )
                logger.info("%d of %d patients held out of pretraining (data.holdout=%g) for probes",
                            len(self.holdout_patients), len(cohort.patients), self.holdout)

    def _holdout_patients(self, cohort: Cohort) -> list[str]:
        if self.holdout == 0.0:
            return []
        patients = sorted(cohort.patients)
        n = max(2, round(self.holdout * len(patients)))
        if len(patients) - n < 2:
            raise InputError(f"data.holdout={self.holdout} holds out {n} of {len(patients)} patients and leaves "
                             f"fewer than 2 to pretrain on; lower data.holdout")
        order = np.random.default_rng((self.seed, 7)).permutation(len(patients))
        return sorted(patients[i] for i in order[:n])

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled patient bags; draws are seeded by (seed, epoch, patient); sharded by rank under DDP."""
        if self.dataset is None:
            self.setup("fit")
        assert self.dataset is not None
        trainer = getattr(self, "trainer", None)
        replicas, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
        sampler = BagSampler(len(self.dataset), shuffle=True, seed=self.seed, num_replicas=replicas, rank=rank)
        return ResumableLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate_bags,
            num_workers=self.num_workers,
            drop_last=len(sampler) > self.batch_size,
        )

"""LightningDataModule over patient bags: validates the cohort, tiles slides once, serves bags."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from biossl.data import keys
from biossl.data.bags import BagSampler, BagSpec, PatientBagDataset, collate_bags
from biossl.data.cohort import Cohort

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
        skip_bad: Skip unreadable manifest rows with a warning and a report instead of failing.
        features_dir: Cached tile embeddings from ``biossl cache-features``; slides are then read as
            feature vectors (use the ``features/mlp`` encoder for ``wsi``) and are not tiled again.
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
        skip_bad: bool = False,
        features_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.manifest = Path(manifest)
        self.work_dir = Path(work_dir)
        self.spec = spec or BagSpec()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.mpp, self.tile_size, self.min_tissue, self.skip_bad = mpp, tile_size, min_tissue, skip_bad
        self.features_dir = Path(features_dir) if features_dir is not None else None
        self.cohort: Cohort | None = None
        self.dataset: PatientBagDataset | None = None
        self.vocabulary: Any = None

    @property
    def coords_dir(self) -> Path:
        """Folder of the tile coordinates."""
        return self.work_dir / "tiles"

    def load_cohort(self) -> Cohort:
        """Validate and return the cohort (cached)."""
        if self.cohort is None:
            self.cohort = Cohort.from_manifest(
                self.manifest, skip_bad=self.skip_bad, report_path=self.work_dir / "skipped_rows.csv"
            )
        return self.cohort

    def prepare_data(self) -> None:
        """Tile every slide of the cohort that has no coordinates yet."""
        from biossl.data.tiling import tile_slides

        cohort = self.load_cohort()
        slides = sorted({f for p in cohort.patients for f in cohort.files(p, keys.WSI)})
        if slides and self.features_dir is None:
            tile_slides(slides, self.coords_dir, mpp=self.mpp, tile_size=self.tile_size,
                        min_tissue=self.min_tissue)

    def setup(self, stage: str | None = None) -> None:
        """Build the bag dataset (and the gene vocabulary when none was given)."""
        if self.dataset is None:
            self.dataset = PatientBagDataset(
                self.load_cohort(), spec=self.spec, coords_dir=self.coords_dir, features_dir=self.features_dir,
                vocabulary=self.vocabulary,
                volume_cache_dir=self.work_dir / "volume_cache", seed=self.seed,
            )
            self.vocabulary = self.dataset.vocabulary

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled patient bags; draws are seeded by (seed, epoch, patient)."""
        if self.dataset is None:
            self.setup("fit")
        assert self.dataset is not None
        return ResumableLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=BagSampler(len(self.dataset), shuffle=True, seed=self.seed),
            collate_fn=collate_bags,
            num_workers=self.num_workers,
            drop_last=len(self.dataset) > self.batch_size,
        )

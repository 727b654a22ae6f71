"""Patient bags: per patient, a bag of instances for every modality the patient has.

A bag is ``k`` sampled tiles, 3D patches, expression profiles or DNA windows. Sampling is a pure
function of ``(seed, epoch, patient index)``, so a run is reproducible whatever the number of
DataLoader workers, and a resumed run draws the same bags as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from biossl.data import keys
from biossl.data.cohort import Cohort
from biossl.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class BagSpec:
    """How many instances to draw per patient and modality, and their shapes.

    Args:
        tiles: Tiles per patient (drawn across all of the patient's slides).
        tile_px: Edge of the tile fed to the encoder; tiles read at the tiler's size are resized.
        patches: 3D patches per patient.
        patch_size: Edge lengths of a 3D patch in voxels (after resampling).
        volume_spacing: Target voxel spacing in mm; ``None`` keeps each scan's own.
        intensity: Default normalisation of scans (``"mri"``, ``"ct"`` or ``"none"``); a manifest
            column ``intensity`` overrides it per file.
        profiles: Expression profiles per patient (1 for bulk; cells for single-cell tables).
        windows: DNA windows per patient.
        window_length: Length of a DNA window in nucleotides.
    """

    tiles: int = 8
    tile_px: int = 64
    patches: int = 2
    patch_size: tuple[int, int, int] = (32, 32, 32)
    volume_spacing: tuple[float, float, float] | None = (2.0, 2.0, 2.0)
    intensity: str = "mri"
    profiles: int = 1
    windows: int = 4
    window_length: int = 128
    modalities: tuple[str, ...] = field(default=keys.MODALITIES)


class BagSampler(Sampler[tuple[int, int]]):
    """Yields ``(patient index, epoch)`` so that the dataset can seed its draws per epoch.

    Lightning calls :meth:`set_epoch` at the start of each epoch. Under data parallelism (``num_replicas``
    processes), every process draws the same seeded permutation of all patients, pads it by repeating its
    first patients to a multiple of ``num_replicas`` (as :class:`torch.utils.data.DistributedSampler`
    does) and takes every ``num_replicas``-th patient from position ``rank``. So the sampler itself shards,
    Lightning need not wrap it (biossl pretrains with ``use_distributed_sampler=False``), and a mid-epoch
    resume (:meth:`resume_from`) skips the items *this* process had consumed: exact under DDP too.
    """

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} of {num_replicas} replicas")
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self._skip: tuple[int, int] | None = None  # (epoch, items) to skip once when resuming

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed the order and the draws."""
        self.epoch = epoch

    def resume_from(self, epoch: int, items: int) -> None:
        """Make the next pass over ``epoch`` skip its first ``items`` items (a mid-epoch resume)."""
        self.epoch = epoch
        self._skip = (epoch, items)

    def _order(self) -> np.ndarray:
        order = (
            np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
        )
        if self.num_replicas == 1:
            return order
        total = len(self) * self.num_replicas
        padded = np.concatenate([order, np.resize(order, total - self.n)]) if total > self.n else order
        return padded[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        skip = 0
        if self._skip is not None:
            if self._skip[0] == self.epoch:
                skip = self._skip[1]
            self._skip = None
        return iter((int(i), self.epoch) for i in order[skip:])

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)


class PatientBagDataset(Dataset[dict[str, Any]]):
    """One item per patient: ``{"patient_id", "metadata", <modality>: {"x": Tensor[k, ...]}}``.

    Expression tables and DNA files are read and tokenised once, at construction (a table shared by
    many patients, expression or DNA with a ``patient_id`` column, is read once and each patient gets
    its own rows); slide tiles and
    scans are read lazily inside ``__getitem__`` (so inside DataLoader workers), tiles through a
    per-worker cache of open slides and scans through a preprocessing cache.

    Args:
        cohort: A validated cohort.
        spec: Instance counts and shapes.
        coords_dir: Folder of tile coordinates written by ``biossl tile`` (``<stem>.<fingerprint>.h5``,
            :func:`biossl.data.tiling.slide_key`); needed when the cohort has slides. Tiles are read from
            the manifest's slide files, which must be the files that were tiled.
        vocabulary: Gene vocabulary that expression is aligned to; needed when the cohort has
            expression.
        features_dir: Folder of cached tile embeddings (``biossl cache-features``); when given, a
            slide bag is ``k`` feature vectors ``[k, D]`` instead of ``k`` tiles of pixels.
        volume_cache_dir: Optional folder where preprocessed scans are cached as ``.npy``.
        seed: Seed of all draws.
        train: Random draws (True) or the same first-k draw every epoch (False).
    """

    def __init__(
        self,
        cohort: Cohort,
        *,
        spec: BagSpec | None = None,
        coords_dir: Path | None = None,
        features_dir: Path | None = None,
        vocabulary: Any | None = None,
        volume_cache_dir: Path | None = None,
        seed: int = 0,
        train: bool = True,
    ) -> None:
        self.cohort = cohort
        self.spec = spec or BagSpec()
        self.seed, self.train = seed, train
        self.patients: list[str] = list(cohort.patients)
        self.vocabulary = vocabulary
        present = {m for p in self.patients for m in cohort.modalities_of(p)}
        self.modalities = tuple(m for m in self.spec.modalities if m in present)
        self._meta = _metadata_records(cohort, self.patients)
        self._tiles: dict[str, list[tuple[Path, int]]] = {}
        self._slide_of: dict[Path, Path] = {}  # coordinates file -> the manifest's slide file it lists tiles of
        self._expr: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.expression_transforms: dict[str, str] = {}
        self._seqs: dict[str, np.ndarray] = {}
        self.features_dir = Path(features_dir) if features_dir is not None else None
        #: Width of cached tile features (None when slides are read as pixels).
        self.feature_dim: int | None = None
        if keys.WSI in self.modalities:
            if self.features_dir is not None:
                self._index_features()
            else:
                self._index_tiles(coords_dir)
        if keys.EXPRESSION in self.modalities:
            self._load_expression()
        if keys.SEQUENCE in self.modalities:
            self._load_sequences()
        self._volume_cache: Any = None
        self._slide_tiles: dict[Path, Any] | None = None
        table = cohort.table
        self._intensity = {p: _file_column(table, p, keys.VOLUME, "intensity") for p in self.patients}
        self._volume_cache_dir = volume_cache_dir

    # -- construction ---------------------------------------------------------------------------
    def _index_tiles(self, coords_dir: Path | None) -> None:
        from biossl.data.tiles import SlideTiles
        from biossl.data.tiling import slide_key

        if coords_dir is None:
            raise InputError("the cohort has slides: pass the folder of tile coordinates written by `biossl tile`")
        for p in self.patients:
            entries = []
            for path in self.cohort.files(p, keys.WSI):
                h5 = Path(coords_dir) / f"{slide_key(path)}.h5"
                if not h5.is_file():
                    raise InputError(
                        f"patient {p}: no tile coordinates {h5} for slide {path}; run `biossl tile` on it first"
                    )
                self._slide_of[h5] = Path(path)
                entries.append((h5, len(SlideTiles(h5, slide_path=path))))
            self._tiles[p] = [(h5, n) for h5, n in entries if n > 0]

    def _index_features(self) -> None:
        from biossl.data.features import SlideFeatures, common_embed_dim, feature_files_for

        assert self.features_dir is not None
        files: list[Path] = []
        claimed: dict[Path, tuple[Path, str | None]] = {}  # two slides never read one <stem>.h5 features file
        for p in self.patients:
            h5s = feature_files_for(self.cohort.files(p, keys.WSI), self.features_dir, patient=p, claimed=claimed)
            self._tiles[p] = [(h5, n) for h5 in h5s if (n := len(SlideFeatures(h5))) > 0]
            files += h5s
        if files:
            self.feature_dim = common_embed_dim(files)

    def _load_expression(self) -> None:
        from biossl.data.expression import read_expression
        from biossl.data.vocab import GeneVocabulary

        tables: dict[Path, Any] = {}
        for p in self.patients:
            for path in self.cohort.files(p, keys.EXPRESSION):
                if path not in tables:
                    tables[path] = read_expression(path)
        #: How each table's values were transformed on reading (``uns["biossl"]["transform"]``), by table.
        self.expression_transforms = {str(path): str(t.uns.get("biossl", {}).get("transform", "none"))
                                      for path, t in tables.items()}
        if self.vocabulary is None:
            import anndata as ad

            self.vocabulary = GeneVocabulary.from_adata(ad.concat(list(tables.values()), join="inner"))
        aligned = {path: self.vocabulary.align(t) for path, t in tables.items()}
        for p in self.patients:
            rows, masks = [], []
            for path in self.cohort.files(p, keys.EXPRESSION):
                a, t = aligned[path], tables[path]
                sel = np.flatnonzero(t.obs["patient_id"].astype(str).to_numpy() == p)
                if sel.size == 0:
                    raise InputError(f"patient {p}: not found in expression table {path}")
                rows.append(a.x[sel])
                masks.append(np.broadcast_to(a.gene_mask, a.x[sel].shape))
            if rows:
                self._expr[p] = (np.concatenate(rows).astype(np.float32), np.concatenate(masks))

    def _load_sequences(self) -> None:
        from biossl.data.sequence import encode, patient_sequences, windows

        length = self.spec.window_length
        for p in self.patients:
            wins = [
                windows(encode(rec.sequence), length, length)
                for path in self.cohort.files(p, keys.SEQUENCE)
                for rec in patient_sequences(path, p)  # a table with patient_id: only p's rows
            ]
            if wins:
                self._seqs[p] = np.concatenate(wins).astype(np.int64)

    # -- items ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng((self.seed, epoch if self.train else 0, index))
        p = self.patients[index]
        item: dict[str, Any] = {"patient_id": p, keys.METADATA: self._meta[p]}
        for m in self.modalities:
            x = getattr(self, f"_draw_{m}")(p, rng)
            if x is not None:
                item[m] = {keys.X: x[0], **x[1]}
        return item

    def _pick(self, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if not self.train:
            return np.arange(min(n, k))
        return rng.choice(n, size=min(n, k), replace=False)

    def _draw_wsi(self, p: str, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, Any]] | None:
        from biossl.data.tiles import SlideTiles

        slides = self._tiles.get(p)
        if not slides:
            return None
        if self._slide_tiles is None:
            self._slide_tiles = {}
        offsets = np.cumsum([0] + [n for _, n in slides])
        chosen = self._pick(int(offsets[-1]), self.spec.tiles, rng)
        if self.features_dir is not None:
            return self._draw_features(slides, offsets, chosen), {}
        out = []
        for flat in chosen:
            s = int(np.searchsorted(offsets, flat, side="right") - 1)
            h5 = slides[s][0]
            reader = self._slide_tiles.get(h5)
            if reader is None:
                reader = self._slide_tiles[h5] = SlideTiles(h5, slide_path=self._slide_of[h5])
            tile = reader.read(int(flat - offsets[s]))
            out.append(torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1))
        x = torch.stack(out).float().div_(255.0)
        if x.shape[-1] != self.spec.tile_px:
            x = torch.nn.functional.interpolate(x, size=self.spec.tile_px, mode="bilinear", antialias=True)
        return x, {}

    def _draw_features(self, slides: list[tuple[Path, int]], offsets: np.ndarray, chosen: np.ndarray) -> torch.Tensor:
        from biossl.data.features import SlideFeatures

        assert self._slide_tiles is not None
        slide_of = np.searchsorted(offsets, chosen, side="right") - 1
        rows = np.zeros((len(chosen), int(self.feature_dim or 0)), dtype=np.float32)
        for s in np.unique(slide_of):
            h5 = slides[int(s)][0]
            reader = self._slide_tiles.get(h5)
            if reader is None:
                reader = self._slide_tiles[h5] = SlideFeatures(h5)
            where = np.flatnonzero(slide_of == s)
            rows[where] = reader.read(chosen[where] - offsets[s])
        return torch.from_numpy(rows)

    def _draw_volume(self, p: str, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, Any]] | None:
        from biossl.data.patches import random_patches
        from biossl.data.volume import VolumeSpec
        from biossl.data.volume_cache import VolumeCache

        files = self.cohort.files(p, keys.VOLUME)
        if not files:
            return None
        if self._volume_cache is None:
            self._volume_cache = VolumeCache(cache_dir=self._volume_cache_dir)
        intensity = self._intensity[p]
        per_file = max(1, self.spec.patches // len(files))
        out = []
        for path, kind in zip(files, intensity):
            vspec = VolumeSpec(spacing=self.spec.volume_spacing, kind=kind or self.spec.intensity)  # type: ignore[arg-type]
            vol = self._volume_cache.load(path, vspec)
            out.append(random_patches(vol, self.spec.patch_size, per_file, rng=rng))
        return torch.from_numpy(np.concatenate(out)[: self.spec.patches]).float(), {}

    def _draw_expression(self, p: str, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, Any]] | None:
        if p not in self._expr:
            return None
        x, gm = self._expr[p]
        idx = self._pick(len(x), self.spec.profiles, rng)
        return torch.from_numpy(x[idx]), {keys.GENE_MASK: torch.from_numpy(np.ascontiguousarray(gm[idx]))}

    def _draw_sequence(self, p: str, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, Any]] | None:
        if p not in self._seqs:
            return None
        w = self._seqs[p]
        return torch.from_numpy(w[self._pick(len(w), self.spec.windows, rng)]), {}


def _file_column(table: Any, p: str, modality: str, column: str) -> list[str | None]:
    """Per-file values of a manifest column for one patient and modality (None where empty)."""
    rows = table[(table[keys.PATIENT_ID] == p) & (table[keys.MODALITY] == modality)]
    if column not in rows:
        return [None] * len(rows)
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in rows[column]]


def _metadata_records(cohort: Cohort, patients: Sequence[str]) -> dict[str, dict[str, Any]]:
    meta = cohort.metadata
    out: dict[str, dict[str, Any]] = {}
    for p in patients:
        row = meta.loc[p] if p in meta.index else None
        out[p] = {} if row is None else {str(k): _plain(v) for k, v in row.items()}
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def collate_bags(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate patient items into the batch layout of :mod:`biossl.data.keys` (bags padded to ``K``)."""
    batch: dict[str, Any] = {"patient_id": [it["patient_id"] for it in items]}
    meta_keys = sorted({k for it in items for k in it[keys.METADATA]})
    batch[keys.METADATA] = {k: [it[keys.METADATA].get(k) for it in items] for k in meta_keys}
    b = len(items)
    for m in keys.MODALITIES:
        have = [it.get(m) for it in items]
        shapes = [h[keys.X].shape for h in have if h is not None]
        if not shapes:
            continue
        k = max(s[0] for s in shapes)
        inner = shapes[0][1:]
        dtype = next(h[keys.X].dtype for h in have if h is not None)
        x = torch.zeros((b, k, *inner), dtype=dtype)
        mask = torch.zeros((b, k), dtype=torch.bool)
        gm = torch.zeros((b, k, *inner), dtype=torch.bool) if m == keys.EXPRESSION else None
        for i, h in enumerate(have):
            if h is None:
                continue
            n = h[keys.X].shape[0]
            x[i, :n] = h[keys.X]
            mask[i, :n] = True
            if gm is not None:
                gm[i, :n] = h[keys.GENE_MASK]
        entry: dict[str, torch.Tensor] = {keys.X: x, keys.MASK: mask, keys.PRESENT: mask.any(dim=1)}
        if gm is not None:
            entry[keys.GENE_MASK] = gm
        batch[m] = entry
    return batch


def batch_to(batch: Any, device: torch.device | str) -> Any:
    """A batch of :func:`collate_bags` (nested dicts of tensors and lists) with every tensor on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: batch_to(v, device) for k, v in batch.items()}
    return batch

"""Patient bags: per patient, a bag of instances for every modality the patient has.

A bag is ``k`` sampled instances of the modality's kind (tiles, 3D patches, table rows, DNA windows,
feature vectors; :mod:`biossl.kinds`). Sampling is a pure
function of ``(seed, epoch, patient index)``, so a run is reproducible whatever the number of
DataLoader workers, and a resumed run draws the same bags as an uninterrupted one.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from biossl import keys
from biossl.data.cohort import Cohort

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
    #: Modality names to draw; empty: every modality of the cohort.
    modalities: tuple[str, ...] = ()


class Pick:
    """``pick(n, k)``: indices of ``k`` (at most) of ``n`` instances.

    Random without replacement in training, the first ``k`` otherwise. :attr:`rng` is the generator for
    other draws (3D patch corners); the dataset seeds it per ``(seed, epoch, patient)``, so draws do not
    depend on the worker.
    """

    #: Every instance is wanted (:class:`Every`): a source that draws otherwise (3D patch corners) enumerates them.
    whole = False

    def __init__(self, rng: np.random.Generator, train: bool) -> None:
        self.rng, self.train = rng, train

    def __call__(self, n: int, k: int) -> np.ndarray:
        """Indices of the instances to draw."""
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if not self.train:
            return np.arange(min(n, k))
        return self.rng.choice(n, size=min(n, k), replace=False)


def select_instances(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of the instances a whole-patient embedding uses: all ``n``, or ``limit`` drawn from ``rng``."""
    if limit is None or n <= limit:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=limit, replace=False)).astype(np.int64)


class Every(Pick):
    """``pick(n, k)`` ignoring ``k``: every instance, or ``limit`` of them (:func:`select_instances`).

    What a source gets when a whole patient is embedded (:class:`InstancePolicy`) and it cannot be read
    in chunks (no ``count``/``read``): its ``draw`` returns all the patient's instances at once.
    :attr:`available` counts the instances the source offered.
    """

    whole = True

    def __init__(self, rng: np.random.Generator, limit: int | None = None) -> None:
        super().__init__(rng, train=False)
        self.limit, self.available = limit, 0

    def __call__(self, n: int, k: int) -> np.ndarray:
        """Indices of the instances to use (``k`` is the bag size of training: ignored)."""
        self.available += n
        return select_instances(n, self.limit, self.rng)


@dataclass(frozen=True)
class InstancePolicy:
    """Which instances a patient's embedding uses (``biossl embed``, ``finetune``, ``audit`` from a checkpoint).

    Args:
        max_instances: ``None``: every instance of the patient (every tissue tile of every slide, every
            patch of a scan's grid, every DNA window); else at most this many per patient and modality,
            drawn without replacement from numpy's generator seeded ``(seed, patient index, modality)``.
        chunk_size: Instances read and encoded per forward pass (memory: ``chunk_size`` instances plus
            the ``N x D`` instance embeddings of one patient).
    """

    max_instances: int | None = None
    chunk_size: int = 256

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (``uns["biossl"]["instances"]``)."""
        return {"policy": "all" if self.max_instances is None else f"sampled {self.max_instances}",
                "max_instances": "none" if self.max_instances is None else int(self.max_instances),
                "chunk_size": int(self.chunk_size), "sample_seed": "(seed, patient index, crc32(modality))"}

    def rng(self, seed: int, index: int, modality: str) -> np.random.Generator:
        """The generator of patient ``index``'s sample of ``modality``."""
        return np.random.default_rng((seed, index, zlib.crc32(modality.encode())))


@dataclass
class SourceContext:
    """What a kind may use to open a modality's files.

    Args:
        spec: The bag spec (instances per kind and their shapes), :class:`biossl.data.bags.BagSpec`.
        options: The modality's options (``value_type`` for tables; from the manifest or the config).
        state: What a checkpoint recorded about this modality (a table's feature vocabulary, ...), or
            ``{}`` when the data defines it (pretraining).
        coords_dir: Folder of tile coordinates (slides).
        features_dir: Folder of cached tile features (slides read as feature vectors).
        volume_cache_dir: Folder of preprocessed scans.
        train: Random draws (True) or the first ``k`` instances every time (False).
    """

    spec: Any
    options: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)
    coords_dir: Path | None = None
    features_dir: Path | None = None
    volume_cache_dir: Path | None = None
    train: bool = True


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
    """One item per patient: ``{"patient_id", "metadata", <modality name>: {"x": Tensor[k, ...], ...}}``.

    Each modality is opened by its kind (:mod:`biossl.kinds`): tables and DNA files are read and
    tokenised once, here (a table shared by many patients is read once and each patient gets its own
    rows); slide tiles and scans are read lazily inside ``__getitem__`` (so inside DataLoader workers),
    tiles through a per-worker cache of open slides and scans through a preprocessing cache.

    Args:
        cohort: A validated cohort.
        spec: Instance counts and shapes (per kind); ``spec.modalities``, when not empty, limits the
            modalities drawn.
        coords_dir: Folder of tile coordinates written by ``biossl tile`` (``<stem>.<fingerprint>.h5``,
            :func:`biossl.data.tiling.slide_key`); needed when the cohort has slides. Tiles are read from
            the manifest's slide files, which must be the files that were tiled.
        vocabulary: Gene vocabulary that the legacy ``expression`` modality (or the only table modality)
            is aligned to; see ``states`` for several tables.
        states: Per modality, what a checkpoint recorded to open it the same way (a table's
            ``vocabulary``, ``value_type`` and ``categories``; see :meth:`states`). Default: the data's.
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
        states: Mapping[str, Mapping[str, Any]] | None = None,
        volume_cache_dir: Path | None = None,
        seed: int = 0,
        train: bool = True,
    ) -> None:
        from biossl.registry import KINDS

        self.cohort = cohort
        self.spec = spec or BagSpec()
        self.seed, self.train = seed, train
        self.patients: list[str] = list(cohort.patients)
        present = {m for p in self.patients for m in cohort.modalities_of(p)}
        wanted = tuple(self.spec.modalities) or tuple(cohort.modalities)
        #: The modalities drawn, in the cohort's canonical order.
        self.modalities = tuple(m for m in cohort.modalities if m in present and m in wanted)
        #: Modality name -> kind.
        self.kinds = {m: cohort.kind_of(m) for m in self.modalities}
        given = {m: dict(v) for m, v in (states or {}).items()}
        if vocabulary is not None:
            target = self._legacy_table()
            if target is not None:
                given.setdefault(target, {})["vocabulary"] = list(vocabulary.genes)
        self._meta = _metadata_records(cohort, self.patients)
        self.features_dir = Path(features_dir) if features_dir is not None else None
        self.sources: dict[str, Any] = {}
        for m in self.modalities:
            ctx = SourceContext(spec=self.spec, options=cohort.options.get(m, {}), state=given.get(m, {}),
                                coords_dir=coords_dir, features_dir=self.features_dir,
                                volume_cache_dir=volume_cache_dir, train=train)
            self.sources[m] = KINDS.get(self.kinds[m])().open(m, cohort, self.patients, ctx)

    def _legacy_table(self) -> str | None:
        tables = [m for m in self.modalities if self.kinds[m] == keys.TABLE]
        return keys.EXPRESSION if keys.EXPRESSION in tables else (tables[0] if len(tables) == 1 else None)

    # -- what the data fixed ----------------------------------------------------------------------
    def states(self) -> dict[str, dict[str, Any]]:
        """Per modality, what a checkpoint keeps to open it again the same way (JSON-able)."""
        return {m: {"kind": self.kinds[m], **self.sources[m].state()} for m in self.modalities}

    @property
    def vocabulary(self) -> Any:
        """The gene vocabulary of the legacy ``expression`` modality, else of the only table modality (else None)."""
        from biossl.data.vocab import GeneVocabulary

        m = self._legacy_table()
        return None if m is None else GeneVocabulary(self.sources[m].genes)

    @property
    def expression_transforms(self) -> dict[str, str]:
        """How each table's values were transformed on reading (``uns["biossl"]["transform"]``), by table."""
        out: dict[str, str] = {}
        for m in self.modalities:
            out.update(getattr(self.sources[m], "transforms", {}) or {})
        return out

    @property
    def feature_dim(self) -> int | None:
        """Width of cached tile features of the slide modalities (None when slides are read as pixels)."""
        dims = {getattr(self.sources[m], "feature_dim", None) for m in self.modalities if self.kinds[m] == keys.SLIDE}
        dims.discard(None)
        return dims.pop() if len(dims) == 1 else None

    # -- items ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        pick = Pick(np.random.default_rng((self.seed, epoch if self.train else 0, index)), self.train)
        p = self.patients[index]
        item: dict[str, Any] = {"patient_id": p, keys.METADATA: self._meta[p]}
        for m in self.modalities:
            entry = self.sources[m].draw(p, pick)
            if entry is not None:
                item[m] = entry
        return item


#: One read of :class:`InstanceReads`: (modality, patient index, instances -- a ``(start, stop)`` range of
#: every instance, an index array of a sample, or ``None`` for the source's whole draw --, last read of
#: the patient-modality, instances available or -1 when only the draw knows).
Read = tuple[str, int, tuple[int, int] | np.ndarray | None, bool, int]


def streams(source: Any) -> bool:
    """Whether a kind's source reads any instances on request (``count(patient)`` and ``read(patient, indices)``)."""
    return callable(getattr(source, "count", None)) and callable(getattr(source, "read", None))


class InstanceReads(Dataset[dict[str, Any]]):
    """The reads of a whole-patient embedding: every patient's instances of each modality, chunk by chunk.

    Sources that read on request (slides' tiles or cached features, DNA windows: :func:`streams`) are
    read ``chunk_size`` instances at a time, so memory does not grow with a slide's tile count. Other
    sources (tables, 3D scans, plug-in kinds) are asked once per patient for every instance through
    their ``draw`` with an :class:`Every` pick (a scan's grid patches, a table's rows), and the caller
    encodes them in chunks. Items come modality by modality, each patient's reads in order; an item is
    ``{"modality", "index", "last", "available", "entry"}`` (``entry`` ``None`` when the patient lacks it).

    Args:
        dataset: The cohort's patient bags (its sources and patients).
        modalities: The modalities to read.
        policy: Every instance, or a seeded sample of at most ``max_instances`` (:class:`InstancePolicy`).
        seed: Seed of the sample.
    """

    def __init__(self, dataset: PatientBagDataset, modalities: Sequence[str], policy: InstancePolicy,
                 seed: int = 0) -> None:
        self.dataset, self.policy, self.seed = dataset, policy, seed
        self.reads: list[Read] = []
        chunk = int(policy.chunk_size)
        for m in modalities:
            source = dataset.sources.get(m)
            if source is None:
                continue
            for i, p in enumerate(dataset.patients):
                if not streams(source):
                    if m in dataset.cohort.modalities_of(p):
                        self.reads.append((m, i, None, True, -1))
                    continue
                n = int(source.count(p))
                if n == 0:
                    continue
                if policy.max_instances is None or n <= policy.max_instances:
                    self.reads += [(m, i, (a, min(a + chunk, n)), a + chunk >= n, n) for a in range(0, n, chunk)]
                    continue
                chosen = select_instances(n, policy.max_instances, policy.rng(seed, i, m))
                self.reads += [(m, i, chosen[a:a + chunk], a + chunk >= len(chosen), n)
                               for a in range(0, len(chosen), chunk)]

    def __len__(self) -> int:
        return len(self.reads)

    def __getitem__(self, j: int) -> dict[str, Any]:
        m, i, which, last, available = self.reads[j]
        source, p = self.dataset.sources[m], self.dataset.patients[i]
        if which is None:
            pick = Every(self.policy.rng(self.seed, i, m), self.policy.max_instances)
            entry = source.draw(p, pick)
            available = pick.available if pick.available else (0 if entry is None else len(entry[keys.X]))
        else:
            indices = np.arange(*which, dtype=np.int64) if isinstance(which, tuple) else which
            entry = source.read(p, indices)
        if entry is not None and len(entry[keys.X]) == 0:
            entry = None
        return {"modality": m, "index": i, "last": last, "available": int(available), "entry": entry}


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
    """Collate patient items into the batch layout of :mod:`biossl.keys` (bags padded to ``K``).

    Every tensor of a modality's entry is per instance (``[k, ...]``): it is padded with zeros to
    ``[B, K, ...]``; ``mask`` and ``present`` are added. Nothing here depends on the kind.
    """
    batch: dict[str, Any] = {"patient_id": [it["patient_id"] for it in items]}
    meta_keys = sorted({k for it in items for k in it[keys.METADATA]})
    batch[keys.METADATA] = {k: [it[keys.METADATA].get(k) for it in items] for k in meta_keys}
    b = len(items)
    names: dict[str, None] = {}
    for it in items:
        names.update(dict.fromkeys(k for k in it if k not in ("patient_id", keys.METADATA)))
    for m in names:
        have = [it.get(m) for it in items]
        first = next(h for h in have if h is not None)
        k = max(h[keys.X].shape[0] for h in have if h is not None)
        entry: dict[str, torch.Tensor] = {}
        for name, t in first.items():
            out = torch.zeros((b, k, *t.shape[1:]), dtype=t.dtype)
            for i, h in enumerate(have):
                if h is not None:
                    out[i, : h[name].shape[0]] = h[name]
            entry[name] = out
        mask = torch.zeros((b, k), dtype=torch.bool)
        for i, h in enumerate(have):
            if h is not None:
                mask[i, : h[keys.X].shape[0]] = True
        entry[keys.MASK] = mask
        entry[keys.PRESENT] = mask.any(dim=1)
        batch[m] = entry
    return batch


def batch_to(batch: Any, device: torch.device | str) -> Any:
    """A batch of :func:`collate_bags` (nested dicts of tensors and lists) with every tensor on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: batch_to(v, device) for k, v in batch.items()}
    return batch

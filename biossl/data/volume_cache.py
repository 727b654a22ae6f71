"""Cache of preprocessed volumes, so a scan is decompressed and resampled at most once per epoch.

Entries are keyed by the scan's absolute path, its modification time, size and content fingerprint
(:func:`biossl.data.identity.file_fingerprint`; for a DICOM folder: the name, size, modification and
status-change time of each of its files, the last of which no copy can set back) and
:meth:`VolumeSpec.digest`, so editing or replacing a file (also by a copy that keeps the old time, or
one of the same size) or changing an option never serves a stale array. Arrays live in an in-memory
LRU and, when ``cache_dir`` is set, as ``<key>.npy`` files written atomically, which DataLoader
workers and later epochs or runs share.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from biossl.data.identity import file_fingerprint
from biossl.data.volume import VolumeSpec, load_volume
from biossl.io import atomic_path

logger = logging.getLogger(__name__)

Loader = Callable[[Path, VolumeSpec], np.ndarray]


def _fingerprint(path: Path) -> str:
    """What identifies a scan's content: a file's mtime, size and content fingerprint; each file of a folder's.

    A folder's files are not read (a series has hundreds): their ctime stands for their content, as it changes
    with every rewrite, also one that restores the old size and mtime (``cp -p``, ``touch -r``).
    """
    if not path.is_dir():
        stat = path.stat()
        return f"{stat.st_mtime_ns}\0{stat.st_size}\0{file_fingerprint(path)}"
    files = sorted((p.name, p.stat()) for p in path.iterdir() if p.is_file())
    entries = (f"{name}\0{s.st_mtime_ns}\0{s.st_ctime_ns}\0{s.st_size}" for name, s in files)
    return "\n".join(entries) + f"\n{path.stat().st_mtime_ns}"


class VolumeCache:
    """Load preprocessed volumes through an LRU memory cache and an optional on-disk ``.npy`` cache.

    Args:
        cache_dir: Folder for ``.npy`` files shared across workers and runs; ``None`` keeps memory only.
        max_items: Volumes kept in memory (least recently used are dropped); 0 disables the memory tier.
        loader: The function that reads and preprocesses a scan; :func:`load_volume` unless testing.

    Example:
        >>> cache = VolumeCache("cache/volumes", max_items=64)  # doctest: +SKIP
        >>> x = cache.load("scans/p001.nii.gz", VolumeSpec(kind="ct"))  # doctest: +SKIP
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        max_items: int = 32,
        loader: Loader = load_volume,
    ) -> None:
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_items = max_items
        self.loader = loader
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(self, path: str | os.PathLike[str], spec: VolumeSpec) -> str:
        """The cache key of ``path`` preprocessed with ``spec``."""
        absolute = Path(path).resolve()
        text = f"{absolute}\0{_fingerprint(absolute)}\0{spec.digest()}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _remember(self, key: str, array: np.ndarray) -> None:
        if self.max_items == 0:
            return
        self._memory[key] = array
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _read_disk(self, file: Path) -> np.ndarray | None:
        if not file.is_file():
            return None
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("ignoring unreadable cache file %s (%s); recomputing it", file, exc)
            return None

    def load(self, path: str | os.PathLike[str], spec: VolumeSpec) -> np.ndarray:
        """Return the preprocessed ``float32 [1, D, H, W]`` volume; a fresh copy the caller may modify."""
        key = self.key(path, spec)
        array = self._memory.get(key)
        if array is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return array.copy()
        file = self.cache_dir / f"{key}.npy" if self.cache_dir is not None else None
        array = self._read_disk(file) if file is not None else None
        if array is not None:
            self.hits += 1
        else:
            self.misses += 1
            array = np.ascontiguousarray(self.loader(Path(path), spec), dtype=np.float32)
            if file is not None:
                with atomic_path(file) as tmp, open(tmp, "wb") as handle:
                    np.save(handle, array)
        self._remember(key, array)
        return array.copy()

    def clear(self) -> None:
        """Drop the in-memory entries (files in ``cache_dir`` are kept)."""
        self._memory.clear()

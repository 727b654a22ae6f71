"""A file's identity for caches: a content fingerprint that survives moving or copying a cohort folder.

Caches derived from an input file (tile coordinates, tile features, preprocessed scans) are keyed by
:func:`file_fingerprint`, never by the file's name alone: two slides named ``slide.svs`` in two folders,
or a slide re-scanned in place (same path, new file), get different fingerprints and so different cache
entries. The fingerprint is SHA-1 over the file size, its first and last MiB and
:data:`N_SAMPLES` evenly spaced 64 KiB blocks in between: a few MiB read, milliseconds even for a
multi-GB slide. Files up to :data:`FULL_READ` bytes are hashed whole. It is memoised per process by
(resolved path, device, inode, size, mtime and ctime in ns), so asking again costs one ``stat``. The ctime
is in the key because a file rewritten in place with its old size and time restored (``cp -p``,
``touch -r``, ``rsync -a`` onto the same inode) keeps inode, size and mtime; no tool can set the ctime back.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

#: Bytes hashed at each end of the file.
EDGE = 1 << 20
#: Bytes of each sample between the ends.
SAMPLE = 64 << 10
#: Samples between the ends.
N_SAMPLES = 8
#: Files up to this size are hashed whole.
FULL_READ = 2 * EDGE + N_SAMPLES * SAMPLE
#: Hex digits of the fingerprint used in cache file names.
SHORT = 10
#: Version of the recipe, hashed first: a change of recipe never matches an old fingerprint.
_RECIPE = b"biossl-file-fingerprint-v1\0"

_MEMO: dict[tuple[str, int, int, int, int, int], str] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class FileIdentity:
    """What a cache records of the file it was made from.

    Attributes:
        fingerprint: :func:`file_fingerprint` (40 hex digits).
        size: Size in bytes.
        path: Resolved absolute path when the identity was taken.
    """

    fingerprint: str
    size: int
    path: str

    @property
    def short(self) -> str:
        """The first :data:`SHORT` hex digits, used in cache file names."""
        return self.fingerprint[:SHORT]


def _digest(path: Path, size: int) -> str:
    h = hashlib.sha1(_RECIPE)
    h.update(f"{size}\0".encode())
    with open(path, "rb") as f:
        if size <= FULL_READ:
            while block := f.read(1 << 20):
                h.update(block)
            return h.hexdigest()
        h.update(f.read(EDGE))
        span = size - 2 * EDGE - SAMPLE
        for k in range(1, N_SAMPLES + 1):
            f.seek(EDGE + span * k // (N_SAMPLES + 1))
            h.update(f.read(SAMPLE))
        f.seek(size - EDGE)
        h.update(f.read(EDGE))
    return h.hexdigest()


def file_identity(path: str | os.PathLike[str]) -> FileIdentity:
    """The :class:`FileIdentity` of a file (memoised by resolved path, inode, size, mtime and ctime).

    Raises:
        OSError: The file cannot be read (missing, a folder, no permission).
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    if not resolved.is_file():
        raise IsADirectoryError(f"{resolved} is not a file")
    key = (str(resolved), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _LOCK:
        known = _MEMO.get(key)
    if known is None:
        known = _digest(resolved, stat.st_size)
        with _LOCK:
            _MEMO[key] = known
    return FileIdentity(known, stat.st_size, str(resolved))


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """The content fingerprint (40 hex digits) of a file; see the module docstring."""
    return file_identity(path).fingerprint


__all__ = ["FileIdentity", "file_fingerprint", "file_identity"]

"""Lazy tile reading for training: one tile at a time, straight from the slide file.

Open OpenSlide handles live in a per-process LRU cache keyed by :func:`os.getpid`, so each
DataLoader worker opens its own handles after fork instead of sharing the parent's; within a process
they are keyed by path and the file's content fingerprint, so a slide replaced at the same path (a
re-scan) is opened anew instead of being read through the old file's parsed layout. Nothing here
reads more of a slide than the requested tile.

Fast path: tiles are read with ``openslide_read_region`` straight into a numpy buffer of premultiplied
ARGB pixels and turned into RGB with one strided copy, skipping the PIL image that
``OpenSlide.read_region`` builds (and its un-premultiply pass). Transparent pixels (outside the
scanned area) are composited onto white: for premultiplied pixels that is ``c + 255 - alpha``.
Opaque regions come out bit-identical to ``np.asarray(slide.read_region(...).convert("RGB"))``.
"""

from __future__ import annotations

import bisect
import ctypes
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import openslide
import torch
from openslide import lowlevel
from PIL import Image
from torch.utils.data import Dataset

from biossl.data.identity import file_identity
from biossl.data.wsi import rgba_to_rgb
from biossl.errors import SlideError

logger = logging.getLogger(__name__)

#: Open handles kept per process.
MAX_OPEN_SLIDES = 64
_HANDLES: dict[int, OrderedDict[str, openslide.OpenSlide]] = {}  # pid -> "path\0version" -> handle

# openslide-python's ctypes binding of openslide_read_region (private; absent -> the PIL path is used).
_READ_INTO = getattr(lowlevel, "_read_region", None)
_U32_PTR = ctypes.POINTER(ctypes.c_uint32)
# Byte positions of R, G, B and alpha inside a native-endian uint32 ARGB pixel.
_RGB, _ALPHA = ((2, 1, 0), 3) if sys.byteorder == "little" else ((1, 2, 3), 0)
_OPAQUE = np.uint32(0xFF000000)


def cached_handle(path: str, version: str = "") -> openslide.OpenSlide:
    """Return an open handle to ``path`` from this process's LRU cache, opening it if needed.

    Args:
        path: The slide file.
        version: What identifies the file's content (its fingerprint): another value opens the path again.
    """
    pid = os.getpid()
    cache = _HANDLES.get(pid)
    if cache is None:
        _HANDLES.clear()  # handles inherited through fork belong to the parent: drop, never close
        cache = _HANDLES[pid] = OrderedDict()
    key = f"{path}\0{version}"
    handle = cache.get(key)
    if handle is not None:
        cache.move_to_end(key)
        return handle
    try:
        handle = openslide.OpenSlide(path)
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(f"slide {path} cannot be opened for tile reading ({exc}); check the file") from None
    cache[key] = handle
    while len(cache) > MAX_OPEN_SLIDES:
        _, oldest = cache.popitem(last=False)
        oldest.close()
    return handle


def premultiplied_to_rgb(argb: np.ndarray, *, channels_first: bool = False) -> np.ndarray:
    """Turn premultiplied native-endian ``uint32 [H, W]`` ARGB pixels into RGB over a white background.

    Args:
        argb: Pixels as OpenSlide's C library writes them.
        channels_first: Return ``[3, H, W]`` instead of ``[H, W, 3]``.

    Returns:
        A new C-contiguous ``uint8`` array.
    """
    h, w = argb.shape
    px = argb.view(np.uint8).reshape(h, w, 4)
    if channels_first:
        rgb = px[..., list(_RGB)].transpose(2, 0, 1)  # numpy lays the gathered channels out planar: contiguous
        alpha = px[None, ..., _ALPHA]
    else:
        rgb = np.empty((h, w, 3), np.uint8)
        for c, byte in enumerate(_RGB):
            rgb[..., c] = px[..., byte]
        alpha = px[..., _ALPHA, None]
    if argb.size and argb.min() < _OPAQUE:  # some pixel not opaque: composite onto white
        rgb = np.minimum(rgb.astype(np.int16) + (255 - alpha.astype(np.int16)), 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def read_rgb(
    handle: openslide.OpenSlide,
    location: tuple[int, int],
    level: int,
    size: tuple[int, int],
    *,
    channels_first: bool = False,
) -> np.ndarray:
    """Read a region as RGB ``uint8`` (transparent pixels white), like ``read_region(...).convert("RGB")``.

    Args:
        handle: An open slide.
        location: (x, y) of the top-left pixel in level-0 coordinates.
        level: Pyramid level.
        size: (width, height) at ``level``.
        channels_first: Return ``[3, h, w]`` instead of ``[h, w, 3]``.

    Raises:
        openslide.OpenSlideError: The library failed to read the region.
    """
    w, h = size
    if _READ_INTO is None or w <= 0 or h <= 0:
        rgb = rgba_to_rgb(handle.read_region(location, level, size))
        return np.ascontiguousarray(rgb.transpose(2, 0, 1)) if channels_first else rgb
    argb = np.empty((h, w), np.uint32)
    _READ_INTO(handle._osr, argb.ctypes.data_as(_U32_PTR), location[0], location[1], level, w, h)
    return premultiplied_to_rgb(argb, channels_first=channels_first)


class SlideTiles:
    """The tiles of one slide listed in a coordinates file written by :func:`biossl.data.tiling.tile_slide`.

    The slide read is ``slide_path`` when given (a cohort's reader always passes its manifest's path),
    else the path stored in the file; either way its content fingerprint must be the one the file
    records (:mod:`biossl.data.identity`), so tiles are never read from another file than the one tiled
    (a slide of the same name elsewhere, or one re-scanned in place).

    Args:
        h5_path: The coordinates file (``<stem>.<fingerprint>.h5``).
        slide_path: The slide to read (default: the path stored in the file).

    Raises:
        SlideError: The coordinates file is unreadable, the slide is missing, or the slide is not the
            file that was tiled.
    """

    def __init__(self, h5_path: str | os.PathLike[str], *, slide_path: str | os.PathLike[str] | None = None) -> None:
        self.h5_path = Path(h5_path)
        try:
            with h5py.File(self.h5_path, "r") as f:
                self.coords = np.asarray(f["coords"][:], dtype=np.int64)
                attrs = dict(f.attrs)
            self.level = int(attrs["level"])
            self.read_size = int(attrs["read_size"])
            self.tile_size = int(attrs["tile_size"])
            stored = str(attrs["slide_path"])
        except (OSError, KeyError) as exc:
            raise SlideError(
                f"{self.h5_path} is not a tile-coordinates file from `biossl tile` ({exc}); run `biossl tile` again"
            ) from None
        self.slide_path = str(Path(slide_path)) if slide_path is not None else stored
        if not Path(self.slide_path).is_file():
            raise SlideError(
                f"slide {self.slide_path} listed in {self.h5_path} is missing; move it back or pass slide_path="
            )
        #: The slide fingerprint the file records (None in files of older biossl versions).
        self.slide_fingerprint: str | None = str(attrs["slide_fingerprint"]) if "slide_fingerprint" in attrs else None
        self._check_slide(stored, given=slide_path is not None)
        stat = os.stat(self.slide_path)  # the file read from here on (fingerprint checked above, when recorded)
        self._version = self.slide_fingerprint or f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"

    def _check_slide(self, stored: str, *, given: bool) -> None:
        """Refuse to read tiles from a file other than the one tiled (see the class docstring)."""
        redo = (f"tile the slide again (`biossl tile {self.slide_path} --out {self.h5_path.parent}`, which writes "
                "a file named by its present content) and delete " + str(self.h5_path))
        if self.slide_fingerprint is None:  # an older biossl's file: only the path can be compared
            if given and Path(self.slide_path).resolve() != Path(stored).resolve():
                raise SlideError(f"{self.h5_path} was made from slide {stored} and records no fingerprint to show "
                                 f"that {self.slide_path} is the same file; {redo}")
            logger.warning("%s records no slide fingerprint (an older biossl's file): cannot check that %s is the "
                           "slide that was tiled; tile it again to be sure", self.h5_path, self.slide_path)
            return
        try:
            actual = file_identity(self.slide_path)
        except OSError as exc:
            raise SlideError(f"slide {self.slide_path} cannot be read ({exc}); check the file") from None
        if actual.fingerprint != self.slide_fingerprint:
            raise SlideError(f"{self.h5_path} lists the tiles of another file than slide {self.slide_path}: it was "
                             f"made from {stored} (fingerprint {self.slide_fingerprint[:10]}), and this slide's "
                             f"content has fingerprint {actual.short} (re-scanned, replaced, or another slide of "
                             f"the same name); {redo}")

    def __len__(self) -> int:
        return len(self.coords)

    def read(self, i: int, *, channels_first: bool = False) -> np.ndarray:
        """Return tile ``i`` as a writable, C-contiguous ``uint8 [tile_size, tile_size, 3]`` RGB array.

        Args:
            i: Tile index.
            channels_first: Return ``[3, tile_size, tile_size]`` instead (cheaper than transposing after).

        Raises:
            SlideError: The tile cannot be decoded (names the slide, tile and coordinates).
        """
        x, y = (int(v) for v in self.coords[i])
        handle = cached_handle(self.slide_path, self._version)
        resize = self.read_size != self.tile_size
        size = (self.read_size, self.read_size)
        try:
            rgb = read_rgb(handle, (x, y), self.level, size, channels_first=channels_first and not resize)
        except openslide.OpenSlideError as exc:
            raise SlideError(f"slide {self.slide_path}: tile {i} at ({x}, {y}) cannot be read ({exc})") from None
        if not resize:
            return rgb
        small = Image.fromarray(rgb).resize((self.tile_size, self.tile_size), Image.Resampling.BILINEAR)
        return np.ascontiguousarray(np.asarray(small).transpose(2, 0, 1)) if channels_first else np.array(small)


TileDtype = Literal["uint8", "float32"]


def tiles_to_float(x: torch.Tensor) -> torch.Tensor:
    """Return ``uint8`` tiles (any shape) as float32 in [0, 1]; run it after ``.to(device)``."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


class TileDataset(Dataset[tuple[torch.Tensor, int]]):
    """All tiles of many slides as ``(tile [3, H, W], slide index)`` pairs.

    ``uint8`` tiles are 4x fewer bytes for the DataLoader to collate and pass between processes than
    float32 ones; convert them on the accelerator with :func:`tiles_to_float`.

    Args:
        h5_paths: Coordinates files, one per slide; the slide index is the position in this list.
        transform: Applied to each tile tensor (for example augmentations); it sees the ``dtype`` tiles.
        dtype: ``"float32"`` (in [0, 1]) or ``"uint8"`` (0-255, fastest).

    Raises:
        ValueError: ``dtype`` is neither.
    """

    def __init__(
        self,
        h5_paths: Sequence[str | os.PathLike[str]],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        dtype: TileDtype = "float32",
    ) -> None:
        if dtype not in ("uint8", "float32"):
            raise ValueError(f"TileDataset dtype must be 'uint8' or 'float32', got {dtype!r}")
        self.slides = [SlideTiles(p) for p in h5_paths]
        self.transform = transform
        self.dtype = dtype
        self._ends = np.cumsum([len(s) for s in self.slides]).tolist()

    def __len__(self) -> int:
        return int(self._ends[-1]) if self._ends else 0

    def locate(self, index: int) -> tuple[int, int]:
        """Return ``(slide index, tile index within that slide)`` of a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"tile index {index} out of range for {len(self)} tiles")
        slide = bisect.bisect_right(self._ends, index)
        start = self._ends[slide - 1] if slide else 0
        return slide, index - start

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        slide, tile = self.locate(index)
        x = torch.from_numpy(self.slides[slide].read(tile, channels_first=True))
        if self.dtype == "float32":
            x = tiles_to_float(x)
        if self.transform is not None:
            x = self.transform(x)
        return x, slide

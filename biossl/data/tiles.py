"""Lazy tile reading for training: one tile at a time, straight from the slide file.

Open OpenSlide handles live in a per-process LRU cache keyed by :func:`os.getpid`, so each
DataLoader worker opens its own handles after fork instead of sharing the parent's. Nothing here
reads more of a slide than the requested tile.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import openslide
import torch
from PIL import Image
from torch.utils.data import Dataset

from biossl.data.wsi import rgba_to_rgb
from biossl.errors import SlideError

#: Open handles kept per process.
MAX_OPEN_SLIDES = 64
_HANDLES: dict[int, OrderedDict[str, openslide.OpenSlide]] = {}


def cached_handle(path: str) -> openslide.OpenSlide:
    """Return an open handle to ``path`` from this process's LRU cache, opening it if needed."""
    pid = os.getpid()
    cache = _HANDLES.get(pid)
    if cache is None:
        _HANDLES.clear()  # handles inherited through fork belong to the parent: drop, never close
        cache = _HANDLES[pid] = OrderedDict()
    handle = cache.get(path)
    if handle is not None:
        cache.move_to_end(path)
        return handle
    try:
        handle = openslide.OpenSlide(path)
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(f"slide {path} cannot be opened for tile reading ({exc}); check the file") from None
    cache[path] = handle
    while len(cache) > MAX_OPEN_SLIDES:
        _, oldest = cache.popitem(last=False)
        oldest.close()
    return handle


class SlideTiles:
    """The tiles of one slide listed in a coordinates file written by :func:`biossl.data.tiling.tile_slide`.

    Args:
        h5_path: The ``<slide_stem>.h5`` file.
        slide_path: The slide, if it moved since tiling (default: the path stored in the file).

    Raises:
        SlideError: The coordinates file is unreadable or the slide is missing.
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

    def __len__(self) -> int:
        return len(self.coords)

    def read(self, i: int) -> np.ndarray:
        """Return tile ``i`` as ``uint8 [tile_size, tile_size, 3]``."""
        x, y = (int(v) for v in self.coords[i])
        handle = cached_handle(self.slide_path)
        try:
            region = handle.read_region((x, y), self.level, (self.read_size, self.read_size))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"slide {self.slide_path}: tile {i} at ({x}, {y}) cannot be read ({exc})") from None
        if self.read_size != self.tile_size:
            region = region.resize((self.tile_size, self.tile_size), Image.Resampling.BILINEAR)
        return rgba_to_rgb(region)


class TileDataset(Dataset[tuple[torch.Tensor, int]]):
    """All tiles of many slides as ``(float [3, H, W] in [0, 1], slide index)`` pairs.

    Args:
        h5_paths: Coordinates files, one per slide; the slide index is the position in this list.
        transform: Applied to each tile tensor (for example augmentations).
    """

    def __init__(
        self,
        h5_paths: Sequence[str | os.PathLike[str]],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.slides = [SlideTiles(p) for p in h5_paths]
        self.transform = transform
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
        chw = np.ascontiguousarray(self.slides[slide].read(tile).transpose(2, 0, 1))
        x = torch.from_numpy(chw).float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, slide

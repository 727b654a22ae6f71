"""A small whole-slide image wrapper over :class:`openslide.OpenSlide` with helpful errors.

Every OpenSlide failure (not a slide, truncated file, corrupt tile, missing µm/px) becomes a
:class:`biossl.errors.SlideError` whose message names the file and says what to do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import cast

import numpy as np
import openslide
from PIL import Image

from biossl.errors import SlideError

logger = logging.getLogger(__name__)

_FIX_MPP = (
    "pass --slide-mpp (slide_mpp=), or give the slide a slide_mpp value in the manifest, with the scanner's "
    "µm per pixel at level 0 (0.25 at 40x, 0.5 at 20x)"
)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF and BigTIFF, both byte orders


def _is_tiff(path: Path) -> bool:
    """True if the file starts like a TIFF (every .svs does): a failed open then means damage or no pyramid."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _open(path: Path) -> openslide.OpenSlide:
    if not path.is_file():
        raise SlideError(f"slide {path} does not exist or is not a file; check the path")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        if _is_tiff(path):
            raise SlideError(
                f"slide {path} starts like a TIFF but OpenSlide cannot read it ({path.stat().st_size} bytes): "
                "the file is truncated or corrupt (copy it again), or a plain TIFF that is not a tiled "
                "pyramid (re-export it, e.g. vips tiffsave --tile --pyramid)"
            ) from None
        raise SlideError(
            f"slide {path} is not a whole-slide image OpenSlide can read (Aperio .svs, .tif, .ndpi, "
            ".mrxs, ...); check the file type or re-export it"
        ) from None
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(
            f"slide {path} cannot be opened ({exc}); the file may be truncated or corrupt, copy it again"
        ) from None


def probe(path: Path) -> None:
    """Cheaply check that ``path`` opens as a slide and its smallest level decodes one pixel.

    Raises:
        SlideError: The file is missing, not a slide, truncated or corrupt (message names it).
    """
    path = Path(path)
    handle = _open(path)
    try:
        last = handle.level_count - 1
        if last < 0:
            raise SlideError(f"slide {path} has no image levels; re-export it")
        handle.read_region((0, 0), last, (1, 1))
    except openslide.OpenSlideError as exc:
        raise SlideError(f"slide {path} cannot be decoded ({exc}); it may be truncated or corrupt") from None
    finally:
        handle.close()


def rgba_to_rgb(region: Image.Image) -> np.ndarray:
    """Return a writable ``uint8 [H, W, 3]`` array from an RGBA region, transparent pixels made white."""
    if region.mode == "RGBA" and cast(tuple[int, int], region.getchannel("A").getextrema())[0] < 255:
        region = Image.alpha_composite(Image.new("RGBA", region.size, (255, 255, 255, 255)), region)
    return np.array(region.convert("RGB"))


class Slide:
    """An open whole-slide image.

    Args:
        path: The slide file.
        slide_mpp: µm per pixel at level 0; overrides (or supplies) the file's metadata.
        require_mpp: Raise when neither the file nor ``slide_mpp`` gives µm/px.

    Raises:
        SlideError: The file cannot be opened, or it has no µm/px and ``slide_mpp`` is not given.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, slide_mpp: float | None = None, require_mpp: bool = True
    ) -> None:
        self.path = Path(path)
        if slide_mpp is not None and not slide_mpp > 0:
            raise SlideError(f"--slide-mpp must be a positive number of µm per pixel, got {slide_mpp}")
        self._handle = _open(self.path)
        self.mpp = slide_mpp if slide_mpp is not None else self._metadata_mpp()
        if self.mpp is None and require_mpp:
            self.close()
            raise SlideError(f"slide {self.path} has no µm/px (MPP) metadata; {_FIX_MPP}")

    def _metadata_mpp(self) -> float | None:
        props = self._handle.properties
        values = []
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
            try:
                values.append(float(props[key]))
            except (KeyError, ValueError):
                return None
        if not all(v > 0 for v in values):
            return None
        if abs(values[0] - values[1]) > 0.01 * values[0]:
            logger.warning("%s: non-square pixels (mpp-x %s, mpp-y %s); using mpp-x", self.path, *values)
        return values[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return int(self._handle.level_count)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level."""
        return tuple((int(w), int(h)) for w, h in self._handle.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level relative to level 0."""
        return tuple(float(d) for d in self._handle.level_downsamples)

    def level_mpp(self, level: int) -> float:
        """µm per pixel at ``level``."""
        if self.mpp is None:
            raise SlideError(f"slide {self.path} has no µm/px (MPP) metadata; {_FIX_MPP}")
        return self.mpp * self.level_downsamples[level]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` (w, h) pixels at ``level`` from level-0 ``location`` (x, y) as ``uint8 [h, w, 3]``.

        Raises:
            SlideError: A tile of the slide cannot be decoded (names the file and the region).
        """
        try:
            region = self._handle.read_region(location, level, size)
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"slide {self.path}: reading {size} px at level {level}, {location} failed ({exc}); "
                "the file may be truncated or corrupt, copy it again"
            ) from None
        return rgba_to_rgb(region)

    def close(self) -> None:
        """Release the OpenSlide handle."""
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, levels={self.level_dimensions}, mpp={self.mpp})"

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
#: Plausible µm per pixel, for a slide's level 0 and for the tiles' target. Scanners record 0.1-1 µm/px at
#: level 0 (0.25 at 40x, 0.5 at 20x; oil immersion reaches ~0.1), and tiles coarser than 100 µm/px hold no
#: cell. A value outside is a unit slip (0.00025 is 0.25 µm written in mm; 250 is it in nm) whose tissue
#: mask or tile grid would ask for hundreds of GiB or a tile larger than the slide, so it is refused up front.
MPP_RANGE = (0.05, 100.0)
#: A given µm/px within this fraction of the file's own agrees with it (scanners round: 0.2527 vs 0.25).
MPP_AGREEMENT = 0.02


def mpp_problem(value: object) -> str | None:
    """Why ``value`` is not a plausible µm per pixel (``None`` when it is); names the mm/nm slip.

    ``value`` may be a number or text (a manifest cell); empty values are the caller's business.
    """
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{value!r} is not a number of µm per pixel"
    lo, hi = MPP_RANGE
    if not lo <= number <= hi:  # also NaN, inf, 0 and negative values
        return (f"{value!r} µm per pixel is outside the plausible range {lo:g}-{hi:g} µm/px (0.25 at 40x, 0.5 at "
                "20x; a value in mm or nm is 1000 times off: 0.00025 mm = 250 nm = 0.25 µm)")
    return None


def check_mpp(value: float, what: str) -> float:
    """Return ``value`` as a float if it is a plausible µm per pixel, else raise naming ``what``.

    Args:
        value: The µm per pixel.
        what: What gave it, for the message (``"--slide-mpp"``, ``"data.slide_mpp"``, ...).

    Raises:
        SlideError: ``value`` is outside :data:`MPP_RANGE` (or not a number).
    """
    problem = mpp_problem(value)
    if problem is not None:
        raise SlideError(f"{what} {problem}")
    return float(value)


def disagreement(given: float, recorded: float) -> bool:
    """True if ``given`` µm/px differs from the file's ``recorded`` one by more than :data:`MPP_AGREEMENT`."""
    return abs(given - recorded) > MPP_AGREEMENT * recorded


_WARNED: set[str] = set()  # slides whose implausible recorded µm/px was logged (once per process)


class MissingMppError(SlideError):
    """A slide whose file records no µm/px, and no value was given for it."""


def missing_mpp_message(path: str | os.PathLike[str], fix_mpp: str | None = None, *,
                        ignored: float | None = None) -> str:
    """The message for a slide without µm/px: names the file and ends with ``fix_mpp`` (what to do).

    ``ignored`` is an implausible value the file records (said in the message, as it was not used).
    """
    said = (f" (it records {ignored:g} µm/px, outside the plausible range: a placeholder such as a TIFF's "
            "72 dpi, ignored)" if ignored is not None else "")
    return f"slide {path} has no µm/px (MPP) metadata{said}; {fix_mpp or _FIX_MPP}"


def describe_mpp(slide: Slide) -> str:
    """Where ``slide.mpp`` came from, for messages: the file, a given value, or an override of the file's."""
    if slide.mpp_source == "file":
        return f"{slide.mpp:g} µm/px at level 0, as its file records"
    if slide.mpp_source == "override":
        recorded = f"the file's {slide.file_mpp:g}" if slide.file_mpp is not None else "no value in the file"
        return f"{slide.mpp:g} µm/px at level 0 from --override-slide-mpp, replacing {recorded}"
    return f"{slide.mpp:g} µm/px at level 0 from --slide-mpp / slide_mpp (the file records none)"
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

    A slide's level-0 µm/px (:attr:`mpp`) is the file's own (:attr:`file_mpp`) whenever the file records
    one; ``slide_mpp`` only supplies it for files without it. Replacing a recorded value takes
    ``override_mpp``, which is logged by whoever tiles. :attr:`mpp_source` says which applied.

    Args:
        path: The slide file.
        slide_mpp: µm per pixel at level 0 for a file without it in its metadata (ignored otherwise).
        override_mpp: µm per pixel at level 0 replacing the file's metadata (or supplying it).
        require_mpp: Raise when neither the file nor a given value gives µm/px.
        fix_mpp: What to do when µm/px is missing or implausible (the end of that message); defaults to
            the ``biossl tile`` options.

    Raises:
        SlideError: The file cannot be opened, or a given value is implausible (:data:`MPP_RANGE`).
        MissingMppError: The file has no µm/px, no value is given, and ``require_mpp``. A recorded value
            outside :data:`MPP_RANGE` (a plain TIFF's 72 dpi reads as 352.8 µm/px) counts as none, with a warning.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        slide_mpp: float | None = None,
        override_mpp: float | None = None,
        require_mpp: bool = True,
        fix_mpp: str | None = None,
    ) -> None:
        self.path = Path(path)
        if slide_mpp is not None:
            check_mpp(slide_mpp, f"slide {self.path}: --slide-mpp (slide_mpp)")
        if override_mpp is not None:
            check_mpp(override_mpp, f"slide {self.path}: --override-slide-mpp (override_mpp)")
        self._handle = _open(self.path)
        self.ignored_mpp: float | None = None  # an implausible recorded value, treated as none
        self.file_mpp = self._metadata_mpp()
        self.mpp: float | None
        if override_mpp is not None:
            self.mpp, self.mpp_source = float(override_mpp), "override"
        elif self.file_mpp is not None:
            self.mpp, self.mpp_source = self.file_mpp, "file"
        elif slide_mpp is not None:
            self.mpp, self.mpp_source = float(slide_mpp), "given"
        else:
            self.mpp, self.mpp_source = None, "none"
        if self.mpp is None and require_mpp:
            self.close()
            raise MissingMppError(missing_mpp_message(self.path, fix_mpp, ignored=self.ignored_mpp))

    @property
    def overridden(self) -> bool:
        """True if a given value replaced µm/px that the file records."""
        return self.mpp_source == "override" and self.file_mpp is not None

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
        if mpp_problem(values[0]) is not None:
            self.ignored_mpp = values[0]
            if str(self.path) in _WARNED:
                return None
            _WARNED.add(str(self.path))
            logger.warning("%s records %g µm/px, outside the plausible range %g-%g (a placeholder such as a TIFF's "
                           "72 dpi); treating it as recording none", self.path, values[0], *MPP_RANGE)
            return None
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
            raise MissingMppError(missing_mpp_message(self.path))
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

"""Tile one slide: choose the pyramid level, keep tiles on tissue, write coordinates and a thumbnail.

Writes, atomically, ``<out>/<key>.h5`` (``coords``: int64 ``[N, 2]`` level-0 x, y of each tile's
top-left corner; ``tissue``: float32 ``[N]`` tissue fraction per tile; attributes saying how to read
a tile, ``slide_path``, ``slide_fingerprint``, ``slide_size``, ``level``, ``read_size``, ``tile_size``,
and how it was made) and ``<out>/<key>_thumbnail.png`` (kept tiles outlined). Only the smallest level is
read in full, plus three kept tiles at the tiles' level, so a damaged level fails here and not in training.

**Names.** ``<key>`` is :func:`slide_key`: the slide's file stem and the first 10 hex digits of its
content fingerprint (:mod:`biossl.data.identity`), e.g. ``TCGA-XX.3f9a0c12de``. Two different slides
never write the same file (``A/slide.svs`` and ``B/slide.svs`` of two cohorts sharing a work folder),
and a slide re-scanned in place gets new tiles; the same file copied or moved keeps its key.

**Resuming.** :func:`tile_slides` skips a slide whose ``.h5`` opens and was made with the same
options, so a cohort run killed halfway (SIGKILL, a scheduler's time limit) is simply started again:
finished slides are not redone, and the slide that was being written when the run died is tiled
again (its temporary files, ``.<name>.*.tmp`` beside the outputs, are removed first). An ``.h5``
that does not open, or that records another slide fingerprint, is tiled again with a warning;
``overwrite=True`` (``--overwrite``) redoes every slide.

**Concurrent runs.** Each slide is checked, cleaned and written while its lock file ``.<key>.lock``
(``fcntl.flock``) is held, so two runs on one output folder never delete each other's live temporary
file: the second waits for the first and then finds the slide done.

**Slide µm/px.** A slide is tiled with the level-0 µm/px its file records. ``slide_mpp`` of
:func:`tile_slides` (``--slide-mpp``, ``data.slide_mpp``, a manifest's ``slide_mpp`` column) only
supplies it for files that record none; replacing a recorded value takes ``override_slide_mpp``
(``--override-slide-mpp``, ``data.override_slide_mpp``, the ``override_slide_mpp`` column), logged as a
warning per slide. Each is one number for every slide or a mapping ``{slide path: µm/px}`` (matched on
resolved absolute paths). Values outside :data:`biossl.data.wsi.MPP_RANGE` (a value in mm, say) are
refused before any work, as is a tile larger than the slide. The ``.h5`` records the value used
(``slide_mpp``), the file's (``file_mpp``, NaN if none) and which applied (``slide_mpp_source``: file,
given or override). The value used is one of a slide's reuse parameters: an ``.h5`` made with another
is an error, not a silent reuse. :func:`manifest_slide_mpp` builds the mappings from a manifest's rows
(the data module and the Snakemake workflow use it, so both tile a slide with the same value).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, TypeAlias

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from biossl.data.cohort import ROW, SLIDE_MPP
from biossl.data.identity import FileIdentity, file_identity
from biossl.data.tissue import TissueMask, detect_tissue, thumbnail, write_thumbnail
from biossl.data.wsi import Slide, check_mpp, describe_mpp, disagreement, missing_mpp_message, mpp_problem
from biossl.errors import ManifestError, SlideError
from biossl.io import atomic_outputs, write_bytes
from biossl.keys import MODALITY, PATH, PATIENT_ID, WSI
from biossl.progress import progress_enabled

logger = logging.getLogger(__name__)

_MPP_SLACK = 1.02  # a level at 0.5015 µm/px still counts as 0.5
#: Largest --tile-size: a tile is read whole and batched on the GPU; 8192² RGB is 192 MiB per tile.
MAX_TILE_SIZE = 8192
#: Largest tile read from the slide (bytes of RGB), which the target --mpp and the level decide.
MAX_READ_BYTES = 1 << 30
#: Most grid positions of a slide (the coordinates and tissue fractions of each are held in memory).
MAX_GRID = 20_000_000


class NoTissueError(SlideError):
    """No tile of the slide reaches the requested tissue fraction."""


@dataclass(frozen=True)
class TilingResult:
    """What :func:`tile_slide` did for one slide.

    Attributes:
        slide: The slide file.
        n_tiles: Tiles kept.
        tissue_fraction: Fraction of the slide area detected as tissue.
        level: Pyramid level the tiles are read from.
        read_size: Tile side in pixels at ``level`` (resized to ``tile_size`` on reading).
        h5_path: The coordinates file.
        thumbnail_path: The PNG with the kept tiles outlined.
        reused: True when a valid ``.h5`` from an earlier run was kept.
    """

    slide: Path
    n_tiles: int
    tissue_fraction: float
    level: int
    read_size: int
    h5_path: Path
    thumbnail_path: Path
    reused: bool = False

    @property
    def paths(self) -> tuple[Path, Path]:
        """The two output files."""
        return self.h5_path, self.thumbnail_path


def check_options(*, mpp: float, tile_size: int, min_tissue: float) -> None:
    """Refuse tiling options that cannot make sensible tiles, before any slide is read.

    Raises:
        SlideError: ``mpp`` outside :data:`biossl.data.wsi.MPP_RANGE`, ``tile_size`` outside
            1..:data:`MAX_TILE_SIZE`, or ``min_tissue`` outside 0-1.
    """
    if not 0.0 <= min_tissue <= 1.0:
        raise SlideError(f"--min-tissue must be between 0 and 1, got {min_tissue}")
    check_mpp(mpp, "--mpp (the tiles' target)")
    if not 1 <= tile_size <= MAX_TILE_SIZE:
        raise SlideError(f"--tile-size must be between 1 and {MAX_TILE_SIZE} pixels (224 or 256 are usual), "
                         f"got {tile_size}")


def choose_level(slide: Slide, *, mpp: float, tile_size: int) -> tuple[int, int]:
    """Return ``(level, read_size)``: the coarsest level at least as fine as ``mpp``, and the tile side there.

    Raises:
        SlideError: Level 0 is coarser than ``mpp`` (upsampling would invent detail).
    """
    candidates = [lv for lv in range(slide.level_count) if slide.level_mpp(lv) <= mpp * _MPP_SLACK]
    if not candidates:
        raise SlideError(
            f"slide {slide.path} is scanned at {describe_mpp(slide)}, coarser than the requested "
            f"--mpp {mpp:g}; pass --mpp {slide.level_mpp(0):.3f} or larger, or check the slide's µm/px"
        )
    level = max(candidates, key=lambda lv: slide.level_downsamples[lv])
    read_size = max(1, round(tile_size * mpp / slide.level_mpp(level)))
    return level, read_size


def check_tile_grid(slide: Slide, *, level: int, read_size: int, mpp: float, tile_size: int) -> None:
    """Refuse a tile grid that cannot work: a tile larger than the slide, too many tiles, or huge tiles.

    A tile ``read_size`` px wide at ``level`` covers the same area at every level, so one that does not
    fit the chosen level fits no level: the slide's µm/px, ``--mpp`` or ``--tile-size`` is wrong.

    Raises:
        SlideError: Naming the slide, the tile and the slide's size in pixels and µm, and what to change.
    """
    lw, lh = slide.level_dimensions[level]
    level_mpp = slide.level_mpp(level)
    said = (f"a tile ({tile_size} px at --mpp {mpp:g} = {read_size} px at level {level}, "
            f"{read_size * level_mpp:.6g} µm)")
    if read_size > lw or read_size > lh:
        raise SlideError(
            f"slide {slide.path}: {said} is larger than the slide ({lw}×{lh} px at level {level}, "
            f"{lw * level_mpp:.6g}×{lh * level_mpp:.6g} µm with {describe_mpp(slide)}); lower --mpp or "
            "--tile-size, or check the slide's µm/px (--slide-mpp / slide_mpp is a value in µm, not mm)"
        )
    if (lw // read_size) * (lh // read_size) > MAX_GRID:
        raise SlideError(
            f"slide {slide.path}: {said} makes {(lw // read_size) * (lh // read_size):,} grid positions "
            f"(at most {MAX_GRID:,}); raise --mpp or --tile-size, or check the slide's µm/px ({describe_mpp(slide)})"
        )
    if 3 * read_size * read_size > MAX_READ_BYTES:
        raise SlideError(
            f"slide {slide.path}: {said} would read {3 * read_size**2 / 2**30:.1f} GiB per tile (at most "
            f"{MAX_READ_BYTES / 2**30:g}); the slide has no level near --mpp {mpp:g}: lower --mpp or --tile-size"
        )


def grid(slide: Slide, tissue: TissueMask, *, level: int, read_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All full tiles of the level's grid as level-0 ``coords [M, 2]`` and their tissue fractions ``[M]``."""
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    nx, ny = lw // read_size, lh // read_size
    if nx == 0 or ny == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float64) * read_size * ds
    coords = np.round(coords).astype(np.int64)
    # Mean of the mask over each tile's footprint via a summed-area table.
    mask = tissue.mask
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    sat[1:, 1:] = mask.cumsum(0).cumsum(1)
    extent = read_size * ds
    dsx, dsy = tissue.downsample
    x0 = np.clip(np.floor(coords[:, 0] / dsx).astype(np.int64), 0, mask.shape[1] - 1)
    y0 = np.clip(np.floor(coords[:, 1] / dsy).astype(np.int64), 0, mask.shape[0] - 1)
    x1 = np.clip(np.ceil((coords[:, 0] + extent) / dsx).astype(np.int64), x0 + 1, mask.shape[1])
    y1 = np.clip(np.ceil((coords[:, 1] + extent) / dsy).astype(np.int64), y0 + 1, mask.shape[0])
    area = (x1 - x0) * (y1 - y0)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return coords, (inside / area).astype(np.float32)


def check_tiles_decode(slide: Slide, coords: np.ndarray, *, level: int, read_size: int, n: int = 3) -> None:
    """Decode ``n`` kept tiles (first, middle, last) at ``level``, before any output is written.

    Tissue detection reads only the smallest level, so a slide whose finer level is damaged would
    otherwise tile cleanly and fail later, in training. Reading a few tiles costs milliseconds.

    Raises:
        SlideError: A tile cannot be decoded (the message names the slide and the region).
    """
    if len(coords) == 0:
        return
    for i in sorted({round(k) for k in np.linspace(0, len(coords) - 1, n)}):
        x, y = (int(v) for v in coords[i])
        slide.read_region((x, y), level, (read_size, read_size))


def _identity(path: Path) -> FileIdentity:
    """The slide's :class:`~biossl.data.identity.FileIdentity` (a missing or unreadable file is a SlideError)."""
    try:
        return file_identity(path)
    except OSError as exc:
        raise SlideError(f"slide {path} cannot be read ({exc.strerror or exc}); check the path") from None


def slide_key(path: str | os.PathLike[str]) -> str:
    """``<stem>.<first 10 hex digits of the slide's content fingerprint>``: the name of its tiling outputs.

    Raises:
        SlideError: The slide cannot be read.
    """
    return _key(Path(path), _identity(Path(path)))


def _key(path: Path, identity: FileIdentity) -> str:
    """:func:`slide_key` of a slide whose identity is known."""
    return f"{path.stem}.{identity.short}"


def output_paths(out_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<out_dir>/<key>.h5, <out_dir>/<key>_thumbnail.png)`` of a slide (:func:`slide_key`)."""
    key = slide_key(path)
    return Path(out_dir) / f"{key}.h5", Path(out_dir) / f"{key}_thumbnail.png"


@contextlib.contextmanager
def output_lock(out_dir: Path, key: str) -> Iterator[None]:
    """Hold ``<out_dir>/.<key>.lock`` (``fcntl.flock``, exclusive) while a slide's outputs are checked and written.

    A second process asking for the same slide waits (logged) until the first releases it. The lock
    file is removed on release; a process that finds, once it holds the lock, that the file it locked
    was removed meanwhile locks the new one instead (so two processes never both hold the slide).
    """
    created = not out_dir.exists()  # removed again if left empty (a slide that failed writes nothing)
    lock = out_dir / f".{key}.lock"
    while True:
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # another process removed the folder it had created, empty: make it again
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("%s: another run is writing this slide's tiles (%s); waiting for it", key, lock)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                held = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                held = False
        except BaseException:
            os.close(fd)
            raise
        if held:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if empty


def read_params(h5_path: Path) -> dict[str, Any]:
    """Return the attributes of a coordinates file (raises ``OSError`` if it is unreadable)."""
    with h5py.File(h5_path, "r") as f:
        if "coords" not in f:
            raise OSError(f"{h5_path} has no 'coords' dataset")
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def tile_slide(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    mpp: float = 0.5,
    tile_size: int = 256,
    slide_mpp: float | None = None,
    override_slide_mpp: float | None = None,
    min_tissue: float = 0.5,
    max_side: int = 2048,
    min_saturation: float = 0.07,
    keep_empty: bool = False,
) -> TilingResult:
    """Tile one slide at ``mpp`` µm/px and write ``<out_dir>/<key>.h5`` and ``<key>_thumbnail.png`` (:func:`slide_key`).

    Args:
        path: The slide file.
        out_dir: Output folder (created if missing).
        mpp: Target µm per pixel of the tiles.
        tile_size: Tile side in pixels after resizing.
        slide_mpp: Level-0 µm/px for a slide whose file does not record it (a file's own value wins).
        override_slide_mpp: Level-0 µm/px replacing the file's own (logged as a warning when it does).
        min_tissue: Keep tiles whose tissue fraction is at least this (0-1).
        max_side: Longest side of the tissue mask in pixels.
        min_saturation: Saturation floor of the tissue detector.
        keep_empty: For a slide where no tile reaches ``min_tissue``, log a warning and write an
            ``.h5`` listing no tiles (``n_tiles`` 0) instead of raising: a marker that the slide was
            tiled, which the bag dataset reads as "this slide has no tiles" and reruns reuse.

    Returns:
        A :class:`TilingResult`.

    Raises:
        SlideError: The slide cannot be read (also a kept tile that does not decode), has no µm/px, an
            option is implausible (:func:`check_options`), or the tile grid cannot work (:func:`check_tile_grid`).
        NoTissueError: No tile reaches ``min_tissue`` and not ``keep_empty`` (no ``.h5`` is written; the
            thumbnail is, so a person can see why). :func:`tile_slides` turns this into a warning and a skip.
    """
    # Imported here: the Snakemake workflow imports this module for manifest_slide_mpp from a working
    # directory whose biossl/ data folder can shadow the package's __init__ (its submodules still resolve).
    from biossl import __version__

    path, out_dir = Path(path), Path(out_dir)
    check_options(mpp=mpp, tile_size=tile_size, min_tissue=min_tissue)
    identity = _identity(path)
    h5_path, thumb_path = output_paths(out_dir, path)
    with Slide(path, slide_mpp=slide_mpp, override_mpp=override_slide_mpp) as slide:
        level, read_size = choose_level(slide, mpp=mpp, tile_size=tile_size)
        check_tile_grid(slide, level=level, read_size=read_size, mpp=mpp, tile_size=tile_size)
        if slide.overridden:
            logger.warning("slide %s: µm/px replaced by --override-slide-mpp: its file records %g, tiling with %g",
                           path, slide.file_mpp, slide.mpp)
        elif slide_mpp is not None and slide.file_mpp is not None and disagreement(slide_mpp, slide.file_mpp):
            logger.info("slide %s: tiled with the %g µm/px its file records; --slide-mpp %g applies only to slides "
                        "without it (--override-slide-mpp replaces a recorded value)", path, slide.file_mpp, slide_mpp)
        tissue = detect_tissue(slide, max_side=max_side, min_saturation=min_saturation)
        coords, fractions = grid(slide, tissue, level=level, read_size=read_size)
        keep = fractions >= min_tissue
        coords, fractions = coords[keep], fractions[keep]
        ds = slide.level_downsamples[level]
        check_tiles_decode(slide, coords, level=level, read_size=read_size)
        if len(coords) == 0:
            blank = (f"slide {path}: no tile has tissue fraction >= {min_tissue} (tissue found on "
                     f"{tissue.fraction:.1%} of the slide; see {thumb_path}); lower --min-tissue or drop the slide")
            if not keep_empty:
                write_thumbnail(thumb_path, tissue, coords, read_size * ds)  # alone, on purpose: the message names it
                raise NoTissueError(blank)
            logger.warning("%s; writing %s listing no tiles", blank, h5_path.name)
        attrs: dict[str, Any] = {
            "slide_path": str(path.resolve()),
            "slide_name": path.name,
            "slide_fingerprint": identity.fingerprint,
            "slide_size": identity.size,
            "level": level,
            "read_size": read_size,
            "tile_size": tile_size,
            "target_mpp": mpp,
            "slide_mpp": float(slide.mpp or 0.0),
            "slide_mpp_source": slide.mpp_source,  # file, given (no value in the file) or override
            "file_mpp": float("nan") if slide.file_mpp is None else slide.file_mpp,
            "slide_mpp_overridden": slide.overridden,  # the file's own value was replaced
            "level_mpp": slide.level_mpp(level),
            "downsample": ds,
            "level0_tile_extent": read_size * ds,
            "min_tissue": min_tissue,
            "mask_downsample": np.asarray(tissue.downsample, np.float64),
            "mask_shape": np.asarray(tissue.mask.shape, np.int64),
            "mask_threshold": tissue.threshold,
            "mask_min_saturation": min_saturation,
            "mask_max_side": max_side,
            "tissue_fraction": tissue.fraction,
            "n_tiles": len(coords),
            "biossl_version": __version__,
        }
    image = thumbnail(tissue, coords, read_size * ds)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:  # built in memory: HDF5 never meets a full disk itself
        f.create_dataset("coords", data=coords.astype(np.int64))
        f.create_dataset("tissue", data=fractions.astype(np.float32))
        f.attrs.update(attrs)
    # The .h5 records the slide as done: it is renamed last, so it never stands beside another run's thumbnail.
    with atomic_outputs(thumb_path, h5_path) as (thumb_tmp, h5_tmp):
        image.save(thumb_tmp, format="PNG")
        write_bytes(h5_tmp, buffer.getbuffer())
    logger.info("%s: %d tiles, tissue %.1f%%, level %d", path.name, len(coords), 100 * tissue.fraction, level)
    return TilingResult(path, len(coords), tissue.fraction, level, read_size, h5_path, thumb_path)


def _tiled_with(h5_path: Path, params: dict[str, Any], identity: FileIdentity) -> bool:
    """True if ``h5_path`` opens, is of this slide file and was made with ``params`` (quietly False otherwise)."""
    try:
        old = read_params(h5_path)
    except OSError:
        return False
    return _same_slide(old, identity) and all(np.isclose(old.get(k, np.nan), v) for k, v in params.items())


def _same_slide(attrs: Mapping[str, Any], identity: FileIdentity) -> bool:
    """True if a coordinates file's attributes record this slide file's fingerprint and size."""
    return attrs.get("slide_fingerprint") == identity.fingerprint and attrs.get("slide_size") == identity.size


def _reusable(h5_path: Path, params: dict[str, Any], identity: FileIdentity) -> bool:
    """True if ``h5_path`` is a finished output of this slide file made with ``params``; raise if made with others.

    An unreadable file, or one recording another slide file (another fingerprint or size), is tiled
    again with a warning saying why.
    """
    if not h5_path.exists():
        return False
    try:
        old = read_params(h5_path)
    except OSError as exc:
        logger.warning("%s is unreadable (%s); tiling its slide again", h5_path, exc)
        return False
    if not _same_slide(old, identity):
        logger.warning("%s was made from another file (fingerprint %s, %s bytes) than slide %s (fingerprint %s, "
                       "%d bytes); tiling it again", h5_path, old.get("slide_fingerprint", "not recorded"),
                       old.get("slide_size", "?"), identity.path, identity.fingerprint, identity.size)
        return False
    differ = {k: (old.get(k), v) for k, v in params.items() if not np.isclose(old.get(k, np.nan), v)}
    if differ:
        said = ", ".join(f"{k}={was} (now {now})" for k, (was, now) in differ.items())
        raise SlideError(f"{h5_path} was made with {said}; use another --out folder, delete the old files, "
                         "or run `biossl tile` with --overwrite")
    return True


def remove_stale_temporaries(out_dir: Path, stem: str) -> list[Path]:
    """Delete what a killed run left of ``<stem>.h5`` and ``<stem>_thumbnail.png`` (their ``.tmp`` files).

    :func:`biossl.io.atomic_path` removes its temporary file on any exception, but nothing runs on
    SIGKILL. Only this slide's files are touched, so runs on other shards of the same folder are safe;
    call it only while holding :func:`output_lock` for ``stem`` (the slide's key), so that a live
    writer's temporary file (another run, which holds the lock while writing) is never removed.
    """
    stale: list[Path] = []
    for name in (f"{stem}.h5", f"{stem}_thumbnail.png"):
        for tmp in out_dir.glob(f".{glob_escape(name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                stale.append(tmp)
    if stale:
        logger.info("%s: removed %d temporary file(s) of an interrupted run", stem, len(stale))
    return stale


def select_shard(paths: Iterable[str | os.PathLike[str]], shard: tuple[int, int] | None) -> list[Path]:
    """Sort ``paths`` and keep every ``n``-th one starting at ``i`` for ``shard=(i, n)``, 0 <= i < n."""
    ordered = sorted({Path(p) for p in paths})
    if shard is None:
        return ordered
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise SlideError(f"--shard {i}/{n} is invalid; use i/n with 0 <= i < n (for example 0/4 ... 3/4)")
    return ordered[i::n]


def _same_mpp(a: float | None, b: float | None) -> bool:
    """True if two slides' level-0 µm/px agree (both none, or equal up to rounding)."""
    return (a is None and b is None) or (a is not None and b is not None and bool(np.isclose(a, b)))


def _said_mpp(mpp: float | None) -> str:
    """``0.5 µm/px``, or ``none`` for a slide without a value."""
    return "none" if mpp is None else f"{mpp:g} µm/px"


SlideMpp: TypeAlias = float | Mapping[str, float] | Mapping[Path, float] | Mapping[str | Path, float] | None
"""``slide_mpp`` of :func:`tile_slides`: one level-0 µm/px for all slides, per-slide values, or none."""


def _slide_mpp_lookup(slide_mpp: SlideMpp, what: str = "--slide-mpp") -> Callable[[Path], float | None]:
    """``path -> slide_mpp`` for that slide: the one number, its mapping entry (resolved paths), or None.

    Raises:
        SlideError: A value is not a plausible µm/px (:func:`biossl.data.wsi.check_mpp`), before any work.
    """
    if slide_mpp is None:
        return lambda _path: None
    if not isinstance(slide_mpp, Mapping):
        value = check_mpp(slide_mpp, what)
        return lambda _path: value
    per_slide = {Path(k).resolve(): check_mpp(v, f"{what} of slide {k}") for k, v in slide_mpp.items()}
    return lambda path: per_slide.get(path.resolve())


# SLIDE_MPP and OVERRIDE_SLIDE_MPP (biossl.data.cohort): the manifest columns giving a wsi row's level-0
# µm/px for a file without it, and replacing the file's own (manifest_slide_mpp's column=).


def manifest_slide_mpp(table: pd.DataFrame, default: float | None, *, manifest: Path | None = None,
                       column: str = SLIDE_MPP) -> float | dict[str, float] | None:
    """The ``slide_mpp`` (or, with ``column``, ``override_slide_mpp``) for :func:`tile_slides` from a manifest.

    ``table`` is a :attr:`biossl.data.cohort.Cohort.table` or :func:`biossl.data.cohort.read_manifest`'s
    rows (absolute ``path``, ``manifest_row``); rows without a path are ignored.

    Without the column this is ``default`` itself. With it, it is ``{slide path: µm/px}`` holding each
    wsi row's value, or ``default`` where the row's cell is empty; slides with neither are left out.
    ``slide_mpp`` values only apply to slides whose files record no µm/px (the cohort check refuses a
    value that disagrees with the file's); ``override_slide_mpp`` values replace the file's.

    Raises:
        ManifestError: A cell is not a plausible µm/px (:data:`biossl.data.wsi.MPP_RANGE`), or two rows
            give one slide different values (the message names the manifest row, the patient and the file).
    """
    if column not in table.columns:
        return default
    where = f"manifest {manifest}" if manifest is not None else "manifest"
    given: dict[str, tuple[float, int]] = {}
    values: dict[str, float] = {}
    rows = table[table[MODALITY] == WSI]
    for patient, path, raw, row in rows[[PATIENT_ID, PATH, column, ROW]].itertuples(index=False):
        if not path:
            continue
        text = "" if raw is None or (isinstance(raw, float) and np.isnan(raw)) else str(raw).strip()
        if not text:
            if default is not None:
                values.setdefault(path, default)
            continue
        problem = mpp_problem(text)
        if problem is not None:
            raise ManifestError(f"{where}, row {row}: patient {patient!r}, wsi file {path}: {column} {problem}; write "
                                "the scanner's level-0 µm/px or leave the cell empty to use the slide's metadata")
        value = float(text)
        if path in given and not np.isclose(given[path][0], value):
            raise ManifestError(f"{where}, row {row}: patient {patient!r}, wsi file {path}: {column} {value:g} "
                                f"differs from row {given[path][1]}'s {given[path][0]:g} for the same slide; "
                                "give one value")
        given[path] = (value, row)
        values[path] = value
    return values


def tile_slides(
    paths: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    slide_mpp: SlideMpp = None,
    override_slide_mpp: SlideMpp = None,
    fix_mpp: str | Callable[[Path], str] | None = None,
    **options: Any,
) -> list[TilingResult]:
    """Tile many slides into ``out_dir``, skipping those already done (same slide file, same parameters).

    Outputs are named by :func:`slide_key` (stem and content fingerprint), so slides that share a file
    name are tiled apart, and two paths to the same content (same name) are tiled once.

    Every slide of the shard is opened first, so a bad file or a missing µm/px fails the run before
    any work, with every bad file listed. A slide without tissue is logged as a warning and skipped
    (a cohort of 500 slides should not stop for one blank slide); it is absent from the result. When
    no slide has tissue at all, that is an error naming them. With ``keep_empty=True`` (an option of
    :func:`tile_slide`) a slide without tissue gets an ``.h5`` listing no tiles instead, is in the
    result with ``n_tiles`` 0, and is never an error.

    Args:
        paths: Slide files (sorted before sharding).
        out_dir: Output folder.
        shard: ``(i, n)`` to process every ``n``-th slide of the sorted list starting at ``i``.
        progress: Show a tqdm progress bar.
        overwrite: Tile every slide again, also those with a finished ``.h5`` (made with any options).
        slide_mpp: Level-0 µm/px of slides whose files do not record it (a file's own value wins): one
            number for every slide, or ``{slide path: µm/px}`` (str or Path keys, compared as resolved
            absolute paths) for per-slide values.
        override_slide_mpp: Level-0 µm/px replacing what the files record (each replacement logged), in
            the same forms. The µm/px a slide is tiled with (its file's, given or overriding) is part of
            its reuse parameters; a slide without any reuses a finished ``.h5`` whatever it was made with.
        fix_mpp: What to do about a slide without µm/px, ending its message (or ``path -> text``, e.g.
            naming its manifest row); defaults to the ``biossl tile`` options.
        **options: Other keyword options of :func:`tile_slide`.

    Returns:
        One :class:`TilingResult` per tiled or reused slide.

    Raises:
        SlideError: Some slides are unreadable or lack µm/px.
        NoTissueError: No slide of the shard has tissue (and none was tiled before).
    """
    out_dir = Path(out_dir)
    check_options(mpp=options.get("mpp", 0.5), tile_size=options.get("tile_size", 256),
                  min_tissue=options.get("min_tissue", 0.5))
    slides = select_shard(paths, shard)
    mpp_of = _slide_mpp_lookup(slide_mpp)
    override_of = _slide_mpp_lookup(override_slide_mpp, "--override-slide-mpp")
    used: dict[Path, float | None] = {}  # the µm/px each slide is tiled with (None: the file has none, none given)
    ignored: dict[Path, float | None] = {}  # implausible values files record (a TIFF's 72 dpi), treated as none
    common = {
        "target_mpp": options.get("mpp", 0.5),
        "tile_size": options.get("tile_size", 256),
        "min_tissue": options.get("min_tissue", 0.5),
    }

    def params_of(path: Path) -> dict[str, Any]:
        mpp = used.get(path)
        return common if mpp is None else {**common, "slide_mpp": mpp}

    identities: dict[Path, FileIdentity] = {}
    first_of: dict[str, Path] = {}  # key -> the first slide with it (same stem and content: tiled once)
    problems: list[str] = []
    for path in slides:
        try:
            identities[path] = identity = _identity(path)
        except SlideError as exc:
            problems.append(str(exc))
            continue
        key = _key(path, identity)
        first_of.setdefault(key, path)
        try:
            with Slide(path, slide_mpp=mpp_of(path), override_mpp=override_of(path), require_mpp=False) as slide:
                used[path], ignored[path] = slide.mpp, slide.ignored_mpp
                if slide.mpp is not None and (overwrite or not _tiled_with(out_dir / f"{key}.h5", params_of(path),
                                                                           identity)):
                    # checked on the slide's metadata alone, before any slide is tiled
                    level, read_size = choose_level(slide, mpp=common["target_mpp"], tile_size=common["tile_size"])
                    check_tile_grid(slide, level=level, read_size=read_size, mpp=common["target_mpp"],
                                    tile_size=common["tile_size"])
        except SlideError as exc:
            problems.append(str(exc))
            continue
        first = first_of[key]
        if first != path and first in used and not _same_mpp(used[first], used[path]):  # one file, one tile set
            problems.append(f"slide {path} has the content of slide {first} (the same scan under the same name) "
                            f"but is given another level-0 µm/px ({_said_mpp(used[path])}, and "
                            f"{_said_mpp(used[first])} for {first}); both would read one set of tiles: give them "
                            "one value (slide_mpp / override_slide_mpp)")
            continue
        # A slide already tiled with these options needs no µm/px (given at tiling).
        if used[path] is None and (overwrite or not _tiled_with(out_dir / f"{key}.h5", params_of(path), identity)):
            problems.append(missing_mpp_message(path, fix_mpp(path) if callable(fix_mpp) else fix_mpp,
                                                ignored=ignored.get(path)))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise SlideError(f"{len(problems)} of {len(slides)} slides cannot be tiled{more}: " + "; ".join(problems[:5]))
    results: list[TilingResult] = []
    blank: list[str] = []
    for path in tqdm(slides, desc="tiling", unit="slide", disable=not (progress and progress_enabled())):
        key = _key(path, identities[path])
        if first_of[key] != path:  # a copy of a slide of this run (same name and content): its tiles are the same
            done = [r for r in results if r.slide == first_of[key]]
            results += [replace(r, slide=path, reused=True) for r in done]
            logger.info("%s has the content of %s: using its tiles (%s.h5)", path, first_of[key], key)
            continue
        h5_path = out_dir / f"{key}.h5"
        with output_lock(out_dir, key):
            if not overwrite and _reusable(h5_path, params_of(path), identities[path]):
                old = read_params(h5_path)
                results.append(
                    TilingResult(
                        path,
                        int(old["n_tiles"]),
                        float(old["tissue_fraction"]),
                        int(old["level"]),
                        int(old["read_size"]),
                        h5_path,
                        out_dir / f"{key}_thumbnail.png",
                        reused=True,
                    )
                )
                logger.info("%s: already tiled (%s), skipped", path.name, h5_path)
                continue
            remove_stale_temporaries(out_dir, key)
            try:
                results.append(tile_slide(path, out_dir, slide_mpp=mpp_of(path), override_slide_mpp=override_of(path),
                                          **options))
            except NoTissueError as exc:
                logger.warning("skipping: %s", exc)
                blank.append(str(exc))
    if blank and not results:  # nothing to train on: one error naming the slides, not an empty result
        more = f" (and {len(blank) - 5} more)" if len(blank) > 5 else ""
        raise NoTissueError(f"no slide produced tiles, {len(blank)} without tissue{more}: " + "; ".join(blank[:5]))
    return results

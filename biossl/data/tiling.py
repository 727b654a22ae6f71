"""Tile one slide: choose the pyramid level, keep tiles on tissue, write coordinates and a thumbnail.

Writes, atomically, ``<out>/<slide_stem>.h5`` (``coords``: int64 ``[N, 2]`` level-0 x, y of each tile's
top-left corner; ``tissue``: float32 ``[N]`` tissue fraction per tile; attributes saying how to read
a tile, ``slide_path``, ``level``, ``read_size``, ``tile_size``, and how it was made) and
``<out>/<slide_stem>_thumbnail.png`` (kept tiles outlined). Only the smallest level is read in full,
plus three kept tiles at the tiles' level, so a damaged level fails here and not in training.

**Resuming.** :func:`tile_slides` skips a slide whose ``.h5`` opens and was made with the same
options, so a cohort run killed halfway (SIGKILL, a scheduler's time limit) is simply started again:
finished slides are not redone, and the slide that was being written when the run died is tiled
again (its temporary files, ``.<name>.*.tmp`` beside the outputs, are removed first). An ``.h5``
that does not open is tiled again with a warning; ``overwrite=True`` (``--overwrite``) redoes every
slide.

**Slide µm/px.** :func:`tile_slides` takes ``slide_mpp`` as one number for every slide, or as a
mapping ``{slide path: µm/px}`` (a manifest's ``slide_mpp`` column, matched on resolved absolute
paths) for per-slide values; a slide absent from the mapping uses its metadata. A slide's given value
is one of its reuse parameters: an ``.h5`` made with another is an error, not a silent reuse.
:func:`manifest_slide_mpp` builds the mapping from a manifest's rows (the data module and the
Snakemake workflow use it, so both tile a slide with the same value).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, TypeAlias

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from biossl.data.cohort import ROW
from biossl.data.keys import MODALITY, PATH, PATIENT_ID, WSI
from biossl.data.tissue import TissueMask, detect_tissue, write_thumbnail
from biossl.data.wsi import Slide
from biossl.errors import ManifestError, SlideError
from biossl.io import atomic_path

logger = logging.getLogger(__name__)

_MPP_SLACK = 1.02  # a level at 0.5015 µm/px still counts as 0.5


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


def choose_level(slide: Slide, *, mpp: float, tile_size: int) -> tuple[int, int]:
    """Return ``(level, read_size)``: the coarsest level at least as fine as ``mpp``, and the tile side there.

    Raises:
        SlideError: Level 0 is coarser than ``mpp`` (upsampling would invent detail).
    """
    candidates = [lv for lv in range(slide.level_count) if slide.level_mpp(lv) <= mpp * _MPP_SLACK]
    if not candidates:
        raise SlideError(
            f"slide {slide.path} is scanned at {slide.level_mpp(0):.3f} µm/px, coarser than the requested "
            f"--mpp {mpp}; pass --mpp {slide.level_mpp(0):.3f} or larger (or fix --slide-mpp)"
        )
    level = max(candidates, key=lambda lv: slide.level_downsamples[lv])
    read_size = max(1, round(tile_size * mpp / slide.level_mpp(level)))
    return level, read_size


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
    min_tissue: float = 0.5,
    max_side: int = 2048,
    min_saturation: float = 0.07,
    keep_empty: bool = False,
) -> TilingResult:
    """Tile one slide at ``mpp`` µm/px and write ``<out_dir>/<stem>.h5`` and ``<stem>_thumbnail.png``.

    Args:
        path: The slide file.
        out_dir: Output folder (created if missing).
        mpp: Target µm per pixel of the tiles.
        tile_size: Tile side in pixels after resizing.
        slide_mpp: Level-0 µm/px, overriding or supplying the slide's metadata.
        min_tissue: Keep tiles whose tissue fraction is at least this (0-1).
        max_side: Longest side of the tissue mask in pixels.
        min_saturation: Saturation floor of the tissue detector.
        keep_empty: For a slide where no tile reaches ``min_tissue``, log a warning and write an
            ``.h5`` listing no tiles (``n_tiles`` 0) instead of raising: a marker that the slide was
            tiled, which the bag dataset reads as "this slide has no tiles" and reruns reuse.

    Returns:
        A :class:`TilingResult`.

    Raises:
        SlideError: The slide cannot be read (also a kept tile that does not decode) or has no µm/px.
        NoTissueError: No tile reaches ``min_tissue`` and not ``keep_empty`` (no ``.h5`` is written; the
            thumbnail is, so a person can see why). :func:`tile_slides` turns this into a warning and a skip.
    """
    # Imported here: the Snakemake workflow imports this module for manifest_slide_mpp from a working
    # directory whose biossl/ data folder can shadow the package's __init__ (its submodules still resolve).
    from biossl import __version__

    path, out_dir = Path(path), Path(out_dir)
    if not 0.0 <= min_tissue <= 1.0:
        raise SlideError(f"--min-tissue must be between 0 and 1, got {min_tissue}")
    if not mpp > 0 or tile_size < 1:
        raise SlideError(f"--mpp must be positive and --tile-size at least 1, got {mpp} and {tile_size}")
    h5_path = out_dir / f"{path.stem}.h5"
    thumb_path = out_dir / f"{path.stem}_thumbnail.png"
    with Slide(path, slide_mpp=slide_mpp) as slide:
        level, read_size = choose_level(slide, mpp=mpp, tile_size=tile_size)
        tissue = detect_tissue(slide, max_side=max_side, min_saturation=min_saturation)
        coords, fractions = grid(slide, tissue, level=level, read_size=read_size)
        keep = fractions >= min_tissue
        coords, fractions = coords[keep], fractions[keep]
        ds = slide.level_downsamples[level]
        check_tiles_decode(slide, coords, level=level, read_size=read_size)
        write_thumbnail(thumb_path, tissue, coords, read_size * ds)
        if len(coords) == 0:
            blank = (f"slide {path}: no tile has tissue fraction >= {min_tissue} (tissue found on "
                     f"{tissue.fraction:.1%} of the slide; see {thumb_path}); lower --min-tissue or drop the slide")
            if not keep_empty:
                raise NoTissueError(blank)
            logger.warning("%s; writing %s listing no tiles", blank, h5_path.name)
        attrs: dict[str, Any] = {
            "slide_path": str(path.resolve()),
            "slide_name": path.name,
            "level": level,
            "read_size": read_size,
            "tile_size": tile_size,
            "target_mpp": mpp,
            "slide_mpp": float(slide.mpp or 0.0),
            "slide_mpp_overridden": slide_mpp is not None,
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
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=coords.astype(np.int64))
        f.create_dataset("tissue", data=fractions.astype(np.float32))
        f.attrs.update(attrs)
    logger.info("%s: %d tiles, tissue %.1f%%, level %d", path.name, len(coords), 100 * tissue.fraction, level)
    return TilingResult(path, len(coords), tissue.fraction, level, read_size, h5_path, thumb_path)


def _tiled_with(h5_path: Path, params: dict[str, Any]) -> bool:
    """True if ``h5_path`` opens and was made with ``params`` (quietly False otherwise)."""
    try:
        old = read_params(h5_path)
    except OSError:
        return False
    return all(np.isclose(old.get(k, np.nan), v) for k, v in params.items())


def _reusable(h5_path: Path, params: dict[str, Any]) -> bool:
    """True if ``h5_path`` is a finished output made with ``params``; raise if made with others."""
    if not h5_path.exists():
        return False
    try:
        old = read_params(h5_path)
    except OSError as exc:
        logger.warning("%s is unreadable (%s); tiling its slide again", h5_path, exc)
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
    SIGKILL. Only this slide's files are touched, so runs on other shards of the same folder are safe.
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


SlideMpp: TypeAlias = float | Mapping[str, float] | Mapping[Path, float] | Mapping[str | Path, float] | None
"""``slide_mpp`` of :func:`tile_slides`: one level-0 µm/px for all slides, per-slide values, or none."""


def _slide_mpp_lookup(slide_mpp: SlideMpp) -> Callable[[Path], float | None]:
    """``path -> slide_mpp`` for that slide: the one number, its mapping entry (resolved paths), or None."""
    if slide_mpp is None or not isinstance(slide_mpp, Mapping):
        return lambda _path: slide_mpp
    per_slide = {Path(k).resolve(): float(v) for k, v in slide_mpp.items()}
    return lambda path: per_slide.get(path.resolve())


#: The manifest column giving a slide's level-0 µm/px (wsi rows; empty = the default or the metadata).
SLIDE_MPP = "slide_mpp"


def manifest_slide_mpp(table: pd.DataFrame, default: float | None, *, manifest: Path | None = None
                       ) -> float | dict[str, float] | None:
    """The ``slide_mpp`` for :func:`tile_slides` from the wsi rows of a manifest's ``slide_mpp`` column.

    ``table`` is a :attr:`biossl.data.cohort.Cohort.table` or :func:`biossl.data.cohort.read_manifest`'s
    rows (absolute ``path``, ``manifest_row``); rows without a path are ignored.

    Without a ``slide_mpp`` column this is ``default`` itself. With one, it is ``{slide path: µm/px}``
    holding each wsi row's value, or ``default`` where the row's cell is empty; slides with neither are
    left out (they use their metadata).

    Raises:
        ManifestError: A cell is not a positive number, or two rows give one slide different values
            (the message names the manifest row, the patient and the file).
    """
    if SLIDE_MPP not in table.columns:
        return default
    where = f"manifest {manifest}" if manifest is not None else "manifest"
    given: dict[str, tuple[float, int]] = {}
    values: dict[str, float] = {}
    rows = table[table[MODALITY] == WSI]
    for patient, path, raw, row in rows[[PATIENT_ID, PATH, SLIDE_MPP, ROW]].itertuples(index=False):
        if not path:
            continue
        text = "" if raw is None or (isinstance(raw, float) and np.isnan(raw)) else str(raw).strip()
        if not text:
            if default is not None:
                values.setdefault(path, default)
            continue
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise ManifestError(f"{where}, row {row}: patient {patient!r}, wsi file {path}: slide_mpp {text!r} is not "
                                "a positive number of µm per pixel; write the scanner's level-0 µm/px (0.25 at 40x, "
                                "0.5 at 20x) or leave the cell empty to use the slide's metadata")
        if path in given and not np.isclose(given[path][0], value):
            raise ManifestError(f"{where}, row {row}: patient {patient!r}, wsi file {path}: slide_mpp {value:g} "
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
    **options: Any,
) -> list[TilingResult]:
    """Tile many slides into ``out_dir``, skipping those already done with the same parameters.

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
        slide_mpp: Level-0 µm/px overriding or supplying the slides' metadata: one number for every
            slide, or ``{slide path: µm/px}`` (str or Path keys, compared as resolved absolute paths)
            for per-slide values, slides absent from it using their metadata. A slide's value is part
            of its reuse parameters; without one, a finished ``.h5`` is reused whatever it was made with.
        **options: Other keyword options of :func:`tile_slide`.

    Returns:
        One :class:`TilingResult` per tiled or reused slide.

    Raises:
        SlideError: Some slides are unreadable, lack µm/px, or share a file stem.
        NoTissueError: No slide of the shard has tissue (and none was tiled before).
    """
    out_dir = Path(out_dir)
    slides = select_shard(paths, shard)
    mpp_of = _slide_mpp_lookup(slide_mpp)
    common = {
        "target_mpp": options.get("mpp", 0.5),
        "tile_size": options.get("tile_size", 256),
        "min_tissue": options.get("min_tissue", 0.5),
    }

    def params_of(path: Path) -> dict[str, Any]:
        given = mpp_of(path)
        return common if given is None else {**common, "slide_mpp": given}

    stems: dict[str, Path] = {}
    problems: list[str] = []
    for path in slides:
        if path.stem in stems:
            problems.append(f"{path} and {stems[path.stem]} would both write {path.stem}.h5; rename one")
        stems[path.stem] = path
        # A slide already tiled with these options is not read again: it needs no µm/px (given at tiling).
        done = not overwrite and _tiled_with(out_dir / f"{path.stem}.h5", params_of(path))
        try:
            Slide(path, slide_mpp=mpp_of(path), require_mpp=not done).close()
        except SlideError as exc:
            problems.append(str(exc))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise SlideError(f"{len(problems)} of {len(slides)} slides cannot be tiled{more}: " + "; ".join(problems[:5]))
    results: list[TilingResult] = []
    blank: list[str] = []
    for path in tqdm(slides, desc="tiling", unit="slide", disable=not progress):
        h5_path = out_dir / f"{path.stem}.h5"
        if not overwrite and _reusable(h5_path, params_of(path)):
            old = read_params(h5_path)
            results.append(
                TilingResult(
                    path,
                    int(old["n_tiles"]),
                    float(old["tissue_fraction"]),
                    int(old["level"]),
                    int(old["read_size"]),
                    h5_path,
                    out_dir / f"{path.stem}_thumbnail.png",
                    reused=True,
                )
            )
            logger.info("%s: already tiled (%s), skipped", path.name, h5_path)
            continue
        remove_stale_temporaries(out_dir, path.stem)
        try:
            results.append(tile_slide(path, out_dir, slide_mpp=mpp_of(path), **options))
        except NoTissueError as exc:
            logger.warning("skipping: %s", exc)
            blank.append(str(exc))
    if blank and not results:  # nothing to train on: one error naming the slides, not an empty result
        more = f" (and {len(blank) - 5} more)" if len(blank) > 5 else ""
        raise NoTissueError(f"no slide produced tiles, {len(blank)} without tissue{more}: " + "; ".join(blank[:5]))
    return results

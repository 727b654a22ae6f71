"""Tile-feature cache: embed every tile of a slide once with a frozen encoder, read embeddings later.

A slide has 10k-50k tiles; patient-level pretraining reads a few of them per step, so reading
precomputed embeddings instead of pixels makes a step cheap. :func:`write_tile_features` writes,
atomically, ``<out_dir>/<key>.h5`` (the coordinates file's name: the slide's stem and content
fingerprint, :func:`biossl.data.tiling.slide_key`) with

* ``features``: float16 ``[N, D]``, row ``i`` the embedding of tile ``i`` of the coordinates file;
* ``coords``: int64 ``[N, 2]``, copied from the coordinates file (same order);
* attributes ``encoder``, ``embed_dim``, ``weights_sha1`` (of the encoder's weights), ``tile_px``,
  ``source_coords``, ``slide_path``, ``slide_fingerprint``, ``n_tiles``, ``biossl_version`` and any
  ``extra_attrs``.

:func:`feature_files_for` finds a cohort's slides' files by that name, else by the slide's stem alone
(``<stem>.h5``, as TRIDENT and CLAM name theirs; else ``<stem>.pt``), checking the slide fingerprint a file records.

:class:`SlideFeatures` also reads the files of other tools (``docs/foundation_models.md``): TRIDENT's
``features_<encoder>/<slide>.h5`` (``features`` ``[N, D]``, ``coords`` ``[N, 2]`` at level 0, attributes on
the datasets; an empty slide's ``features`` may be 1-D ``(0,)``), CLAM's ``h5_files/<slide>.h5`` (``features``
float32, ``coords`` int32) and the ``.pt`` files both write (a tensor, or TRIDENT's numpy array, ``[N, D]``,
read with ``weights_only`` loading; no coordinates).

Tiles are fed to the encoder exactly as :class:`biossl.data.bags.PatientBagDataset` feeds pixels
(float in [0, 1], bilinear antialiased resize to ``tile_px``), so a checkpoint's wsi encoder sees
the same input here as in training. :class:`SlideFeatures` reads rows back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.nn.functional import interpolate
from torch.utils.data import DataLoader
from tqdm import tqdm

from biossl import __version__
from biossl.data.identity import file_identity
from biossl.data.tiles import SlideTiles, TileDataset, cached_handle
from biossl.device import resolve_device
from biossl.errors import InputError, SlideError
from biossl.io import atomic_h5
from biossl.progress import progress_enabled

logger = logging.getLogger(__name__)


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """SHA-1 of the encoder's weights (names, shapes, dtypes and values): identifies a cache's encoder."""
    h = hashlib.sha1()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encoder_input_px(encoder: torch.nn.Module) -> int | None:
    """The square input edge an encoder was built for (its ``img_size``), or ``None`` if it has none."""
    size = getattr(encoder, "img_size", None)
    if isinstance(size, int):
        return size
    if isinstance(size, tuple | list) and len(set(size)) == 1 and isinstance(size[0], int):
        return int(size[0])
    return None


class ResizeTile:
    """Resize a ``[3, H, W]`` float tile to ``[3, tile_px, tile_px]`` as the bag dataset does (picklable)."""

    def __init__(self, tile_px: int) -> None:
        self.tile_px = tile_px

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the resized tile (unchanged when it already has the size)."""
        if x.shape[-1] == self.tile_px and x.shape[-2] == self.tile_px:
            return x
        return interpolate(x[None], size=self.tile_px, mode="bilinear", antialias=True)[0]


def _cached(out: Path, coords: np.ndarray, identity: Mapping[str, Any], slide_fingerprint: str | None) -> bool:
    """True if ``out`` holds features for exactly ``coords`` of this slide file from the same encoder and tile size."""
    if not out.exists():
        return False
    try:
        with h5py.File(out, "r") as f:
            shape, old_coords, attrs = f["features"].shape, f["coords"][:], dict(f.attrs)
    except (OSError, KeyError) as exc:
        logger.warning("%s is unreadable (%s); computing its features again", out, exc)
        return False
    if attrs.get("slide_fingerprint") != slide_fingerprint:
        logger.warning("%s was computed from another slide file (fingerprint %s, now %s); computing again", out,
                       attrs.get("slide_fingerprint", "not recorded"), slide_fingerprint)
        return False
    if shape[0] != len(coords) or not np.array_equal(old_coords, coords):
        logger.warning("%s lists other tiles than its coordinates file now does; computing again", out)
        return False
    differ = [f"{k}={attrs.get(k)!r} (now {v!r})" for k, v in identity.items() if attrs.get(k) != v]
    if differ:
        raise InputError(
            f"{out} was made with {', '.join(differ)}; use another --out folder, delete it, or pass --overwrite"
        )
    return True


def write_tile_features(
    coords_h5: str | os.PathLike[str],
    encoder: torch.nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    tile_px: int | None = None,
    device: str | torch.device = "auto",
    encoder_name: str | None = None,
    fingerprint: str | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Embed every tile listed in ``coords_h5`` and write ``<out_dir>/<coords_h5's name>``.

    The encoder (any module with ``embed(x [n, 3, H, W]) -> [n, D]`` and an int ``embed_dim``) is
    moved to ``device`` and put in eval mode; it runs under :func:`torch.inference_mode`, with bf16
    autocast on CUDA. A finished file for the same tiles, encoder weights and ``tile_px`` is kept.

    Args:
        coords_h5: A coordinates file written by ``biossl tile``.
        encoder: The frozen tile encoder.
        out_dir: Output folder (created if missing); must differ from the coordinates folder.
        batch_size: Tiles per forward pass.
        num_workers: DataLoader worker processes reading tiles.
        tile_px: Tile edge fed to the encoder; ``None`` is the encoder's square ``img_size`` if it has
            one, else the tiler's ``tile_size``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        encoder_name: Stored in the ``encoder`` attribute (default: the class name).
        fingerprint: :func:`encoder_fingerprint` of ``encoder``, if already computed.
        extra_attrs: More attributes to store (for example the checkpoint path).
        overwrite: Recompute even if a matching file exists.
        progress: Show a tqdm progress bar over tiles.

    Returns:
        The features file.

    Raises:
        SlideError: The coordinates file or its slide cannot be read.
        InputError: ``out_dir`` is the coordinates folder, or an existing file was made differently.
        ValueError: The encoder returns the wrong shape or non-finite / fp16-overflowing values.
    """
    coords_h5, out_dir = Path(coords_h5), Path(out_dir)
    embed_dim = getattr(encoder, "embed_dim", None)
    if not callable(getattr(encoder, "embed", None)) or not isinstance(embed_dim, int):
        raise TypeError(f"{type(encoder).__name__} has no embed() and int embed_dim; pass a ModalityModel")
    out = out_dir / f"{coords_h5.stem}.h5"
    if out.resolve() == coords_h5.resolve():
        raise InputError(f"--out {out_dir} is the coordinates folder; features would overwrite {coords_h5}")
    tiles = SlideTiles(coords_h5)
    tile_px = int(tile_px or encoder_input_px(encoder) or tiles.tile_size)
    identity = {
        "encoder": encoder_name or type(encoder).__name__,
        "weights_sha1": fingerprint or encoder_fingerprint(encoder),
        "embed_dim": embed_dim,
        "tile_px": tile_px,
    }
    if not overwrite and _cached(out, tiles.coords, identity, tiles.slide_fingerprint):
        logger.info("%s: features already cached in %s, skipped", coords_h5.stem, out)
        return out
    if len(tiles) == 0:  # a slide without tissue (`biossl tile --keep-empty`): a features file without rows
        logger.warning("%s lists no tiles (no tissue): its features file has no rows and its patient no tiles "
                       "from it; tile the slide again with a lower --min-tissue to use it", coords_h5)
    dev = resolve_device(device)
    encoder.to(dev).eval()
    dataset = TileDataset([coords_h5], transform=ResizeTile(tile_px))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=dev.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    n = len(dataset)
    with atomic_h5(out) as f:  # built in memory (n x dim float16): HDF5 never meets a full disk itself
        feats = f.create_dataset("features", shape=(n, embed_dim), dtype=np.float16)
        f.create_dataset("coords", data=tiles.coords.astype(np.int64))
        bar = tqdm(total=n, desc=coords_h5.stem, unit="tile", disable=not (progress and progress_enabled()),
                   leave=False)
        start = 0
        with torch.inference_mode(), autocast, bar:
            for x, _ in loader:
                z = encoder.embed(x.to(dev, non_blocking=True)).float()  # type: ignore[operator]
                if tuple(z.shape) != (len(x), embed_dim):
                    raise ValueError(f"encoder returned {tuple(z.shape)} for {len(x)} tiles, want [n, {embed_dim}]")
                if not torch.isfinite(z).all() or z.abs().max() > 65000:
                    raise ValueError(f"{coords_h5.stem}: encoder output is non-finite or exceeds float16 range")
                feats[start : start + len(x)] = z.cpu().numpy().astype(np.float16)
                start += len(x)
                bar.update(len(x))
        attrs = {**identity, "source_coords": str(coords_h5.resolve()), "slide_path": tiles.slide_path,
                 **({"slide_fingerprint": tiles.slide_fingerprint} if tiles.slide_fingerprint else {}),
                 "n_tiles": n, "biossl_version": __version__, **dict(extra_attrs or {})}
        f.attrs.update(attrs)
    logger.info("%s: %d tiles -> %s", coords_h5.stem, n, out)
    return out


#: What a features file is, for messages.
FEATURES_FILE = ("a tile-features file (an .h5 with a 'features' dataset [N, D]: `biossl cache-features`, TRIDENT, "
                 "CLAM; or a .pt tensor [N, D]: CLAM's pt_files, TRIDENT)")


def _numpy_globals() -> list[Any]:
    """The numpy reconstruction functions ``weights_only`` loading needs for a pickled array (TRIDENT's ``.pt``)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype,
            *(getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType"))]


def _pt_reason(exc: BaseException) -> str:
    """Why safe loading refused a ``.pt`` file, in a few words (torch's text spans many lines)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found:
        return f"it holds a pickled {found.group(1)} object (only a tensor or array [N, D] is read, by safe loading)"
    return f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"


def load_pt_features(path: Path) -> torch.Tensor:
    """A ``.pt`` features file as a tensor ``[N, D]`` (``weights_only``; a tensor is memory-mapped).

    Raises:
        InputError: Not readable by safe loading, or not a tensor / array of 2 dimensions (or empty).
    """
    try:
        try:
            value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip file (legacy format): no mmap
            value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (unpickling raises many types)
        if "GLOBAL numpy" not in str(exc):
            raise InputError(f"{path} is not {FEATURES_FILE}: {_pt_reason(exc)}") from None
        try:
            with torch.serialization.safe_globals(_numpy_globals()):
                value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc2:  # noqa: BLE001
            raise InputError(f"{path} is not {FEATURES_FILE}: {_pt_reason(exc2)}") from None
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor) or not (value.ndim == 2 or value.numel() == 0):
        what = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"{path} is not {FEATURES_FILE}: it holds {what}")
    return value.reshape(0, 0) if value.ndim != 2 else value


class SlideFeatures:
    """Reader of one features file: :func:`write_tile_features`', TRIDENT's or CLAM's ``.h5``, or a ``.pt``.

    The HDF5 file is opened on first :meth:`read` in each process (safe in DataLoader workers). A file
    without rows may have an unknown width (TRIDENT writes a 1-D empty ``features`` then): ``embed_dim`` 0.

    Raises:
        InputError: The file is not a features file.
    """

    def __init__(self, h5_path: str | os.PathLike[str]) -> None:
        self.h5_path = Path(h5_path)
        self.attrs: dict[str, Any] = {}
        self._tensor: tuple[int, torch.Tensor] | None = None
        if self.h5_path.suffix == ".pt":
            if not self.h5_path.is_file():
                raise InputError(f"tile-features file {self.h5_path} not found")
            self.n, self.embed_dim = (int(s) for s in load_pt_features(self.h5_path).shape)
            self._handle: tuple[int, h5py.File] | None = None
            return
        try:
            with h5py.File(self.h5_path, "r") as f:
                shape = f["features"].shape
                self.attrs = dict(f.attrs)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{self.h5_path} is not {FEATURES_FILE} ({exc}); write it again") from None
        if len(shape) == 1 and shape[0] == 0:
            shape = (0, 0)  # TRIDENT's features of a slide without patches, from an encoder of unknown width
        if len(shape) != 2:
            raise InputError(f"{self.h5_path}: its 'features' dataset has shape {shape}, not [N, D] (one row per "
                             "tile); write it again")
        self.n, self.embed_dim = (int(s) for s in shape)
        self._handle = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_tensor": None}

    @property
    def coords(self) -> np.ndarray:
        """Level-0 ``[N, 2]`` tile coordinates, in the row order of the features (none for a ``.pt`` file)."""
        if self.h5_path.suffix == ".pt":
            return np.zeros((0, 2), np.int64)
        with h5py.File(self.h5_path, "r") as f:
            return np.asarray(f["coords"][:], dtype=np.int64)

    def _rows(self, uniq: np.ndarray) -> np.ndarray:
        """Rows ``uniq`` (increasing, unique) of a ``.pt`` file (loaded once per process)."""
        if self._tensor is None or self._tensor[0] != os.getpid():
            self._tensor = (os.getpid(), load_pt_features(self.h5_path))
        return self._tensor[1][torch.from_numpy(uniq)].float().numpy()

    def _dataset(self) -> h5py.Dataset:
        if self._handle is None or self._handle[0] != os.getpid():
            self._handle = (os.getpid(), h5py.File(self.h5_path, "r"))  # a forked parent's handle is not reused
        return self._handle[1]["features"]

    def read(self, indices: Iterable[int] | np.ndarray) -> np.ndarray:
        """Return the features of tiles ``indices`` (any order, repeats allowed) as ``float32 [k, D]``."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64).ravel()
        if idx.size == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"{self.h5_path}: tile indices must be in [0, {self.n}), got {idx.min()}..{idx.max()}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        if self.h5_path.suffix == ".pt":
            return np.asarray(self._rows(uniq)[inverse], dtype=np.float32)
        ds = self._dataset()
        # h5py wants increasing indices; past a quarter of the rows one contiguous read is faster
        rows = ds[:][uniq] if len(uniq) > self.n // 4 else ds[uniq]
        return np.asarray(rows[inverse], dtype=np.float32)

    def close(self) -> None:
        """Close this process's handle."""
        if self._handle is not None and self._handle[0] == os.getpid():
            self._handle[1].close()
        self._handle = None
        self._tensor = None


def _recorded_slide(path: Path) -> tuple[str | None, str | None]:
    """``(slide_fingerprint, slide_path)`` a features file records (None where it records none)."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as exc:
        raise InputError(f"{path} is not a readable tile-features file ({exc}); write it again") from None
    fingerprint, slide = attrs.get("slide_fingerprint"), attrs.get("slide_path")
    return (str(fingerprint) if fingerprint else None), (str(slide) if slide else None)


_NAME_ONLY: set[Path] = set()  # folders of features without a slide fingerprint (warned once per process)


def _check_coords_fit(path: Path, slide: Path, who: str, redo: str) -> None:
    """Refuse features whose tiles lie outside ``slide``'s level-0 pixels (they are of a larger slide).

    Raises:
        InputError: A tile's level-0 corner lies beyond the slide's width or height.
    """
    try:
        with h5py.File(path, "r") as f:
            coords = np.asarray(f["coords"][:], dtype=np.int64) if "coords" in f else np.zeros((0, 2), np.int64)
        width, height = cached_handle(str(slide), file_identity(slide).fingerprint).dimensions
    except (OSError, SlideError, ValueError) as exc:
        raise InputError(f"{who}tile features {path} or slide {slide} cannot be read ({exc}); {redo}") from None
    if coords.ndim != 2 or coords.shape[-1] != 2 or len(coords) == 0:
        return
    x, y = int(coords[:, 0].max()), int(coords[:, 1].max())
    if x >= width or y >= height or int(coords.min()) < 0:
        raise InputError(f"{who}tile features {path} list tiles outside slide {slide} (corner up to x {x}, y {y}; "
                         f"the slide is {width}×{height} px at level 0): they are of another slide of the same "
                         f"name; {redo}")


def _check_stem_file(path: Path, slide: Path, who: str) -> None:
    """Refuse a ``<stem>.h5`` features file that records another slide file than ``slide``.

    A file recording a fingerprint must record this slide's. A file recording only a slide path (an
    older biossl's) must name this slide, or a file with this slide's content. A file recording
    neither (another tool's) is taken as named if its tiles lie inside the slide, with a warning (once
    per folder) that it could not be checked further.
    """
    if path.suffix == ".pt":  # CLAM's pt_files: neither attributes nor coordinates to check
        if path.parent not in _NAME_ONLY:
            _NAME_ONLY.add(path.parent)
            logger.warning("tile features in %s are .pt files (CLAM, TRIDENT): each is matched to its slide by the "
                           "file name alone (%s for slide %s); keep one such folder per cohort", path.parent,
                           path.name, slide)
        return
    identity = file_identity(slide)
    fingerprint, recorded = _recorded_slide(path)
    redo = "compute this slide's features (`biossl cache-features` on its coordinates) or remove the file"
    if fingerprint is not None:
        if fingerprint != identity.fingerprint:
            raise InputError(f"{who}tile features {path} were computed from another file than slide {slide} "
                             f"(fingerprint {fingerprint[:10]} recorded, {identity.short} now: another slide of "
                             f"the same name, or re-scanned); {redo}")
        return
    if recorded is None:
        _check_coords_fit(path, slide, who, redo)
        if path.parent not in _NAME_ONLY:
            _NAME_ONLY.add(path.parent)
            logger.warning("tile features in %s record no slide fingerprint (files of another tool, e.g. TRIDENT or "
                           "CLAM): each is matched to its slide by the file name alone (%s for slide %s); keep one "
                           "such folder per cohort", path.parent, path.name, slide)
        return
    if Path(recorded).resolve() == Path(identity.path):
        return
    try:
        same = file_identity(recorded).fingerprint == identity.fingerprint
    except OSError:  # the recorded slide is gone (a moved cohort): nothing to compare with
        logger.info("%s records slide %s, which is gone; taking it as the features of %s", path, recorded, slide)
        return
    if not same:
        raise InputError(f"{who}tile features {path} were computed from slide {recorded}, another file than slide "
                         f"{slide}; {redo}")


def feature_files_for(
    slides: Iterable[str | os.PathLike[str]],
    features_dir: str | os.PathLike[str],
    *,
    patient: str | None = None,
    claimed: dict[Path, tuple[Path, str | None]] | None = None,
) -> list[Path]:
    """Return each slide's features file in ``features_dir``, checking that it is of that slide file.

    A slide's file is ``<key>.h5`` (:func:`biossl.data.tiling.slide_key`: stem and content fingerprint,
    as ``biossl cache-features`` names it), else ``<stem>.h5`` (the name TRIDENT and CLAM give), which
    must not record another slide file (:func:`_check_stem_file`).

    Args:
        slides: The slide files.
        features_dir: The features folder.
        patient: The slides' patient, for messages.
        claimed: ``{features file: (slide, patient)}`` of slides looked up before (filled in here), so
            that two different slides of a cohort never get one ``<stem>.h5`` file.

    Raises:
        InputError: A slide has no features file, its file is of another slide, or two slides of the
            cohort would read one file (the message names the slides and the patients).
    """
    from biossl.data.tiling import slide_key

    out = []
    who = f"patient {patient}: " if patient is not None else ""
    claimed = {} if claimed is None else claimed
    for slide in slides:
        slide = Path(slide)
        keyed = Path(features_dir) / f"{slide_key(slide)}.h5"
        path = keyed if keyed.is_file() else Path(features_dir) / f"{slide.stem}.h5"
        if not path.is_file() and path.with_suffix(".pt").is_file():
            path = path.with_suffix(".pt")  # CLAM's pt_files/<slide>.pt
        if not path.is_file():
            raise InputError(
                f"{who}no tile features {keyed} for slide {slide}; run "
                f"`biossl cache-features <coords dir> --out {features_dir} ...` on its coordinates first"
            )
        if path != keyed:
            _check_stem_file(path, slide, who)
            other = claimed.get(path)
            if other is not None and file_identity(other[0]).fingerprint != file_identity(slide).fingerprint:
                by = f" of patient {other[1]}" if other[1] is not None else ""
                raise InputError(f"{who}slide {slide} and slide {other[0]}{by} are different files that would both "
                                 f"read tile features {path} (named by the file stem only); rename one slide, or "
                                 f"cache features with `biossl cache-features`, which names them per slide file")
            claimed[path] = (slide, patient)
        out.append(path)
    return out


def common_embed_dim(paths: Iterable[str | os.PathLike[str]], *, want: int | None = None,
                     modality: str | None = None) -> int:
    """Return the feature width shared by all files; raise :class:`InputError` naming any that differ.

    Files without rows of unknown width (TRIDENT's empty slides) are left out.

    Args:
        paths: The features files.
        want: The width a checkpoint was trained on: a file of another width is refused, named.
        modality: The modality, for messages.
    """
    dims: dict[int, list[str]] = {}
    for p in paths:
        feats = SlideFeatures(p)
        if feats.embed_dim == 0 and len(feats) == 0:
            continue
        if want and feats.embed_dim != int(want):
            of = f" of modality {modality!r}" if modality else ""
            raise InputError(f"tile-features file {p}{of} has {feats.embed_dim}-wide features, but the checkpoint was "
                             f"trained on {int(want)}-wide ones: use the files of the extractor (and encoder) it was "
                             "trained on, or pretrain again on these")
        dims.setdefault(feats.embed_dim, []).append(str(p))
    if not dims:
        raise InputError("no tile-feature files with rows were given; run `biossl cache-features` first")
    if len(dims) != 1:
        said = "; ".join(f"D={d}: {', '.join(ps[:3])}{' ...' if len(ps) > 3 else ''}" for d, ps in dims.items())
        raise InputError(f"tile-feature files differ in width ({said}); cache all slides with one encoder")
    return next(iter(dims))

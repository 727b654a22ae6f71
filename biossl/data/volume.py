"""3D scans: read a NIfTI file or DICOM series folder and preprocess it with MONAI transforms.

Every volume goes through the same steps, set by a :class:`VolumeSpec`: reorient to RAS, resample to
``spacing`` mm, normalise intensities by ``kind`` (CT: clip a Hounsfield window to [0, 1]; MRI: scale
the 1st-99th percentiles to [0, 1]; ``"none"``: leave values as stored, e.g. for masks), then
optionally pad/crop or resize to ``shape``. The result is ``float32 [1, D, H, W]`` where the three
spatial axes run Left→Right, Posterior→Anterior, Inferior→Superior (MONAI's RAS array convention).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from biossl.data.volume_dicom import read_dicom_series, sorted_series
from biossl.errors import VolumeError

logger = logging.getLogger(__name__)

#: Bump when preprocessing changes in a way that makes cached arrays stale.
PREPROCESS_VERSION = 1
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class VolumeSpec:
    """How to preprocess a 3D scan.

    Args:
        kind: ``"ct"`` (Hounsfield window), ``"mri"`` (percentile scaling) or ``"none"`` (no intensity
            change, for masks such as AdrenalMNIST3D).
        spacing: Target voxel size in mm along (R, A, S); ``None`` keeps the native grid.
        hu_window: CT window (low, high) in HU mapped to [0, 1]; values outside are clipped.
        percentiles: MRI percentiles (low, high) mapped to [0, 1]; values outside are clipped.
        shape: Final spatial shape, or ``None`` to keep the resampled shape.
        fit: How to reach ``shape``: ``"pad_crop"`` (centred, keeps the spacing) or ``"resize"``
            (interpolates, changes the spacing).
        interpolation: ``"bilinear"`` for images, ``"nearest"`` for label masks.
    """

    kind: Literal["ct", "mri", "none"] = "mri"
    spacing: tuple[float, float, float] | None = (2.0, 2.0, 2.0)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    percentiles: tuple[float, float] = (1.0, 99.0)
    shape: tuple[int, int, int] | None = None
    fit: Literal["pad_crop", "resize"] = "pad_crop"
    interpolation: Literal["bilinear", "nearest"] = "bilinear"

    def __post_init__(self) -> None:
        def bad(field: str, value: Any, why: str) -> VolumeError:
            return VolumeError(f"volume option {field}={value!r} is invalid: {why}")

        choices = {"kind": ("ct", "mri", "none"), "fit": ("pad_crop", "resize")}
        choices["interpolation"] = ("bilinear", "nearest")
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise bad(field, getattr(self, field), f"choose one of {', '.join(allowed)}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise bad("spacing", self.spacing, "give three positive sizes in mm, or None for native")
        if self.shape is not None and (len(self.shape) != 3 or min(self.shape) < 1):
            raise bad("shape", self.shape, "give three positive voxel counts, or None")
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            raise bad("hu_window", self.hu_window, "give (low, high) with low < high")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise bad("percentiles", self.percentiles, "give (low, high) with 0 <= low < high <= 100")

    def digest(self) -> str:
        """A short stable hash of these options (and the preprocessing version), for cache keys."""
        payload = json.dumps({"v": PREPROCESS_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _check_shape(path: Path, shape: tuple[int, ...]) -> None:
    spatial = shape[:3]
    extra = shape[3:]
    if len(shape) < 3 or any(n != 1 for n in extra):
        raise VolumeError(
            f"{path}: shape {shape} is not a single 3D volume; biossl needs [X, Y, Z] (a 4D series must "
            "be split, e.g. with fslsplit, and one frame listed in the manifest)"
        )
    if min(spatial) == 0:
        raise VolumeError(f"{path}: an axis has length 0 (shape {shape}); the file is empty, re-export it")


def _check_affine(path: Path, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(
            f"{path}: header affine is not invertible or not finite ({affine.tolist()}); fix the "
            "qform/sform (voxel sizes must be non-zero) before using this scan"
        )


def _open_nifti(path: Path) -> Any:
    try:
        return nib.load(path)
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise VolumeError(
            f"{path}: cannot read as NIfTI ({exc}); check the file is a complete .nii / .nii.gz"
        ) from exc


def _resolve(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: scan not found; check the path in the manifest")
    if not path.is_dir() and not _is_nifti(path):
        raise VolumeError(
            f"{path}: unsupported scan format; give a NIfTI file (.nii / .nii.gz) or a folder holding "
            "one DICOM series (convert other formats with dcm2niix or SimpleITK)"
        )
    return path


def probe(path: str | os.PathLike[str]) -> None:
    """Check cheaply (headers only) that ``path`` is a readable 3D scan; raise :class:`VolumeError` if not."""
    path = _resolve(path)
    if path.is_dir():
        sorted_series(path)
        return
    img = _open_nifti(path)
    _check_shape(path, tuple(int(n) for n in img.shape))
    _check_affine(path, np.asarray(img.affine, dtype=float))


def check(path: str | os.PathLike[str]) -> None:
    """What the cohort check runs: :func:`probe`, then NaN/inf voxels of a floating-point NIfTI.

    The voxels of a NIfTI stored as floating point are read once (integer voxels, as in most CT, and
    DICOM pixels cannot hold NaN), so a bad scan stops a run before training, not in its middle.

    Raises:
        VolumeError: See :func:`probe`; or NaN/infinite voxels, or voxel data that cannot be read.
    """
    probe(path)
    path = Path(path)
    if path.is_dir():
        return
    img = _open_nifti(path)
    if np.dtype(img.get_data_dtype()).kind in "fc":
        try:
            data = np.asanyarray(img.dataobj)
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise VolumeError(f"{path}: cannot read voxel data ({exc}); the file may be truncated") from exc
        _check_finite(path, data)


def _read_raw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a scan as float32 [X, Y, Z] and its RAS affine, validating shape, affine and values."""
    if path.is_dir():
        data, affine = read_dicom_series(path)
    else:
        img = _open_nifti(path)
        _check_shape(path, tuple(int(n) for n in img.shape))
        affine = np.asarray(img.affine, dtype=float)
        try:
            data = np.asarray(img.get_fdata(dtype=np.float32))
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise VolumeError(f"{path}: cannot read voxel data ({exc}); the file may be truncated") from exc
        data = data.reshape(data.shape[:3])
    _check_affine(path, affine)
    _check_finite(path, data)
    return data, affine


def _check_finite(path: Path, data: np.ndarray) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        n_nan = int(np.isnan(data).sum())
        raise VolumeError(
            f"{path}: {n_nan} NaN and {int(bad.sum()) - n_nan} infinite voxel(s) of {data.size}; fix the "
            "export (or replace them, e.g. with the background value) before training"
        )


def load_volume_with_affine(path: str | os.PathLike[str], spec: VolumeSpec) -> tuple[np.ndarray, np.ndarray]:
    """Read and preprocess one scan; return ``float32 [1, D, H, W]`` and its 4x4 RAS affine (mm)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import (
        Orientation,
        Resize,
        ResizeWithPadOrCrop,
        ScaleIntensityRange,
        ScaleIntensityRangePercentiles,
        Spacing,
    )

    path = _resolve(path)
    data, affine = _read_raw(path)
    img: torch.Tensor = MetaTensor(torch.from_numpy(data[None]), affine=torch.from_numpy(affine))
    img = Orientation(axcodes="RAS", labels=_RAS_LABELS)(img)
    if spec.spacing is not None:
        img = Spacing(pixdim=spec.spacing, mode=spec.interpolation, padding_mode="border")(img)
    if spec.kind == "ct":
        low, high = spec.hu_window
        window = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
        img = cast(torch.Tensor, window(img))  # MONAI keeps the input type (MetaTensor)
    elif spec.kind == "mri":
        low_v, high_v = np.percentile(img.detach().numpy(), spec.percentiles)
        if high_v <= low_v:
            raise VolumeError(
                f"{path}: percentiles {spec.percentiles} are equal ({low_v:g}); the scan has no contrast "
                "to scale. Check the export, or use kind='none' for masks"
            )
        scale = ScaleIntensityRangePercentiles(*spec.percentiles, b_min=0.0, b_max=1.0, clip=True)
        img = cast(torch.Tensor, scale(img))
    if spec.shape is not None:
        if spec.fit == "pad_crop":
            img = ResizeWithPadOrCrop(spec.shape)(img)
        else:
            mode = "trilinear" if spec.interpolation == "bilinear" else "nearest"
            img = Resize(spec.shape, mode=mode)(img)
    out = np.ascontiguousarray(img.detach().numpy(), dtype=np.float32)
    logger.debug("loaded %s -> %s", path, out.shape)
    return out, np.asarray(cast(MetaTensor, img).affine, dtype=float)


def load_volume(path: str | os.PathLike[str], spec: VolumeSpec) -> np.ndarray:
    """Read and preprocess one scan (NIfTI file or DICOM series folder) to ``float32 [1, D, H, W]``.

    Raises:
        VolumeError: The path is missing, not a supported format, not a 3D volume, has a zero-length
            axis, NaN/infinite voxels, a broken affine, or is a DICOM series with a missing slice.
    """
    return load_volume_with_affine(path, spec)[0]

"""DICOM series: find the slices in a folder, check the series is complete, stack it with its affine.

MONAI's ``PydicomReader`` orders slices by ``InstanceNumber`` and averages the slice distance, so a
series with a missing stretch of slices silently gets a wrong, stretched geometry. Here slices are
ordered by their position along the slice normal (``ImagePositionPatient`` projected on the cross
product of the ``ImageOrientationPatient`` direction cosines) and any uneven step is an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from biossl.errors import VolumeError

logger = logging.getLogger(__name__)

#: A step between neighbouring slices may exceed the smallest step by this fraction at most.
SPACING_TOLERANCE = 0.1
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dicom_files(folder: Path) -> list[Path]:
    """Return the DICOM files (those with the ``DICM`` marker) directly inside ``folder``, sorted."""
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    found = [p for p in candidates if pydicom.misc.is_dicom(str(p))]
    if not found:
        raise VolumeError(
            f"{folder}: folder holds no DICOM files ({len(candidates)} file(s) checked, none has the "
            "'DICM' marker at byte 128). Point the manifest at the folder of one DICOM series, or at a "
            "NIfTI file (.nii / .nii.gz)."
        )
    return found


def _read_header(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise VolumeError(f"{path}: cannot read DICOM header ({exc}); re-export or remove this file") from exc


def _check_same(folder: Path, headers: list[Dataset], files: list[Path], tag: str) -> None:
    values = [tuple(np.atleast_1d(np.asarray(getattr(h, tag), dtype=float)).round(4)) for h in headers]
    if len(set(values)) > 1:
        odd = next(i for i, v in enumerate(values) if v != values[0])
        raise VolumeError(
            f"{folder}: slices disagree on {tag} ({files[0].name}: {values[0]}, {files[odd].name}: "
            f"{values[odd]}); the folder must hold one series of parallel, same-size slices"
        )


def sorted_series(folder: Path) -> tuple[list[Path], list[Dataset]]:
    """Read the headers of the series in ``folder``; return files and headers sorted along the normal.

    Raises:
        VolumeError: No DICOM files, several series, missing geometry tags, slices of different size or
            orientation, two slices at one position, or a gap / uneven step between slices (a missing
            slice).
    """
    files = dicom_files(folder)
    headers = [_read_header(p) for p in files]
    series = {str(getattr(h, "SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise VolumeError(
            f"{folder}: folder mixes {len(series)} DICOM series (SeriesInstanceUID); put each series in "
            "its own folder and list the one you want in the manifest"
        )
    for path, head in zip(files, headers):
        for tag in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"):
            if getattr(head, tag, None) is None:
                raise VolumeError(
                    f"{path}: DICOM slice lacks {tag}, so it cannot be placed in space; convert the "
                    "series to NIfTI with a tool that knows the scanner (e.g. dcm2niix)"
                )
        if int(getattr(head, "NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(f"{path}: multi-frame DICOM is not supported; convert it to NIfTI (dcm2niix)")
    for tag in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient"):
        _check_same(folder, headers, files, tag)
    orient = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orient[:3], orient[3:])
    where = np.array([np.dot(np.asarray(h.ImagePositionPatient, dtype=float), normal) for h in headers])
    order = np.argsort(where, kind="stable")
    files, headers, where = [files[i] for i in order], [headers[i] for i in order], where[order]
    _check_steps(folder, files, headers, where)
    return files, headers


def _check_steps(folder: Path, files: list[Path], headers: list[Dataset], where: np.ndarray) -> None:
    if len(files) < 2:
        return
    steps = np.diff(where)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise VolumeError(
            f"{folder}: slices {files[i].name} and {files[i + 1].name} lie at the same position "
            f"({where[i]:.2f} mm): duplicate slices or two acquisitions in one folder; keep one series"
        )
    step = float(steps.min())  # a missing slice can only lengthen a step
    bad = np.flatnonzero(steps - step > SPACING_TOLERANCE * step)
    if bad.size:
        i = int(bad[0])
        a, b = headers[i], headers[i + 1]
        missing = round(steps[i] / step) - 1
        raise VolumeError(
            f"{folder}: DICOM series has a gap: the slice step is {step:.3g} mm but {files[i].name} "
            f"(InstanceNumber {getattr(a, 'InstanceNumber', '?')}, at {where[i]:.2f} mm) and "
            f"{files[i + 1].name} (InstanceNumber {getattr(b, 'InstanceNumber', '?')}, at "
            f"{where[i + 1]:.2f} mm) are {steps[i]:.3g} mm apart"
            + (f" (about {missing} slice(s) missing)" if missing > 0 else " (uneven spacing)")
            + "; re-export the complete series, or remove the stray slices so one contiguous run remains"
        )


def series_affine(headers: list[Dataset]) -> np.ndarray:
    """RAS affine of a sorted series whose voxel axes are (column, row, slice)."""
    first = headers[0]
    orient = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    start = np.asarray(first.ImagePositionPatient, dtype=float)
    if len(headers) > 1:
        end = np.asarray(headers[-1].ImagePositionPatient, dtype=float)
        slice_vec = (end - start) / (len(headers) - 1)
    else:
        slice_vec = np.cross(orient[:3], orient[3:]) * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = orient[:3] * col_mm
    lps[:3, 1] = orient[3:] * row_mm
    lps[:3, 2] = slice_vec
    lps[:3, 3] = start
    return _LPS_TO_RAS @ lps


def read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a complete DICOM series into a float32 array [X, Y, Z] of rescaled values and its RAS affine.

    Values are ``stored * RescaleSlope + RescaleIntercept`` (Hounsfield units for CT).
    """
    files, headers = sorted_series(folder)
    planes = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array.astype(np.float32)
        except (InvalidDicomError, OSError, EOFError, ValueError, RuntimeError, AttributeError) as exc:
            raise VolumeError(
                f"{path}: cannot decode DICOM pixel data ({exc}); if it is compressed install a pydicom "
                "pixel plugin (pylibjpeg / gdcm) or convert the series to NIfTI with dcm2niix"
            ) from exc
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        planes.append(pixels * slope + float(getattr(ds, "RescaleIntercept", 0.0) or 0.0))
    data = np.stack(planes, axis=-1).transpose(1, 0, 2)  # (row, col, slice) -> (col, row, slice)
    logger.debug("read DICOM series %s: %d slices, shape %s", folder, len(files), data.shape)
    return np.ascontiguousarray(data, dtype=np.float32), series_affine(headers)

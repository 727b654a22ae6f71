"""DICOM series on MONAI's real CT slices: ordering, HU values, affine, gap and folder errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from biossl.data.volume import VolumeSpec, load_volume, load_volume_with_affine, probe
from biossl.data.volume_dicom import read_dicom_series
from biossl.errors import VolumeError

CONTIGUOUS = ("7136", "7166", "7196")  # InstanceNumber 180-182, 1.25 mm apart


@pytest.fixture(scope="module")
def ct_folder(fixtures: Path) -> Path:
    return fixtures / "volume" / "CT_DICOM"


def _copy(src: Path, dst: Path, names: tuple[str, ...], rename: dict[str, str] | None = None) -> Path:
    dst.mkdir()
    for name in names:
        shutil.copy(src / name, dst / (rename or {}).get(name, name))
    return dst


def _hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_real_series_with_161_missing_slices_is_rejected(ct_folder: Path) -> None:
    # The fixture really holds InstanceNumber 18 at z=-99.48 and 180-182 at z=103-105.5 mm.
    for call in (lambda: probe(ct_folder), lambda: load_volume(ct_folder, VolumeSpec(kind="ct"))):
        with pytest.raises(VolumeError, match=r"gap.*7106 \(InstanceNumber 18.*about 161 slice"):
            call()


def test_contiguous_series_loads_with_hu_values(ct_folder: Path, tmp_path: Path) -> None:
    folder = _copy(ct_folder, tmp_path / "series", CONTIGUOUS)
    probe(folder)
    data, affine = read_dicom_series(folder)
    assert data.shape == (16, 16, 3)
    for k, name in enumerate(CONTIGUOUS):  # slices stacked by position, pixels as (column, row)
        np.testing.assert_array_equal(data[:, :, k], _hu(ct_folder / name).T)
    np.testing.assert_allclose(np.diag(affine)[:3], [-0.488281, -0.488281, 1.25], atol=1e-5)
    np.testing.assert_allclose(affine[:3, 3], [125.0, 128.100006, 103.019997], atol=1e-4)


def test_matches_monai_pydicom_reader_on_complete_series(ct_folder: Path, tmp_path: Path) -> None:
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    folder = _copy(ct_folder, tmp_path / "series", CONTIGUOUS)
    data, affine = read_dicom_series(folder)
    with pytest.warns(UserWarning):  # MONAI warns that nvImageCodec is absent
        monai_img = LoadImage(reader=PydicomReader(), image_only=True)(str(folder))
    np.testing.assert_allclose(monai_img.numpy(), data)
    np.testing.assert_allclose(monai_img.affine.numpy(), affine, atol=1e-4)


def test_ct_window_on_real_slices(ct_folder: Path, tmp_path: Path) -> None:
    folder = _copy(ct_folder, tmp_path / "series", CONTIGUOUS)
    x, affine = load_volume_with_affine(folder, VolumeSpec(kind="ct", spacing=None))
    assert x.shape == (1, 16, 16, 3)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    hu = np.stack([_hu(ct_folder / n).T for n in CONTIGUOUS], axis=-1)[::-1, ::-1]  # LPS -> RAS flips
    np.testing.assert_allclose(x[0], np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0), atol=1e-6)
    assert (hu >= 1000).any() and np.all(x[0][hu >= 1000] == 1.0)


def test_slice_order_follows_position_not_file_name(ct_folder: Path, tmp_path: Path) -> None:
    reverse = {"7136": "c", "7166": "b", "7196": "a"}
    folder = _copy(ct_folder, tmp_path / "renamed", CONTIGUOUS, rename=reverse)
    reference = _copy(ct_folder, tmp_path / "series", CONTIGUOUS)
    np.testing.assert_array_equal(read_dicom_series(folder)[0], read_dicom_series(reference)[0])


def test_resampled_slice_count(ct_folder: Path, tmp_path: Path) -> None:
    folder = _copy(ct_folder, tmp_path / "series", CONTIGUOUS)
    x = load_volume(folder, VolumeSpec(kind="ct", spacing=(0.488281, 0.488281, 0.625)))
    assert x.shape[1:3] == (16, 16) and abs(x.shape[3] - 6) <= 1


def test_missing_middle_slice_is_rejected(ct_folder: Path, tmp_path: Path) -> None:
    four = _copy(ct_folder, tmp_path / "four", CONTIGUOUS)
    shutil.copy(ct_folder / "7196", tmp_path / "spare")
    ds = pydicom.dcmread(tmp_path / "spare")
    ds.ImagePositionPatient[2] = 106.769997  # a 4th slice one step on: 180, 181, 182, 183
    ds.InstanceNumber = 183
    ds.save_as(four / "7226")
    assert load_volume(four, VolumeSpec(kind="ct", spacing=None)).shape == (1, 16, 16, 4)
    (four / "7166").unlink()
    with pytest.raises(VolumeError, match=r"gap.*7136 \(InstanceNumber 180.*about 1 slice\(s\) missing"):
        probe(four)


def test_duplicate_and_mixed_series(ct_folder: Path, tmp_path: Path) -> None:
    folder = _copy(ct_folder, tmp_path / "dup", CONTIGUOUS)
    shutil.copy(ct_folder / "7166", folder / "copy_of_7166")
    with pytest.raises(VolumeError, match="same position"):
        probe(folder)
    (folder / "copy_of_7166").unlink()
    ds = pydicom.dcmread(folder / "7196")
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "7196")
    with pytest.raises(VolumeError, match="mixes 2 DICOM series"):
        probe(folder)


def test_folder_without_dicom_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VolumeError, match=r"empty: folder holds no DICOM files \(0 file"):
        probe(empty)
    (empty / "readme.txt").write_text("scans to follow")
    with pytest.raises(VolumeError, match=r"no DICOM files \(1 file"):
        load_volume(empty, VolumeSpec())

"""NIfTI reading and MONAI preprocessing on real scans (MONAI / nibabel test MRIs, AdrenalMNIST3D)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from biossl.data.volume import VolumeSpec, load_volume, load_volume_with_affine, probe
from biossl.errors import InputError, VolumeError

NIBABEL_DATA = Path(str(data_path))
NATIVE = VolumeSpec(kind="none", spacing=None)


@pytest.fixture(scope="module")
def anatomical(fixtures: Path) -> Path:
    return fixtures / "volume" / "anatomical.nii"


def _save(tmp_path: Path, data: np.ndarray, name: str = "scan.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_las_scan_is_flipped_to_ras(anatomical: Path) -> None:
    raw = nib.nifti1.load(anatomical)
    assert nib.aff2axcodes(raw.affine) == ("L", "A", "S")
    x, affine = load_volume_with_affine(anatomical, NATIVE)
    assert x.shape == (1, 33, 41, 25) and x.dtype == np.float32
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_array_equal(x[0], np.asarray(raw.get_fdata(), dtype=np.float32)[::-1])
    # The world position of the first voxel is the old last voxel along x.
    np.testing.assert_allclose(affine[:3, 3], (raw.affine @ [32, 0, 0, 1])[:3])


def test_ras_scan_is_not_flipped() -> None:
    path = NIBABEL_DATA / "reoriented_anat_moved.nii"
    raw = nib.nifti1.load(path)
    x = load_volume(path, NATIVE)
    np.testing.assert_array_equal(x[0], np.asarray(raw.get_fdata(), dtype=np.float32))


@pytest.mark.parametrize("target", [1.0, 4.0])
def test_resampling_scales_shape_and_sets_spacing(anatomical: Path, target: float) -> None:
    x, affine = load_volume_with_affine(anatomical, VolumeSpec(kind="none", spacing=(target,) * 3))
    expected = np.array([33, 41, 25]) * 2.0 / target
    assert np.all(np.abs(np.array(x.shape[1:]) - expected) <= 1), x.shape
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), target)


def test_anisotropic_nibabel_scan_resampled_to_isotropic() -> None:
    path = NIBABEL_DATA / "standard.nii.gz"  # 4x5x7 voxels of 1x3x2 mm
    x = load_volume(path, VolumeSpec(kind="none", spacing=(1.0, 1.0, 1.0)))
    assert np.all(np.abs(np.array(x.shape[1:]) - np.array([4, 15, 14])) <= 2), x.shape


def test_default_spacing_keeps_a_2mm_scan_shape(anatomical: Path) -> None:
    assert load_volume(anatomical, VolumeSpec()).shape == (1, 33, 41, 25)


def test_mri_percentile_scaling(anatomical: Path) -> None:
    x = load_volume(anatomical, VolumeSpec(kind="mri", spacing=None))
    raw = np.asarray(nib.nifti1.load(anatomical).get_fdata(), dtype=np.float32)[::-1]
    low, high = np.percentile(raw, [1, 99])
    np.testing.assert_allclose(x[0], np.clip((raw - low) / (high - low), 0, 1), atol=1e-5)
    assert x.min() == 0.0 and x.max() == 1.0
    assert 0.005 < np.mean(x == 1.0) < 0.03  # about the top 1 % saturates
    custom = load_volume(anatomical, VolumeSpec(kind="mri", spacing=None, percentiles=(5, 95)))
    assert np.mean(custom == 1.0) > np.mean(x == 1.0)


def test_ct_window_maps_hu_to_unit_range(tmp_path: Path) -> None:
    hu = np.array([-2000, -1000, 0, 500, 1000, 3000], dtype=np.float32).reshape(6, 1, 1)
    x = load_volume(_save(tmp_path, hu), VolumeSpec(kind="ct", spacing=None))
    np.testing.assert_allclose(x.ravel(), [0, 0, 0.5, 0.75, 1, 1], atol=1e-6)
    narrow = load_volume(_save(tmp_path, hu), VolumeSpec(kind="ct", spacing=None, hu_window=(-1000, 0)))
    np.testing.assert_allclose(narrow.ravel(), [0, 0, 1, 1, 1, 1], atol=1e-6)


@pytest.mark.parametrize("fit", ["pad_crop", "resize"])
def test_fixed_output_shape(anatomical: Path, fit: str) -> None:
    x = load_volume(anatomical, VolumeSpec(kind="mri", shape=(40, 32, 32), fit=fit))  # type: ignore[arg-type]
    assert x.shape == (1, 40, 32, 32)
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_adrenalmnist3d_mask_volume(shared_data: Path, tmp_path: Path) -> None:
    with np.load(shared_data / "adrenalmnist3d_64" / "adrenalmnist3d_64.npz") as npz:
        mask = npz["val_images"][0]  # the val split is the smallest array to decompress
    path = _save(tmp_path, mask, "adrenal.nii.gz")
    x = load_volume(path, NATIVE)
    np.testing.assert_array_equal(x[0], mask.astype(np.float32))
    half = load_volume(path, VolumeSpec(kind="none", spacing=(2.0, 2.0, 2.0), interpolation="nearest"))
    assert half.shape == (1, 32, 32, 32)
    assert set(np.unique(half)) == {0.0, 255.0}


def test_probe_accepts_real_scans(anatomical: Path) -> None:
    probe(anatomical)
    probe(NIBABEL_DATA / "standard.nii.gz")


@pytest.mark.parametrize("name", ["example4d.nii.gz", "functional.nii"])
def test_4d_series_is_rejected(name: str) -> None:
    path = NIBABEL_DATA / name
    for call in (lambda: probe(path), lambda: load_volume(path, NATIVE)):
        with pytest.raises(VolumeError, match=r"not a single 3D volume.*fslsplit") as err:
            call()
        assert name in str(err.value)


def test_nan_voxels_are_counted(anatomical: Path, tmp_path: Path) -> None:
    data = np.asarray(nib.nifti1.load(anatomical).get_fdata(), dtype=np.float32)
    data[3, 4, 5] = data[10, 10, 10] = data[0, 0, 0] = np.nan
    path = _save(tmp_path, data, "nan.nii.gz")
    probe(path)  # header-only: cannot see voxel values
    with pytest.raises(VolumeError, match=r"nan\.nii\.gz: 3 NaN and 0 infinite voxel\(s\) of 33825"):
        load_volume(path, VolumeSpec())


def test_zero_length_axis(tmp_path: Path) -> None:
    path = _save(tmp_path, np.zeros((16, 0, 8), dtype=np.float32), "empty.nii.gz")
    with pytest.raises(VolumeError, match=r"empty\.nii\.gz: an axis has length 0 \(shape \(16, 0, 8\)\)"):
        probe(path)
    with pytest.raises(VolumeError, match="length 0"):
        load_volume(path, VolumeSpec())


def test_unreadable_files(anatomical: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(gzip.compress(anatomical.read_bytes())[:4000])
    with pytest.raises(VolumeError, match=r"cut\.nii\.gz: cannot read voxel data.*truncated"):
        load_volume(truncated, VolumeSpec())
    garbage = tmp_path / "notes.nii"
    garbage.write_text("not a scan")
    with pytest.raises(VolumeError, match=r"notes\.nii: cannot read as NIfTI"):
        probe(garbage)
    with pytest.raises(VolumeError, match=r"scan not found"):
        probe(tmp_path / "missing.nii.gz")
    other = tmp_path / "scan.mha"
    other.write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"scan\.mha: unsupported scan format"):
        load_volume(other, VolumeSpec())


def test_constant_mri_is_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path, np.full((8, 8, 8), 7.0, dtype=np.float32), "flat.nii.gz")
    with pytest.raises(VolumeError, match=r"flat\.nii\.gz: percentiles .* no contrast"):
        load_volume(path, VolumeSpec(kind="mri", spacing=None))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"kind": "pet"}, "kind"),
        ({"spacing": (2.0, 0.0, 2.0)}, "spacing"),
        ({"hu_window": (100.0, -100.0)}, "hu_window"),
        ({"percentiles": (99.0, 1.0)}, "percentiles"),
        ({"shape": (32, 32)}, "shape"),
    ],
)
def test_spec_validation_names_the_option(options: dict, field: str) -> None:
    with pytest.raises(InputError, match=f"volume option {field}="):
        VolumeSpec(**options)


def test_spec_digest_changes_with_options() -> None:
    assert VolumeSpec().digest() == VolumeSpec().digest()
    assert VolumeSpec().digest() != VolumeSpec(spacing=(1.0, 1.0, 1.0)).digest()
    assert VolumeSpec(kind="ct").digest() != VolumeSpec(kind="mri").digest()

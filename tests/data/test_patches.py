"""Random and grid patch sampling on a real MRI volume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from biossl.data.patches import grid_origins, grid_patches, random_patch_origins, random_patches
from biossl.errors import InputError


@pytest.fixture(scope="module")
def volume(fixtures: Path) -> np.ndarray:
    """The real 33x41x25 MRI as [1, D, H, W] (raw values; patching does not need MONAI)."""
    data = np.asarray(nib.nifti1.load(fixtures / "volume" / "anatomical.nii").get_fdata(), dtype=np.float32)
    return data[None]


def test_random_patches_are_crops_of_the_volume(volume: np.ndarray) -> None:
    patches = random_patches(volume, (16, 8, 12), 5, rng=np.random.default_rng(0))
    assert patches.shape == (5, 1, 16, 8, 12) and patches.dtype == np.float32
    origins = random_patch_origins(volume.shape[1:], (16, 8, 12), 5, rng=np.random.default_rng(0))
    for patch, (z, y, x) in zip(patches, origins):
        np.testing.assert_array_equal(patch, volume[:, z : z + 16, y : y + 8, x : x + 12])
    assert np.all(origins >= 0) and np.all(origins + [16, 8, 12] <= volume.shape[1:])


def test_random_patches_are_seedable(volume: np.ndarray) -> None:
    a = random_patches(volume, 8, 4, rng=np.random.default_rng(7))
    b = random_patches(volume, 8, 4, rng=np.random.default_rng(7))
    c = random_patches(volume, 8, 4, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_patches_cover_all_positions(volume: np.ndarray) -> None:
    origins = random_patch_origins((10, 10, 10), 8, 2000, rng=np.random.default_rng(1))
    assert {tuple(int(v) for v in np.unique(origins[:, i])) for i in range(3)} == {(0, 1, 2)}


def test_small_volume_is_padded_centred(volume: np.ndarray) -> None:
    patches = random_patches(volume, 48, 3, rng=np.random.default_rng(0), pad_value=-1.0)
    assert patches.shape == (3, 1, 48, 48, 48)
    # 33 -> 48 pads 7 before and 8 after on the first axis (41: 3 / 4, 25: 11 / 12).
    np.testing.assert_array_equal(patches[0, :, 7:40, 3:44, 11:36], volume)
    assert np.all(patches[0, :, :7] == -1.0) and np.all(patches[0, :, 40:] == -1.0)


def test_grid_tiles_the_volume(volume: np.ndarray) -> None:
    patches, origins = grid_patches(volume, (16, 16, 16))
    # ceil(33/16) * ceil(41/16) * ceil(25/16) = 3 * 3 * 2 non-overlapping patches.
    assert patches.shape == (18, 1, 16, 16, 16) and origins.shape == (18, 3)
    canvas = np.full((1, 48, 48, 32), np.nan, dtype=np.float32)
    for patch, (z, y, x) in zip(patches, origins):
        assert np.all(np.isnan(canvas[:, z : z + 16, y : y + 16, x : x + 16]))  # no overlap
        canvas[:, z : z + 16, y : y + 16, x : x + 16] = patch
    np.testing.assert_array_equal(canvas[:, :33, :41, :25], volume)
    assert np.all(canvas[:, 33:] == 0.0)  # the far-end padding


def test_strided_grid_overlaps_and_covers(volume: np.ndarray) -> None:
    patches, origins = grid_patches(volume, 16, stride=8)
    assert sorted(set(origins[:, 0].tolist())) == [0, 8, 16, 24]  # 24 + 16 >= 33
    assert sorted(set(origins[:, 2].tolist())) == [0, 8, 16]  # 16 + 16 >= 25
    for patch, (z, y, x) in zip(patches, origins):
        inside = volume[:, z : z + 16, y : y + 16, x : x + 16]
        d, h, w = inside.shape[1:]
        np.testing.assert_array_equal(patch[:, :d, :h, :w], inside)


def test_sparse_grid_has_no_empty_patches() -> None:
    origins = grid_origins((10, 10, 10), 2, stride=5)
    assert sorted(set(origins[:, 0].tolist())) == [0, 5]


def test_grid_on_volume_smaller_than_patch(volume: np.ndarray) -> None:
    patches, origins = grid_patches(volume, 64)
    assert patches.shape == (1, 1, 64, 64, 64)
    np.testing.assert_array_equal(origins, [[0, 0, 0]])
    np.testing.assert_array_equal(patches[0, :, :33, :41, :25], volume)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v: random_patches(v, 0, 2, rng=np.random.default_rng()), "patch size 0"),
        (lambda v: random_patches(v, (8, 8), 2, rng=np.random.default_rng()), r"patch size \(8, 8\)"),
        (lambda v: random_patches(v, 8, 0, rng=np.random.default_rng()), "k=0"),
        (lambda v: grid_patches(v[0], 8), r"\[C, D, H, W\]"),
        (lambda v: grid_patches(v, 8, stride=(0, 1, 1)), "stride"),
    ],
)
def test_bad_arguments(volume: np.ndarray, call: Callable[[np.ndarray], object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        call(volume)

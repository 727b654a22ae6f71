from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Flip, Rotate90

from biossl.errors import InputError
from biossl.transforms import make_views
from biossl.transforms.volume_views import (
    RandFlip,
    RandGaussianNoise,
    RandRotate90,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSpatialCropResize,
)


@pytest.fixture(scope="module")
def patches(fixtures: Path) -> torch.Tensor:
    """Four real 16^3 patches of the T1 MRI fixture (33x41x25), intensities scaled to [0, 1]."""
    img = nib.load(fixtures / "volume" / "anatomical.nii")
    assert isinstance(img, nib.Nifti1Image)
    vol = np.asarray(img.get_fdata(), dtype=np.float32)
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    cubes = [vol[a : a + 16, b : b + 16, 4:20] for a in (4, 12) for b in (8, 20)]
    return torch.from_numpy(np.stack(cubes)[:, None].copy())


def _seed(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(s)


ALL_VIEWS = [
    RandSpatialCropResize(),
    RandFlip(spatial_axis=0),
    RandRotate90(),
    RandScaleIntensity(),
    RandShiftIntensity(),
    RandGaussianNoise(),
]


@pytest.mark.parametrize("view", ALL_VIEWS, ids=lambda v: type(v).__name__)
def test_view_keeps_shape_and_changes_input(view: torch.nn.Module, patches: torch.Tensor) -> None:
    out = view(patches, _seed(0))
    assert out.shape == patches.shape and out.dtype == patches.dtype
    assert not torch.equal(out, patches)
    assert torch.equal(out, view(patches, _seed(0)))
    assert not torch.equal(out, view(patches, _seed(1)))
    assert view(patches.view(2, 2, 1, 16, 16, 16), _seed(0)).shape == (2, 2, 1, 16, 16, 16)


def test_rotate_and_flip_match_monai(patches: torch.Tensor) -> None:
    out = RandRotate90(spatial_axes=(0, 2), p=1.0)(patches, _seed(3))
    found = set()
    for x, y in zip(patches, out):
        ks = [k for k in (1, 2, 3) if torch.equal(y, torch.as_tensor(Rotate90(k=k, spatial_axes=(0, 2))(x)))]
        assert len(ks) == 1
        found.add(ks[0])
    assert len(found) > 1
    flipped = RandFlip(spatial_axis=1, p=1.0)(patches)
    for x, y in zip(patches, flipped):
        assert torch.equal(y, torch.as_tensor(Flip(spatial_axis=1)(x)))


def test_rot90_keeps_shape_on_unequal_sides(patches: torch.Tensor) -> None:
    slab = patches[..., :8]  # D=16, H=16, W=8: rotating in (H, W) must use k=2 only
    out = RandRotate90(spatial_axes=(1, 2), p=1.0)(slab, _seed(0))
    assert out.shape == slab.shape
    assert torch.equal(out, torch.rot90(slab, 2, dims=(3, 4)))


def test_intensity_views_follow_monai_formulas(patches: torch.Tensor) -> None:
    scaled = RandScaleIntensity(factors=0.2, p=1.0)(patches, _seed(0))
    ratio = scaled.flatten(1)[:, 100] / patches.flatten(1)[:, 100]
    assert torch.allclose(scaled, patches * ratio.view(-1, 1, 1, 1, 1), atol=1e-6)
    assert bool(((ratio >= 0.8) & (ratio <= 1.2)).all())
    shifted = RandShiftIntensity(offsets=0.1, p=1.0)(patches, _seed(0))
    diff = (shifted - patches).flatten(1)
    assert float((diff - diff[:, :1]).abs().max()) < 1e-6 and float(diff.abs().max()) <= 0.1
    noisy = RandGaussianNoise(std=0.1, p=1.0)(patches, _seed(0))
    sd = (noisy - patches).flatten(1).std(dim=1)
    assert bool((sd <= 0.11).all()) and float(sd.max()) > 0.01


def test_full_crop_is_identity(patches: torch.Tensor) -> None:
    out = RandSpatialCropResize(scale=(1.0, 1.0))(patches, _seed(0))
    assert float((out - patches).abs().max()) < 1e-5


def test_make_views_volume(patches: torch.Tensor) -> None:
    views = make_views("volume")
    a, b = views(patches, _seed(7)), views(patches, _seed(7))
    assert torch.equal(a, b) and a.shape == patches.shape
    assert not torch.equal(views(patches), views(patches))
    assert torch.equal(make_views("volume", "none")(patches), patches)
    with pytest.raises(InputError, match="spatial_axis"):
        RandFlip(spatial_axis=3)

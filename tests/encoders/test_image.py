"""Image instance models: 2D/3D shapes, gradients, errors, and learning on real pixels."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path
from skimage import data as skdata

from biossl.encoders import ENCODERS


def real_tiles(n: int = 8, size: int = 64) -> torch.Tensor:
    """Real IHC tiles shipped with scikit-image, [n, 3, size, size] in [0, 1]."""
    img = skdata.immunohistochemistry().astype(np.float32) / 255.0
    tiles = [img[r : r + size, c : c + size] for r in range(0, 512, 128) for c in range(0, 512, 128)][:n]
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()


def real_mri_patches(n: int = 4, size: int = 16) -> torch.Tensor:
    """Real MRI patches from nibabel's test data (anatomical.nii, 33x41x25), [n, 1, size^3] in [0, 1]."""
    vol = nib.load(os.path.join(data_path, "anatomical.nii")).get_fdata().astype(np.float32)
    vol /= vol.max()
    starts = [(0, 0, 0), (17, 25, 9), (8, 12, 4), (17, 0, 9)][:n]
    return torch.from_numpy(np.stack([vol[a : a + size, b : b + size, c : c + size] for a, b, c in starts]))[
        :, None
    ].contiguous()


SMALL_SWIN = {"feature_size": 12, "decoder_channels": 16}
CASES = [
    ("image/vit_tiny", 2, 64, 16, {}),
    ("image/vit_tiny", 3, 16, 8, {}),
    ("image/resnet18", 2, 32, 8, {}),
    ("image/resnet18", 3, 16, 8, {"decoder_channels": 16}),
    ("image/swin_tiny", 2, 32, 8, SMALL_SWIN),
    ("image/swin_tiny", 3, 32, 16, SMALL_SWIN),
]


@pytest.mark.parametrize(("name", "spatial_dims", "size", "patch", "extra"), CASES)
def test_shapes_loss_and_gradient_reach_embed_weights(
    name: str, spatial_dims: int, size: int, patch: int, extra: dict[str, int]
) -> None:
    torch.manual_seed(0)
    channels = 3 if spatial_dims == 2 else 1
    model = ENCODERS.build(
        name, spatial_dims=spatial_dims, in_channels=channels, img_size=size, patch_size=patch, **extra
    )
    x = torch.rand(2, channels, *([size] * spatial_dims))
    emb = model.embed(x)
    assert emb.shape == (2, model.embed_dim)
    assert torch.isfinite(emb).all()
    loss = model.masked_loss(x)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    encoder = model.encoder  # the module embed() runs
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_registered_sizes() -> None:
    small = ENCODERS.build("image/vit_small", img_size=32)
    assert small.embed_dim == 384 and len(small.encoder.blocks) == 12
    assert small.encoder.blocks[0].attn.num_heads == 6
    assert ENCODERS.build("image/resnet50", img_size=32).embed_dim == 2048
    assert ENCODERS.build("image/vit_tiny").embed(real_tiles(2)).shape == (2, 96)


def test_bad_sizes_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="not divisible by patch size"):
        ENCODERS.build("image/vit_tiny", img_size=60, patch_size=16)
    with pytest.raises(ValueError, match="multiple of 16"):
        ENCODERS.build("image/resnet18", img_size=40, patch_size=8)
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        ENCODERS.build("image/vit_tiny", spatial_dims=4)
    model = ENCODERS.build("image/vit_tiny", img_size=64)
    with pytest.raises(ValueError, match="C=3"):
        model.embed(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="img_size"):
        model.embed(torch.zeros(1, 3, 32, 32))


def test_registry_miss_lists_names() -> None:
    with pytest.raises(KeyError, match="image/vit_tiny") as err:
        ENCODERS.get("image/vit_tiyn")
    assert "sequence/transformer" in str(err.value)


def _train(model: torch.nn.Module, x: torch.Tensor, steps: int, lr: float) -> tuple[float, float]:
    """Loss at fixed masks (seeded) before and after ``steps`` Adam steps on random masks."""
    torch.manual_seed(123)
    before = float(model.masked_loss(x).detach())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model.masked_loss(x).backward()
        opt.step()
    torch.manual_seed(123)
    return before, float(model.masked_loss(x).detach())


def test_vit_mae_learns_real_he_like_tiles_and_embed_uses_trained_weights() -> None:
    torch.manual_seed(0)
    x = real_tiles(8, 32)
    model = ENCODERS.build("image/vit_tiny", img_size=32, patch_size=8)
    emb_before = model.embed(x).detach()
    before, after = _train(model, x, steps=25, lr=2e-3)
    assert after < 0.8 * before, (before, after)
    assert not torch.allclose(model.embed(x), emb_before)


def test_resnet_inpainting_learns_real_tiles() -> None:
    torch.manual_seed(0)
    model = ENCODERS.build("image/resnet18", img_size=32, patch_size=8)
    before, after = _train(model, real_tiles(4, 32), steps=10, lr=1e-3)
    assert after < 0.7 * before, (before, after)


def test_vit_mae_learns_real_mri_patches_3d() -> None:
    torch.manual_seed(0)
    model = ENCODERS.build("image/vit_tiny", spatial_dims=3, in_channels=1, img_size=16, patch_size=4)
    before, after = _train(model, real_mri_patches(4, 16), steps=25, lr=2e-3)
    assert after < 0.8 * before, (before, after)

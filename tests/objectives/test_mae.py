"""MAE and inpainting maths against slow hand-written references on real pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from biossl.objectives import OBJECTIVES
from biossl.objectives.mae import (
    MaskedAutoencoder,
    MaskedInpainting,
    masked_patch_mse,
    patchify,
    random_patch_mask,
)


def _tiles() -> torch.Tensor:
    img = skdata.immunohistochemistry()[:32, :64].astype(np.float32) / 255.0  # real IHC pixels
    return torch.from_numpy(np.stack([img[:, :32], img[:, 32:]])).permute(0, 3, 1, 2).contiguous()


def _reference(pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, p: int, norm: bool) -> float:
    total, count = 0.0, 0
    g = x.shape[-1] // p
    for n in range(x.shape[0]):
        for i in range(x.shape[2] // p):
            for j in range(g):
                if not mask[n, i * g + j]:
                    continue
                block = x[n, :, i * p : (i + 1) * p, j * p : (j + 1) * p].permute(1, 2, 0).reshape(-1)
                if norm:
                    block = (block - block.mean()) / torch.sqrt(block.var(unbiased=False) + 1e-6)
                total += float(((pred[n, i * g + j] - block) ** 2).mean())
                count += 1
    return total / count


@pytest.mark.parametrize("norm", [False, True])
def test_masked_patch_mse_matches_hand_reference(norm: bool) -> None:
    torch.manual_seed(0)
    x = _tiles()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 3, 5, 6, 9, 15]] = True
    mask[1, [1, 2, 7, 8, 12, 13]] = True
    pred = torch.randn(2, 16, 8 * 8 * 3)
    got = masked_patch_mse(pred, patchify(x, (8, 8)), mask, norm_pix=norm)
    assert got.item() == pytest.approx(_reference(pred, x, mask, 8, norm), rel=1e-5)


def test_loss_ignores_visible_patches() -> None:
    x = _tiles()
    target = patchify(x, (8, 8))
    mask = random_patch_mask(2, 16, 0.75)
    pred = torch.rand_like(target)
    base = masked_patch_mse(pred, target, mask)
    changed = pred.clone()
    changed[~mask] += 5.0
    assert masked_patch_mse(changed, target, mask).item() == pytest.approx(base.item())
    changed[mask] += 5.0
    assert masked_patch_mse(changed, target, mask).item() > base.item() + 1


def test_patchify_3d_order() -> None:
    x = torch.arange(2 * 4 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 4, 6)
    out = patchify(x, (2, 2, 3))
    assert out.shape == (1, 2 * 2 * 2, 2 * 2 * 3 * 2)
    # patch 3 is grid position (d=0, h=1, w=1); first pixel vector entry is channel 0 at (0, 2, 3)
    assert out[0, 3, 0] == x[0, 0, 0, 2, 3] and out[0, 3, 1] == x[0, 1, 0, 2, 3]


def test_random_mask_counts_and_visible_gather() -> None:
    mask = random_patch_mask(5, 16, 0.75)
    assert (mask.sum(1) == 12).all()
    tokens = torch.arange(16.0).reshape(1, 16, 1).expand(5, 16, 1)
    vis = MaskedAutoencoder.keep_visible(tokens, mask)
    for n in range(5):
        assert vis[n, :, 0].tolist() == torch.nonzero(~mask[n])[:, 0].float().tolist()
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(1, 4, 0.1)


def test_mae_decoder_output_and_registry() -> None:
    mae = OBJECTIVES.build("mae", img_size=32, patch_size=8, encoder_dim=24, decoder_dim=32, decoder_heads=4)
    assert isinstance(mae, MaskedAutoencoder)
    mask = mae.random_mask(2)
    pred = mae.decode(torch.randn(2, 4, 24), mask)
    assert pred.shape == (2, 16, 8 * 8 * 3)
    with pytest.raises(ValueError, match="decoder_dim"):
        MaskedAutoencoder(spatial_dims=3, img_size=16, patch_size=8, decoder_dim=32, decoder_heads=4)


def test_inpainting_zeroes_masked_patches_and_scores_them_only() -> None:
    x = _tiles()
    obj = MaskedInpainting(spatial_dims=2, in_channels=3, feature_channels=4, feature_stride=8, patch_size=8)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True  # the top row of patches
    corrupted, pixel_mask = obj.corrupt(x, mask)
    assert (corrupted[:, :, :8] == 0).all() and torch.equal(corrupted[:, :, 8:], x[:, :, 8:])
    feats = torch.randn(2, 4, 4, 4)
    loss = obj(feats, x, pixel_mask)
    noisy = x + (~pixel_mask) * torch.rand_like(x)
    assert obj(feats, noisy, pixel_mask).item() == pytest.approx(loss.item())
    assert obj(feats, x + pixel_mask * 1.0, pixel_mask).item() != pytest.approx(loss.item())

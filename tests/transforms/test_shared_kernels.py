"""The Gaussian blur and the count scaling shared by the views and the artifacts give what each gave before.

The ``_old_*`` functions are the code each module had before the two were shared (kept verbatim as the
reference); the outputs must be bit-identical on real inputs: the H&E fixture tile and 150 PBMC cells
of raw counts normalised by biossl (``normalize_total`` + ``log1p``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from biossl.data.expression import read_expression
from biossl.transforms import coin, uniform
from biossl.transforms.artifacts import BLUR_SIGMA, LIBRARY_LOG2_FOLD, _direction, batch_shift, blur, library_size
from biossl.transforms.expression_views import LibrarySizeScale, scale_counts
from biossl.transforms.tile_views import GaussianBlur, gaussian_blur


def _old_artifact_blur(t: torch.Tensor, sigma: float) -> torch.Tensor:
    n, c, h, w = t.shape
    radius = min(math.ceil(3 * sigma), min(h, w) - 1)
    if radius < 1:
        return t.clone()
    r = torch.arange(-radius, radius + 1, device=t.device, dtype=torch.float32)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = (k / k.sum()).repeat(c, 1)
    img = F.pad(t.float(), (radius, radius, radius, radius), mode="reflect")
    img = F.conv2d(img, k[:, None, None, :], groups=c)
    return F.conv2d(img, k[:, None, :, None], groups=c)


def _old_view_blur(x: torch.Tensor, sigma: tuple[float, float], p: float, generator: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    radius = min(math.ceil(3 * sigma[1]), min(h, w) - 1)
    sig = uniform(n, *sigma, like=x, generator=generator)
    on = coin(n, p, like=x, generator=generator).view(n, 1, 1, 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-(t[None] ** 2) / (2 * sig[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
    img = F.pad(x.float().reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    img = F.conv2d(img, kernel[:, None, None, :], groups=n * c)
    img = F.conv2d(img, kernel[:, None, :, None], groups=n * c).reshape(n, c, h, w)
    return torch.where(on, img.to(x.dtype), x)


def _old_artifact_scale_counts(y: torch.Tensor, log_fold: torch.Tensor, space: str) -> torch.Tensor:
    y = y.float()
    if space == "log1p":
        return torch.log1p(torch.exp(log_fold) * torch.expm1(y).clamp_min(0))
    return torch.log2(1 + torch.exp(log_fold) * (torch.exp2(y) - 1).clamp_min(0))


def _old_view_library(x: torch.Tensor, max_fold: float, space: str, p: float,
                      generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    bound = math.log(max_fold)
    scale = torch.exp(uniform(n, -bound, bound, like=x, generator=generator))[:, None]
    on = coin(n, p, like=x, generator=generator)[:, None]
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if space == "log1p":
        scaled = torch.log1p(scale * torch.expm1(work).clamp_min(0.0))
    else:
        scaled = torch.log2(1.0 + scale * (torch.exp2(work) - 1.0).clamp_min(0.0))
    return torch.where(on, scaled.to(x.dtype), x)


@pytest.fixture(scope="module")
def tiles(fixtures: Path) -> torch.Tensor:
    """The real 128 px H&E tile, mirrored and transposed: ``[3, 3, 128, 128]``."""
    rgb = np.asarray(Image.open(fixtures / "transforms" / "he_tile_128.png").convert("RGB"), dtype=np.float32) / 255
    tile = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    return torch.stack([tile, tile.flip(-1), tile.transpose(-1, -2)])


@pytest.fixture(scope="module")
def log_counts(fixtures: Path) -> torch.Tensor:
    adata = read_expression(fixtures / "expression" / "pbmc68k_counts.h5ad")
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


@pytest.mark.parametrize("strength", [0.1, 0.5, 1.0])
def test_blur_artifact_is_unchanged(tiles: torch.Tensor, strength: float) -> None:
    expected = _old_artifact_blur(tiles, BLUR_SIGMA * strength).clamp(0, 1)
    assert torch.equal(blur(tiles[None], strength)[0], expected)
    small = tiles[..., :5, :7]  # radius capped by the tile side
    assert torch.equal(blur(small[None], 1.0)[0], _old_artifact_blur(small, BLUR_SIGMA).clamp(0, 1))


@pytest.mark.parametrize(("sigma", "p", "dtype"), [((0.1, 1.5), 1.0, torch.float32), ((0.5, 2.0), 0.5, torch.float64)])
def test_blur_view_is_unchanged(tiles: torch.Tensor, sigma: tuple[float, float], p: float, dtype: torch.dtype) -> None:
    x = tiles.to(dtype)
    for seed in range(3):
        out = GaussianBlur(sigma=sigma, p=p)(x, torch.Generator().manual_seed(seed))
        assert out.dtype == dtype
        assert torch.equal(out, _old_view_blur(x, sigma, p, torch.Generator().manual_seed(seed)))


def test_one_sigma_per_instance_blurs_each_as_its_own_sigma_would(tiles: torch.Tensor) -> None:
    sigmas = torch.tensor([0.5, 1.0, 2.0])
    together = gaussian_blur(tiles, sigmas, 6)
    for i, s in enumerate(sigmas.tolist()):
        alone = gaussian_blur(tiles[i : i + 1], s, 6)[0]
        assert torch.allclose(together[i], alone, atol=1e-6)
    assert not torch.allclose(together[0], together[2], atol=1e-2)  # the sigmas differ, and so do the blurs


@pytest.mark.parametrize("strength", [0.25, 1.0])
def test_count_artifacts_are_unchanged(log_counts: torch.Tensor, strength: float) -> None:
    log2p = torch.log2(1 + torch.expm1(log_counts.double()))  # the same counts as a log2(1 + x) table
    log_fold = torch.tensor(-LIBRARY_LOG2_FOLD * strength * math.log(2))
    for space, y in (("log1p", log_counts), ("log2p", log2p.float()), ("log1p", log_counts.double())):
        expected = _old_artifact_scale_counts(y, log_fold, space)
        assert torch.equal(library_size(y, strength, space=space), expected)
    d = (strength * _direction(log_counts.shape[-1], 3)).float()
    for space, y in (("log1p", log_counts), ("log2p", log2p)):
        expected = _old_artifact_scale_counts(y, d, space)
        assert torch.equal(batch_shift(y, strength, space=space, signature_seed=3), expected)


@pytest.mark.parametrize("space", ["log1p", "log2p"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_library_size_view_is_unchanged(log_counts: torch.Tensor, space: str, dtype: torch.dtype) -> None:
    y = log_counts.to(dtype)
    mask = torch.ones_like(y, dtype=torch.bool)
    for seed in range(2):
        out, _ = LibrarySizeScale(max_fold=2.0, space=space, p=0.5)(y, mask, torch.Generator().manual_seed(seed))
        assert torch.equal(out, _old_view_library(y, 2.0, space, 0.5, torch.Generator().manual_seed(seed)))


def test_scale_counts_refuses_z_scores(log_counts: torch.Tensor) -> None:
    assert torch.allclose(scale_counts(log_counts, torch.tensor(1.0), "log1p"), log_counts, atol=1e-5)  # c = 1
    with pytest.raises(ValueError, match="log-count spaces"):
        scale_counts(log_counts, torch.tensor(2.0), "zscore")

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biossl.errors import InputError
from biossl.transforms import Compose, make_views
from biossl.transforms.stain import HEDJitter
from biossl.transforms.tile_views import ColorJitter, GaussianBlur, RandomFlip, RandomResizedCrop, RandomRot90


@pytest.fixture(scope="module")
def tiles(fixtures: Path) -> torch.Tensor:
    rgb = np.asarray(Image.open(fixtures / "transforms" / "he_tile_128.png").convert("RGB"), dtype=np.float32) / 255
    tile = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    # 6 distinct real 64x64 tiles cut from the fixture
    return torch.stack([tile[:, y : y + 64, x : x + 64] for y in (0, 32, 64) for x in (0, 64)])


def _seed(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(s)


ALL_VIEWS = [
    RandomResizedCrop(),
    RandomFlip(dim=-1, p=0.5),
    RandomFlip(dim=-2, p=0.5),
    RandomRot90(),
    HEDJitter(),
    ColorJitter(),
    GaussianBlur(),
]


@pytest.mark.parametrize("view", ALL_VIEWS, ids=lambda v: type(v).__name__)
def test_view_keeps_shape_dtype_range_and_changes_input(view: torch.nn.Module, tiles: torch.Tensor) -> None:
    out = view(tiles, _seed(0))
    assert out.shape == tiles.shape and out.dtype == tiles.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, tiles)
    assert torch.equal(out, view(tiles, _seed(0)))
    bags = tiles.view(2, 3, 3, 64, 64)  # [B, K, 3, H, W] bags are flattened and restored
    assert view(bags, _seed(0)).shape == bags.shape


def test_flip_and_rot90_only_permute_pixels(tiles: torch.Tensor) -> None:
    out = RandomRot90()(tiles, _seed(1))
    for x, y in zip(tiles, out):
        assert any(torch.equal(y, torch.rot90(x, k, dims=(-2, -1))) for k in range(4))
    assert not all(torch.equal(x, y) for x, y in zip(tiles, out))
    flipped = RandomFlip(dim=-1, p=1.0)(tiles)
    assert torch.equal(flipped, tiles.flip(-1))
    wide = tiles[:, :, :32, :]  # non-square: only 0 or 180 degrees, shape kept
    out_wide = RandomRot90()(wide, _seed(2))
    assert out_wide.shape == wide.shape
    for x, y in zip(wide, out_wide):
        assert torch.equal(y, x) or torch.equal(y, torch.rot90(x, 2, dims=(-2, -1)))


def test_full_crop_is_identity_and_small_crop_zooms(tiles: torch.Tensor) -> None:
    same = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))(tiles, _seed(0))
    assert float((same - tiles).abs().max()) < 1e-5
    zoom = RandomResizedCrop(scale=(0.25, 0.25), ratio=(1.0, 1.0))(tiles, _seed(0))

    def roughness(t: torch.Tensor) -> float:
        return float((t[..., 1:] - t[..., :-1]).abs().mean())

    assert roughness(zoom) < 0.7 * roughness(tiles)  # 2x upsampling smooths neighbouring pixels


def test_blur_smooths_and_colour_jitter_with_zero_strength_is_identity(tiles: torch.Tensor) -> None:
    blurred = GaussianBlur(sigma=(1.0, 1.0), p=1.0)(tiles)
    assert float((blurred[..., 1:] - blurred[..., :-1]).abs().mean()) < 0.7 * float(
        (tiles[..., 1:] - tiles[..., :-1]).abs().mean()
    )
    assert torch.allclose(blurred.mean((-2, -1)), tiles.mean((-2, -1)), atol=0.01)  # kernel sums to 1
    still = ColorJitter(brightness=0, contrast=0, saturation=0, hue=0, p=1.0)(tiles)
    assert float((still - tiles).abs().max()) < 1e-5


def test_make_views_gives_two_different_views_and_none_is_identity(tiles: torch.Tensor) -> None:
    views = make_views("wsi")
    v1, v2 = views(tiles), views(tiles)
    assert v1.shape == tiles.shape and not torch.equal(v1, v2)
    a, b = views(tiles, _seed(5)), views(tiles, _seed(5))
    assert torch.equal(a, b)
    assert torch.equal(make_views("wsi", "none")(tiles), tiles)
    torch.manual_seed(9)  # without a generator, views follow the global RNG
    c = views(tiles)
    torch.manual_seed(9)
    assert torch.equal(views(tiles), c)
    half = views(tiles.half(), _seed(5))  # e.g. under autocast
    assert half.dtype == torch.float16 and float((half.float() - a).abs().mean()) < 0.01
    views.apply(lambda m: None)  # nn.Module.apply (used for weight init) is not shadowed
    strong = make_views("wsi", "strong")(tiles, _seed(5))
    light = make_views("wsi", "light")(tiles, _seed(5))
    assert float((strong - tiles).abs().mean()) > float((light - tiles).abs().mean())
    no_blur = make_views("wsi", blur_p=0.0)
    assert isinstance(no_blur, Compose)
    assert not any(isinstance(v, GaussianBlur) for v in no_blur.views)


def test_make_views_rejects_bad_names() -> None:
    with pytest.raises(InputError, match="Did you mean 'strong'"):
        make_views("wsi", "strnog")
    with pytest.raises(InputError, match="known: slide, volume, table, sequence"):
        make_views("tiles")
    with pytest.raises(InputError, match="blur_q"):
        make_views("wsi", blur_q=0.1)
    with pytest.raises(InputError, match="probability"):
        make_views("wsi", flip_p=1.5)

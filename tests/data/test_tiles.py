from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from biossl.data import tiles as tiles_mod
from biossl.data.tiles import (
    SlideTiles,
    TileDataset,
    cached_handle,
    premultiplied_to_rgb,
    read_rgb,
    tiles_to_float,
)
from biossl.data.tiling import tile_slide
from biossl.data.wsi import Slide, rgba_to_rgb
from biossl.errors import SlideError


@pytest.fixture()
def he_h5(fixtures: Path, tmp_path: Path) -> Path:
    return tile_slide(fixtures / "wsi" / "he_small.svs", tmp_path / "a").h5_path


@pytest.fixture()
def he_h5_coarse(fixtures: Path, tmp_path: Path) -> Path:
    return tile_slide(fixtures / "wsi" / "he_small.svs", tmp_path / "b", mpp=1.0).h5_path


def test_read_matches_direct_read_region(he_h5: Path, fixtures: Path) -> None:
    tiles = SlideTiles(he_h5)
    assert len(tiles) == 4
    with Slide(fixtures / "wsi" / "he_small.svs") as slide:
        for i in range(len(tiles)):
            tile = tiles.read(i)
            assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
            x, y = tiles.coords[i]
            np.testing.assert_array_equal(tile, slide.read_region((int(x), int(y)), 0, (256, 256)))


def test_read_resizes_to_tile_size(he_h5_coarse: Path, fixtures: Path) -> None:
    tiles = SlideTiles(he_h5_coarse)
    assert tiles.read_size == 512 and len(tiles) == 1
    tile = tiles.read(0)
    assert tile.shape == (256, 256, 3)
    with Slide(fixtures / "wsi" / "he_small.svs") as slide:
        full = slide.read_region((512, 0), 0, (512, 512))
    expected = np.asarray(Image.fromarray(full).resize((256, 256), Image.Resampling.BILINEAR))
    assert np.abs(tile.astype(int) - expected.astype(int)).max() <= 2


def test_cmu_tiles_match_openslide(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    tiles = SlideTiles(tile_slide(path, tmp_path).h5_path)
    raw = openslide.OpenSlide(str(path))
    for i in (0, len(tiles) // 2, len(tiles) - 1):
        x, y = (int(v) for v in tiles.coords[i])
        ref = raw.read_region((x, y), 0, (257, 257)).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR)
        np.testing.assert_array_equal(tiles.read(i), np.asarray(ref))


def test_dataset_spans_slides(he_h5: Path, he_h5_coarse: Path) -> None:
    ds = TileDataset([he_h5, he_h5_coarse])
    assert len(ds) == 5
    assert [ds.locate(i) for i in (0, 3, 4)] == [(0, 0), (0, 3), (1, 0)]
    x, slide = ds[4]
    assert slide == 1 and x.shape == (3, 256, 256) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and x.is_contiguous()
    expected = torch.from_numpy(SlideTiles(he_h5).read(2)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(ds[2][0], expected)
    with pytest.raises(IndexError):
        ds[5]
    flipped = TileDataset([he_h5], transform=lambda t: t.flip(-1))
    torch.testing.assert_close(flipped[0][0], ds[0][0].flip(-1))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_dataloader_two_workers(he_h5: Path, he_h5_coarse: Path, dtype: str) -> None:
    ds = TileDataset([he_h5, he_h5_coarse], dtype=dtype)  # type: ignore[arg-type]
    serial = torch.stack([ds[i][0] for i in range(len(ds))])
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    xs, slides = zip(*loader)
    batch = torch.cat(xs)
    assert batch.dtype == getattr(torch, dtype) and batch.shape == (5, 3, 256, 256)
    torch.testing.assert_close(batch, serial)
    assert torch.cat(slides).tolist() == [0, 0, 0, 0, 1]


def test_uint8_tiles(he_h5: Path, he_h5_coarse: Path) -> None:
    ds8 = TileDataset([he_h5, he_h5_coarse], dtype="uint8")
    ds32 = TileDataset([he_h5, he_h5_coarse], dtype="float32")
    for i in (0, 4):  # 4 is read at 512 px and resized
        x, slide = ds8[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 256, 256) and x.is_contiguous()
        hwc = ds8.slides[slide].read(ds8.locate(i)[1])
        np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), hwc)
        torch.testing.assert_close(tiles_to_float(x), ds32[i][0])
        assert int(x.max()) > 1  # real 0-255 values, not [0, 1]
    already = ds32[0][0]
    assert tiles_to_float(already) is already  # float tiles pass through
    with pytest.raises(ValueError, match="uint8.*float32.*'float16'"):
        TileDataset([he_h5], dtype="float16")  # type: ignore[arg-type]


# (x, y) at level 0: inside, straddling the right/bottom edge, and above-left of the slide (transparent).
_REGIONS = [(0, 0), (333, 211), (-1, -1), (-30, -40)]


def _edges(w: int, h: int) -> list[tuple[int, int]]:
    return [(x if x >= 0 else w + 100 * x, y if y >= 0 else h + 50 * y) for x, y in _REGIONS[:3]] + [_REGIONS[3]]


@pytest.mark.parametrize("name", ["he_small.svs", "glass.svs"])
def test_fast_read_equals_pil_path(fixtures: Path, name: str) -> None:
    handle = openslide.OpenSlide(str(fixtures / "wsi" / name))
    w, h = handle.dimensions
    saw_transparent = False
    for level in range(handle.level_count):
        for loc in _edges(w, h):
            region = handle.read_region(loc, level, (256, 192))
            fast = read_rgb(handle, loc, level, (256, 192))
            assert fast.shape == (192, 256, 3) and fast.dtype == np.uint8 and fast.flags.c_contiguous
            chw = read_rgb(handle, loc, level, (256, 192), channels_first=True)
            np.testing.assert_array_equal(chw, fast.transpose(2, 0, 1))
            alpha = np.asarray(region)[..., 3]
            if alpha.min() == 255:
                np.testing.assert_array_equal(fast, np.asarray(region.convert("RGB")))
                continue
            saw_transparent = True
            pil = rgba_to_rgb(region)
            assert (fast[alpha == 0] == 255).all()  # outside the slide: white
            np.testing.assert_array_equal(fast[alpha == 255], pil[alpha == 255])
            # Edge pixels with partial alpha: PIL un-premultiplies, then composites; both round.
            assert np.abs(fast.astype(int) - pil.astype(int)).max() <= 1
    assert saw_transparent


def test_fast_read_cmu(shared_data: Path) -> None:
    handle = openslide.OpenSlide(str(shared_data / "wsi" / "CMU-1-Small-Region.svs"))
    rng = np.random.default_rng(0)
    w, h = handle.dimensions
    locs = [(int(rng.integers(0, w - 300)), int(rng.integers(0, h - 300))) for _ in range(20)] + _edges(w, h)
    for loc in locs:
        region = handle.read_region(loc, 0, (300, 300))
        np.testing.assert_array_equal(read_rgb(handle, loc, 0, (300, 300)), rgba_to_rgb(region))
        if np.asarray(region)[..., 3].min() == 255:
            np.testing.assert_array_equal(read_rgb(handle, loc, 0, (300, 300)), np.asarray(region.convert("RGB")))


def test_partial_alpha_composited_on_white(fixtures: Path) -> None:
    # Real H&E pixels with an alpha ramp 0..255, premultiplied as OpenSlide's C library returns them.
    with Slide(fixtures / "wsi" / "he_small.svs") as slide:
        rgb = slide.read_region((256, 256), 0, (256, 64)).astype(np.uint32)
    alpha = np.tile(np.arange(256, dtype=np.uint32), (64, 1))
    pre = (rgb * alpha[..., None] + 127) // 255
    argb = (alpha << 24) | (pre[..., 0] << 16) | (pre[..., 1] << 8) | pre[..., 2]
    rgba = Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA")
    ours = premultiplied_to_rgb(argb)
    ref = rgba_to_rgb(rgba)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    np.testing.assert_array_equal(ours[:, 0], 255)  # alpha 0: white
    np.testing.assert_array_equal(ours[:, 255], rgb[:, 255])  # opaque: unchanged
    np.testing.assert_array_equal(premultiplied_to_rgb(argb, channels_first=True), ours.transpose(2, 0, 1))


def test_pil_fallback_and_read_errors(he_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiles = SlideTiles(he_h5)
    fast = [tiles.read(i) for i in range(len(tiles))]
    monkeypatch.setattr(tiles_mod, "_READ_INTO", None)  # openslide-python without the private binding
    for i, expected in enumerate(fast):
        np.testing.assert_array_equal(tiles.read(i), expected)
        np.testing.assert_array_equal(tiles.read(i, channels_first=True), expected.transpose(2, 0, 1))

    def broken(*_args: object) -> None:
        raise openslide.OpenSlideError("JPEG decode failed")

    monkeypatch.setattr(tiles_mod, "_READ_INTO", broken)
    with pytest.raises(SlideError, match=r"he_small\.svs: tile 1 at .*JPEG decode failed"):
        tiles.read(1)


def test_handle_cache_is_per_process_and_bounded(he_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = SlideTiles(he_h5).slide_path
    assert cached_handle(path) is cached_handle(path)
    assert list(tiles_mod._HANDLES) == [os.getpid()]
    # A cache left by another process (as after fork) is dropped, not reused.
    monkeypatch.setattr(tiles_mod, "_HANDLES", {-1: tiles_mod._HANDLES[os.getpid()]})
    first = cached_handle(path)
    assert list(tiles_mod._HANDLES) == [os.getpid()]
    monkeypatch.setattr(tiles_mod, "MAX_OPEN_SLIDES", 1)
    cached_handle(str(Path(path).with_name("glass.svs")))
    assert path not in tiles_mod._HANDLES[os.getpid()]
    assert cached_handle(path) is not first


def test_bad_inputs(he_h5: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(SlideError, match=r"junk\.h5.*run `biossl tile` again"):
        SlideTiles(junk)
    with pytest.raises(SlideError, match=r"moved\.svs.*is missing"):
        SlideTiles(he_h5, slide_path=tmp_path / "moved.svs")

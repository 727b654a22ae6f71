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
from biossl.data.tiles import SlideTiles, TileDataset, cached_handle
from biossl.data.tiling import tile_slide
from biossl.data.wsi import Slide
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


def test_dataloader_two_workers(he_h5: Path, he_h5_coarse: Path) -> None:
    ds = TileDataset([he_h5, he_h5_coarse])
    serial = torch.stack([ds[i][0] for i in range(len(ds))])
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    xs, slides = zip(*loader)
    torch.testing.assert_close(torch.cat(xs), serial)
    assert torch.cat(slides).tolist() == [0, 0, 0, 0, 1]


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

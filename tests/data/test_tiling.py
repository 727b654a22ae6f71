from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import biossl
from biossl.data.tiling import NoTissueError, choose_level, select_shard, slide_key, tile_slide, tile_slides
from biossl.data.tissue import saturation
from biossl.data.wsi import Slide
from biossl.errors import SlideError


@pytest.fixture()
def he_small(fixtures: Path) -> Path:
    return fixtures / "wsi" / "he_small.svs"


def _coords(h5: Path) -> set[tuple[int, int]]:
    with h5py.File(h5, "r") as f:
        return {(int(x), int(y)) for x, y in f["coords"][:]}


def test_tiles_cover_exactly_the_tissue(he_small: Path, tmp_path: Path) -> None:
    r = tile_slide(he_small, tmp_path)
    assert (r.level, r.read_size, r.n_tiles) == (0, 256, 4)
    # The H&E tile occupies level-0 x 512-1024, y 0-512: exactly four 256 px tiles.
    assert _coords(r.h5_path) == {(512, 0), (768, 0), (512, 256), (768, 256)}
    assert r.tissue_fraction == pytest.approx(512 * 512 / (1280 * 768), abs=0.03)
    with h5py.File(r.h5_path, "r") as f:
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (4, 2)
        assert np.all(f["tissue"][:] > 0.95)
        attrs = dict(f.attrs)
    assert attrs["slide_path"] == str(he_small.resolve())
    assert (attrs["level"], attrs["read_size"], attrs["tile_size"]) == (0, 256, 256)
    assert attrs["target_mpp"] == 0.5 and attrs["slide_mpp"] == 0.5 and attrs["downsample"] == 1.0
    assert attrs["biossl_version"] == biossl.__version__ and attrs["n_tiles"] == 4
    thumb = Image.open(r.thumbnail_path)
    assert thumb.size == (320, 192)
    # Kept tiles are outlined in green on the thumbnail.
    assert tuple(np.asarray(thumb.convert("RGB"))[0, 128]) == (0, 160, 0)


def test_coarser_mpp_doubles_read_size(he_small: Path, tmp_path: Path) -> None:
    r = tile_slide(he_small, tmp_path, mpp=1.0)
    assert (r.level, r.read_size) == (0, 512)
    assert _coords(r.h5_path) == {(512, 0)}


def test_level_choice(he_small: Path) -> None:
    with Slide(he_small) as slide:
        assert choose_level(slide, mpp=0.5, tile_size=256) == (0, 256)
        assert choose_level(slide, mpp=1.0, tile_size=256) == (0, 512)
        assert choose_level(slide, mpp=1.9, tile_size=256) == (0, 973)
        assert choose_level(slide, mpp=2.0, tile_size=256) == (1, 256)
        assert choose_level(slide, mpp=4.0, tile_size=224) == (1, 448)
        with pytest.raises(SlideError, match="coarser than the requested --mpp 0.25"):
            choose_level(slide, mpp=0.25, tile_size=256)


def test_missing_mpp_and_override(fixtures: Path, tmp_path: Path) -> None:
    path = fixtures / "wsi" / "he_small_nompp.svs"
    with pytest.raises(SlideError, match=r"he_small_nompp\.svs.*--slide-mpp"):
        tile_slide(path, tmp_path)
    r = tile_slide(path, tmp_path, slide_mpp=0.25, mpp=0.5)
    assert (r.level, r.read_size, r.n_tiles) == (0, 512, 1)


def test_cmu_tiles_inside_tissue(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    r05 = tile_slide(path, tmp_path / "a", mpp=0.5)
    r10 = tile_slide(path, tmp_path / "b", mpp=1.0)
    assert (r05.level, r10.level) == (0, 0)
    assert r05.read_size == 257 and r10.read_size == 513  # 256 * 0.5 / 0.499, and twice that
    assert 20 <= r05.n_tiles <= 60 and 0.2 < r05.tissue_fraction < 0.6
    coords = np.array(sorted(_coords(r05.h5_path)))
    assert np.all(coords % 257 == 0)
    assert np.all(coords[:, 0] + 257 <= 2220) and np.all(coords[:, 1] + 257 <= 2967)
    with Slide(path) as slide:
        kept = [saturation(slide.read_region(tuple(c), 0, (257, 257))).mean() for c in coords]
        corner = saturation(slide.read_region((0, 0), 0, (257, 257))).mean()
    assert min(kept) > 3 * corner  # every kept tile is stained tissue, the glass corner is not
    assert (0, 0) not in _coords(r05.h5_path)


def test_no_tissue_slide(
    fixtures: Path, he_small: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    glass = fixtures / "wsi" / "glass.svs"
    with pytest.raises(NoTissueError, match=r"glass\.svs.*lower --min-tissue"):
        tile_slide(glass, tmp_path)
    assert not (tmp_path / f"{slide_key(glass)}.h5").exists()
    assert (tmp_path / f"{slide_key(glass)}_thumbnail.png").exists()  # so a person can see why
    with caplog.at_level(logging.WARNING):
        results = tile_slides([glass, he_small], tmp_path, progress=False)
    assert [r.slide.name for r in results] == ["he_small.svs"]
    assert "glass.svs" in caplog.text


def test_resume_skips_finished_slides(he_small: Path, tmp_path: Path) -> None:
    first = tile_slides([he_small], tmp_path, progress=False)
    mtime = first[0].h5_path.stat().st_mtime_ns
    second = tile_slides([he_small], tmp_path, progress=False)
    assert second[0].reused and not first[0].reused
    assert second[0].n_tiles == first[0].n_tiles == 4
    assert first[0].h5_path.stat().st_mtime_ns == mtime
    with pytest.raises(SlideError, match="target_mpp=0.5 \\(now 1.0\\)"):
        tile_slides([he_small], tmp_path, progress=False, mpp=1.0)
    first[0].h5_path.write_bytes(b"not hdf5")  # a damaged output is redone
    third = tile_slides([he_small], tmp_path, progress=False)
    assert not third[0].reused and _coords(third[0].h5_path) == _coords(second[0].h5_path)


def test_shards_split_sorted_slides(he_small: Path, tmp_path: Path) -> None:
    slides = []
    for name in ("c.svs", "a.svs", "b.svs"):
        shutil.copy(he_small, tmp_path / name)
        slides.append(tmp_path / name)
    assert [p.name for p in select_shard(slides, (0, 2))] == ["a.svs", "c.svs"]
    assert [p.name for p in select_shard(slides, (1, 2))] == ["b.svs"]
    out = tmp_path / "out"
    done = tile_slides(slides, out, shard=(1, 2), progress=False)
    assert [r.slide.name for r in done] == ["b.svs"]
    assert sorted(p.name for p in out.glob("*.h5")) == [f"{slide_key(tmp_path / 'b.svs')}.h5"]
    with pytest.raises(SlideError, match="0 <= i < n"):
        select_shard(slides, (2, 2))


def test_bad_slides_fail_before_any_work(fixtures: Path, he_small: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(SlideError, match=r"2 of 3 slides cannot be tiled") as info:
        tile_slides([he_small, junk, fixtures / "wsi" / "he_small_nompp.svs"], tmp_path / "o", progress=False)
    # Slides are reported in path order, which depends on where the checkout and tmp live.
    assert "junk.svs is not a whole-slide image" in str(info.value)
    assert "he_small_nompp.svs has no µm/px" in str(info.value)
    assert not (tmp_path / "o").exists()
    other = tmp_path / "x"
    other.mkdir()
    shutil.copy(he_small, other / "he_small.svs")
    # the same name and content twice (a copy): tiled once, both slides listed (different content: see
    # tests/reliability/test_cache_identity.py)
    twice = tile_slides([he_small, other / "he_small.svs"], tmp_path / "o", progress=False)
    assert {r.slide for r in twice} == {he_small, other / "he_small.svs"}
    assert [p.name for p in (tmp_path / "o").glob("*.h5")] == [f"{slide_key(he_small)}.h5"]


def test_failed_write_leaves_no_output(
    he_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError, match="disk full"):
        tile_slide(he_small, tmp_path)
    assert not list(tmp_path.glob("*.h5"))
    assert not list(tmp_path.glob("*.tmp"))

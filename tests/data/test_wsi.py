from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biossl.data.tissue import detect_tissue, saturation
from biossl.data.wsi import Slide, probe
from biossl.errors import SlideError


@pytest.fixture()
def he_small(fixtures: Path) -> Path:
    return fixtures / "wsi" / "he_small.svs"


def test_slide_metadata_and_read(he_small: Path) -> None:
    with Slide(he_small) as slide:
        assert slide.level_dimensions == ((1280, 768), (320, 192))
        assert slide.level_downsamples == (1.0, 4.0)
        assert slide.mpp == pytest.approx(0.5)
        assert slide.level_mpp(1) == pytest.approx(2.0)
        tissue = slide.read_region((512, 0), 0, (512, 512))
        glass = slide.read_region((0, 512), 0, (256, 256))
    assert tissue.shape == (512, 512, 3) and tissue.dtype == np.uint8
    # The H&E tile is darker and far more saturated than the glass around it.
    assert tissue.mean() < glass.mean() - 30
    assert saturation(tissue).mean() > 3 * saturation(glass).mean()


def test_missing_mpp_names_file_and_fix(fixtures: Path) -> None:
    path = fixtures / "wsi" / "he_small_nompp.svs"
    with pytest.raises(SlideError, match=r"he_small_nompp\.svs.*--slide-mpp"):
        Slide(path)
    with Slide(path, slide_mpp=0.25) as slide:
        assert slide.mpp == 0.25
        assert slide.level_mpp(1) == pytest.approx(1.0)
    for bad in (-1.0, 0.00025, 1e-9, 250.0, float("nan")):  # 0.00025: 0.25 µm/px written in mm
        with pytest.raises(SlideError, match="outside the plausible range 0.05-100"):
            Slide(path, slide_mpp=bad)
    with Slide(fixtures / "wsi" / "he_small.svs", slide_mpp=0.25) as slide:  # the file's own value wins
        assert (slide.mpp, slide.file_mpp, slide.mpp_source, slide.overridden) == (0.5, 0.5, "file", False)
    with Slide(fixtures / "wsi" / "he_small.svs", override_mpp=0.25) as slide:
        assert (slide.mpp, slide.file_mpp, slide.mpp_source, slide.overridden) == (0.25, 0.5, "override", True)


def test_not_a_slide(tmp_path: Path) -> None:
    bad = tmp_path / "notes.svs"
    bad.write_text("patient 7, left breast\n")
    with pytest.raises(SlideError, match=r"notes\.svs.*not a whole-slide image"):
        probe(bad)
    with pytest.raises(SlideError, match=r"missing\.svs.*does not exist"):
        Slide(tmp_path / "missing.svs")


def test_truncated_slide(tmp_path: Path, he_small: Path) -> None:
    data = he_small.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideError, match=r"cut\.svs"):
        probe(cut)


def test_probe_accepts_real_and_synthetic_slides(he_small: Path, shared_data: Path) -> None:
    probe(he_small)
    probe(shared_data / "wsi" / "CMU-1-Small-Region.svs")
    probe(shared_data / "wsi" / "synthetic_openslide_fixtures" / "boxes.tiff")
    boxes_tiff = shared_data / "wsi" / "synthetic_openslide_fixtures" / "boxes.tiff"
    # a plain TIFF's 72 dpi reads as 352.8 µm/px: not a scanner's value, so the slide needs one given
    with pytest.raises(SlideError, match=r"boxes\.tiff has no µm/px .*records 352\.778 µm/px.*ignored.*--slide-mpp"):
        Slide(boxes_tiff)
    with Slide(boxes_tiff, slide_mpp=0.25) as boxes:
        assert boxes.level_count == 4 and boxes.ignored_mpp == pytest.approx(352.778, abs=1e-3)
        assert (boxes.mpp, boxes.file_mpp, boxes.mpp_source) == (0.25, None, "given")


def test_cmu_metadata(shared_data: Path) -> None:
    with Slide(shared_data / "wsi" / "CMU-1-Small-Region.svs") as slide:
        assert slide.level_dimensions == ((2220, 2967),)
        assert slide.mpp == pytest.approx(0.499)


def test_tissue_mask_finds_the_tile(he_small: Path) -> None:
    with Slide(he_small) as slide:
        tissue = detect_tissue(slide)
    assert tissue.mask.shape == (192, 320)
    assert tissue.downsample == (4.0, 4.0)
    # The H&E tile spans level-0 x 512-1024, y 0-512: mask x 128-256, y 0-128.
    assert tissue.mask[8:120, 136:248].mean() > 0.95
    assert tissue.mask[:, :120].mean() < 0.01 and tissue.mask[136:, :].mean() < 0.01
    assert tissue.fraction == pytest.approx(512 * 512 / (1280 * 768), abs=0.03)


def test_glass_has_no_tissue(fixtures: Path) -> None:
    with Slide(fixtures / "wsi" / "glass.svs") as slide:
        tissue = detect_tissue(slide)
    assert tissue.fraction == 0.0

"""The manifest's ``slide_mpp`` column: per-slide level-0 µm/px for a cohort that mixes slides with and without it.

A row's value supplies the µm/px of a slide whose file records none; a slide whose file records it keeps
its own (a row value that disagrees is a bad row; ``override_slide_mpp`` replaces the file's value).

Slides: ``tests/fixtures/wsi/he_small_nompp.svs`` (the repo's real H&E slide without ``MPP`` in its
ImageDescription) copied as ``a.svs``, and ``he_small.svs`` (the same slide with 0.5 µm/px) as ``b.svs``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest

from biossl.data.bags import BagSpec
from biossl.data.tiling import output_paths, tile_slides
from biossl.errors import InputError, SlideError
from biossl.modules.datamodule import BagDataModule

SPEC = BagSpec(tiles=2, tile_px=32, modalities=("wsi",))


def _manifest(folder: Path, slide_mpp: list[object] | None) -> Path:
    """P1: ``a.svs`` (no µm/px), P2: ``b.svs`` (0.5 µm/px); a ``slide_mpp`` column when given."""
    table = pd.DataFrame({"patient_id": ["P1", "P2"], "modality": "wsi", "path": ["a.svs", "b.svs"]})
    if slide_mpp is not None:
        table["slide_mpp"] = slide_mpp
    table.to_csv(folder / "m.csv", index=False)
    return folder / "m.csv"


@pytest.fixture()
def folder(fixtures: Path, tmp_path: Path) -> Path:
    shutil.copy(fixtures / "wsi" / "he_small_nompp.svs", tmp_path / "a.svs")
    shutil.copy(fixtures / "wsi" / "he_small.svs", tmp_path / "b.svs")
    return tmp_path


def _attrs(out: Path, slide: Path) -> tuple[float, str, int]:
    with h5py.File(output_paths(out, slide)[0], "r") as f:
        return float(f.attrs["slide_mpp"]), str(f.attrs["slide_mpp_source"]), int(f.attrs["n_tiles"])


def test_column_supplies_mpp_of_the_slide_without_it(folder: Path) -> None:
    manifest = _manifest(folder, ["0.5", ""])
    dm = BagDataModule(manifest, work_dir=folder / "work", spec=SPEC)
    dm.prepare_data()
    tiles = folder / "work" / "tiles"
    assert _attrs(tiles, folder / "a.svs") == (0.5, "given", 4)  # the row's value, recorded as given
    assert _attrs(tiles, folder / "b.svs") == (0.5, "file", 4)  # its own metadata
    dm.setup("fit")
    assert dm.dataset is not None and dm.dataset[(0, 0)]["wsi"]["x"].shape == (2, 3, 32, 32)


def test_row_value_wins_over_data_slide_mpp_which_fills_empty_rows(folder: Path) -> None:
    manifest = _manifest(folder, [0.5, None])
    BagDataModule(manifest, work_dir=folder / "work", spec=SPEC, slide_mpp=0.25).prepare_data()
    tiles = folder / "work" / "tiles"
    assert _attrs(tiles, folder / "a.svs")[:2] == (0.5, "given")
    assert _attrs(tiles, folder / "b.svs")[:2] == (0.5, "file")  # data.slide_mpp leaves b's own µm/px alone


def test_per_slide_value_is_a_reuse_parameter(folder: Path) -> None:
    work = folder / "work"
    BagDataModule(_manifest(folder, [0.5, None]), work_dir=work, spec=SPEC).prepare_data()
    h5 = output_paths(work / "tiles", folder / "a.svs")[0]
    stamp = h5.stat().st_mtime_ns
    BagDataModule(_manifest(folder, [0.5, None]), work_dir=work, spec=SPEC).prepare_data()
    assert h5.stat().st_mtime_ns == stamp  # reused
    with pytest.raises(SlideError, match=r"a\.[0-9a-f]+\.h5 was made with slide_mpp=0\.5 \(now 0\.4\)"):
        BagDataModule(_manifest(folder, [0.4, None]), work_dir=work, spec=SPEC).prepare_data()


@pytest.mark.parametrize("bad", ["abc", "0", "-0.5", "inf", "0.00025"])
def test_bad_value_names_the_row_patient_and_file(folder: Path, bad: str) -> None:
    manifest = _manifest(folder, [bad, ""])
    dm = BagDataModule(manifest, work_dir=folder / "work", spec=SPEC, slide_mpp=0.5)
    with pytest.raises(InputError, match=r"row 2: patient 'P1', wsi file .*a\.svs: slide_mpp .* (is not a number|is "
                                         r"outside the plausible range 0\.05-100).*leave the cell empty"):
        dm.prepare_data()
    assert not (folder / "work" / "tiles").exists()  # nothing tiled before the error


def test_row_value_disagreeing_with_the_file_is_a_bad_row(folder: Path) -> None:
    """b.svs records 0.5 µm/px: a row saying 0.25 would silently rescale it; override_slide_mpp replaces it."""
    dm = BagDataModule(_manifest(folder, ["0.5", "0.25"]), work_dir=folder / "work", spec=SPEC)
    with pytest.raises(InputError, match=r"row 3: patient 'P2', wsi file b\.svs: slide_mpp 0\.25 disagrees with the "
                                         r"0\.5 µm/px that the file records.*override_slide_mpp"):
        dm.prepare_data()
    assert not (folder / "work" / "tiles").exists()
    # within 2 % (a scanner's rounding) the file's own value is used
    BagDataModule(_manifest(folder, ["0.5", "0.505"]), work_dir=folder / "w2", spec=SPEC).prepare_data()
    assert _attrs(folder / "w2" / "tiles", folder / "b.svs")[:2] == (0.5, "file")


def test_override_column_replaces_the_file_value_and_logs(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = _manifest(folder, ["0.5", ""])
    table = pd.read_csv(manifest, dtype=str)
    table["override_slide_mpp"] = ["", "0.25"]
    table.to_csv(manifest, index=False)
    with caplog.at_level("WARNING", logger="biossl.data.tiling"):
        BagDataModule(manifest, work_dir=folder / "work", spec=SPEC).prepare_data()
    assert _attrs(folder / "work" / "tiles", folder / "b.svs") == (0.25, "override", 1)
    assert "b.svs: µm/px replaced by --override-slide-mpp: its file records 0.5, tiling with 0.25" in caplog.text


def test_without_a_value_the_missing_mpp_error_names_the_row(folder: Path) -> None:
    for column in (None, ["", "0.5"]):  # no column, or a column empty on the slide without µm/px
        dm = BagDataModule(_manifest(folder, column), work_dir=folder / "work", spec=SPEC)
        with pytest.raises(SlideError, match=r"a\.svs has no µm/px.*m\.csv, row 2 \(patient 'P1'\): fill the "
                                             r"manifest's slide_mpp column.*--data\.slide_mpp"):
            dm.prepare_data()


def test_tile_slides_mapping_matches_resolved_paths(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    # a relative str key for a slide listed by absolute path; b's own metadata wins over its mapping entry
    results = tile_slides([folder / "a.svs", Path("b.svs")], folder / "out", progress=False,
                          slide_mpp={"a.svs": 0.5, "b.svs": 0.25})
    assert sorted(r.slide.name for r in results) == ["a.svs", "b.svs"]
    assert _attrs(folder / "out", folder / "a.svs") == (0.5, "given", 4)
    assert _attrs(folder / "out", folder / "b.svs") == (0.5, "file", 4)
    with pytest.raises(SlideError, match=r"a\.svs"):  # a slide without µm/px absent from the mapping
        tile_slides([folder / "a.svs"], folder / "other", progress=False, slide_mpp={folder / "b.svs": 0.5})

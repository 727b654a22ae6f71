"""``data.slide_mpp``: pretraining on slides whose files lack µm/px, as ``biossl tile --slide-mpp`` tiles them.

Slide: ``tests/fixtures/wsi/he_small_nompp.svs``, the repo's real H&E slide without ``MPP`` in its
ImageDescription (``he_small.svs`` with it: 4 tiles at 0.5 µm/px).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from biossl.cli import main
from biossl.data.bags import BagSpec
from biossl.data.tiling import output_paths
from biossl.errors import InputError, SlideError
from biossl.modules.datamodule import BagDataModule

SPEC = BagSpec(tiles=2, tile_px=32, modalities=("wsi",))


@pytest.fixture()
def cohort(fixtures: Path, tmp_path: Path) -> Path:
    """Two patients, each with a copy of the slide without µm/px."""
    for name in ("a.svs", "b.svs"):
        shutil.copy(fixtures / "wsi" / "he_small_nompp.svs", tmp_path / name)
    pd.DataFrame({"patient_id": ["P1", "P2"], "modality": "wsi", "path": ["a.svs", "b.svs"]}).to_csv(
        tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_without_slide_mpp_tiling_stops_naming_the_row_and_the_option(cohort: Path) -> None:
    dm = BagDataModule(cohort, work_dir=cohort.parent / "work", spec=SPEC)
    with pytest.raises(SlideError, match=r"a\.svs has no µm/px \(MPP\) metadata; manifest .*m\.csv, row 2 \(patient "
                                         r"'P1'\): fill the manifest's slide_mpp column.*--data\.slide_mpp"):
        dm.prepare_data()
    for bad in (0.0, 0.00025, 1e-9):  # 0.00025: 0.25 µm/px written in mm
        with pytest.raises(InputError, match="data.slide_mpp .* outside the plausible range 0.05-100"):
            BagDataModule(cohort, slide_mpp=bad)
        with pytest.raises(InputError, match="data.override_slide_mpp .* outside the plausible range"):
            BagDataModule(cohort, override_slide_mpp=bad)


def test_slide_mpp_tiles_the_slides_as_biossl_tile_does(cohort: Path, tmp_path: Path) -> None:
    dm = BagDataModule(cohort, work_dir=tmp_path / "work", spec=SPEC, slide_mpp=0.5)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.dataset is not None and dm.dataset[(0, 0)]["wsi"]["x"].shape == (2, 3, 32, 32)
    with h5py.File(output_paths(tmp_path / "work" / "tiles", tmp_path / "a.svs")[0], "r") as f:
        ours = f["coords"][:]
        assert f.attrs["slide_mpp"] == 0.5 and f.attrs["slide_mpp_source"] == "given"
        assert not f.attrs["slide_mpp_overridden"] and np.isnan(f.attrs["file_mpp"])  # the file records none
    # the same tiles as the command line makes with --slide-mpp
    assert main(["tile", str(tmp_path / "a.svs"), "--out", str(tmp_path / "cli"), "--slide-mpp", "0.5",
                 "--no-progress"]) == 0
    with h5py.File(output_paths(tmp_path / "cli", tmp_path / "a.svs")[0], "r") as f:
        assert f["coords"][:].tolist() == ours.tolist() and len(ours) == 4


def test_slides_tiled_with_slide_mpp_are_reused(cohort: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    tiles = tmp_path / "work" / "tiles"
    assert main(["tile", str(tmp_path / "a.svs"), str(tmp_path / "b.svs"), "--out", str(tiles), "--slide-mpp", "0.5",
                 "--no-progress"]) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in tiles.glob("*.h5")}
    for slide_mpp in (0.5, None):  # as pretraining with data.slide_mpp, and as biossl embed opens the cohort
        dm = BagDataModule(cohort, work_dir=tmp_path / "work", spec=SPEC, slide_mpp=slide_mpp)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="biossl.data.tiling"):
            dm.prepare_data()
        assert caplog.text.count("already tiled") == 2
        dm.setup("fit")
        assert dm.dataset is not None and len(dm.dataset) == 2
    assert {p.name: p.stat().st_mtime_ns for p in tiles.glob("*.h5")} == stamps
    # another µm/px than the tiles were made with is an error, not a silent reuse
    with pytest.raises(SlideError, match=r"slide_mpp=0\.5 \(now 0\.25\)"):
        BagDataModule(cohort, work_dir=tmp_path / "work", spec=SPEC, slide_mpp=0.25).prepare_data()


def test_pretrain_cli_takes_data_slide_mpp(cohort: Path, tmp_path: Path, wsi_only_config: str) -> None:
    (tmp_path / "wsi.yaml").write_text(wsi_only_config)
    argv = ["pretrain", "--config", str(tmp_path / "wsi.yaml"), "--data.manifest", str(cohort),
            "--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main([*argv, "--data.slide_mpp", "0.5"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert "slide_mpp: 0.5" in (tmp_path / "run" / "config.yaml").read_text()

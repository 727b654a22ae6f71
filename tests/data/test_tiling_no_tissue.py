"""A slide without tissue, with ``keep_empty`` (``biossl tile --keep-empty``, pretraining's own tiling):
a warning and an ``.h5`` listing no tiles, which reruns reuse and the bag dataset reads as "no tiles".

Slides: the repo's real-glass slide ``tests/fixtures/wsi/glass.svs`` (no tissue) and the H&E slide
``he_small.svs`` (4 tiles at 0.5 µm/px).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest

from biossl.cli import main
from biossl.data.bags import BagSpec
from biossl.data.tiles import SlideTiles
from biossl.data.tiling import slide_key
from biossl.modules.datamodule import BagDataModule


def test_tile_keep_empty_writes_a_marker_and_warns(fixtures: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    glass = str(fixtures / "wsi" / "glass.svs")
    out = tmp_path / "tiles"
    h5, thumbnail = out / f"{slide_key(glass)}.h5", out / f"{slide_key(glass)}_thumbnail.png"
    with caplog.at_level(logging.WARNING, logger="biossl.data.tiling"):
        assert main(["tile", glass, "--out", str(out), "--no-progress", "--keep-empty"]) == 0
    assert "glass.svs: no tile has tissue fraction >= 0.5" in caplog.text and "listing no tiles" in caplog.text
    assert "glass.svs: 0 tiles, tissue 0.0%" in capsys.readouterr().out
    with h5py.File(h5, "r") as f:
        assert f["coords"].shape == (0, 2) and int(f.attrs["n_tiles"]) == 0 and f.attrs["tile_size"] == 256
    assert len(SlideTiles(h5)) == 0 and thumbnail.stat().st_size > 0
    # a rerun reuses the marker instead of tiling the slide again
    stamp = h5.stat().st_mtime_ns
    assert main(["tile", glass, "--out", str(out), "--no-progress", "--keep-empty"]) == 0
    assert "(already tiled) (no tissue)" in capsys.readouterr().out
    assert h5.stat().st_mtime_ns == stamp
    # without the option the blank slide stays an error (the bad-input matrix's case) and writes no .h5
    assert main(["tile", glass, "--out", str(tmp_path / "plain"), "--no-progress"]) == 2
    assert "no slide produced tiles" in capsys.readouterr().err and not (tmp_path / "plain" / h5.name).exists()


def test_pretraining_data_warns_on_a_blank_slide_and_trains_without_it(fixtures: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    for name, copy in (("he_small.svs", "he_small.svs"), ("glass.svs", "glass.svs"), ("glass.svs", "glass2.svs")):
        shutil.copy(fixtures / "wsi" / name, tmp_path / copy)
    # P1: H&E only; P2: a glass slide and the H&E one; P3: glass only
    pd.DataFrame({"patient_id": ["P1", "P2", "P2", "P3"], "modality": "wsi",
                  "path": ["he_small.svs", "glass.svs", "he_small.svs", "glass2.svs"]}).to_csv(tmp_path / "m.csv",
                                                                                             index=False)
    spec = BagSpec(tiles=2, tile_px=32, modalities=("wsi",))
    dm = BagDataModule(tmp_path / "m.csv", work_dir=tmp_path / "work", spec=spec)
    with caplog.at_level(logging.WARNING, logger="biossl.data.tiling"):
        dm.prepare_data()
    assert caplog.text.count("no tile has tissue") == 2
    dm.setup("fit")
    assert dm.dataset is not None
    bags = {dm.dataset.patients[i]: dm.dataset[(i, 0)] for i in range(3)}
    assert bags["P1"]["wsi"]["x"].shape == (2, 3, 32, 32)
    assert bags["P2"]["wsi"]["x"].shape == (2, 3, 32, 32)  # its tiles come from the H&E slide only
    assert "wsi" not in bags["P3"]  # no tiles at all: the modality is missing for this patient, not an error

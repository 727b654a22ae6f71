from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from biossl.cli import main
from biossl.data.tiling import slide_key

REPO = Path(__file__).resolve().parents[2]


def test_tile_prints_counts(fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slide = fixtures / "wsi" / "he_small.svs"
    assert main(["tile", str(slide), "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "he_small.svs: 4 tiles, tissue 2" in out and "total: 4 tiles from 1 slides" in out
    assert [p.name for p in tmp_path.glob("*.h5")] == [f"{slide_key(slide)}.h5"]
    assert (tmp_path / f"{slide_key(slide)}_thumbnail.png").exists()
    assert main(["tile", str(slide), "--out", str(tmp_path), "--no-progress", "--mpp", "1.0"]) == 2
    assert "target_mpp=0.5 (now 1.0)" in capsys.readouterr().err


def test_missing_mpp_exit_code_and_fix(fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slide = str(fixtures / "wsi" / "he_small_nompp.svs")
    assert main(["tile", slide, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biossl tile: error:") and "he_small_nompp.svs" in err and "--slide-mpp" in err
    assert len(err.splitlines()) == 1
    assert main(["tile", slide, "--out", str(tmp_path), "--no-progress", "--slide-mpp", "0.5"]) == 0


def test_no_tissue_and_shards(fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    glass = str(fixtures / "wsi" / "glass.svs")
    he = str(fixtures / "wsi" / "he_small.svs")
    assert main(["tile", glass, "--out", str(tmp_path), "--no-progress"]) == 2
    assert "no slide produced tiles" in capsys.readouterr().err
    assert main(["tile", glass, he, "--out", str(tmp_path), "--no-progress", "--shard", "1/2"]) == 0
    assert "he_small.svs: 4 tiles" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["tile", he, "--out", str(tmp_path), "--shard", "2/2"])
    assert exc.value.code == 2


@pytest.mark.integration
def test_cli_on_cmu(shared_data: Path, tmp_path: Path) -> None:
    slide = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    cmd = [sys.executable, "-m", "biossl.cli", "tile", str(slide), "--out", str(tmp_path), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert "CMU-1-Small-Region.svs: 33 tiles, tissue 36.2%, level 0, read 257 px" in done.stdout

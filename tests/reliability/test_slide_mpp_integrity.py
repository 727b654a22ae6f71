"""A slide's µm/px is never silently replaced (issue 12, item 3 and its crashes and messages).

``--slide-mpp`` / ``data.slide_mpp`` / the manifest's ``slide_mpp`` column only supply the level-0 µm/px
of slides whose files record none; replacing a recorded value takes ``--override-slide-mpp`` (or
``data.override_slide_mpp``, or an ``override_slide_mpp`` column), logged per slide. ``biossl cohort``
stops on a slide without µm/px; implausible values (a value in mm) are refused before any work; a tile
larger than the slide says so.

Slides: ``tests/fixtures/wsi/he_small.svs`` (real H&E, 0.5 µm/px recorded; 1280×768 px at level 0, 4 tiles
of 256 px at 0.5 µm/px) and ``he_small_nompp.svs`` (the same slide without ``MPP`` in its description).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from biossl.cli import main
from biossl.data.tiling import output_paths


def run(argv: list[str]) -> int:
    """``biossl`` in-process; argparse's refusals (exit 2) are returned like the others."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def attrs_of(out: Path, slide: Path) -> dict[str, object]:
    with h5py.File(output_paths(out, slide)[0], "r") as f:
        return dict(f.attrs)


@pytest.fixture()
def slides(fixtures: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``with_mpp.svs`` (records 0.5 µm/px) and ``no_mpp.svs`` (records none), in the test's folder."""
    shutil.copy(fixtures / "wsi" / "he_small.svs", tmp_path / "with_mpp.svs")
    shutil.copy(fixtures / "wsi" / "he_small_nompp.svs", tmp_path / "no_mpp.svs")
    return tmp_path / "with_mpp.svs", tmp_path / "no_mpp.svs"


def manifest(folder: Path, rows: list[tuple[str, str]], **columns: list[str]) -> Path:
    table = pd.DataFrame({"patient_id": [p for p, _ in rows], "modality": "wsi", "path": [s for _, s in rows],
                          **columns})
    table.to_csv(folder / "m.csv", index=False)
    return folder / "m.csv"


def test_slide_mpp_does_not_rescale_a_slide_that_records_its_own(slides: tuple[Path, Path], tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with_mpp, no_mpp = slides
    out = tmp_path / "tiles"
    with caplog.at_level(logging.WARNING):
        assert run(["tile", str(with_mpp), str(no_mpp), "--out", str(out), "--slide-mpp", "0.25", "--no-progress"]) == 0
    kept = attrs_of(out, with_mpp)  # its own 0.5 µm/px: 256 px tiles at level 0, 4 of them
    assert (kept["slide_mpp"], kept["slide_mpp_source"], kept["file_mpp"]) == (0.5, "file", 0.5)
    assert (kept["level"], kept["read_size"], kept["n_tiles"], bool(kept["slide_mpp_overridden"])) == (0, 256, 4, False)
    given = attrs_of(out, no_mpp)  # the value supplies what the file lacks: 512 px tiles
    assert (given["slide_mpp"], given["slide_mpp_source"], given["read_size"]) == (0.25, "given", 512)
    assert np.isnan(given["file_mpp"]) and not given["slide_mpp_overridden"]
    assert "replaced" not in caplog.text  # nothing was overridden


def test_override_option_replaces_the_recorded_value_and_logs(slides: tuple[Path, Path], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with_mpp, _ = slides
    with caplog.at_level(logging.WARNING):
        assert run(["tile", str(with_mpp), "--out", str(tmp_path / "o"), "--override-slide-mpp", "0.25",
                    "--no-progress"]) == 0
    got = attrs_of(tmp_path / "o", with_mpp)
    assert (got["slide_mpp"], got["slide_mpp_source"], got["file_mpp"]) == (0.25, "override", 0.5)
    assert got["read_size"] == 512  # 256 px at 0.5 µm/px on a slide taken as 0.25 µm/px
    assert bool(got["slide_mpp_overridden"])
    lines = [r.getMessage() for r in caplog.records if "replaced" in r.getMessage()]
    assert lines == [f"slide {with_mpp}: µm/px replaced by --override-slide-mpp: its file records 0.5, "
                     "tiling with 0.25"]  # one line per overridden slide


def test_cohort_stops_on_a_slide_without_mpp(slides: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    m = manifest(tmp_path, [("P1", "with_mpp.svs"), ("P2", "no_mpp.svs")])
    assert run(["cohort", str(m)]) == 2
    err = capsys.readouterr().err
    assert ("row 3: patient 'P2', wsi file no_mpp.svs: the slide records no µm/px (MPP) and none is given; "
            "fill this row's slide_mpp column") in err
    # a skipped row like other bad rows, listed in the report
    assert run(["cohort", str(m), "--skip-bad", "--report", str(tmp_path / "r.csv")]) == 0
    report = pd.read_csv(tmp_path / "r.csv")
    assert report.loc[0, "row"] == 3 and "no µm/px" in report.loc[0, "reason"]
    # a value given: the manifest's column for that row, or --slide-mpp for every slide without one
    assert run(["cohort", str(m), "--slide-mpp", "0.5"]) == 0
    m = manifest(tmp_path, [("P1", "with_mpp.svs"), ("P2", "no_mpp.svs")], slide_mpp=["", "0.5"])
    assert run(["cohort", str(m)]) == 0
    assert "2 patients, 2 files" in capsys.readouterr().out


def test_a_manifest_value_disagreeing_with_the_file_is_refused(slides: tuple[Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    m = manifest(tmp_path, [("P1", "with_mpp.svs")], slide_mpp=["0.25"])
    assert run(["cohort", str(m)]) == 2
    assert ("row 2: patient 'P1', wsi file with_mpp.svs: slide_mpp 0.25 disagrees with the 0.5 µm/px that the file "
            "records") in capsys.readouterr().err
    for column in ("slide_mpp", "override_slide_mpp"):  # within 2 %, or an explicit override: accepted
        m = manifest(tmp_path, [("P1", "with_mpp.svs")], **{column: ["0.505" if column == "slide_mpp" else "0.25"]})
        assert run(["cohort", str(m)]) == 0


@pytest.mark.parametrize("argv", [
    ["tile", "{no_mpp}", "--slide-mpp", "1e-9"],  # asked for 238 GiB
    ["tile", "{no_mpp}", "--slide-mpp", "0.00025"],  # 0.25 µm in mm: ran 74 s, then failed inside skimage
    ["tile", "{with_mpp}", "--slide-mpp", "250"],  # in nm
    ["tile", "{with_mpp}", "--override-slide-mpp", "0.00025"],
    ["tile", "{with_mpp}", "--mpp", "1e-9"],
    ["tile", "{with_mpp}", "--slide-mpp", "nan"],
    ["cohort", "{manifest}", "--slide-mpp", "0.00025"],
    ["cohort", "{bad_manifest}"],
])
def test_absurd_mpp_is_refused_before_any_work(slides: tuple[Path, Path], tmp_path: Path, argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with_mpp, no_mpp = slides
    good = manifest(tmp_path, [("P1", "no_mpp.svs")])
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,modality,path,slide_mpp\nP1,wsi,no_mpp.svs,0.00025\n")
    words = [a.format(with_mpp=with_mpp, no_mpp=no_mpp, manifest=good, bad_manifest=bad) for a in argv]
    if words[0] == "tile":
        words += ["--out", str(tmp_path / "out"), "--no-progress"]
    start = time.monotonic()
    assert run(words) == 2
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert "outside the plausible range 0.05-100" in err and "mm" in err
    assert not (tmp_path / "out").exists()


def test_pretraining_refuses_absurd_data_slide_mpp_and_names_the_row_of_a_slide_without_mpp(
        slides: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], wsi_only_config: str) -> None:
    m = manifest(tmp_path, [("P1", "no_mpp.svs"), ("P2", "with_mpp.svs")])
    (tmp_path / "wsi.yaml").write_text(wsi_only_config)
    argv = ["pretrain", "--config", str(tmp_path / "wsi.yaml"), "--data.manifest", str(m),
            "--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(tmp_path / "run")]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "no_mpp.svs has no µm/px (MPP) metadata" in err
    assert "row 2 (patient 'P1'): fill the manifest's slide_mpp column" in err and "--data.slide_mpp" in err
    assert "--slide-mpp (slide_mpp=)" not in err  # not the tile command's flag
    assert not list((tmp_path / "work" / "tiles").glob("*.h5"))
    assert run([*argv, "--data.slide_mpp", "0.00025"]) == 2
    assert "data.slide_mpp 0.00025 µm per pixel is outside the plausible range" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "said"), [
    (["--slide-mpp", "0.06"], "533 px at level 1, 127.92 µm) is larger than the slide (320×192 px at level 1"),
    (["--mpp", "90"], "11520 px at level 1, 23040 µm) is larger than the slide (320×192 px at level 1"),
])
def test_a_tile_larger_than_the_slide_says_so(slides: tuple[Path, Path], tmp_path: Path, options: list[str],
                                              said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with_mpp, no_mpp = slides
    slide = no_mpp if options[0] == "--slide-mpp" else with_mpp
    assert run(["tile", str(slide), "--out", str(tmp_path / "out"), "--no-progress", *options]) == 2
    err = capsys.readouterr().err
    assert said in err and "lower --mpp or --tile-size, or check the slide's µm/px" in err
    assert "no tile has tissue" not in err
    assert not (tmp_path / "out").exists()  # refused before any slide was tiled


def test_a_placeholder_resolution_counts_as_no_mpp(shared_data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A plain TIFF's 72 dpi reads as 352.8 µm/px: not a scanner's value, so it needs one given (and takes it)."""
    boxes = shared_data / "wsi" / "synthetic_openslide_fixtures" / "boxes.tiff"
    assert run(["tile", str(boxes), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "boxes.tiff has no µm/px (MPP) metadata (it records 352.778 µm/px, outside the plausible range" in err


def test_one_slide_file_given_two_mpp_values_is_refused(slides: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        wsi_only_config: str) -> None:
    """Two rows naming one scan (a copy or hard link of the same name, or one file by two paths) get one µm/px.

    A copy shares its tile set (tiles are named by the slide's name and content), so P2 given 0.25 µm/px
    was silently tiled at P1's 0.5; ``biossl cohort`` passed one file named by a relative and an
    absolute path with two values (pretraining refused it).
    """
    _, no_mpp = slides
    for folder in ("h1", "h2"):
        (tmp_path / folder).mkdir()
    shutil.copy2(no_mpp, tmp_path / "h1" / "s.svs")
    (tmp_path / "h2" / "s.svs").hardlink_to(tmp_path / "h1" / "s.svs")
    m = manifest(tmp_path, [("P1", "h1/s.svs"), ("P2", "h2/s.svs")], slide_mpp=["0.5", "0.25"])
    (tmp_path / "wsi.yaml").write_text(wsi_only_config)
    argv = ["pretrain", "--config", str(tmp_path / "wsi.yaml"), "--data.manifest", str(m),
            "--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(tmp_path / "run")]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "h2/s.svs has the content of slide" in err and "(0.25 µm/px, and 0.5 µm/px for" in err
    assert not list((tmp_path / "work").rglob("*.h5"))
    m = manifest(tmp_path, [("P1", "h1/s.svs"), ("P2", str(tmp_path / "h1" / "s.svs"))], slide_mpp=["0.5", "0.25"])
    assert run(["cohort", str(m)]) == 2
    assert "slide_mpp 0.25 differs from row 2's 0.5 for the same slide" in capsys.readouterr().err
    assert run(["tile", str(tmp_path / "h1" / "s.svs"), str(tmp_path / "h2" / "s.svs"), "--out",
                str(tmp_path / "out"), "--slide-mpp", "0.5", "--no-progress"]) == 0  # one value: fine

"""Caches are keyed by the content of the file they were made from, never by its name (issue 12, item 1).

Slides: ``tests/fixtures/wsi/he_small.svs`` copied as ``A/slide.svs``, and the same H&E pixels mirrored
left-right and written as another real Aperio slide ``B/slide.svs`` (same name, other content). The
checkpoint is the tiny one-step pretraining of the demo cohort (``pretrained`` in tests/conftest.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from biossl.cli import main
from biossl.data.bags import BagSpec
from biossl.data.demo import write_aperio_svs
from biossl.data.identity import file_fingerprint
from biossl.data.tiling import output_lock, slide_key, tile_slide
from biossl.data.volume import VolumeSpec
from biossl.data.volume_cache import VolumeCache
from biossl.data.wsi import Slide
from biossl.modules.datamodule import BagDataModule

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cohorts(fixtures: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Manifests of two one-patient cohorts, ``A/m.csv`` and ``B/m.csv``, each with a slide named ``slide.svs``."""
    he = fixtures / "wsi" / "he_small.svs"
    for name in ("A", "B"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.csv").write_text("patient_id,modality,path\nP1,wsi,slide.svs\n")
    shutil.copyfile(he, tmp_path / "A" / "slide.svs")
    mirror(he, tmp_path / "B" / "slide.svs")
    return tmp_path / "A" / "m.csv", tmp_path / "B" / "m.csv"


def mirror(src: Path, dst: Path) -> None:
    """Write ``src``'s level-0 pixels mirrored left-right as a new Aperio slide at the same µm/px."""
    with Slide(src) as slide:
        w, h = slide.level_dimensions[0]
        rgb = slide.read_region((0, 0), 0, (w, h))
    write_aperio_svs(dst, np.ascontiguousarray(rgb[:, ::-1]), mpp=0.5)


def _embed(checkpoint: Path, manifest: Path, out: Path, *work: str) -> np.ndarray:
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(manifest), *work, "--out", str(out)]) == 0
    return np.asarray(ad.read_h5ad(out).obsm["X_wsi"])


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_two_cohorts_with_one_work_dir_read_their_own_slides(pretrained: tuple[Path, Path],
                                                             cohorts: tuple[Path, Path], tmp_path: Path) -> None:
    """A and B share ``--work-dir``: B's embedding is B's (as embedded alone), not A's; a re-scan is re-tiled."""
    checkpoint, _ = pretrained
    a, b = cohorts
    work = ["--work-dir", str(tmp_path / "shared")]
    x_a = _embed(checkpoint, a, tmp_path / "a.h5ad", *work)
    x_b = _embed(checkpoint, b, tmp_path / "b.h5ad", *work)
    alone = _embed(checkpoint, b, tmp_path / "b_alone.h5ad", "--work-dir", str(tmp_path / "alone"))
    assert np.isfinite(x_a).all() and not np.allclose(x_b, x_a)
    np.testing.assert_array_equal(x_b, alone)
    tiles = sorted(p.name for p in (tmp_path / "shared" / "tiles").glob("*.h5"))
    assert tiles == sorted({f"{slide_key(a.parent / 'slide.svs')}.h5", f"{slide_key(b.parent / 'slide.svs')}.h5"})
    for h5 in (tmp_path / "shared" / "tiles").glob("*.h5"):  # each file records the slide it lists tiles of
        with h5py.File(h5) as f:
            assert h5.name.split(".")[1] == str(f.attrs["slide_fingerprint"])[:10]

    # B's slide re-scanned in place (same path, A's content now): new tiles, read from the new file
    shutil.copyfile(a.parent / "slide.svs", b.parent / "slide.svs")
    np.testing.assert_array_equal(_embed(checkpoint, b, tmp_path / "b2.h5ad", *work), x_a)


def test_tile_rescanned_slide_is_tiled_again_and_old_tiles_are_refused(cohorts: tuple[Path, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    a, b = (m.parent / "slide.svs" for m in cohorts)
    out = tmp_path / "tiles"
    assert main(["tile", str(b), "--out", str(out), "--no-progress"]) == 0
    old = out / f"{slide_key(b)}.h5"
    assert old.is_file() and "(already tiled)" not in capsys.readouterr().out
    shutil.copyfile(a, b)  # re-scanned in place
    assert main(["tile", str(b), "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "(already tiled)" not in said and f"{slide_key(b)}.h5" in said and slide_key(b) != old.stem
    # the old coordinates name the slide's path, but its content changed: they are refused, not read
    os.remove(out / f"{slide_key(b)}.h5")
    assert main(["cache-features", str(out), "--out", str(tmp_path / "f"), "--encoder", "image/vit_tiny",
                 "--encoder-arg", "img_size=32", "--num-workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{old} lists the tiles of another file than slide {b.resolve()}" in err and "re-scanned" in err
    assert not (tmp_path / "f").exists() or not list((tmp_path / "f").iterdir())


def test_embed_of_a_new_cohort_keeps_out_of_the_checkpoints_work_dir(
    pretrained: tuple[Path, Path], cohorts: tuple[Path, Path], demo_cohort: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    checkpoint, work = pretrained
    before = _snapshot(work)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="biossl.downstream.embed"):
        _embed(checkpoint, cohorts[0], tmp_path / "a.h5ad")
    assert _snapshot(work) == before  # nothing read from or written into the pretraining run's folder
    assert (tmp_path / "biossl_work" / "tiles" / f"{slide_key(cohorts[0].parent / 'slide.svs')}.h5").is_file()
    assert "work folder biossl_work (not the checkpoint's" in caplog.text and "another manifest" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="biossl.downstream.embed"):  # its own cohort: its own work folder
        _embed(checkpoint, demo_cohort / "manifest.csv", tmp_path / "demo.h5ad")
    assert f"work folder {work}: the checkpoint's" in caplog.text
    assert not (tmp_path / "biossl_work" / "tiles" / f"{slide_key(demo_cohort / 'slides' / 'DEMO-03.svs')}.h5").exists()


def test_two_tile_runs_on_one_folder_never_delete_a_live_temporary(fixtures: Path, tmp_path: Path) -> None:
    """A second run waits for the slide another run is writing, then finds it done; the live temp file stays."""
    slide, out = fixtures / "wsi" / "he_small.svs", tmp_path / "out"
    key = slide_key(slide)
    log = tmp_path / "second.log"
    with output_lock(out, key):  # this test is the first run, writing the slide
        live = out / f".{key}.h5.live.tmp"
        live.write_bytes(b"being written")
        with open(log, "w") as fh:
            second = subprocess.Popen([sys.executable, "-m", "biossl.cli", "tile", str(slide), "--out", str(out),
                                       "--no-progress"], stdout=subprocess.PIPE, stderr=fh, text=True, cwd=REPO)
        deadline = time.monotonic() + 60
        while "waiting for it" not in log.read_text():
            assert second.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(0.5)
        assert live.read_bytes() == b"being written" and second.poll() is None
        tile_slide(slide, out)  # the first run finishes its slide
        live.unlink()
    stdout, _ = second.communicate(timeout=60)
    assert second.returncode == 0, log.read_text()
    assert "(already tiled)" in stdout
    assert sorted(p.name for p in out.iterdir()) == [f"{key}.h5", f"{key}_thumbnail.png"]  # no lock, no temp


def test_features_of_another_slide_of_the_same_name_are_refused(cohorts: tuple[Path, Path], tmp_path: Path,
                                                                tiny_pretrain_config: str, features_config: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Feature files named by stem only (TRIDENT/CLAM, older biossl) are checked against the slide they serve."""
    a, b = (m.parent / "slide.svs" for m in cohorts)
    config = tmp_path / "features.yaml"
    config.write_text(features_config)
    feats = tmp_path / "features"
    feats.mkdir()

    def external(fingerprint: str | None) -> None:
        with h5py.File(feats / "slide.h5", "w") as f:
            f.create_dataset("features", data=np.ones((3, 8), np.float16))
            f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
            if fingerprint is not None:
                f.attrs["slide_fingerprint"] = fingerprint

    def pretrain(manifest: Path) -> str:
        code = main(["pretrain", "--config", str(config), "--data.manifest", str(manifest), "--data.features_dir",
                     str(feats), "--data.work_dir", str(tmp_path / "work"),
                     "--trainer.default_root_dir", str(tmp_path / "run")])
        assert code == 2
        return capsys.readouterr().err


    external(file_fingerprint(a))  # recorded as A's slide, asked for B's
    assert "were computed from another file than slide" in pretrain(cohorts[1])
    external(None)  # records nothing: one file for two different slides of one cohort is refused
    both = tmp_path / "both.csv"
    pd.DataFrame({"patient_id": ["P1", "P2"], "modality": "wsi", "path": [str(a), str(b)]}).to_csv(both, index=False)
    err = pretrain(both)
    assert "are different files that would both read tile features" in err and "slide.h5" in err


def test_a_report_of_another_manifest_is_never_applied(fixtures: Path, tmp_path: Path) -> None:
    """``skipped_rows.csv`` in a shared work folder: a DDP rank applies it only to the manifest it was made from."""
    img = nib.Nifti1Image.from_filename(fixtures / "volume" / "anatomical.nii")
    data = np.asarray(img.get_fdata(), np.float32)
    bad = data.copy()
    bad[5:7, 5:7, 5] = np.nan
    for name, scan in (("one", bad), ("two", data)):  # cohort one: P2's scan has NaN; cohort two: all fine
        (tmp_path / name).mkdir()
        for p in ("P1", "P2", "P3"):
            nib.save(nib.Nifti1Image(scan if p == "P2" else data, img.affine), tmp_path / name / f"{p}.nii.gz")
        pd.DataFrame({"patient_id": ["P1", "P2", "P3"], "modality": "volume",
                      "path": ["P1.nii.gz", "P2.nii.gz", "P3.nii.gz"]}).to_csv(tmp_path / name / "m.csv", index=False)
    spec = BagSpec(patches=1, patch_size=(16, 16, 16), modalities=("volume",))

    def module(name: str, rank: int) -> BagDataModule:
        dm = BagDataModule(tmp_path / name / "m.csv", work_dir=tmp_path / "work", spec=spec, skip_bad=True)
        dm.trainer = SimpleNamespace(local_rank=rank)  # type: ignore[assignment]
        return dm

    module("one", 0).prepare_data()  # cohort one's check: P2 skipped, in the report
    assert pd.read_csv(tmp_path / "work" / "skipped_rows.csv")["row"].tolist()[0] == 3  # P2's row
    stamp = json.loads((tmp_path / "work" / "skipped_rows.manifest.json").read_text())
    assert stamp["manifest"] == str((tmp_path / "one" / "m.csv").resolve())
    other = module("two", 1)  # a rank of a run on cohort two, in the same work folder
    other.setup("fit")
    assert other.cohort is not None and other.cohort.patients == ["P1", "P2", "P3"]
    same = module("one", 1)  # cohort one's own other rank still takes the report
    same.setup("fit")
    assert same.cohort is not None and same.cohort.patients == ["P1", "P3"]


def test_a_replaced_scan_with_the_old_size_and_time_is_not_served_stale(fixtures: Path, tmp_path: Path) -> None:
    """rsync -a / cp -p of a re-exported scan: same path, size and modification time, other voxels."""
    img = nib.Nifti1Image.from_filename(fixtures / "volume" / "anatomical.nii")
    data = np.asarray(img.get_fdata(), np.float32)
    scan = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(data, img.affine), scan)
    spec = VolumeSpec(kind="mri", spacing=(4.0, 4.0, 4.0))
    first = VolumeCache(tmp_path / "cache", max_items=0).load(scan, spec)
    stat = scan.stat()
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1]), img.affine), tmp_path / "new.nii")
    os.replace(tmp_path / "new.nii", scan)
    os.utime(scan, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert scan.stat().st_size == stat.st_size and scan.stat().st_mtime_ns == stat.st_mtime_ns
    again = VolumeCache(tmp_path / "cache", max_items=0).load(scan, spec)  # a later run, same cache folder
    assert again.shape == first.shape and not np.array_equal(again, first)


def test_a_slide_rewritten_in_place_with_its_old_size_and_time_is_tiled_again(cohorts: tuple[Path, Path],
                                                                              tmp_path: Path) -> None:
    """``cp -p`` onto the same inode (size and mtime kept): one process (a notebook, a worker) tiles it again."""
    a, b = (m.parent / "slide.svs" for m in cohorts)
    size = max(a.stat().st_size, b.stat().st_size)
    for slide in (a, b):  # trailing bytes after a TIFF are ignored by readers: same size, other content
        with open(slide, "ab") as fh:
            fh.write(b"\0" * (size - slide.stat().st_size))
    out = tmp_path / "out"
    assert main(["tile", str(a), "--out", str(out), "--no-progress"]) == 0
    stat = a.stat()
    with open(a, "r+b") as fh:  # rewritten in place: same inode
        fh.write(b.read_bytes())
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (a.stat().st_ino, a.stat().st_size, a.stat().st_mtime_ns) == (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    assert main(["tile", str(a), "--out", str(out), "--no-progress"]) == 0
    assert slide_key(a) == f"slide.{file_fingerprint(b)[:10]}"
    assert len(list(out.glob("*.h5"))) == 2  # the new content got its own tiles


def test_cache_features_after_a_rescan_reads_the_new_tiles(cohorts: tuple[Path, Path], tmp_path: Path) -> None:
    """Tile, cache features, re-scan in place, tile again: cache-features skips the old coordinates file."""
    a, b = (m.parent / "slide.svs" for m in cohorts)
    coords, feats = tmp_path / "coords", tmp_path / "features"
    encoder = ["--encoder", "image/vit_tiny", "--encoder-arg", "img_size=32", "--encoder-arg", "patch_size=8",
               "--num-workers", "0", "--no-progress"]
    assert main(["tile", str(a), "--out", str(coords), "--no-progress"]) == 0
    assert main(["cache-features", str(coords), "--out", str(feats), *encoder]) == 0
    shutil.copy2(b, a)  # re-scanned in place
    assert main(["tile", str(a), "--out", str(coords), "--no-progress"]) == 0  # the advice of the refusal
    assert main(["cache-features", str(coords), "--out", str(feats), *encoder]) == 0
    with h5py.File(feats / f"{slide_key(a)}.h5", "r") as f:
        assert f.attrs["slide_fingerprint"] == file_fingerprint(b)


def test_an_external_cohort_never_reads_the_checkpoints_features_by_name(cohorts: tuple[Path, Path], tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str],
                                                                        features_config: str) -> None:
    """TRIDENT-style ``<stem>.h5`` (no fingerprint): the checkpoint's folder serves only its own cohort."""
    a_manifest, b_manifest = cohorts
    config = tmp_path / "features.yaml"
    config.write_text(features_config)
    feats = tmp_path / "features"
    feats.mkdir()
    with h5py.File(feats / "slide.h5", "w") as f:  # A's features, as another tool writes them
        f.create_dataset("features", data=np.random.default_rng(0).normal(size=(3, 8)).astype(np.float16))
        f.create_dataset("coords", data=np.array([[0, 0], [256, 0], [512, 256]], np.int64))
    assert main(["pretrain", "--config", str(config), "--data.manifest", str(a_manifest), "--data.features_dir",
                 str(feats), "--data.work_dir", str(tmp_path / "work"),
                 "--trainer.default_root_dir", str(tmp_path / "run")]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(b_manifest), "--work-dir",
                 str(tmp_path / "w"), "--out", str(tmp_path / "b.h5ad")]) == 2
    err = capsys.readouterr().err
    assert f"its features folder {feats} is the pretraining cohort's" in err and "--features-dir" in err
    assert not (tmp_path / "b.h5ad").exists()
    larger = tmp_path / "larger"
    larger.mkdir()
    with h5py.File(larger / "slide.h5", "w") as f:  # tiles beyond B's 1280×768 px: of another, larger slide
        f.create_dataset("features", data=np.zeros((3, 8), np.float16))
        f.create_dataset("coords", data=np.array([[0, 0], [256, 0], [4096, 2048]], np.int64))
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(b_manifest), "--work-dir",
                 str(tmp_path / "w"), "--features-dir", str(larger), "--out", str(tmp_path / "b.h5ad")]) == 2
    assert "list tiles outside slide" in capsys.readouterr().err
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(a_manifest), "--out",
                 str(tmp_path / "a.h5ad")]) == 0  # A's own cohort: the checkpoint's folders

"""Kill tests: ``biossl pretrain`` and ``biossl tile`` killed with SIGKILL mid-run, then resumed.

Each test runs the real CLI in a subprocess, kills it with SIGKILL (no handler, no cleanup runs) once
it has written some output, resumes it the documented way, and compares everything it wrote with an
uninterrupted run's output.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

#: The tiny encoders of tests/conftest.py, 24 patients in batches of 8 = 3 steps an epoch, so the kill and
#: the resume fall mid-epoch.
VARIANT = {"max_steps: 1": "max_steps: 16", "warmup_steps: 1": "warmup_steps: 2", "batch_size: 12": "batch_size: 8"}
MAX_STEPS = 16
EVERY = 4


def _env(tmp: Path) -> dict[str, str]:
    # One thread (the suite's CPUs are shared); the temporary folder inside the test's, so a file that
    # a writer stages there and leaves behind on SIGKILL would be seen.
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": str(tmp),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _kill_when(cmd: list[str], ready: Callable[[], bool], *, env: dict[str, str], log: Path,
               timeout: float = 120.0) -> int:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; return its exit code (fail if it ended first)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                if proc.poll() is not None:
                    pytest.fail(f"{cmd[3]} ended (exit {proc.returncode}) before the kill point; see {log}:\n"
                                + log.read_text()[-2000:])
                if time.monotonic() > deadline:
                    pytest.fail(f"{cmd[3]} did not reach the kill point in {timeout:.0f} s")
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    return proc.returncode


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "biossl.cli", *args]


def _metric_steps(path: Path) -> set[int]:
    try:
        return set(pd.read_csv(path)["step"].astype(int))
    except (FileNotFoundError, pd.errors.EmptyDataError, KeyError, ValueError):
        return set()


# -- biossl pretrain ---------------------------------------------------------------------------------
@pytest.mark.integration
def test_pretrain_killed_mid_run_resumes_to_the_same_weights_and_losses(
    pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path, tiny_pretrain_config: str
) -> None:
    _, work = pretrained  # the demo cohort already tiled and its scans cached (session fixture)
    config = tiny_pretrain_config
    for old, new in VARIANT.items():
        assert old in config
        config = config.replace(old, new)
    (tmp_path / "tiny.yaml").write_text(config)
    env = _env(tmp_path / "tmp")

    def pretrain(root: Path, *extra: str) -> list[str]:
        return _cli("pretrain", "--config", str(tmp_path / "tiny.yaml"), "--data.manifest",
                    str(demo_cohort / "manifest.csv"), "--data.work_dir", str(work),
                    "--trainer.default_root_dir", str(root), "--checkpoint_every", str(EVERY), *extra)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(pretrain(straight), env=env, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    # Kill once the step-8 checkpoint exists and the loss of step 8 (0-based) is on disk: mid-epoch 2.
    ckpts = killed / "checkpoints"
    code = _kill_when(pretrain(killed), lambda: (ckpts / "step000008.ckpt").is_file()
                      and 8 in _metric_steps(killed / "metrics.csv"), env=env, log=tmp_path / "killed.log")
    assert code == -signal.SIGKILL
    # Whatever the moment of the kill, every checkpoint under its final name is complete.
    on_disk = sorted(ckpts.glob("*.ckpt"))
    steps = {p.name: torch.load(p, weights_only=True)["global_step"] for p in on_disk}
    assert steps["step000008.ckpt"] == 8
    assert steps["last.ckpt"] in (4, 8, 12) and max(steps.values()) < MAX_STEPS, steps
    assert not list((tmp_path / "tmp").rglob("*.ckpt*")), "a checkpoint was staged outside its folder"

    # Resume the documented way: --ckpt_path last picks the run's last.ckpt.
    resumed = subprocess.run(pretrain(killed, "--ckpt_path", "last"), env=env, cwd=REPO, capture_output=True,
                             text=True, check=False)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"Restored all states from the checkpoint at {ckpts / 'last.ckpt'}" in resumed.stdout + resumed.stderr

    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(),
                      strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Checkpoints written after the resume equal the uninterrupted run's at the same step.
    sa = torch.load(straight / "checkpoints" / "step000012.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(ckpts / "step000012.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # metrics.csv: one row per step, the rows before the resume kept, every logged loss equal.
    ma = pd.read_csv(straight / "metrics.csv").set_index("step").sort_index()
    mb = pd.read_csv(killed / "metrics.csv").set_index("step").sort_index()
    assert list(ma.index) == list(mb.index) == list(range(MAX_STEPS))
    losses = [c for c in ma.columns if c.startswith("train/")]
    assert "train/loss" in losses and "train/contrastive" in losses and set(losses) == set(mb.columns) - {"epoch"}
    np.testing.assert_array_equal(ma[losses].to_numpy(), mb[losses].to_numpy())


# -- biossl tile -------------------------------------------------------------------------------------
COPIES = 3  # of each demo slide: 25 slides, ~0.1 s each, so the kill lands mid-cohort


@pytest.fixture(scope="module")
def cohort_slides(tmp_path_factory: pytest.TempPathFactory, demo_cohort: Path) -> list[Path]:
    """Copies of the demo cohort's real slides, and one 2-level pyramid of the real CMU-1 region's pixels."""
    from biossl.data.demo import write_aperio_svs
    from biossl.data.wsi import Slide

    folder = tmp_path_factory.mktemp("slides")
    slides = []
    for src in sorted((demo_cohort / "slides").glob("*.svs")):
        for i in range(COPIES):
            slides.append(folder / f"{src.stem}_copy{i}.svs")
            shutil.copyfile(src, slides[-1])
    with Slide(demo_cohort / "slides" / "CMU-1-Small-Region.svs") as cmu:
        w, h = cmu.level_dimensions[0]
        rgb = cmu.read_region((0, 0), 0, (w // 256 * 256, h // 256 * 256))
    slides.append(folder / "CMU-1-pyramid.svs")
    write_aperio_svs(slides[-1], rgb, mpp=0.125)  # level 1 (4x) is at 0.5 µm/px: tiles come from it
    return sorted(slides)


def _h5(path: Path) -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
        return attrs, f["coords"][()], f["tissue"][()]


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.integration
def test_tile_killed_mid_cohort_resumes_without_redoing_finished_slides(
    cohort_slides: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from biossl.cli import main
    from biossl.data.tiling import slide_key

    slides = [str(p) for p in cohort_slides]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["tile", *slides, "--out", str(ref), "--no-progress"]) == 0
    capsys.readouterr()
    stems = sorted(slide_key(p) for p in cohort_slides)  # outputs are <stem>.<slide fingerprint>.h5
    assert sorted(p.stem for p in ref.glob("*.h5")) == stems
    pyramid = next(p for p in cohort_slides if p.name == "CMU-1-pyramid.svs")
    assert _h5(ref / f"{slide_key(pyramid)}.h5")[0]["level"] == 1

    code = _kill_when(_cli("tile", *slides, "--out", str(out), "--no-progress"),
                      lambda: len(list(out.glob("*.h5"))) >= 3, env=_env(tmp_path / "tmp"), log=tmp_path / "tile.log")
    assert code == -signal.SIGKILL
    finished = sorted(p.stem for p in out.glob("*.h5"))
    assert 3 <= len(finished) < len(stems), finished  # really mid-cohort
    # Every coordinate file under its final name is complete: it opens and equals the uninterrupted run's.
    for stem in finished:
        attrs, coords, tissue = _h5(out / f"{stem}.h5")
        ref_attrs, ref_coords, ref_tissue = _h5(ref / f"{stem}.h5")
        assert attrs["n_tiles"] == len(coords) == len(tissue) > 0
        np.testing.assert_array_equal(coords, ref_coords)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}

    # What a kill during a write leaves (atomic_path's temporary file, half written) for the next
    # slide, and a coordinate file damaged after the fact (disk full, a bad copy) for the one after.
    todo = [s for s in stems if s not in finished]
    half = (ref / f"{todo[0]}.h5").read_bytes()[:1000]
    (out / f".{todo[0]}.h5.x1y2z3.tmp").write_bytes(half)
    (out / f".{todo[0]}_thumbnail.png.x1y2z3.tmp").write_bytes(b"\x89PNG")
    (out / f"{todo[1]}.h5").write_bytes(half)

    assert main(["tile", *slides, "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    reused = sorted(line.split(".svs:")[0] for line in said.splitlines() if line.endswith("(already tiled)"))
    assert reused == [key.rsplit(".", 1)[0] for key in finished]  # finished slides are not redone ...
    for name, mtime in before.items():  # ... nor rewritten
        assert (out / name).stat().st_mtime_ns == mtime, name
    assert f"total: {sum(_h5(ref / f'{s}.h5')[0]['n_tiles'] for s in stems)} tiles from {len(stems)} slides" in said
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file remains
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    for stem in stems:  # the final outputs equal an uninterrupted run's
        attrs, coords, tissue = _h5(out / f"{stem}.h5")
        ref_attrs, ref_coords, ref_tissue = _h5(ref / f"{stem}.h5")
        assert attrs == ref_attrs, stem
        np.testing.assert_array_equal(coords, ref_coords)
        np.testing.assert_array_equal(tissue, ref_tissue)
        np.testing.assert_array_equal(_png(out / f"{stem}_thumbnail.png"), _png(ref / f"{stem}_thumbnail.png"))

    # --overwrite redoes a finished slide, also one made with other options.
    one = str(cohort_slides[0])
    assert main(["tile", one, "--out", str(out), "--no-progress", "--mpp", "1.0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["tile", one, "--out", str(out), "--no-progress", "--mpp", "1.0", "--overwrite"]) == 0
    assert "(already tiled)" not in capsys.readouterr().out
    assert _h5(out / f"{slide_key(cohort_slides[0])}.h5")[0]["target_mpp"] == 1.0

"""Outputs stay whole: paired files land together, writes are durable, a full disk is one line, threads fit the CPUs.

* Paired outputs (``audit.json`` + ``report.html``; ``finetune --label-fractions``' JSON + PNG) are
  killed with SIGKILL between their writes (the test-only hook ``BIOSSL_TEST_KILL_AFTER`` of
  :mod:`biossl.io`, and a kill from outside the moment the new JSON appears): the file naming the other
  is never beside another run's partner.
* Every rename is preceded by an ``fsync`` of the file and followed by one of its folder.
* A full disk (a real small tmpfs where the machine allows ``mount``, and ``ENOSPC`` raised inside
  Python's writes) gives one line naming the path, exit code 74, and nothing under the final name.
* Temporary files of killed writers are removed by the next run; a live writer's are not.
* torch's thread count follows the CPU affinity, the cgroup quota and ``SLURM_CPUS_PER_TASK``.

Inputs: the demo cohort's embeddings and checkpoint (``embedded`` / ``pretrained`` fixtures).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import biossl.io as bio
import biossl.threads as threads
from biossl.cli import main

REPO = Path(__file__).resolve().parents[2]
FAST_AUDIT = ["--columns", "site", "--folds", "2"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "biossl.cli", *args]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


# -- paired outputs under SIGKILL ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def audits(embedded: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Two finished audits of the demo embeddings that differ (99 and 49 permutations): {run: {file: bytes}}."""
    root = tmp_path_factory.mktemp("audits")
    runs = {}
    for name, b in (("a", "99"), ("b", "49")):
        assert main(["audit", "--embeddings", str(embedded), *FAST_AUDIT, "--permutations", b, "--out",
                     str(root / name)]) in (0, 1, 3)
        runs[name] = {f: (root / name / f).read_bytes() for f in ("audit.json", "report.html")}
    assert runs["a"]["audit.json"] != runs["b"]["audit.json"] and runs["a"]["report.html"] != runs["b"]["report.html"]
    return runs


def _audit_b(embedded: Path, out: Path) -> list[str]:
    return _cli("audit", "--embeddings", str(embedded), *FAST_AUDIT, "--permutations", "49", "--out", str(out))


def _run_of(audit_json: bytes) -> str:
    """Which run of ``audits`` wrote this audit.json (its settings; timings differ between runs)."""
    return {99: "a", 49: "b"}[json.loads(audit_json)["settings"]["n_permutations"]]


def _report(page: bytes | None) -> bytes | None:
    """A report without the rows that differ between two runs of the same audit (its command line and date)."""
    return None if page is None else re.sub(rb'<tr data-field="(command|date \(UTC\))">.*?</tr>', b"", page)


def _check_pair(out: Path, audits: dict[str, dict[str, bytes]]) -> None:
    """audit.json, when present, is beside the report of its own run."""
    files = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    if "audit.json" in files:
        run = _run_of(files["audit.json"])
        assert _report(files.get("report.html")) == _report(audits[run]["report.html"]), \
            f"audit.json of run {run} beside another report"


@pytest.mark.parametrize("after", [0, 1, 2, 3, 4])
def test_audit_pair_killed_at_each_step_of_its_commit_never_mixes_runs(
        after: int, embedded: Path, audits: dict[str, dict[str, bytes]], tmp_path: Path) -> None:
    out = tmp_path / "audit"
    out.mkdir()
    for name, data in audits["a"].items():
        (out / name).write_bytes(data)
    done = subprocess.run(_audit_b(embedded, out), env=_env(BIOSSL_TEST_KILL_AFTER=str(after)), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    # Steps: remove audit.json, remove report.html, rename report.html, rename audit.json.
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    _check_pair(out, audits)
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert names == [{"audit.json", "report.html"}, {"report.html"}, set(), {"report.html"},
                     {"audit.json", "report.html"}][after]
    # The next run removes what the killed one left (its temporary files) and writes the pair.
    assert main(["audit", "--embeddings", str(embedded), *FAST_AUDIT, "--permutations", "49", "--out",
                 str(out)]) in (0, 1, 3)
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "report.html"]  # no temporary file left
    assert _run_of((out / "audit.json").read_bytes()) == "b"
    assert _report((out / "report.html").read_bytes()) == _report(audits["b"]["report.html"])


def test_audit_json_never_appears_beside_the_previous_report(embedded: Path, audits: dict[str, dict[str, bytes]],
                                                             tmp_path: Path) -> None:
    """A kill from outside the moment the new audit.json is on disk (no hook: any writer order is caught)."""
    out = tmp_path / "audit"
    out.mkdir()
    for name, data in audits["a"].items():
        (out / name).write_bytes(data)
    old = (out / "audit.json").stat().st_ino

    def new_json() -> bool:
        try:
            return (out / "audit.json").stat().st_ino != old
        except FileNotFoundError:
            return False

    proc = subprocess.Popen(_audit_b(embedded, out), env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not new_json() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert new_json(), "the audit ended without writing audit.json"
    assert _run_of((out / "audit.json").read_bytes()) == "b"
    assert _report((out / "report.html").read_bytes()) == _report(audits["b"]["report.html"]), \
        "the new audit.json beside the old report"


def _finetune(embedded: Path, demo_cohort: Path, out: Path, fractions: str) -> list[str]:
    return ["finetune", "--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--task",
            "subtype", "--label-column", "subtype", "--folds", "2", "--label-fractions", fractions, "--out", str(out)]


@pytest.mark.parametrize("after", [1, 2, 3])
def test_finetune_plot_and_json_killed_between_their_writes(after: int, embedded: Path, demo_cohort: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    assert main(_finetune(embedded, demo_cohort, out, "0.5,1")) == 0
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert json.loads(old["result.json"])["label_efficiency"]["plot"] == "result.png"
    done = subprocess.run(_cli(*_finetune(embedded, demo_cohort, out, "0.25,0.5,1")), cwd=tmp_path,
                          env=_env(BIOSSL_TEST_KILL_AFTER=str(after)), capture_output=True, text=True, timeout=120,
                          check=False)
    # Steps: remove result.json, remove result.png, rename result.png, rename result.json.
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    now = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert "result.json" not in now  # neither the old JSON beside a new plot nor a new JSON beside the old plot
    assert now.get("result.png") != old["result.png"] or after < 2
    assert set(now) == [set(), {"result.png"}, set(), {"result.png"}][after]


# -- durability ----------------------------------------------------------------------------------------
@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record what ``os.fsync`` flushes (resolved paths), and the order of syncs and renames."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(f"replace {Path(src).resolve()} {Path(dst).resolve()}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    yield events


def _synced_around_renames(events: list[str], target: Path) -> None:
    """The temporary file of ``target`` synced before its rename; its folder synced after."""
    target = target.resolve()
    i = next(i for i, e in enumerate(events) if e.startswith("replace ") and e.endswith(f" {target}"))
    tmp = events[i].split()[1]
    assert f"fsync {tmp}" in events[:i], events
    assert f"fsync {target.parent}" in events[i + 1:], events


def test_audit_outputs_are_synced_before_and_after_their_rename(embedded: Path, tmp_path: Path,
                                                                synced: list[str]) -> None:
    assert main(["audit", "--embeddings", str(embedded), *FAST_AUDIT, "--permutations", "49", "--out",
                 str(tmp_path / "a")]) in (0, 1, 3)
    for name in ("audit.json", "report.html"):
        _synced_around_renames(synced, tmp_path / "a" / name)


def test_checkpoints_are_synced_before_and_after_their_rename(demo_cohort: Path, tmp_path: Path,
                                                              tiny_pretrain_config: str, synced: list[str],
                                                              pretrained: tuple[Path, Path]) -> None:
    (tmp_path / "tiny.yaml").write_text(tiny_pretrain_config)
    assert main(["pretrain", "--config", str(tmp_path / "tiny.yaml"), "--data.manifest",
                 str(demo_cohort / "manifest.csv"), "--data.work_dir", str(pretrained[1]),
                 "--trainer.default_root_dir", str(tmp_path / "run")]) == 0
    _synced_around_renames(synced, tmp_path / "run" / "checkpoints" / "last.ckpt")


# -- a full disk ---------------------------------------------------------------------------------------
def _enospc_after(monkeypatch: pytest.MonkeyPatch, target: object, name: str, n_bytes: int = 100) -> None:
    """Make ``target.name`` (a write function or method) write ``n_bytes`` then fail as a full disk does."""
    real = getattr(target, name)

    def write(*args: object) -> int:
        *head, data = args
        real(*head, data[:n_bytes])  # type: ignore[index]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(target, name, write)


def _one_line(err: str, verb: str, path: Path | str) -> str:
    """The error is the last line of stderr (after the run's own log and progress lines), without a traceback."""
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"biossl {verb}: error: cannot write {path}: the disk is full"), err
    assert "Traceback" not in err and "Exception ignored" not in err and err.count("error:") == 1, err
    return line


def test_embed_on_a_full_disk_is_one_line_and_exit_74(pretrained: tuple[Path, Path], demo_cohort: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _enospc_after(monkeypatch, bio, "write_bytes")  # Python's write of the finished .h5ad bytes
    out = tmp_path / "e" / "demo.h5ad"
    code = main(["embed", "--checkpoint", str(pretrained[0]), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--work-dir", str(pretrained[1]), "--out", str(out)])
    assert code == 74
    assert "free some space" in _one_line(capsys.readouterr().err, "embed", out)
    assert list(out.parent.iterdir()) == []


def test_audit_on_a_full_disk_keeps_the_previous_pair_whole(embedded: Path, audits: dict[str, dict[str, bytes]],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit"
    out.mkdir()
    for name, data in audits["a"].items():
        (out / name).write_bytes(data)
    _enospc_after(monkeypatch, Path, "write_text")
    code = main(["audit", "--embeddings", str(embedded), *FAST_AUDIT, "--permutations", "49", "--out", str(out)])
    assert code == 74  # not 1 ("a probe failed") nor 2
    _one_line(capsys.readouterr().err, "audit", f"{out / 'report.html'} and {out / 'audit.json'}")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == audits["a"]  # the previous pair, no temporary file


def test_pretrain_on_a_full_disk_is_one_line_and_exit_74(demo_cohort: Path, tmp_path: Path, tiny_pretrain_config: str,
                                                         pretrained: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # torch.save meets the full disk inside its own writer, which says only "unexpected pos".
    _enospc_after(monkeypatch, bio._RecordingFile, "write", n_bytes=10)
    (tmp_path / "tiny.yaml").write_text(tiny_pretrain_config)
    code = main(["pretrain", "--config", str(tmp_path / "tiny.yaml"), "--data.manifest",
                 str(demo_cohort / "manifest.csv"), "--data.work_dir", str(pretrained[1]),
                 "--trainer.default_root_dir", str(tmp_path / "run")])
    assert code == 74
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"biossl pretrain: error: cannot write {tmp_path / 'run' / 'checkpoints'}/"), line
    assert ".ckpt: the disk is full" in line
    assert not list((tmp_path / "run" / "checkpoints").glob("*"))  # no checkpoint, no temporary file


def test_full_disk_errno_in_an_unrelated_writer_is_still_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A writer outside biossl.io (here: the listing's print) that meets a full disk: one line, 74."""
    import biossl.commands.listing as listing

    def full(args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/metrics.csv")

    monkeypatch.setattr(listing, "run", full)
    assert main(["list", "objectives"]) == 74
    err = capsys.readouterr().err.strip()
    assert err.startswith("biossl list: error: cannot write /somewhere/metrics.csv: the disk is full")
    assert "\n" not in err


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (skipped where ``mount`` is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}); the in-process "
                    "ENOSPC tests cover the same code")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system until ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("leave", [0, 20_000, 60_000])
def test_embed_and_audit_on_a_real_full_disk(leave: int, small_disk: Path, pretrained: tuple[Path, Path],
                                             embedded: Path, demo_cohort: Path) -> None:
    """A real full file system, in a subprocess (HDF5 used to crash there): one line, exit 74, nothing written."""
    _fill(small_disk, leave)
    for verb, args in (("embed", ["--checkpoint", str(pretrained[0]), "--manifest", str(demo_cohort / "manifest.csv"),
                                  "--work-dir", str(pretrained[1]), "--out", str(small_disk / "demo.h5ad")]),
                       ("audit", ["--embeddings", str(embedded), *FAST_AUDIT, "--permutations", "49", "--out",
                                  str(small_disk / "audit")])):
        done = subprocess.run(_cli(verb, *args), env=_env(), cwd=small_disk.parent, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 74, done.stderr[-3000:]
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"biossl {verb}: error: cannot write {small_disk}/") and "the disk is full" in line
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-3000:]
        assert sorted(p.name for p in small_disk.rglob("*") if p.is_file()) == ["filler"]


# -- temporary files of killed runs ----------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_embed_removes_temporaries_of_killed_runs_only(pretrained: tuple[Path, Path], demo_cohort: Path,
                                                      tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "demo.h5ad"
    args = ["embed", "--checkpoint", str(pretrained[0]), "--manifest", str(demo_cohort / "manifest.csv"),
            "--work-dir", str(pretrained[1]), "--out", str(out)]
    # A real killed run: SIGKILL once its temporary file is written, before the rename.
    done = subprocess.run(_cli(*args), env=_env(BIOSSL_TEST_KILL_AFTER="0:demo.h5ad"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    killed = _temps(tmp_path)
    assert len(killed) == 1 and killed[0].startswith(".demo.h5ad.") and not out.exists()
    host = socket.gethostname().split(".")[0]
    live = tmp_path / f".demo.h5ad.{os.getpid()}@{host}.abcdefgh.tmp"  # this (live) process's
    other_host = tmp_path / f".demo.h5ad.{_dead_pid()}@elsewhere-node.abcdefgh.tmp"  # a writer on another node
    dead = tmp_path / f".demo.h5ad.{_dead_pid()}@{host}.abcdefgh.tmp"
    other_file = tmp_path / f".other.h5ad.{_dead_pid()}@{host}.abcdefgh.tmp"  # another target's, writer dead
    other_live = tmp_path / f".other.h5ad.{os.getpid()}@{host}.abcdefgh.tmp"
    user_file = tmp_path / ".notes.abcdefgh.tmp"  # not a name biossl writes
    for p in (live, other_host, dead, other_file, other_live, user_file):
        p.write_bytes(b"partial")
    with caplog.at_level("INFO", logger="biossl.io"):
        assert main(args) == 0
    assert _temps(tmp_path) == sorted([live.name, other_host.name, other_live.name, user_file.name])
    assert "removed 3 temporary file(s)" in caplog.text and killed[0] in caplog.text


def test_temporary_names_carry_the_writer(tmp_path: Path) -> None:
    with bio.atomic_path(tmp_path / "x.json") as tmp:
        host = socket.gethostname().split(".")[0]
        assert tmp.name.startswith(f".x.json.{os.getpid()}@") and host.startswith(tmp.name.split("@")[1].split(".")[0])
        tmp.write_text("{}")
    assert os.listdir(tmp_path) == ["x.json"]


def test_atomic_dir_lands_whole_or_not_at_all_and_clears_dead_writers(tmp_path: Path) -> None:
    """Folders (``biossl export``, ``export_pretrained``) get the guarantees of files: whole or absent, no leftovers."""
    host = socket.gethostname().split(".")[0]
    dead = tmp_path / f".model.{_dead_pid()}@{host}.abcdefgh.tmp"  # a killed export's half-written folder
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "weights.bin").write_bytes(b"partial")
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), bio.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert not target.exists() and not dead.exists()  # the dead writer's folder went with the first write
    with bio.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(FileExistsError), bio.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("two")
    assert (target / "a.txt").read_text() == "one"
    with bio.atomic_dir(target, replace=True) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(os.listdir(target)) == ["b.txt"] and sorted(os.listdir(tmp_path)) == ["model"]


# -- threads -------------------------------------------------------------------------------------------
def _cgroup(tmp: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> tuple[Path, Path]:
    root, proc = tmp / "cgroup", tmp / "proc_cgroup"
    lines = []
    if v2 is not None:
        (root / "job" / "step").mkdir(parents=True)
        (root / "job" / "cpu.max").write_text(v2)
        (root / "job" / "step" / "cpu.max").write_text("max 100000\n")
        lines.append("0::/job/step")
    if v1 is not None:
        (root / "cpu,cpuacct" / "slurm").mkdir(parents=True)
        (root / "cpu,cpuacct" / "slurm" / "cpu.cfs_quota_us").write_text(v1[0])
        (root / "cpu,cpuacct" / "slurm" / "cpu.cfs_period_us").write_text(v1[1])
        lines.append("4:cpu,cpuacct:/slurm")
    proc.write_text("\n".join(lines) + "\n")
    return root, proc


@pytest.mark.parametrize(("affinity", "env", "v2", "v1", "expected"), [
    (64, {}, None, None, (64, "all")),
    (4, {}, None, None, (4, "CPU affinity: 4 of")),
    (64, {}, "400000 100000\n", None, (4, "cgroup CPU quota: 4")),
    (64, {}, "150000 100000\n", None, (2, "cgroup CPU quota: 2")),  # 1.5 CPUs: 2 threads
    (64, {}, "max 100000\n", None, (64, "all")),
    (64, {}, None, ("300000", "100000"), (3, "cgroup CPU quota: 3")),
    (64, {}, None, ("-1", "100000"), (64, "all")),
    (64, {"SLURM_CPUS_PER_TASK": "4"}, None, None, (4, "SLURM_CPUS_PER_TASK=4")),
    (8, {"SLURM_CPUS_PER_TASK": "16"}, "1200000 100000\n", None, (8, "CPU affinity")),
    (64, {"SLURM_CPUS_PER_TASK": "16"}, "200000 100000\n", None, (2, "cgroup")),
])
def test_available_cpus_is_the_tightest_limit(affinity: int, env: dict[str, str], v2: str | None,
                                              v1: tuple[str, str] | None, expected: tuple[int, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    root, proc = _cgroup(tmp_path, v2, v1)
    budget = threads.available_cpus(environ=env, affinity=affinity, cgroup_root=root, proc_cgroup=proc)
    assert budget.n == expected[0] and expected[1] in budget.source, budget


def test_thread_choice_precedence() -> None:
    assert threads.choose_threads(3, environ={threads.THREADS_ENV: "5", "OMP_NUM_THREADS": "7"}).n == 3
    assert threads.choose_threads(environ={threads.THREADS_ENV: "5", "OMP_NUM_THREADS": "7"}).n == 5
    assert threads.choose_threads(environ={"OMP_NUM_THREADS": "7"}) == threads.CpuBudget(7, "OMP_NUM_THREADS")
    assert threads.choose_threads(environ={"SLURM_CPUS_PER_TASK": "1"}).n == 1


@pytest.fixture
def fresh_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI sets torch's thread count once per process: forget that, and restore torch's count afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_configured", None)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("fresh_threads")
def test_cli_sets_torch_threads_from_slurm_and_from_the_option(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    with caplog.at_level("DEBUG", logger="biossl.threads"):
        assert main(["list", "objectives"]) == 0
    assert torch.get_num_threads() == 1 and "SLURM_CPUS_PER_TASK=1" in caplog.text
    monkeypatch.setattr(threads, "_configured", None)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert main(["--threads", "2", "list", "objectives"]) == 0
    assert torch.get_num_threads() == 2


@pytest.mark.usefixtures("fresh_threads")
def test_bad_thread_counts_are_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(threads.THREADS_ENV, "lots")
    assert main(["list", "objectives"]) == 2
    assert capsys.readouterr().err.strip() == ("biossl list: error: BIOSSL_NUM_THREADS must be a positive number of "
                                               "threads; got 'lots'")
    with pytest.raises(SystemExit) as exc:
        main(["--threads", "0", "pretrain", "--help"])
    assert exc.value.code == 2 and "--threads must be a positive number" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "74   an output cannot be written" in out and "1    biossl audit" in out and "--threads N" in out


def test_temporaries_of_an_earlier_biossl_go_once_a_day_old(tmp_path: Path) -> None:
    """Names without a writer (biossl before this change) cannot be asked about: removed when a day old."""
    old, recent = tmp_path / ".x.json.abcd1234.tmp", tmp_path / ".x.json.efgh5678.tmp"
    for p in (old, recent):
        p.write_text("partial")
    os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    assert bio.remove_dead_temporaries(tmp_path / "x.json") == [old]
    assert sorted(os.listdir(tmp_path)) == [recent.name]


@pytest.mark.parametrize(("name", "value"), [("OMP_NUM_THREADS", "abc"), ("OMP_NUM_THREADS", "1.5"),
                                             ("NUMEXPR_NUM_THREADS", "x")])
def test_a_malformed_thread_variable_is_one_line_before_any_import(name: str, value: str, demo_cohort: Path) -> None:
    """numexpr read ``OMP_NUM_THREADS=abc`` as a number at pandas' import: a ``ValueError`` traceback."""
    done = subprocess.run(_cli("cohort", str(demo_cohort / "manifest.csv")), capture_output=True, text=True,
                          env=_env(**{name: value}), timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"biossl cohort: error: environment variable {name}=")


@pytest.mark.usefixtures("fresh_threads")
def test_absurd_thread_counts_are_refused_before_any_thread_starts(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``BIOSSL_NUM_THREADS=100000`` ended in ``MemoryError`` (or a failed ``mmap`` at the next import)."""
    monkeypatch.setenv(threads.THREADS_ENV, "100000")
    assert main(["list", "objectives"]) == 2
    assert "more threads than this machine can use" in capsys.readouterr().err
    monkeypatch.delenv(threads.THREADS_ENV)
    with pytest.raises(SystemExit) as exc:
        main(["--threads", "99999", "list", "objectives"])
    assert exc.value.code == 2 and "more threads than this machine can use" in capsys.readouterr().err
    monkeypatch.setenv("OMP_NUM_THREADS", "100000")  # someone else's variable: capped, with a warning
    assert threads.choose_threads().n == threads.max_threads()


@pytest.mark.integration
def test_a_killed_tile_rerun_never_leaves_coordinates_beside_another_runs_thumbnail(fixtures: Path,
                                                                                     tmp_path: Path) -> None:
    """``biossl tile --overwrite`` with other options, killed at every step of putting its pair in place."""
    import h5py

    from biossl.data.tiling import output_paths

    slide = tmp_path / "slide.svs"
    shutil.copy(fixtures / "wsi" / "he_small.svs", slide)
    runs = {"a": ["--min-tissue", "0.9", "--tile-size", "64"], "b": ["--min-tissue", "0.05", "--tile-size", "64"]}
    refs: dict[str, tuple[float, bytes]] = {}
    for name, options in runs.items():
        out = tmp_path / f"ref_{name}"
        assert subprocess.run(_cli("tile", str(slide), "--out", str(out), "--no-progress", *options),
                              env=_env(), capture_output=True, timeout=120).returncode == 0
        h5, thumb = output_paths(out, slide)
        with h5py.File(h5, "r") as f:
            refs[name] = (float(f.attrs["min_tissue"]), thumb.read_bytes())
    assert refs["a"][1] != refs["b"][1]  # the two runs' thumbnails differ: a mixed pair would show
    thumb_of = {m: t for m, t in refs.values()}
    for step in range(1, 5):
        out = tmp_path / f"kill_{step}"
        shutil.copytree(tmp_path / "ref_a", out)
        done = subprocess.run(_cli("tile", str(slide), "--out", str(out), "--no-progress", "--overwrite",
                                   *runs["b"]), env=_env(BIOSSL_TEST_KILL_AFTER=str(step)), capture_output=True,
                              timeout=120)
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-500:]
        h5, thumb = output_paths(out, slide)
        if h5.exists():  # the coordinates say the slide is done: their thumbnail must be their own run's
            with h5py.File(h5, "r") as f:
                assert thumb.read_bytes() == thumb_of[float(f.attrs["min_tissue"])], f"step {step}"

"""Shared fixtures: paths to the in-repo fixtures and to ``../shared/data`` (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """Folder of small real test files committed in the repo (``tests/fixtures``; sources in its READMEs)."""
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that use it skip with a message where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared real-data folder {SHARED} (present in CI, absent in a user's clone)")
    return SHARED


@pytest.fixture(scope="session")
def demo_cohort() -> Path:
    """The bundled demo cohort's folder."""
    return REPO / "biossl" / "demo_data"


def run_two_processes(test_file: str, out: Path, *, timeout: float = 60.0) -> None:
    """Run ``worker(rank, init_file, out_dir)`` of ``test_file`` in 2 spawned processes (gloo) and wait.

    Spawned children unpickle ``worker`` by module name, so the test file's folder is put on
    ``sys.path`` while they start (they inherit it). Fails the test if they do not finish in time.
    """
    import importlib
    import sys
    import time

    import torch.multiprocessing as mp

    folder = str(Path(test_file).parent)
    sys.path.insert(0, folder)
    try:
        module = importlib.import_module(Path(test_file).stem)
        context = mp.spawn(module.worker, args=(str(out / "init"), str(out)), nprocs=2, join=False)
    finally:
        sys.path.remove(folder)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"2-process gloo run of {Path(test_file).name} did not finish in {timeout:.0f} s")


@pytest.fixture(scope="session")
def two_processes() -> object:
    """:func:`run_two_processes`, as a fixture (test files cannot import conftest under importlib mode)."""
    return run_two_processes

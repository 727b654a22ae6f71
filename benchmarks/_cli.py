"""Shared helper of the real-data benchmarks: run one ``biossl`` verb as a user would."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The console script of the interpreter running the benchmark (the project's .venv).
BIOSSL = str(Path(sys.executable).parent / "biossl")


def run_biossl(argv: list[str], log: Path) -> float:
    """Run ``biossl <argv>`` from the repo root with its output in ``log``; return its wall seconds.

    Exits with the command and the last 20 lines of its log when it fails.
    """
    t0 = time.perf_counter()
    with log.open("w") as fh:
        code = subprocess.call([BIOSSL, *argv], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if code:
        tail = "".join(log.read_text().splitlines(True)[-20:])
        sys.exit(f"biossl {' '.join(argv)} failed ({code}); see {log}:\n{tail}")
    return time.perf_counter() - t0

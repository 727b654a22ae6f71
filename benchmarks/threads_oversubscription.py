"""Two concurrent demo-sized pretrainings on a shared node: torch's default threads vs biossl's choice.

torch starts one compute thread per CPU it sees. Two jobs on the same CPUs, each told by the scheduler
that it has half of them (``SLURM_CPUS_PER_TASK``, as on a node where SLURM does not bind CPUs), then
run twice as many threads as there are CPUs. This benchmark times the same two concurrent runs of
``biossl pretrain --config configs/pretrain/demo.yaml`` (the model and data of ``make demo``) twice:

* **before**: ``BIOSSL_NUM_THREADS`` set to torch's own default (what biossl did before it chose);
* **after**: biossl's default, the CPUs this process may use (here ``SLURM_CPUS_PER_TASK``);

and, for reference, one run alone with the default. The slide tiles and scan caches are built once
first (a one-step run), so that only training is timed. ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``
are removed from the jobs' environment (they would take precedence).

Run (about 2 x 2 x the time of one run; the default 50 steps take a few minutes on 2 cores)::

    .venv/bin/python benchmarks/threads_oversubscription.py --steps 50 --out benchmarks/threads_oversubscription.json

Prints one row per scenario: the wall seconds of each job, their mean, and the ratio before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIOSSL = str(Path(sys.executable).parent / "biossl")
CONFIG = ROOT / "configs" / "pretrain" / "demo.yaml"
MANIFEST = ROOT / "biossl" / "demo_data" / "manifest.csv"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BIOSSL_NUM_THREADS",
               "SLURM_CPUS_PER_TASK")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    return {**env, **extra}


def torch_default_threads() -> int:
    """torch's own thread count in a fresh process without thread variables."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=_env(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _pretrain(work: Path, root: Path, steps: int) -> list[str]:
    return [BIOSSL, "pretrain", "--config", str(CONFIG), "--data.manifest", str(MANIFEST), "--data.work_dir",
            str(work), "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
            "--checkpoint_every", str(10**6), "--trainer.enable_progress_bar", "false"]


def run_jobs(n_jobs: int, work: Path, out: Path, steps: int, env: dict[str, str]) -> list[float]:
    """Start ``n_jobs`` pretrainings at once; return each one's wall seconds (exit if one fails)."""
    procs = []
    for i in range(n_jobs):
        log = (out / f"job{i}.log").open("w")
        t0 = time.perf_counter()
        proc = subprocess.Popen(_pretrain(work, out / f"run{i}", steps), stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)
        procs.append((proc, t0, log, out / f"job{i}.log"))
    done: dict[int, float] = {}
    while len(done) < len(procs):  # each job's own end, whichever finishes first
        for i, (proc, t0, _, _) in enumerate(procs):
            if i not in done and proc.poll() is not None:
                done[i] = time.perf_counter() - t0
        time.sleep(0.05)
    for proc, _, log, path in procs:
        log.close()
        if proc.returncode:
            tail = "".join(path.read_text().splitlines(True)[-20:])
            sys.exit(f"job failed ({proc.returncode}); see {path}:\n{tail}")
    return [done[i] for i in range(len(procs))]


def main(argv: list[str] | None = None) -> int:
    """Time the scenarios and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="optimiser steps per run (make demo: 300)")
    parser.add_argument("--jobs", type=int, default=2, help="concurrent runs (default 2)")
    parser.add_argument("--cpus", type=int, default=None,
                        help="CPUs of the node (default: this process's affinity); each job is told cpus/jobs")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for runs (default: a temporary one)")
    args = parser.parse_args(argv)

    cpus = args.cpus or len(os.sched_getaffinity(0))
    share = max(1, cpus // args.jobs)
    default = torch_default_threads()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="biossl_threads_"))
    work = scratch / "work"
    print(f"{cpus} CPUs, {args.jobs} jobs told SLURM_CPUS_PER_TASK={share} each; torch's default: {default} "
          f"threads; {args.steps} steps per run; runs in {scratch}", flush=True)
    prep = scratch / "prep"
    prep.mkdir(parents=True, exist_ok=True)
    run_jobs(1, work, prep, 1, _env())  # tiles and scan caches, once

    scenarios = {
        "alone (biossl default)": (1, _env()),
        "before: 2 jobs, torch default threads": (args.jobs, _env(SLURM_CPUS_PER_TASK=str(share),
                                                                  BIOSSL_NUM_THREADS=str(default))),
        "after: 2 jobs, biossl default": (args.jobs, _env(SLURM_CPUS_PER_TASK=str(share))),
    }
    results: dict[str, dict[str, object]] = {}
    for i, (name, (n_jobs, env)) in enumerate(scenarios.items()):
        out = scratch / f"scenario{i}"
        out.mkdir(parents=True, exist_ok=True)
        seconds = run_jobs(n_jobs, work, out, args.steps, env)
        threads = env.get("BIOSSL_NUM_THREADS") or env.get("SLURM_CPUS_PER_TASK") or str(default)
        results[name] = {"jobs": n_jobs, "threads_per_job": int(threads), "seconds": [round(s, 2) for s in seconds],
                         "mean_seconds": round(sum(seconds) / len(seconds), 2)}
        print(f"{name:42s} threads/job {threads:>3s}  wall s per job {', '.join(f'{s:7.1f}' for s in seconds)}",
              flush=True)
    before = results["before: 2 jobs, torch default threads"]["mean_seconds"]
    after = results["after: 2 jobs, biossl default"]["mean_seconds"]
    assert isinstance(before, float) and isinstance(after, float)
    summary = {"cpus": cpus, "jobs": args.jobs, "slurm_cpus_per_task": share, "torch_default_threads": default,
               "steps": args.steps, "scenarios": results, "before_over_after": round(before / after, 2)}
    print(f"before / after (mean wall seconds per job): {before:.1f} / {after:.1f} = {before / after:.2f}x")
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

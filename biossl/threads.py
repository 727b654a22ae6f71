"""How many CPU threads torch may use: the CPUs this process is given, not the machine's cores.

torch starts one compute thread per core it sees. On a shared node (a SLURM allocation of 4 of 64
cores, a container with a CPU quota, a second job on the same cores) that oversubscribes the CPUs,
and threads that wait on each other slow every job down many times over (see
``benchmarks/threads_oversubscription.py``). :func:`configure_threads` runs once when the ``biossl``
command starts and sets torch's thread count to, by precedence:

1. ``--threads N`` (``biossl --threads N VERB ...``);
2. the ``BIOSSL_NUM_THREADS`` environment variable;
3. ``OMP_NUM_THREADS`` when the user set it (torch already follows it);
4. :func:`available_cpus`: the smallest of the CPU affinity mask, the cgroup CPU quota (v2 ``cpu.max``,
   v1 ``cpu.cfs_quota_us``) and ``SLURM_CPUS_PER_TASK``.

The choice and where it came from are logged in one line (at INFO level when it differs from torch's
own default, at DEBUG level otherwise), and a warning says when more threads than CPUs were asked for.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from biossl.errors import InputError

logger = logging.getLogger(__name__)

#: Environment variable overriding the thread count (below ``--threads``).
THREADS_ENV = "BIOSSL_NUM_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")

_configured: int | None = None


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use, and what limits them (for the log line)."""

    n: int
    source: str


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_cpus(quota: float, period: float) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def cgroup_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """CPUs allowed by the cgroup CPU quota of this process (v2 ``cpu.max`` or v1 CFS), or None without one.

    Every cgroup from the process's own up to the root is read; the tightest quota wins. A quota of
    1.5 CPUs counts as 2.
    """
    v2_path, v1_path = "", ""
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "cpu" in parts[1].split(","):
            v1_path = parts[2]
    found: list[int] = []
    for rel in _ancestors(v2_path):
        text = _read(cgroup_root / rel / "cpu.max")
        if text:
            fields = text.split()
            if fields[0] != "max" and len(fields) == 2:
                n = _quota_cpus(float(fields[0]), float(fields[1]))
                found += [n] if n is not None else []
    for base in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for rel in _ancestors(v1_path):
            quota, period = _read(cgroup_root / base / rel / "cpu.cfs_quota_us"), _read(
                cgroup_root / base / rel / "cpu.cfs_period_us")
            if quota and period and quota.lstrip("-").isdigit() and period.isdigit():
                n = _quota_cpus(float(quota), float(period))
                found += [n] if n is not None else []
    return min(found) if found else None


def _ancestors(rel: str) -> list[str]:
    """``a/b/c`` -> ``["a/b/c", "a/b", "a", ""]`` (paths relative to the cgroup root)."""
    parts = [p for p in rel.strip("/").split("/") if p]
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _positive_int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip().split("(")[0]  # SLURM_CPUS_PER_TASK is a plain number; be lenient about "4(x2)"
    return int(text) if text.isdigit() and int(text) > 0 else None


def available_cpus(*, environ: Mapping[str, str] | None = None, affinity: int | None = None,
                   cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> CpuBudget:
    """The number of CPUs this process may use: the smallest of its limits.

    Args:
        environ: Environment to read ``SLURM_CPUS_PER_TASK`` from (default ``os.environ``).
        affinity: CPUs in the affinity mask (default: this process's).
        cgroup_root: Where the cgroup file system is mounted (a parameter for tests).
        proc_cgroup: This process's ``/proc/self/cgroup`` (a parameter for tests).
    """
    env = os.environ if environ is None else environ
    cores = os.cpu_count() or 1
    limits: list[tuple[int, str]] = []
    mask = _affinity() if affinity is None else affinity
    limits.append((mask, f"CPU affinity: {mask} of {cores} CPUs" if mask < cores else f"all {cores} CPUs"))
    quota = cgroup_cpus(cgroup_root, proc_cgroup)
    if quota is not None:
        limits.append((quota, f"cgroup CPU quota: {quota} CPUs"))
    slurm = _positive_int(env.get("SLURM_CPUS_PER_TASK"))
    if slurm is not None:
        limits.append((slurm, f"SLURM_CPUS_PER_TASK={slurm}"))
    n, source = min(limits, key=lambda item: item[0])
    return CpuBudget(max(1, n), source)


def max_threads() -> int:
    """The most threads biossl accepts: 4 per CPU of the machine, at least 64 (more only exhaust memory)."""
    return max(64, 4 * (os.cpu_count() or 1))


def parse_threads(text: str, what: str) -> int:
    """A thread count given by the user (``--threads`` or ``BIOSSL_NUM_THREADS``): a positive integer.

    Raises:
        InputError: not a positive integer, or more than :func:`max_threads` (100000 threads would
            exhaust the memory of the thread pools before any work).
    """
    value = _positive_int(text)
    if value is None or "(" in text:
        raise InputError(f"{what} must be a positive number of threads; got {text!r}")
    if value > max_threads():
        raise InputError(f"{what} {value} is more threads than this machine can use ({os.cpu_count() or 1} CPUs; "
                         f"at most {max_threads()}); give at most the CPUs this job may use")
    return value


#: Thread variables that libraries biossl imports read as whole numbers (numexpr, at pandas' import,
#: fails with a traceback on ``OMP_NUM_THREADS=abc``; OpenMP and BLAS pools ignore or misread them).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "NUMEXPR_MAX_THREADS")


def check_thread_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse thread variables that are set but are not a positive whole number, before any library reads them.

    Raises:
        InputError: naming the variable and its value.
    """
    env = os.environ if environ is None else environ
    for name in (THREADS_ENV, *THREAD_VARIABLES):
        text = env.get(name, "")
        if not text.strip():
            continue
        if name == THREADS_ENV:
            parse_threads(text, name)
        elif not (text.strip().isdigit() and int(text.strip()) > 0):
            raise InputError(f"environment variable {name}={text!r} is not a positive whole number of threads "
                             f"(libraries biossl uses read it as one); set it to a number such as "
                             f"{available_cpus(environ=env).n}, or unset it")


def choose_threads(requested: int | None = None, *, environ: Mapping[str, str] | None = None) -> CpuBudget:
    """The thread count by precedence (see the module docstring), and where it comes from."""
    env = os.environ if environ is None else environ
    if requested is not None:
        return CpuBudget(requested, "--threads")
    if env.get(THREADS_ENV, "").strip():
        return CpuBudget(parse_threads(env[THREADS_ENV], THREADS_ENV), THREADS_ENV)
    omp = _positive_int(env.get("OMP_NUM_THREADS"))
    if omp is not None and omp > max_threads():
        logger.warning("OMP_NUM_THREADS=%d is more threads than this machine can use; torch uses %d", omp,
                       max_threads())
        return CpuBudget(max_threads(), f"OMP_NUM_THREADS={omp}, capped")
    if omp is not None:
        return CpuBudget(omp, "OMP_NUM_THREADS")
    return available_cpus(environ=env)


def configure_threads(requested: int | None = None) -> int:
    """Set torch's compute (and inter-op) thread count once per process; log the choice; return it.

    Later calls (a command running another, as ``biossl demo`` does) keep the first choice unless
    ``requested`` is given.
    """
    global _configured
    if _configured is not None and requested is None:
        return _configured
    budget = choose_threads(requested)
    import torch

    default = torch.get_num_threads()
    if default != budget.n:
        torch.set_num_threads(budget.n)
    try:  # allowed only before the first inter-op parallel work of the process
        if torch.get_num_interop_threads() > budget.n:
            torch.set_num_interop_threads(budget.n)
    except RuntimeError:
        logger.debug("inter-op threads already started; left at %d", torch.get_num_interop_threads())
    if default != budget.n:
        _limit_other_pools(budget.n)
    # INFO when biossl changed torch's own choice (the line a user of a shared node wants to see), DEBUG otherwise.
    logger.log(logging.INFO if default != budget.n else logging.DEBUG,
               "torch uses %d CPU thread(s) (%s; torch's default here: %d; change with biossl --threads N or %s)",
               budget.n, budget.source, default, THREADS_ENV)
    _configured = budget.n
    workers = available_cpus()
    if budget.n > workers.n:
        logger.warning("%d threads on %d available CPU(s) (%s): jobs sharing these CPUs will slow each other down",
                       budget.n, workers.n, workers.source)
    return budget.n


def _limit_other_pools(n: int) -> None:
    """The same limit for numpy's BLAS and other OpenMP pools (threadpoolctl), and numexpr (read at its import)."""
    os.environ.setdefault("NUMEXPR_NUM_THREADS", str(n))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover (a dependency of scikit-learn)
        return
    threadpool_limits(limits=n)


def cap_workers(requested: int, what: str) -> int:
    """``requested`` DataLoader workers, at most the available CPUs (with a warning when lowered)."""
    budget = available_cpus()
    if requested <= budget.n:
        return requested
    logger.warning("%s=%d is more than the %d CPU(s) this process may use (%s); using %d", what, requested,
                   budget.n, budget.source, budget.n)
    return budget.n


__all__ = ["THREADS_ENV", "THREAD_VARIABLES", "CpuBudget", "available_cpus", "cap_workers", "cgroup_cpus",
           "check_thread_environment", "choose_threads", "configure_threads", "max_threads", "parse_threads"]

"""Safe file output: atomic, durable, paired and full-disk-proof writes, and strict-JSON values.

Every output goes to a temporary file beside its target (``.<name>.<pid>@<host>.<random>.tmp``), is
flushed to the disk (``fsync``), and is then renamed onto the target; the folder is synced after the
rename, so that neither a kill nor a power loss leaves a half-written file under a final name.

* :func:`atomic_path` writes one file; :func:`atomic_outputs` writes several files that belong
  together (a JSON and the report or the plot it names): they are all written before any target
  changes, the previous run's files are then removed (the one naming the others first) and the new
  ones renamed (the one naming the others last). Whatever the moment of a kill, the file naming the
  others is never beside another run's partner.
* A write that fails because the disk is full, a quota is exceeded, the folder is read-only or not
  writable raises :class:`biossl.errors.OutputError` (one line naming the path and the free space;
  exit code 74) and leaves nothing under the target.
* HDF5 files (:func:`atomic_h5`, :func:`write_h5ad_atomic`) are built in memory and written by
  Python: HDF5 itself never writes to a full disk (where it raises from object destructors and can
  crash the process).
* Temporary files carry their writer's process ID and host name; :func:`remove_dead_temporaries`
  removes those whose writer is gone (a SIGKILL runs no cleanup), and never a live writer's.

Test-only hook: with ``BIOSSL_TEST_KILL_AFTER=<n>`` in the environment the process kills itself with
SIGKILL right after the ``n``-th removal or rename of the commits of several files (:func:`atomic_outputs`
with two targets or more), so that tests can stop a run between the writes of a pair; ``0`` kills it at
the start of its first commit of any kind (its temporary files written, nothing renamed).
``BIOSSL_TEST_KILL_AFTER=<n>:<name>`` counts only the commits that write a file called ``<name>``.
Never set it otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np

from biossl.errors import OutputError

if TYPE_CHECKING:
    import anndata as ad
    import h5py

logger = logging.getLogger(__name__)

#: errno values that mean the output cannot be written, whatever the file: always turned into OutputError.
DISK_FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
#: errno values that mean the output cannot be written when they concern the output's own path.
NOT_WRITABLE_ERRNOS: frozenset[int] = frozenset({errno.EACCES, errno.EPERM})
#: How HDF5 and other C libraries spell a full disk inside their own exception messages.
_DISK_FULL_TEXT = re.compile(r"No space left on device|errno = 28\b|Disk quota exceeded|errno = 122\b|"
                             r"Read-only file system|errno = 30\b")
#: Free space below which a write that failed for an unstated reason is taken for a full disk.
_NEARLY_FULL = 1 << 20
#: Environment variable of the test-only kill hook (see the module docstring).
KILL_AFTER_ENV = "BIOSSL_TEST_KILL_AFTER"
#: Temporary files left by an earlier biossl (no writer ID in the name) are removed once this old.
_OLD_FORMAT_AGE_S = 24 * 3600.0

_commit_steps = 0


def _host_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32]
    return host or "host"


_HOST = _host_tag()
_TEMP_TAIL = re.compile(r"^(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[A-Za-z0-9_]+\.tmp$")
_OLD_TEMP_TAIL = re.compile(r"^[a-z0-9_]{8}\.tmp$")
#: Any temporary file of :func:`atomic_outputs` (the target name, then the writer and a random part).
_ANY_TEMP = re.compile(r"^\..+?\.(?P<tail>\d+@[A-Za-z0-9-]+\.[A-Za-z0-9_]+\.tmp)$")


# -- errors ------------------------------------------------------------------------------------------
def _free_space(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _errno_of(exc: BaseException) -> int | None:
    """The errno of ``exc`` or of an exception it was raised from, or that its message spells out."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        match = _DISK_FULL_TEXT.search(str(current))
        if match:
            text = match.group(0)
            return (errno.ENOSPC if "28" in text or "space" in text else
                    errno.EDQUOT if "122" in text or "quota" in text else errno.EROFS)
        current = current.__cause__ or current.__context__
    return None


def output_error(exc: BaseException, path: str | os.PathLike[str] | None, *, names: str | None = None
                 ) -> OutputError | None:
    """The :class:`OutputError` for ``exc`` raised while writing ``path``, or None if it is another failure.

    A full disk, an exceeded quota, a file too large and a read-only file system always count; a
    permission error counts when it concerns ``path``, its folder or its temporary file (not an input
    file read while writing). ``path`` may be None for failures whose file is unknown; ``names`` replaces
    it in the message (the files of a pair, when the failing one is not known).
    """
    if isinstance(exc, OutputError):
        return exc
    code = _errno_of(exc)
    target = Path(path) if path is not None else None
    if code in NOT_WRITABLE_ERRNOS:
        named = getattr(exc, "filename", None)
        if target is None or (named is not None and not _concerns(Path(named), target)):
            return None
    elif code not in DISK_FULL_ERRNOS:
        return None
    assert code is not None
    if target is None:
        named = getattr(exc, "filename", None)
        target = Path(named) if named else None
    return _make_output_error(code, target, names)


def _concerns(named: Path, target: Path) -> bool:
    """True if ``named`` is ``target``, a folder above it, or one of its temporary files."""
    named, target = named.absolute(), target.absolute()
    return (named == target or named in target.parents
            or (named.parent == target.parent and named.name.startswith(f".{target.name}.")))


def _make_output_error(code: int, target: Path | None, names: str | None = None) -> OutputError:
    where = f"cannot write {names or target}" if target is not None else "cannot write an output file"
    folder = target.parent if target is not None else Path.cwd()
    free = _free_space(folder)
    free_text = f"{_size(free)} free there" if free is not None else "free space unknown"
    if code in (errno.ENOSPC, errno.EFBIG):
        reason, todo = f"the disk is full ({free_text})", "free some space or write to another folder"
    elif code == errno.EDQUOT:
        reason, todo = f"the disk quota is exceeded ({free_text} on the disk)", ("free some of your quota or write "
                                                                                 "to another folder")
    elif code == errno.EROFS:
        reason, todo = "the file system is read-only", "write to another folder"
    else:
        reason, todo = "permission denied", "write to a folder you can write to (or fix its permissions)"
    return OutputError(f"{where}: {reason}; nothing was written under that name; {todo} and run the command again")


def _output_error_while_writing(exc: BaseException, target: Path, *, check_free: bool, names: str | None = None
                                ) -> OutputError | None:
    """:func:`output_error`; with ``check_free``, also a failure of unstated cause while the disk is full.

    Some writers (``torch.save``, HDF5) hide the errno of a failed write. Called before the temporary
    file is removed, the free space is the one the writer met.
    """
    err = output_error(exc, target, names=names)
    if err is None and check_free and isinstance(exc, (OSError, RuntimeError)):
        free = _free_space(target.parent)
        if free is not None and free < _NEARLY_FULL:
            err = _make_output_error(errno.ENOSPC, target, names)
    return err


def _reraise(exc: BaseException, err: OutputError | None) -> None:
    """Raise ``err`` (from ``exc``) if it is a new error; otherwise return, for the caller's bare ``raise``."""
    if err is not None and err is not exc:
        raise err from exc


# -- temporary files ---------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _writer_dead(tail: str) -> bool | None:
    """Whether the writer named by ``<pid>@<host>.<random>.tmp`` is gone (None: not such a name)."""
    match = _TEMP_TAIL.match(tail)
    if match is None:
        return None
    return match["host"] == _HOST and not _pid_alive(int(match["pid"]))


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def remove_dead_temporaries(target: str | os.PathLike[str], *, any_target: bool = False) -> list[Path]:
    """Remove the temporary files of ``target`` whose writer is no longer running; return them.

    A temporary file names its writer (process ID and host). One written on this host by a process
    that has ended (killed with SIGKILL, a node failure) is removed; a live writer's, or one from
    another host sharing the folder, is kept. Temporary files of ``target`` written by an earlier
    biossl (without the writer in their name) are removed once a day old. With ``any_target``, the
    dead writers' temporary files of every target in ``target``'s folder go too.
    """
    target = Path(target)
    prefix = f".{target.name}."
    removed: list[Path] = []
    try:
        names = [e.name for e in os.scandir(target.parent) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for name in names:
        tmp = target.parent / name
        dead: bool | None = None
        if name.startswith(prefix):
            tail = name[len(prefix):]
            dead = _writer_dead(tail)
            if dead is None and _OLD_TEMP_TAIL.match(tail):  # an earlier biossl's name: no writer to ask
                dead = _age(tmp) > _OLD_FORMAT_AGE_S
        if dead is None and any_target:
            match = _ANY_TEMP.match(name)
            dead = match is not None and bool(_writer_dead(match["tail"]))
        if dead:
            with contextlib.suppress(FileNotFoundError):
                if tmp.is_dir():  # a folder written by atomic_dir
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
                removed.append(tmp)
    if removed:
        logger.info("removed %d temporary file(s) in %s left by runs that ended without cleaning up: %s",
                    len(removed), target.parent, ", ".join(p.name for p in removed))
    return removed


_cleaned_folders: set[Path] = set()


def _clean_once(target: Path) -> None:
    """:func:`remove_dead_temporaries` of every target in ``target``'s folder, once per folder and process.

    Once is enough: a writer that dies later is another process, whose leftovers the next run removes.
    Scanning a large folder (tiles of thousands of slides) before every write would cost more than it saves.
    """
    folder = target.parent.absolute()
    if folder not in _cleaned_folders:
        remove_dead_temporaries(target, any_target=True)
        _cleaned_folders.add(folder)


def _make_temp(target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_once(target)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}@{_HOST}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        _reraise(exc, output_error(exc, target))
        raise
    os.close(fd)
    return Path(name)


# -- durability --------------------------------------------------------------------------------------
def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk.

    File systems that cannot sync a folder (``EINVAL``) are tolerated; other errors (a full disk found
    at the flush, on NFS or with delayed allocation) are raised.
    """
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _finish(tmp: Path) -> None:
    """Give ``tmp`` the usual mode and flush it to the disk, ready to be renamed."""
    tmp.chmod(_default_mode())  # mkstemp makes 0600 files; outputs get the usual umask-based mode
    fsync_path(tmp)


def _kill_hook(paths: list[Path]) -> int | None:
    """The step count after which the test-only hook kills this commit's process, or None (see the module doc)."""
    value = os.environ.get(KILL_AFTER_ENV)
    if value is None:
        return None
    count, _, name = value.strip().partition(":")
    if not count.isdigit() or (name and name not in {p.name for p in paths}):
        return None
    return int(count)


def _commit_step(kill_after: int | None) -> None:
    """Count one removal or rename of a commit of several files; the test-only kill hook acts here."""
    global _commit_steps
    _commit_steps += 1
    if kill_after is not None and _commit_steps >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)


# -- atomic writes -----------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_outputs(*targets: str | os.PathLike[str]) -> Iterator[tuple[Path, ...]]:
    """Yield one temporary path per target; on success, put them all in place together.

    Give the file that names the others (the JSON beside its plot, the audit beside its report) last.
    Nothing is changed under a target until every temporary file is written and flushed. Then the
    previous files are removed, the last target's first, and the new ones renamed, the last target's
    last. Whatever the moment of a kill, the last target is either absent or beside its own run's
    partners, never beside another run's. On an exception, every temporary file is removed and no
    target is touched. A single target is replaced by one atomic rename (it never disappears).

    Raises:
        OutputError: the disk is full, the quota exceeded, the folder read-only or not writable.

    Example:
        >>> with atomic_outputs("label_efficiency.png", "result.json") as (png, js):  # doctest: +SKIP
        ...     save_png(png)
        ...     js.write_text(json_naming("label_efficiency.png"))
    """
    paths = [Path(t) for t in targets]
    if not paths:
        raise ValueError("atomic_outputs needs at least one target")
    if len({p.absolute() for p in paths}) != len(paths):
        raise ValueError(f"atomic_outputs: the same target twice in {[str(p) for p in paths]}")
    temps: list[Path] = []
    try:
        for path in paths:
            temps.append(_make_temp(path))
        yield tuple(temps)
        for tmp in temps:
            _finish(tmp)
        _commit(paths, temps)
    except BaseException as exc:
        # Decided before the temporary files go: their bytes are part of the free space the writer met.
        target, names = _target_of(exc, paths, temps)
        err = _output_error_while_writing(exc, target, check_free=bool(temps), names=names)
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _reraise(exc, err)
        raise


def _target_of(exc: BaseException, paths: list[Path], temps: list[Path]) -> tuple[Path, str | None]:
    """The target whose file (or temporary file) ``exc`` names, or the last one and the names of all of them."""
    named = getattr(exc, "filename", None)
    if named is not None:
        for path, tmp in zip(paths, temps, strict=False):
            if Path(named).absolute() in (path.absolute(), tmp.absolute()):
                return path, None
    return paths[-1], (" and ".join(map(str, paths)) if len(paths) > 1 else None)


def _commit(paths: list[Path], temps: list[Path]) -> None:
    """Remove the previous targets (last first) when there are several, then rename (last last), then sync."""
    kill_after = _kill_hook(paths)
    if kill_after == 0 or (kill_after is not None and len(paths) > 1 and _commit_steps >= kill_after):
        os.kill(os.getpid(), signal.SIGKILL)
    counted = kill_after if len(paths) > 1 else None
    if len(paths) > 1:
        for path in reversed(paths):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                _commit_step(counted)
    for path, tmp in zip(paths, temps, strict=True):
        os.replace(tmp, path)
        if counted is not None:
            _commit_step(counted)
    for folder in dict.fromkeys(p.parent for p in paths):
        fsync_path(folder)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched, so a killed or
    failed run never leaves a half-written output under the final name. The file is flushed to the
    disk before the rename and the folder after it. Temporary files of ``target`` left by dead
    writers are removed first.

    Raises:
        OutputError: the disk is full, the quota exceeded, the folder read-only or not writable.

    Example:
        >>> with atomic_path("coords.h5") as tmp:  # doctest: +SKIP
        ...     write_h5(tmp)
    """
    with atomic_outputs(target) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it onto ``target`` when the block succeeds.

    The folder analogue of :func:`atomic_path`: on any exception the temporary folder is removed and
    ``target`` is left as it was. The temporary folder names its writer like every temporary of this
    module, so one left by a killed run is removed by the next (:func:`remove_dead_temporaries`).

    Args:
        target: The folder to write.
        replace: Replace an existing ``target`` (it is moved aside, the new folder renamed in, then the old
            one removed). Without it an existing ``target`` must be an empty folder.

    Raises:
        FileExistsError: ``target`` exists (and is not an empty folder) and ``replace`` is false.
        OutputError: the disk is full, the quota exceeded, the folder read-only or not writable.
    """
    target = Path(target)
    if target.exists() and not replace and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_once(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}@{_HOST}.", suffix=".tmp",
                                    dir=target.parent))
    except OSError as exc:
        _reraise(exc, output_error(exc, target))
        raise
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}@{_HOST}.old.", suffix=".tmp",
                                        dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        fsync_path(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _reraise(exc, output_error(exc, target))
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, so never toggle it later


def _default_mode() -> int:
    """``0o666`` less the process umask (what ``open(path, "w")`` would give)."""
    return 0o666 & ~_UMASK


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` (a temporary path of :func:`atomic_outputs`), through Python's own file I/O."""
    with open(path, "wb") as fh:
        fh.write(data)


class _RecordingFile(io.RawIOBase):
    """A binary file whose write errors are kept, for writers (``torch.save``) that replace them by their own."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fh = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.error: OSError | None = None

    def writable(self) -> bool:
        """Always True."""
        return True

    def write(self, data: Any) -> int:
        """Write all of ``data``; keep the OSError (if any) before raising it."""
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        """Flush the underlying file (keeping its error)."""
        if self._fh.closed:
            return
        try:
            self._fh.flush()
        except OSError as exc:
            self.error = exc
            raise

    def close(self) -> None:
        """Close the underlying file (keeping its error)."""
        if not self.closed:
            try:
                self._fh.close()
            except OSError as exc:
                self.error = exc
                raise
            finally:
                super().close()


def save_torch_atomic(obj: Any, target: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``target`` atomically and durably; a full disk raises :class:`OutputError`.

    ``torch.save`` reports a failed write as ``RuntimeError: ... unexpected pos``; the file object given
    to it keeps the real error, which decides.
    """
    import torch

    target = Path(target)
    with atomic_path(target) as tmp:
        fh = _RecordingFile(tmp)
        try:
            torch.save(obj, cast("IO[bytes]", fh))  # a binary file object, as torch.save wants
            fh.close()
        except BaseException as exc:
            error = fh.error
            with contextlib.suppress(OSError):
                fh.close()
            if error is not None and error is not exc:
                _reraise(exc, output_error(error, target))
            raise


@contextlib.contextmanager
def atomic_h5(target: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """Yield an HDF5 file built in memory; write it to ``target`` atomically once the block ends.

    HDF5 never writes to the disk itself: on a full disk it raises from object destructors and can
    crash the process. Here Python writes the finished bytes, and a full disk is an
    :class:`OutputError` with nothing left under ``target``.
    """
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    with atomic_path(target) as tmp:
        write_bytes(tmp, buffer.getbuffer())


def h5ad_bytes(adata: ad.AnnData) -> memoryview:
    """``adata`` serialised as an ``.h5ad`` file, in memory (strings become categoricals, as ``write_h5ad``)."""
    import anndata as ad
    import h5py

    adata.strings_to_categoricals()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        ad.io.write_elem(f, "/", adata)
    return buffer.getbuffer()


def write_h5ad_atomic(adata: ad.AnnData, target: str | os.PathLike[str]) -> None:
    """Write ``adata`` as ``.h5ad`` to ``target`` atomically, durably, and safely on a full disk."""
    data = h5ad_bytes(adata)
    with atomic_path(target) as tmp:
        write_bytes(tmp, data)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays made plain and NaN/inf as ``None`` (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB chunks (a multi-GB checkpoint never sits in memory)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

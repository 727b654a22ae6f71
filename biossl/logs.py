"""Logging of the ``biossl`` command line: one handler, one line per event, no third-party adverts.

:func:`configure` installs a single stderr handler on the root logger (unless the host already has one, such as
pytest's) and sets the level from ``-v``/``-q``. Its filter drops what a captured run should not show: a line
identical to one already printed (the same warning from every step or every worker), and libraries' tips and
adverts (Lightning's "💡 Tip: ... litlogger / litmodels"). :func:`adopt_library_loggers` removes the handlers
that Lightning installs on its own loggers when it is imported (which printed each of its lines twice: once as
``INFO: ...``, once through the root handler) and lets their records reach the root handler.
"""

from __future__ import annotations

import logging
import sys

#: verbosity: -1 quiet (warnings and errors), 0 normal (info), 1 biossl's debug lines, 2 every library's
QUIET, NORMAL, DEBUG, DEBUG_ALL = -1, 0, 1, 2

#: Loggers of libraries that install their own handlers when imported.
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")

#: Substrings of lines that are adverts, not information about the run.
ADVERTS = ("💡 Tip:", "litlogger", "litmodels", "Lightning AI Studio")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OncePerRun(logging.Filter):
    """Drops adverts and any line (level, logger, text) that was already printed since :meth:`reset`."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[int, str, str]] = set()

    def reset(self) -> None:
        """Forget the lines printed so far (a new run in the same process)."""
        self._seen.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        """True to print ``record``."""
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: let the handler report it
            return True
        if any(advert in text for advert in ADVERTS):
            return False
        if record.name == "py.warnings" and text.endswith("\n"):  # warnings.formatwarning ends with a newline
            record.msg, record.args = text.rstrip("\n"), ()
            text = record.msg
        key = (record.levelno, record.name, text)
        if key in self._seen:
            return False
        if len(self._seen) < 100_000:
            self._seen.add(key)
        return True


_handler: logging.Handler | None = None
_filter = OncePerRun()
_verbosity: int = NORMAL


def configure(verbosity: int | None = None, *, new_run: bool = True) -> None:
    """Set up logging for a command-line run.

    Args:
        verbosity: :data:`QUIET` (warnings and errors only, no progress bars), :data:`NORMAL`, :data:`DEBUG`
            (biossl's debug lines) or :data:`DEBUG_ALL` (every library's). None: :data:`NORMAL` when this call
            installs the handler, else the level set before is kept (a verb that runs other verbs in the same
            process, such as ``biossl demo``; or a host's own logging, such as pytest's).
        new_run: Forget the lines printed so far (False for a verb run by another verb: its repeats stay hidden).
    """
    global _handler, _verbosity
    from biossl.progress import set_progress

    root = logging.getLogger()
    installed = False
    if _handler is None and not root.handlers:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        _handler.addFilter(_filter)
        root.addHandler(_handler)
        logging.captureWarnings(True)  # warnings.warn lines go through the handler, its filter and -q
        installed = True
    if new_run:
        _filter.reset()
    adopt_library_loggers()
    if verbosity is None and not installed:
        return
    _verbosity = NORMAL if verbosity is None else max(QUIET, min(DEBUG_ALL, verbosity))
    root.setLevel({QUIET: logging.WARNING, NORMAL: logging.INFO, DEBUG: logging.INFO,
                   DEBUG_ALL: logging.DEBUG}[_verbosity])
    logging.getLogger("biossl").setLevel(logging.DEBUG if _verbosity >= DEBUG else logging.NOTSET)
    set_progress(False if _verbosity == QUIET else None)


def verbosity() -> int:
    """The verbosity of the last :func:`configure` call."""
    return _verbosity


def adopt_library_loggers() -> None:
    """Let the records of :data:`LIBRARY_LOGGERS` reach the root handler only (once each, at the root's level).

    Lightning adds a handler to its ``lightning`` logger (and to ``lightning.pytorch`` when the root has none) at
    import time and fixes their level at INFO; call this after it is imported.
    """
    for name in LIBRARY_LOGGERS:
        if name not in logging.Logger.manager.loggerDict:
            continue
        lib = logging.getLogger(name)
        for handler in list(lib.handlers):
            lib.removeHandler(handler)
        lib.propagate = True
        lib.setLevel(logging.NOTSET)

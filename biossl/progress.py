"""Progress bars of the long loops (embedding patients, cross-validation folds, audit probes).

One switch for the whole process: ``biossl -q`` (or ``--no-progress`` on a verb, or ``BIOSSL_PROGRESS=0``) hides
every bar; library callers (a notebook) get bars by default and can call :func:`set_progress` to turn them off.
Bars go to stderr, so that what a verb prints on stdout (tables, paths) stays machine-readable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_enabled: bool | None = None  # None: follow $BIOSSL_PROGRESS (default on)


def set_progress(enabled: bool | None) -> None:
    """Show (True) or hide (False) every progress bar of this process; None: follow ``$BIOSSL_PROGRESS``."""
    global _enabled
    _enabled = enabled


def progress_enabled() -> bool:
    """Whether bars are shown: :func:`set_progress`, else ``$BIOSSL_PROGRESS`` (``0``/``false``/``no`` hide them)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get("BIOSSL_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def progress(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
             leave: bool = False) -> Iterator[T]:
    """``items`` wrapped in a tqdm bar on stderr, or unchanged when bars are hidden.

    Args:
        items: What the loop walks over.
        desc: Short label in front of the bar (``"embed"``, ``"folds"``).
        total: Length when ``items`` has none (a generator).
        unit: What one step is (``"patient"``, ``"fold"``).
        leave: Keep the finished bar on screen.
    """
    if not progress_enabled():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True)

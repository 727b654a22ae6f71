"""Callbacks: a checkpoint when a run is interrupted, and a per-term loss summary."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl

logger = logging.getLogger(__name__)


#: File name of the checkpoint written on Ctrl-C / SIGTERM.
NAME = "last-interrupted.ckpt"


class CheckpointOnInterrupt(pl.Callback):
    """Save ``<dirpath>/last-interrupted.ckpt`` when training stops on Ctrl-C or SIGTERM.

    The name starts with ``last`` so that ``--ckpt_path last`` (``--resume last``) finds it: Lightning resumes
    from the newest ``last*.ckpt``, and an interrupted run's is newer than its periodic ``last.ckpt``.

    SIGTERM (what schedulers such as SLURM send before killing a job) is turned into
    ``KeyboardInterrupt`` for the duration of ``fit``, so both end in the same checkpoint.

    Args:
        dirpath: Folder of the checkpoint; defaults to the trainer's checkpoint folder.
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath else None
        self._previous: Any = None

    def _target(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return self.dirpath / NAME
        ckpt = trainer.checkpoint_callback
        folder = getattr(ckpt, "dirpath", None) or trainer.default_root_dir
        return Path(folder) / NAME

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Route SIGTERM to KeyboardInterrupt (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            self._previous = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Write the checkpoint if the run was interrupted."""
        if isinstance(exception, KeyboardInterrupt) and trainer.global_step > 0:
            path = self._target(trainer)
            trainer.save_checkpoint(path)
            logger.warning("interrupted at step %d: checkpoint written to %s", trainer.global_step, path)
        self.on_fit_end(trainer, pl_module)

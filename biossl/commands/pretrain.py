"""``biossl pretrain --config configs/pretrain/<name>.yaml``: joint multimodal pretraining.

A LightningCLI over :class:`~biossl.modules.pretrain.PretrainModule` and
:class:`~biossl.modules.datamodule.BagDataModule`: ``--print_config`` shows the resolved run, every
option can be overridden on the command line (``--trainer.max_steps 50``), and the resolved config
is saved beside the checkpoints. GPU, bf16 autocast and several devices are chosen automatically
when present; CPU and fp32 otherwise.

**Killed runs.** Checkpoints are written atomically and durably (a temporary file beside the target,
flushed to the disk, then a rename, then the folder flushed), so a run killed at any moment (SIGKILL, a
node failure, a power loss) leaves only complete checkpoints,
and ``--ckpt_path last`` (or the path of ``last.ckpt``) resumes it exactly. ``metrics.csv`` is flushed
every step, and a resumed run keeps the rows of the steps before its checkpoint: the file ends with
one row per step, as an uninterrupted run's does.

**Command line.** ``--checkpoint`` and ``--resume`` are aliases of ``--ckpt_path``; ``--checkpoint-every`` (config
key ``checkpoint_every``; the old spelling ``--checkpoint_every`` is still accepted) sets the checkpoint interval.
``-v``/``-q`` (before or after the verb) are biossl's and never reach Lightning. Lightning's own log lines go
through biossl's one handler (:mod:`biossl.logs`), once each, without its tips.

**Full disk.** A checkpoint or ``metrics.csv`` that cannot be written (disk full, quota, read-only
folder) stops the run with one line naming the file and the free space, and exit code 74; the
checkpoints already written stay complete.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, DefaultHelpFormatter
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from biossl.errors import InputError
from biossl.io import output_error, save_torch_atomic
from biossl.logs import adopt_library_loggers
from biossl.modules.datamodule import BagDataModule
from biossl.modules.pretrain import PretrainModule

PASSTHROUGH = True  # this verb parses its own arguments (jsonargparse)

#: Old spellings still accepted but left out of ``--help``.
HIDDEN_FLAGS = frozenset({"--checkpoint_every"})

EPILOG_NOTE = """biossl's own options (before or after the verb): -v/--verbose (-vv: every library's debug lines),
-q/--quiet (warnings and errors only, no progress bars), --plugin MODULE."""


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help (each option's type and default) with the epilog kept as written, old spellings hidden."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if HIDDEN_FLAGS.isdisjoint(action.option_strings):
            return super()._format_action_invocation(action)
        shown = argparse.Action([o for o in action.option_strings if o not in HIDDEN_FLAGS], action.dest,
                                nargs=action.nargs, metavar=action.metavar)
        return super()._format_action_invocation(shown)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the checkpoint, flushed to the disk, then a rename onto it.

    Lightning's own writer stages the file in the system temporary folder and moves it, which is a
    copy (not atomic) when that folder is on another file system, and leaves the temporary file
    behind when the process is killed. A full disk raises :class:`~biossl.errors.OutputError` (torch
    itself says ``unexpected pos``). Remote paths (``s3://`` ...) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_torch_atomic(checkpoint, path)


class _ResumingWriter(ExperimentWriter):
    """Lightning's CSV writer, keeping the rows an earlier run of the same folder wrote before this one's first step.

    Lightning deletes ``metrics.csv`` when a run starts; a resumed run would lose the rows of the steps
    before its checkpoint. Here the file is kept until this run's first flush, which rewrites it with
    the earlier rows (``step`` below the first step this run logs) followed by the new ones; rows of later
    steps, which the resumed run computes again, are dropped. A run that logs nothing (resumed at its end,
    stopped before its first flush) leaves the file as it was.
    """

    def __init__(self, log_dir: str) -> None:
        path = Path(log_dir) / self.NAME_METRICS_FILE
        self._previous: list[dict[str, Any]] | None = None
        if path.is_file():
            with path.open(newline="") as fh:
                self._previous = [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep ``metrics.csv`` (Lightning's version deletes it here): :meth:`save` replaces it at the first flush."""

    def save(self) -> None:
        """Write the pending rows (and, the first time, the earlier run's rows that precede them)."""
        if self._previous is not None and self.metrics:
            first = min(int(row["step"]) for row in self.metrics)
            kept = [row for row in self._previous if row.get("step", "").isdigit() and int(row["step"]) < first]
            self.metrics = [*kept, *self.metrics]
            self._previous = None
            if self._fs.isfile(self.metrics_file_path):  # rewritten whole: earlier rows, then this run's
                self._fs.rm_file(self.metrics_file_path)
        try:
            super().save()
        except OSError as exc:  # a full disk: one line naming metrics.csv (biossl.cli prints it, exit 74)
            err = output_error(exc, self.metrics_file_path)
            if err is None:
                raise
            raise err from exc


class ResumingCSVLogger(CSVLogger):
    """A :class:`CSVLogger` whose ``metrics.csv`` survives resuming (see :class:`_ResumingWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The writer, created on first use (on rank 0; other ranks get Lightning's dummy)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment


def allow_unused_parameters(strategy: Any) -> bool:
    """Make a DDP strategy tolerate parameters without gradient in a step (unless it was told otherwise).

    A rank whose batch has no patient with some modality never runs that modality's encoder, so its
    parameters get no gradient there while the other ranks' do; plain DDP then waits forever for
    them (a hang at the first such step; seen with 6 demo patients per rank). ``find_unused_parameters``
    makes DDP mark them ready. Strategies named ``*_find_unused_parameters_false`` are left alone.

    Returns:
        True if the strategy was changed.
    """
    from lightning.pytorch.strategies import DDPStrategy

    kwargs = getattr(strategy, "_ddp_kwargs", None)
    if not isinstance(strategy, DDPStrategy) or not isinstance(kwargs, dict) or "find_unused_parameters" in kwargs:
        return False
    kwargs["find_unused_parameters"] = True
    return True


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [] if value is None else [value]


def trainer_defaults() -> dict[str, Any]:
    """Trainer defaults: GPU + bf16 where available, CPU + fp32 otherwise; CSV metrics; checkpoints."""
    from biossl.progress import progress_enabled

    cuda = torch.cuda.is_available()
    return {
        "accelerator": "auto",
        "devices": "auto",
        "precision": "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true",
        "default_root_dir": "biossl_runs/pretrain",
        "log_every_n_steps": 1,
        # BagDataModule shards patients by rank itself (BagSampler), so that a mid-epoch resume is exact under
        # DDP; Lightning's DistributedSamplerWrapper would hide the sampler's position from the checkpoint.
        "use_distributed_sampler": False,
        "enable_progress_bar": progress_enabled(),  # biossl -q: no bars
    }


class PretrainCLI(LightningCLI):
    """LightningCLI with biossl's defaults; ``--ckpt_path`` resumes a run."""

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Add biossl's callbacks (step checkpoints, a checkpoint on interrupt) and a CSV logger.

        Metrics land in ``<default_root_dir>/metrics.csv`` and checkpoints in
        ``<default_root_dir>/checkpoints/`` (``last.ckpt`` is the newest).
        """
        from lightning.fabric.plugins import CheckpointIO
        from lightning.pytorch.callbacks import ModelCheckpoint

        from biossl.modules.callbacks import CheckpointOnInterrupt

        cfg = self.config_init["trainer"]
        root = Path(cfg.get("default_root_dir") or "biossl_runs/pretrain")
        callbacks = _as_list(kwargs.pop("callbacks", None) or cfg.get("callbacks"))  # keep --trainer.callbacks
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=self.checkpoint_every,
                                             save_last=True, save_top_k=-1, filename="step{step:06d}",
                                             auto_insert_metric_name=False))
        callbacks.append(CheckpointOnInterrupt())
        extra: dict[str, Any] = {"callbacks": callbacks}
        if cfg.get("logger") in (None, True):
            # Flushed every step, so a killed run leaves the rows of every step up to its checkpoint.
            extra["logger"] = ResumingCSVLogger(save_dir=root, name="", version="", flush_logs_every_n_steps=1)
        plugins = _as_list(kwargs.pop("plugins", None) or cfg.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        extra["plugins"] = plugins
        trainer = super().instantiate_trainer(**kwargs, **extra)
        allow_unused_parameters(trainer.strategy)
        return trainer

    def before_instantiate_classes(self) -> None:
        """Read biossl's own options before the trainer is built; keep DataLoader workers within the CPUs."""
        from biossl.threads import cap_workers

        self.checkpoint_every = int(self.config.get("checkpoint_every") or 50)
        workers = self.config.get("data.num_workers")
        if isinstance(workers, int) and workers > 0:
            self.config["data.num_workers"] = cap_workers(workers, "data.num_workers")

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Add ``--ckpt_path`` (aliases ``--checkpoint``, ``--resume``) and ``--checkpoint-every``; link the seeds."""
        parser.add_argument("--ckpt_path", "--checkpoint", "--resume", type=str | None, default=None,
                            help="checkpoint to resume from ('last' = the run's last.ckpt)")
        parser.add_argument("--checkpoint-every", "--checkpoint_every", dest="checkpoint_every", type=int, default=50,
                            help="write a checkpoint every N optimiser steps (and last.ckpt)")
        parser.link_arguments("seed_everything", "model.seed")
        parser.link_arguments("seed_everything", "data.seed")
        parser.link_arguments("model.modalities", "data.modalities", compute_fn=lambda specs: list(specs))


def config_error(message: str, argv: Sequence[str]) -> str:
    """One line for a config value jsonargparse rejected: the key and value, and where to fix them."""
    configs = [a.split("=", 1)[1] if a.startswith("--config=") else argv[i + 1] for i, a in enumerate(argv)
               if a.startswith("--config=") or (a in ("--config", "-c") and i + 1 < len(argv))]
    where = f"in {', '.join(configs)} or on the command line" if configs else "on the command line"
    return (f"biossl pretrain: error: bad config: {' '.join(message.split())}; fix it {where} "
            "(biossl pretrain --help lists every option and its type)")


def check_resume_checkpoint(ckpt: str | Path) -> None:
    """Fail in one line, before training, when ``--ckpt_path`` names a file that cannot be resumed from.

    Lightning's keywords (``last``, ``hpc``, ``best``, ``registry``) are left to Lightning.

    Raises:
        InputError: the file is missing, unreadable (truncated, not a checkpoint, pickled objects), not
            written by ``biossl pretrain``, or written by a biossl of another major version
            (:func:`biossl.checkpoint.load_checkpoint`).
    """
    from biossl.checkpoint import load_checkpoint

    if str(ckpt) in ("last", "hpc", "best", "registry"):
        return
    try:
        load_checkpoint(ckpt, mmap=True)
    except InputError as exc:
        raise InputError(f"--ckpt_path {ckpt}: cannot resume from it: {exc}") from None


def _already_finished(trainer: Any, ckpt: str | Path) -> bool:
    """True (and one line said) when the checkpoint to resume from already reached ``trainer.max_steps``.

    Resuming such a run would train nothing, and Lightning would still start a new ``metrics.csv``: the run's
    files are left as they are instead. ``last`` is resolved as Lightning does (the newest ``last*.ckpt`` of the
    checkpoint folder, ``last-interrupted.ckpt`` included).
    """
    from biossl.checkpoint import load_checkpoint

    if str(ckpt) in ("hpc", "best", "registry") or not trainer.max_steps or trainer.max_steps < 0:
        return False
    path: Path | None = Path(ckpt)
    if str(ckpt) == "last":
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        found = sorted(Path(folder).glob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if folder else []
        path = found[-1] if found else None
    if path is None or not path.is_file():
        return False
    step = int(load_checkpoint(path, mmap=True).get("global_step", 0))
    if step < trainer.max_steps:
        return False
    logging.getLogger(__name__).warning(
        "%s is at step %d and this run stops at trainer.max_steps %d: nothing to train, the run's files are left "
        "as they are (raise --trainer.max_steps to train longer)", path, step, trainer.max_steps)
    return True


def main(argv: Sequence[str]) -> int:
    """Run pretraining with the given command-line arguments (after the verb).

    A config value of the wrong type, an unknown key or a missing required one exits with code 2 and
    one line naming the key and the value (argparse's convention: ``SystemExit(2)``), not the usage.
    """
    from biossl.cli import EXAMPLES

    adopt_library_loggers()  # Lightning's own handlers (imported above) would print each of its lines twice
    try:
        with warnings.catch_warnings():  # biossl's dispatcher hands over argv on purpose; Lightning warns
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            cli = PretrainCLI(
                PretrainModule,
                BagDataModule,
                args=list(argv),
                run=False,
                seed_everything_default=0,
                trainer_defaults=trainer_defaults(),
                save_config_kwargs={"overwrite": True},
                subclass_mode_model=False,
                subclass_mode_data=False,
                auto_configure_optimizers=False,
                parser_kwargs={"exit_on_error": False, "formatter_class": HelpFormatter, "prog": "biossl pretrain",
                               "epilog": f"{EXAMPLES['pretrain']}\n\n{EPILOG_NOTE}"},
            )
    except ArgumentError as exc:
        print(config_error(str(exc), list(argv)), file=sys.stderr)
        raise SystemExit(2) from None
    # The resolved run travels inside every checkpoint (plain YAML text: safe for weights_only loading).
    cli.model.data_state["config"] = cli.parser.dump(cli.config, skip_none=False)
    ckpt = cli.config.get("ckpt_path")
    if ckpt is not None:
        check_resume_checkpoint(ckpt)
        if _already_finished(cli.trainer, ckpt):
            return 0
    # Resuming loads the checkpoint with torch.load(weights_only=True): no pickled code runs.
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True if ckpt else None)
    # last.ckpt holds the final state, also when max_steps is not a multiple of checkpoint_every.
    checkpoint = cli.trainer.checkpoint_callback
    folder = getattr(checkpoint, "dirpath", None)
    if folder and cli.trainer.global_step > 0:
        cli.trainer.save_checkpoint(Path(folder) / "last.ckpt", weights_only=False)  # full state, resumable
    return 0

"""``biossl pretrain --config configs/pretrain/<name>.yaml``: joint multimodal pretraining.

A LightningCLI over :class:`~biossl.modules.pretrain.PretrainModule` and
:class:`~biossl.data.datamodule.BagDataModule`: ``--print_config`` shows the resolved run, every
option can be overridden on the command line (``--trainer.max_steps 50``), and the resolved config
is saved beside the checkpoints. GPU, bf16 autocast and several devices are chosen automatically
when present; CPU and fp32 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningCLI

from biossl.data.datamodule import BagDataModule
from biossl.modules.pretrain import PretrainModule

PASSTHROUGH = True  # this verb parses its own arguments (jsonargparse)


def trainer_defaults() -> dict[str, Any]:
    """Trainer defaults: GPU + bf16 where available, CPU + fp32 otherwise; CSV metrics; checkpoints."""
    cuda = torch.cuda.is_available()
    return {
        "accelerator": "auto",
        "devices": "auto",
        "precision": "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true",
        "default_root_dir": "biossl_runs/pretrain",
        "log_every_n_steps": 1,
    }


class PretrainCLI(LightningCLI):
    """LightningCLI with biossl's defaults; ``--ckpt_path`` resumes a run."""

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Add biossl's callbacks (step checkpoints, a checkpoint on interrupt) and a CSV logger.

        Metrics land in ``<default_root_dir>/metrics.csv`` and checkpoints in
        ``<default_root_dir>/checkpoints/`` (``last.ckpt`` is the newest).
        """
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger

        from biossl.modules.callbacks import CheckpointOnInterrupt

        cfg = self.config_init["trainer"]
        root = Path(cfg.get("default_root_dir") or "biossl_runs/pretrain")
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=self.checkpoint_every,
                                             save_last=True, save_top_k=-1, filename="step{step:06d}",
                                             auto_insert_metric_name=False))
        callbacks.append(CheckpointOnInterrupt())
        extra: dict[str, Any] = {"callbacks": callbacks}
        if cfg.get("logger") in (None, True):
            extra["logger"] = CSVLogger(save_dir=root, name="", version="")
        return super().instantiate_trainer(**kwargs, **extra)

    def before_instantiate_classes(self) -> None:
        """Read biossl's own options before the trainer is built."""
        self.checkpoint_every = int(self.config.get("checkpoint_every") or 50)

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Add ``--ckpt_path`` (resume) and link the data seed to the model seed."""
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="checkpoint to resume from ('last' = the run's last.ckpt)")
        parser.add_argument("--checkpoint_every", type=int, default=50,
                            help="write a checkpoint every N optimiser steps (and last.ckpt)")
        parser.link_arguments("seed_everything", "model.seed")
        parser.link_arguments("seed_everything", "data.seed")


def main(argv: Sequence[str]) -> int:
    """Run pretraining with the given command-line arguments (after the verb)."""
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
    )
    # The resolved run travels inside every checkpoint (plain YAML text: safe for weights_only loading).
    cli.model.data_state["config"] = cli.parser.dump(cli.config, skip_none=False)
    ckpt = cli.config.get("ckpt_path")
    # Resuming loads the checkpoint with torch.load(weights_only=True): no pickled code runs.
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True if ckpt else None)
    # last.ckpt holds the final state, also when max_steps is not a multiple of checkpoint_every.
    checkpoint = cli.trainer.checkpoint_callback
    folder = getattr(checkpoint, "dirpath", None)
    if folder and cli.trainer.global_step > 0:
        cli.trainer.save_checkpoint(Path(folder) / "last.ckpt", weights_only=False)  # full state, resumable
    return 0

"""``biossl pretrain --config configs/pretrain/<name>.yaml``: joint multimodal pretraining.

A LightningCLI over :class:`~biossl.modules.pretrain.PretrainModule` and
:class:`~biossl.data.datamodule.BagDataModule`: ``--print_config`` shows the resolved run, every
option can be overridden on the command line (``--trainer.max_steps 50``), and the resolved config
is saved beside the checkpoints. GPU, bf16 autocast and several devices are chosen automatically
when present; CPU and fp32 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                   "init_args": {"save_dir": "${trainer.default_root_dir}", "name": "", "version": ""}},
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"every_n_train_steps": 50, "save_last": True, "save_top_k": -1,
                           "filename": "step{step:06d}", "auto_insert_metric_name": False}},
            {"class_path": "biossl.modules.callbacks.CheckpointOnInterrupt"},
        ],
    }


class PretrainCLI(LightningCLI):
    """LightningCLI with biossl's defaults; ``--ckpt_path`` resumes a run."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Add ``--ckpt_path`` (resume) and link the data seed to the model seed."""
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="checkpoint to resume from ('last' = the run's last.ckpt)")
        parser.link_arguments("seed_everything", "model.init_args.seed")
        parser.link_arguments("seed_everything", "data.init_args.seed")


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
    ckpt = cli.config.get("ckpt_path")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    return 0

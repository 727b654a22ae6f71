"""Training settings of fine-tuning (:class:`FinetuneSettings`), importable without torch.

``biossl finetune`` reads its option defaults from here when it builds its parser, so the command
line and :class:`~biossl.downstream.finetuning.EncoderFinetune` cannot disagree on them, and
``biossl finetune --help`` stays fast (nothing heavy is imported).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from biossl.errors import InputError

SurvivalLoss = Literal["cox", "discrete"]
#: Default L2 penalty of the probe by task (loss averaged per patient, or per event for Cox).
DEFAULT_L2 = {"subtype": 0.01, "survival": 0.1}


@dataclass
class FinetuneSettings:
    """Training settings of :class:`~biossl.downstream.finetuning.EncoderFinetune` (choices: that module's doc)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    hidden: int | None = None
    survival_loss: SurvivalLoss = "cox"
    n_bins: int = 4
    balanced: bool = True
    pseudo_threshold: float = 0.95
    pseudo_weight: float = 1.0

    def check(self) -> None:
        """Raise :class:`InputError` naming the option of a bad value."""
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if value < 1:
                raise InputError(f"{flag} must be at least 1; got {value}")
        for flag, rate in (("--lr", self.lr), ("--encoder-lr", self.encoder_lr)):
            if not rate > 0:
                raise InputError(f"{flag} must be a positive learning rate; got {rate}")
        if not 0.0 <= self.pseudo_threshold <= 1.0:
            raise InputError(f"--pseudo-threshold must be in [0, 1] (a softmax confidence); "
                             f"got {self.pseudo_threshold}")
        if self.survival_loss not in ("cox", "discrete"):
            raise InputError(f"--survival-loss must be cox or discrete; got {self.survival_loss!r}")


__all__ = ["DEFAULT_L2", "FinetuneSettings", "SurvivalLoss"]

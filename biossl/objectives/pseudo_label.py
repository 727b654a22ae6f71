"""Pseudo-label loss for semi-supervised fine-tuning with a confidence threshold.

Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep Neural
Networks", ICML 2013 Workshop on Challenges in Representation Learning; with the confidence
threshold and weak/strong views of FixMatch (Sohn et al., NeurIPS 2020, arXiv:2001.07685).

``L = CE(labelled) + lambda / n_unlabelled * sum_{unlabelled u: max_c p_u(c) >= tau} CE(logits_u, argmax p_u)``

where ``p_u`` is the softmax of the *detached* logits of a weakly augmented view (or of the same
input). The unsupervised sum is divided by the number of unlabelled rows, not by the number kept,
as in FixMatch, so the term grows with the model's confidence. Under torch.distributed the counts
are global and the loss follows :mod:`biossl.distributed`'s convention.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from biossl.distributed import global_mean_value, is_distributed, world_size
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, ObjectiveInfo


def _global_count(mask: torch.Tensor) -> float:
    """Number of True entries of ``mask`` over all ranks (a Python number, so the scale is exact)."""
    count = mask.sum()
    if is_distributed():
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
    return float(count)


@OBJECTIVES.register("pseudo_label")
class PseudoLabelLoss(nn.Module):
    """Supervised cross-entropy plus thresholded pseudo-label cross-entropy on unlabelled rows.

    Call contract (the fine-tuning verb owns the model)::

        loss = pseudo_label(model(x_strong), labels, model(x_weak))   # or (logits, labels)

    Args:
        threshold: Confidence ``tau`` in ``[0, 1]``: unlabelled rows whose largest predicted
            probability is ``>= tau`` get a pseudo-label, the others are ignored (FixMatch: 0.95).
        weight: ``lambda``, the weight of the unsupervised term (FixMatch: 1; Lee ramps it up).
        unlabelled: Label value marking unlabelled rows.

    Attributes:
        weight: May be changed between steps (a ramp-up schedule).
        diagnostics: Detached ``"pseudo_label/used_fraction"`` (pseudo-labelled / unlabelled rows,
            0 when there are none), ``"pseudo_label/supervised"`` and ``"pseudo_label/unsupervised"``.

    Raises:
        InputError: ``threshold`` is outside ``[0, 1]`` or ``weight`` is negative.
    """

    info = ObjectiveInfo("finetune", paper="Lee 2013, pseudo-label (fine-tuning only)")

    def __init__(self, *, threshold: float = 0.95, weight: float = 1.0, unlabelled: int = -1) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0 or not weight >= 0:
            raise InputError(
                f"pseudo_label needs threshold in [0, 1] and weight >= 0; got threshold={threshold}, weight={weight}. "
                "FixMatch uses threshold=0.95, weight=1"
            )
        self.threshold, self.weight, self.unlabelled = threshold, weight, unlabelled
        self.diagnostics: dict[str, torch.Tensor] = {}

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, weak_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the loss (a scalar; its value is the global loss on every rank).

        Args:
            logits: ``[B, C]`` logits of the (strongly augmented) input; gradients flow here.
            labels: ``[B]`` int64 class indices in ``[0, C)``, or ``unlabelled``.
            weak_logits: ``[B, C]`` logits of a weak view of the same rows, used (detached) for the
                pseudo-labels and their confidence; ``logits`` (detached) when None.

        Raises:
            ValueError: Shapes disagree or a label is out of range.
        """
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(
                f"pseudo_label needs logits [B, C] and labels [B]; got {tuple(logits.shape)}, {tuple(labels.shape)}"
            )
        if weak_logits is not None and weak_logits.shape != logits.shape:
            raise ValueError(f"weak_logits must match logits {tuple(logits.shape)}; got {tuple(weak_logits.shape)}")
        labels = labels.to(device=logits.device, dtype=torch.long)
        is_unlab = labels == self.unlabelled
        bad = (~is_unlab) & ((labels < 0) | (labels >= logits.shape[1]))
        if bool(bad.any()):
            raise ValueError(
                f"pseudo_label labels must be in [0, {logits.shape[1]}) or {self.unlabelled} for unlabelled rows; "
                f"got {sorted(set(labels[bad].tolist()))[:5]}"
            )
        with torch.no_grad():
            probs = F.softmax((logits if weak_logits is None else weak_logits).detach().float(), dim=1)
            confidence, pseudo = probs.max(dim=1)
            keep = is_unlab & (confidence >= self.threshold)
        n_lab, n_unlab, n_keep = _global_count(~is_unlab), _global_count(is_unlab), _global_count(keep)
        sup_sum = F.cross_entropy(logits[~is_unlab], labels[~is_unlab], reduction="sum")
        unsup_sum = F.cross_entropy(logits[keep], pseudo[keep], reduction="sum")
        w = world_size()
        sup = sup_sum * (w / max(n_lab, 1.0))
        unsup = unsup_sum * (w / max(n_unlab, 1.0))
        with torch.no_grad():
            self.diagnostics = {
                "pseudo_label/used_fraction": torch.tensor(n_keep / max(n_unlab, 1.0)),
                "pseudo_label/supervised": global_mean_value(sup.detach()),
                "pseudo_label/unsupervised": global_mean_value(unsup.detach()),
            }
        return global_mean_value(sup + self.weight * unsup)

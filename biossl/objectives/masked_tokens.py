"""Masked token modelling (BERT): hide a fraction of the valid tokens and predict them.

Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
NAACL 2019 (arXiv:1810.04805). A fraction ``mask_ratio`` (BERT: 15 %) of the *valid* positions of
each row is selected; of those, 80 % are replaced by the mask token, 10 % by a random token and 10 %
are left unchanged; the loss is taken over the selected positions only. Used for nucleotides
(cross-entropy over the vocabulary) and, with a regression loss, for expression values (masked gene
modelling, as in scGPT / Geneformer-style pretraining).

Padding (PAD nucleotides, unobserved genes) is never selected, so it is never a target.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from biossl import keys
from biossl.objectives import OBJECTIVES, ObjectiveInfo


def select_positions(valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """Pick ``round(ratio * n_valid)`` (at least one) valid positions per row uniformly at random.

    Args:
        valid: Bool ``[N, L]``, True where a position may be selected.
        ratio: Fraction of each row's valid positions to select, in (0, 1].

    Returns:
        Bool ``[N, L]``; rows without valid positions select nothing.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1], got {ratio}")
    n_valid = valid.sum(dim=1)
    k = torch.minimum(torch.round(n_valid * ratio).clamp_min(1), n_valid)
    scores = torch.rand(valid.shape, device=valid.device).masked_fill(~valid, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < k.unsqueeze(1)) & valid


@OBJECTIVES.register("masked_tokens")
class MaskedTokens(nn.Module):
    """Selection, BERT 80/10/10 corruption and the masked losses; it holds no parameters.

    Args:
        mask_ratio: Fraction of valid positions selected per row (BERT: 0.15).
        mask_prob: Fraction of selected positions replaced by the mask token (BERT: 0.8).
        random_prob: Fraction of selected positions replaced by a random token (BERT: 0.1); the rest
            are left unchanged.
    """

    info = ObjectiveInfo(
        "masked", kinds=(keys.TABLE, keys.SEQUENCE), paper="Devlin et al. 2019, BERT (masked genes / nucleotides)"
    )

    def __init__(self, *, mask_ratio: float = 0.15, mask_prob: float = 0.8, random_prob: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
        if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1:
            raise ValueError(
                f"need mask_prob, random_prob >= 0 with sum <= 1, got {mask_prob}, {random_prob}"
            )
        self.mask_ratio = mask_ratio
        self.mask_prob = mask_prob
        self.random_prob = random_prob

    def select(self, valid: torch.Tensor) -> torch.Tensor:
        """Positions to predict: a random ``mask_ratio`` of each row's valid positions."""
        return select_positions(valid, self.mask_ratio)

    def corrupt_tokens(
        self,
        tokens: torch.Tensor,
        selected: torch.Tensor,
        *,
        mask_token: int,
        random_low: int,
        random_high: int,
    ) -> torch.Tensor:
        """Apply the 80/10/10 rule to ``tokens`` at ``selected``; random ids are in ``[low, high)``."""
        u = torch.rand(tokens.shape, device=tokens.device)
        to_mask = selected & (u < self.mask_prob)
        to_random = selected & (u >= self.mask_prob) & (u < self.mask_prob + self.random_prob)
        random_ids = torch.randint(random_low, random_high, tokens.shape, device=tokens.device)
        out = torch.where(to_mask, torch.full_like(tokens, mask_token), tokens)
        return torch.where(to_random, random_ids, out)

    @staticmethod
    def classification_loss(
        logits: torch.Tensor, targets: torch.Tensor, selected: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy of ``logits [N, L, V]`` against ``targets [N, L]`` over selected positions."""
        if not bool(selected.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[selected].float(), targets[selected])

    @staticmethod
    def regression_loss(pred: torch.Tensor, targets: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Mean squared error of ``pred [N, L]`` against ``targets [N, L]`` over selected positions."""
        if not bool(selected.any()):
            return pred.sum() * 0.0
        return F.mse_loss(pred[selected].float(), targets[selected].float())

    @staticmethod
    def binary_loss(logits: torch.Tensor, targets: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of ``logits [N, L]`` against 0/1 ``targets [N, L]`` over selected positions."""
        if not bool(selected.any()):
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[selected].float(), targets[selected].float())

    def value_loss(
        self, out: torch.Tensor, targets: torch.Tensor, selected: torch.Tensor, value_type: str
    ) -> torch.Tensor:
        """The masked loss that fits a table's value type.

        ``out`` is ``[N, L]`` (``counts``/``continuous``: predicted values, MSE; ``binary``: logits, BCE) or
        ``[N, L, C]`` for ``categorical`` (logits over the ``C`` category codes, cross-entropy).
        """
        if value_type == "categorical":
            return self.classification_loss(out, targets.round().long(), selected)
        if value_type == "binary":
            return self.binary_loss(out, targets, selected)
        return self.regression_loss(out, targets, selected)

"""Reverse-complement-aware contrastive learning for DNA (Self-GenomeNet).

Gündüz et al., "A self-supervised deep learning method for data-efficient training in genomics",
Communications Biology (2023), doi:10.1038/s42003-023-05310-2 -- Self-GenomeNet. A sequence is cut
into a left part and the remaining right part; the embedding of the left part (read 5'->3' on the
forward strand) must identify the embedding of the **reverse complement of the right part** (its
neighbour read 5'->3' on the other strand) among the other sequences of the batch, and vice versa
(the paper's two predictions). Both reads end at the cut, so each strand "reads towards" the same
locus; this is the paper's pairing and the default here (``pairing="neighbour"``).

Our reading, and the choice it implies: the paper's positives are *neighbouring* windows across the
two strands, not a window and its own reverse complement. ``pairing="self"`` (x vs. rc(x)) is offered
for comparison only: it merely teaches strand invariance, and an encoder that is already
reverse-complement equivariant solves it trivially. The paper also predicts with a recurrent context
network at several cut points; here one random cut per sequence per step is scored with a symmetric
InfoNCE (cosine similarity, fixed temperature), negatives taken over the global batch.

Strand symmetry: cutting ``rc(x)`` at ``len - c`` gives the pair ``(rc(right), left)`` -- the pair of
``x`` cut at ``c`` swapped -- and the loss is symmetric in the two members, so a sequence and its
reverse complement give the same loss.

Engine contract: ``loss = rc(tokens, embed)`` with ``tokens [N, L]`` int64 (PAD=0 at the end of each
row, :mod:`biossl.keys`) and ``embed`` mapping ``[M, L'] -> [M, D]`` (e.g. a sequence model's
``embed``, which ignores PAD). ``embed`` is called once, on ``2N`` rows trimmed to the longest part, so
it must ignore trailing PAD (the biossl sequence models do); otherwise results depend on the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from biossl.distributed import all_sizes, gather_no_grad, gather_with_grad, global_mean_value, rank, world_size
from biossl.errors import InputError
from biossl.keys import PAD_TOKEN, SEQUENCE
from biossl.objectives import OBJECTIVES, ObjectiveInfo
from biossl.tokens import reverse_complement_tokens


def split_rows(tokens: torch.Tensor, cuts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each row at ``cuts[n]``: left ``x[n, :c]`` and right ``x[n, c:len]``, both re-padded at the end."""
    lengths = (tokens != PAD_TOKEN).sum(dim=1, keepdim=True)
    c = cuts.reshape(-1, 1)
    j = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
    left = tokens.masked_fill(j >= c, PAD_TOKEN)
    src = (j + c).clamp(max=tokens.shape[1] - 1)
    right = torch.gather(tokens, 1, src).masked_fill(j >= lengths - c, PAD_TOKEN)
    return left, right


@OBJECTIVES.register("rc_contrastive")
class RCContrastive(nn.Module):
    """Self-GenomeNet's strand-crossing contrastive objective (Gündüz et al. 2023); no parameters.

    Args:
        temperature: InfoNCE temperature on cosine similarities.
        cut_range: Range of the cut point as a fraction of each row's real length (``"neighbour"``).
        pairing: ``"neighbour"`` (left part vs. reverse complement of the right part, the paper) or
            ``"self"`` (sequence vs. its own reverse complement).

    Raises:
        InputError: A bad option.
    """

    info = ObjectiveInfo(
        "embed_fn", kinds=(SEQUENCE,), paper="Gündüz et al. 2023, Self-GenomeNet (reverse-complement contrast)"
    )

    def __init__(
        self, *, temperature: float = 0.1, cut_range: tuple[float, float] = (0.3, 0.7), pairing: str = "neighbour"
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise InputError(f"rc_contrastive temperature must be > 0, got {temperature}")
        if not 0.0 < cut_range[0] <= cut_range[1] < 1.0:
            raise InputError(f"rc_contrastive cut_range must satisfy 0 < low <= high < 1, got {cut_range}")
        if pairing not in ("neighbour", "self"):
            raise InputError(f"rc_contrastive pairing must be 'neighbour' or 'self', got {pairing!r}")
        self.temperature = temperature
        self.cut_range = cut_range
        self.pairing = pairing

    def sample_cuts(self, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random cut per row in ``cut_range * length``, clamped so both parts keep >= 1 token."""
        u = torch.rand(lengths.shape, generator=generator).to(lengths.device)
        frac = self.cut_range[0] + (self.cut_range[1] - self.cut_range[0]) * u
        return torch.round(frac * lengths).long().clamp(min=1).minimum((lengths - 1).clamp(min=1))

    def pairs(self, tokens: torch.Tensor, cuts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two token batches whose embeddings are positives: ``([N, L], [N, L])``."""
        if self.pairing == "self":
            return tokens, reverse_complement_tokens(tokens)
        if cuts is None:
            cuts = self.sample_cuts((tokens != PAD_TOKEN).sum(dim=1))
        left, right = split_rows(tokens, cuts.to(tokens.device))
        return left, reverse_complement_tokens(right)

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE between ``a [N, D]`` and ``b [N, D]`` over valid rows of the global batch."""
        sizes = all_sizes(a)
        valid_all = gather_no_grad(valid, sizes=sizes)
        n_valid = int(valid_all.sum())
        if n_valid < 2:
            return a.sum() * 0.0 + b.sum() * 0.0
        a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
        a_all = gather_with_grad(a, sizes=sizes)[valid_all]
        b_all = gather_with_grad(b, sizes=sizes)[valid_all]
        start = sum(sizes[: rank()])
        labels = (torch.cumsum(valid_all.long(), dim=0) - 1)[start : start + a.shape[0]][valid]
        summed = F.cross_entropy(a[valid] @ b_all.T / self.temperature, labels, reduction="sum")
        summed = summed + F.cross_entropy(b[valid] @ a_all.T / self.temperature, labels, reduction="sum")
        return global_mean_value(summed * (world_size() / (2.0 * n_valid)))

    def forward(
        self,
        tokens: torch.Tensor,
        embed: Callable[[torch.Tensor], torch.Tensor],
        *,
        cuts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the loss (a scalar; the global loss on every rank).

        Args:
            tokens: ``[N, L]`` int64 tokens, PAD at the end. Rows with fewer than 2 real tokens (e.g.
                padded bag slots) are neither positives nor negatives.
            embed: Maps ``[M, L]`` tokens to ``[M, D]`` embeddings.
            cuts: Optional ``[N]`` cut points (``"neighbour"`` only), for reproducible tests.

        Raises:
            ValueError: ``tokens`` is not 2-D integer, or ``embed`` returns the wrong shape.
        """
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"rc_contrastive needs int tokens [N, L], got {tokens.dtype} {tuple(tokens.shape)}")
        valid = (tokens != PAD_TOKEN).sum(dim=1) >= 2
        a_tokens, b_tokens = self.pairs(tokens, cuts)
        counts = torch.cat([(a_tokens != PAD_TOKEN).sum(1), (b_tokens != PAD_TOKEN).sum(1)])
        width = max(int(counts.max()), 1) if counts.numel() else 1
        both = embed(torch.cat([a_tokens[:, :width], b_tokens[:, :width]]))
        if both.ndim != 2 or both.shape[0] != 2 * tokens.shape[0]:
            raise ValueError(f"embed must return [M, D] for M={2 * tokens.shape[0]} rows, got {tuple(both.shape)}")
        a, b = both.chunk(2)
        return self.pair_loss(a, b, valid)

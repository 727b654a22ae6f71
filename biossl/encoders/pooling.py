"""Bag pooling: many instance embeddings of one patient-modality -> one embedding.

Both poolers take instance embeddings ``x`` ``[B, K, D]`` and the instance mask ``[B, K]`` (True =
real instance, False = padding) and return ``(pooled [B, out_dim], weights [B, K])``. Padding gets
weight exactly 0; a patient with no valid instance gets a zero embedding and zero weights, never NaN.
"""

from __future__ import annotations

import torch
from torch import nn

from biossl.errors import InputError


def _check(x: torch.Tensor, mask: torch.Tensor, in_dim: int) -> torch.Tensor:
    if x.ndim != 3 or x.shape[-1] != in_dim or mask.shape != x.shape[:2]:
        raise ValueError(f"pooling needs x [B, K, {in_dim}] and mask [B, K]; got {x.shape}, {mask.shape}")
    return mask.to(device=x.device, dtype=torch.bool)


class _InstanceProjection(nn.Module):
    """Optional ``Linear + GELU`` on every instance (identity when ``out_dim`` is None)."""

    def __init__(self, in_dim: int, out_dim: int | None) -> None:
        super().__init__()
        self.out_dim = in_dim if out_dim is None else out_dim
        self.proj: nn.Module = (
            nn.Identity() if out_dim is None else nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU())
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Project and zero the padding (so garbage in padded slots cannot leak into the sum)."""
        return self.proj(x).masked_fill(~mask.unsqueeze(-1), 0.0)


class GatedAttentionMIL(nn.Module):
    """Gated attention-based multiple-instance pooling (Ilse, Tomczak & Welling, ICML 2018).

    ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))`` over the valid instances ``k``, and the
    bag embedding is ``sum_k a_k h_k``, where ``h_k`` is the (optionally projected) instance.

    Args:
        in_dim: Instance embedding size ``D``.
        out_dim: If given, instances go through ``Linear(D, out_dim) + GELU`` before pooling.
        hidden_dim: Size of the attention network's hidden layer.
        dropout: Dropout on the attention hidden layer.
    """

    def __init__(
        self, in_dim: int, *, out_dim: int | None = None, hidden_dim: int = 128, dropout: float = 0.0
    ):
        super().__init__()
        self.in_dim = in_dim
        self.instance = _InstanceProjection(in_dim, out_dim)
        self.out_dim = self.instance.out_dim
        self.attn_v = nn.Linear(self.out_dim, hidden_dim)
        self.attn_u = nn.Linear(self.out_dim, hidden_dim)
        self.attn_w = nn.Linear(hidden_dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(pooled [B, out_dim], attention weights [B, K])``."""
        mask = _check(x, mask, self.in_dim)
        h = self.instance(x, mask)
        gate = torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))
        scores = self.attn_w(self.dropout(gate)).squeeze(-1)  # [B, K]
        # Empty bags get all-zero scores (a finite softmax) and are zeroed by the mask below.
        scores = scores.masked_fill(~mask & mask.any(dim=1, keepdim=True), float("-inf"))
        weights = torch.softmax(scores, dim=1) * mask
        return torch.einsum("bk,bkd->bd", weights, h), weights


class MeanPool(nn.Module):
    """Mean over the valid instances; same interface as :class:`GatedAttentionMIL`.

    Args:
        in_dim: Instance embedding size ``D``.
        out_dim: If given, instances go through ``Linear(D, out_dim) + GELU`` before pooling.
    """

    def __init__(self, in_dim: int, *, out_dim: int | None = None) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.instance = _InstanceProjection(in_dim, out_dim)
        self.out_dim = self.instance.out_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(pooled [B, out_dim], weights [B, K])`` with weight ``1 / n_valid`` per instance."""
        mask = _check(x, mask, self.in_dim)
        h = self.instance(x, mask)
        weights = mask.to(h.dtype) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
        return torch.einsum("bk,bkd->bd", weights, h), weights


POOLERS: dict[str, type[GatedAttentionMIL] | type[MeanPool]] = {
    "attention": GatedAttentionMIL,
    "mean": MeanPool,
}


def build_pooling(kind: str, in_dim: int, *, out_dim: int | None = None) -> GatedAttentionMIL | MeanPool:
    """Build the pooler named ``kind`` (``"attention"`` or ``"mean"``).

    Raises:
        InputError: Unknown ``kind``.
    """
    if kind not in POOLERS:
        raise InputError(f"unknown pooling {kind!r}; choose one of {sorted(POOLERS)}")
    return POOLERS[kind](in_dim, out_dim=out_dim)

"""Fuse a patient's per-modality embeddings into one patient embedding, ignoring missing modalities.

Both fusers take ``embeddings`` ``{modality: [B, D]}`` and ``present`` ``{modality: [B]}`` (True
where the patient has the modality) and return ``(fused [B, D], weights [B, M])`` with the ``M``
configured modalities in canonical order. An absent modality gets weight exactly 0 -- its embedding
values are never read -- and a patient with no modality gets zeros, never NaN. A configured modality
missing from the dicts counts as absent for every patient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from biossl.errors import InputError
from biossl.keys import canonical_order


class _Fusion(nn.Module):
    """Shared input handling: stack to ``[B, M, D]`` with absent slots zeroed, plus the ``[B, M]`` mask."""

    def __init__(self, dim: int, modalities: Sequence[str]) -> None:
        super().__init__()
        if not modalities:
            raise InputError("fusion needs at least one modality")
        self.dim = dim
        self.modalities = canonical_order(modalities)

    def _stack(
        self, embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        given = [m for m in self.modalities if m in embeddings]
        if not given:
            raise ValueError(f"fusion got none of its modalities {self.modalities}")
        ref = embeddings[given[0]]
        if ref.ndim != 2 or ref.shape[1] != self.dim:
            raise ValueError(
                f"fusion needs [B, {self.dim}] embeddings; got {tuple(ref.shape)} for {given[0]}"
            )
        xs, masks = [], []
        for m in self.modalities:
            if m in embeddings:
                if embeddings[m].shape != ref.shape or present[m].shape != ref.shape[:1]:
                    raise ValueError(
                        f"fusion: {m} has shape {tuple(embeddings[m].shape)}, expected {ref.shape}"
                    )
                xs.append(embeddings[m])
                masks.append(present[m].to(device=ref.device, dtype=torch.bool))
            else:
                xs.append(ref.new_zeros(ref.shape))
                masks.append(torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device))
        mask = torch.stack(masks, dim=1)
        x = torch.stack(xs, dim=1).masked_fill(~mask.unsqueeze(-1), 0.0)
        return x, mask


class MeanFusion(_Fusion):
    """Mean of the present modalities' embeddings.

    Args:
        dim: Embedding size ``D`` (the same for every modality).
        modalities: Modalities to fuse (modality names).
    """

    def forward(
        self, embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(fused [B, D], weights [B, M])``, weight ``1 / n_present`` per present modality."""
        x, mask = self._stack(embeddings, present)
        weights = mask.to(x.dtype) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)
        return torch.einsum("bm,bmd->bd", weights, x), weights


class AttentionFusion(_Fusion):
    """Attention over the present modalities with one learned query.

    ``score_m = q . W_k (e_m + t_m) / sqrt(D)`` with a learned type embedding ``t_m`` per modality;
    the softmax runs over present modalities only and the output is ``sum_m a_m e_m``.

    Args:
        dim: Embedding size ``D`` (the same for every modality).
        modalities: Modalities to fuse (modality names).
    """

    def __init__(self, dim: int, modalities: Sequence[str]) -> None:
        super().__init__(dim, modalities)
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.type_embedding = nn.Parameter(torch.zeros(len(self.modalities), dim))
        self.key = nn.Linear(dim, dim)

    def forward(
        self, embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(fused [B, D], attention weights [B, M])``."""
        x, mask = self._stack(embeddings, present)
        scores = self.key(x + self.type_embedding) @ self.query / math.sqrt(self.dim)  # [B, M]
        # Patients with no modality keep finite scores (then zero weights), so no NaN appears.
        scores = scores.masked_fill(~mask & mask.any(dim=1, keepdim=True), float("-inf"))
        weights = torch.softmax(scores, dim=1) * mask
        return torch.einsum("bm,bmd->bd", weights, x), weights


def fused_embedding(embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The patient embedding biossl reports as ``X_fused``: the mean of the present modalities' unit vectors.

    Each modality's embedding is L2-normalised (in float32), then :class:`MeanFusion` averages those of
    the modalities each patient has; a patient with none gets zeros. ``biossl embed`` (``X_fused``), the
    fine-tuned models and every other fused embedding call this one function.

    Args:
        embeddings: ``{modality: [B, D]}`` (at least one modality).
        present: ``{modality: bool [B]}``, True where the patient has the modality.

    Returns:
        ``float32 [B, D]``.
    """
    if not embeddings:
        raise ValueError("fused_embedding needs at least one modality's embeddings")
    normed = {m: nn.functional.normalize(v.float(), dim=1) for m, v in embeddings.items()}
    dim = next(iter(normed.values())).shape[1]
    fused: torch.Tensor = MeanFusion(dim, list(normed))(normed, present)[0]
    return fused


def build_fusion(kind: str, dim: int, modalities: Sequence[str]) -> MeanFusion | AttentionFusion:
    """Build the fuser named ``kind`` (``"mean"`` or ``"attention"``).

    Raises:
        InputError: Unknown ``kind`` or modality.
    """
    if kind == "mean":
        return MeanFusion(dim, modalities)
    if kind == "attention":
        return AttentionFusion(dim, modalities)
    raise InputError(f"unknown fusion {kind!r}; choose 'mean' or 'attention'")

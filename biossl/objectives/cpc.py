"""Contrastive Predictive Coding: an autoregressive context predicts future latents, scored by InfoNCE.

van den Oord, Li and Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018
(arXiv:1807.03748). An encoder maps consecutive chunks of an input (windows of a DNA sequence, tiles
along a path, time points) to latents ``z_t``; a GRU summarises ``z_1..z_t`` into a context ``c_t``;
for every horizon ``k = 1..K`` a linear map ``W_k`` predicts ``z_{t+k}`` and the log-bilinear score
``f_k(z, c_t) = z^T W_k c_t`` must pick out the true ``z_{t+k}`` among every other latent of the
batch -- other positions of the same sequence and all positions of the other sequences (InfoNCE).

Engine contract: ``z = encoder(chunks)`` reshaped to ``[N, T, D]`` (chunk order = time), then
``loss = cpc(z, valid)``. ``valid`` ([N, T] bool) marks real chunks; padding must be at the end of a
row (the GRU is causal, so real steps never read it). Under torch.distributed the candidates are
gathered from every rank (:func:`biossl.distributed.gather_with_grad`); ``T`` must agree across ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biossl import keys
from biossl.distributed import all_sizes, gather_no_grad, gather_with_grad, global_mean_value, rank, world_size
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, ObjectiveInfo


@OBJECTIVES.register("cpc")
class CPC(nn.Module):
    """GRU context network, per-horizon predictors and the InfoNCE loss of CPC (van den Oord et al. 2018).

    Args:
        embed_dim: Width ``D`` of the latents ``z``.
        context_dim: Width of the GRU context ``c`` (paper: 256 for audio).
        horizons: ``K``, the number of future steps predicted (paper: 12 for audio).

    Raises:
        InputError: A size is not positive.
    """

    info = ObjectiveInfo("cpc", kinds=(keys.SEQUENCE,), paper="van den Oord et al. 2018, CPC", dim_option="embed_dim")

    def __init__(self, *, embed_dim: int, context_dim: int = 128, horizons: int = 4) -> None:
        super().__init__()
        if min(embed_dim, context_dim, horizons) < 1:
            raise InputError(
                f"cpc embed_dim, context_dim and horizons must be >= 1; got {embed_dim}, {context_dim}, {horizons}"
            )
        self.horizons = horizons
        self.gru = nn.GRU(embed_dim, context_dim, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(context_dim, embed_dim, bias=False) for _ in range(horizons))

    def context(self, z: torch.Tensor) -> torch.Tensor:
        """Causal context ``c_t`` for every step: ``[N, T, D] -> [N, T, context_dim]``."""
        out, _ = self.gru(z)
        return out

    def scores(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Log-bilinear scores of every context step against every latent: ``[N, T, N * T]``.

        ``scores(z, k)[n, t, m * T + s] = z[m, s] . W_k c[n, t]`` (no gathering; for inspection and tests).
        """
        pred = self.predictors[k - 1](self.context(z))
        return pred @ z.reshape(-1, z.shape[-1]).T

    def forward(self, z: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """CPC loss, the mean over horizons ``k`` of the mean InfoNCE over scored steps.

        A step ``(n, t)`` is scored for horizon ``k`` when ``t`` and ``t + k`` are both valid; the
        candidates are all valid latents of the (global) batch, the positive being ``z[n, t + k]``.

        Args:
            z: ``[N, T, D]`` latents in time order.
            valid: ``[N, T]`` bool, True for real steps (a prefix of each row); all True if None.

        Returns:
            Scalar loss (its value is the global loss on every rank). Horizons with no scored step
            (sequences shorter than ``k + 1``) are left out; 0 if none is scored.

        Raises:
            ValueError: Bad shapes or padding in the middle of a row.
        """
        if z.ndim != 3:
            raise ValueError(f"cpc needs latents [N, T, D], got shape {tuple(z.shape)}")
        n, t_len, _ = z.shape
        if valid is None:
            valid = torch.ones(n, t_len, dtype=torch.bool, device=z.device)
        if valid.shape != (n, t_len):
            raise ValueError(f"valid must be [N, T]={(n, t_len)}, got {tuple(valid.shape)}")
        valid = valid.to(device=z.device, dtype=torch.bool)
        if bool((valid[:, 1:] & ~valid[:, :-1]).any()):
            raise ValueError("cpc valid mask must be a prefix per row (padding at the end only)")
        sizes = all_sizes(z)
        keys = gather_with_grad(z.reshape(n, -1), sizes=sizes).reshape(-1, z.shape[-1])  # [N_all * T, D]
        valid_all = gather_no_grad(valid, sizes=sizes)
        key_ok = valid_all.reshape(-1)
        ctx = self.context(z)
        offset = sum(sizes[: rank()]) * t_len
        own = offset + torch.arange(n * t_len, device=z.device).reshape(n, t_len)
        per_k: list[torch.Tensor] = []
        for k in range(1, min(self.horizons, t_len - 1) + 1):
            n_scored = int((valid_all[:, :-k] & valid_all[:, k:]).sum())
            if n_scored == 0:
                continue
            scored = valid[:, :-k] & valid[:, k:]  # [N, T - k]
            pred = self.predictors[k - 1](ctx[:, :-k][scored])  # [S, D]
            logits = (pred @ keys.T).float().masked_fill(~key_ok, float("-inf"))
            summed = F.cross_entropy(logits, own[:, k:][scored], reduction="sum")
            per_k.append(summed * (world_size() / n_scored))
        if not per_k:
            return z.sum() * 0.0 + sum(p.sum() * 0.0 for p in self.parameters())
        return global_mean_value(torch.stack(per_k).mean())

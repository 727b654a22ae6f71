"""Barlow Twins (Zbontar et al. 2021).

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021
(arXiv:2103.03230).

Each embedding dimension is standardised over the batch (``(z - mean) / sqrt(var + eps)``, biased
variance: a BatchNorm without affine parameters, always on batch statistics), the ``D x D``
cross-correlation of the two views ``C = z1n^T z2n / N`` is computed, and it is pushed to the identity:

    ``L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``.

Constant embeddings standardise to 0, so ``C = 0`` and ``L = D`` exactly. Under torch.distributed the
embeddings are gathered with gradients and every rank computes the loss on the global batch (the
paper's all-reduced ``C``), which fits the convention of :mod:`biossl.distributed`.
"""

from __future__ import annotations

import torch
from torch import nn

from biossl.distributed import all_sizes, gather_with_grad
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, VIEW_KINDS, ObjectiveInfo
from biossl.objectives._heads import at_least_float32, check_pair, mlp_head, normalised_std


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, *, lambd: float = 0.0051, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(loss, on_diagonal_term, off_diagonal_sum)`` for two ``[N, D]`` embeddings (``N >= 1``).

    Computed in at least float32, outside autocast (batch statistics in bf16 are too coarse).
    """
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = at_least_float32(z1), at_least_float32(z2)
        z1n = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
        z2n = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
        c = z1n.T @ z2n / z1.shape[0]
        diag = torch.diagonal(c)
        on = (1.0 - diag).pow(2).sum()
        off = c.pow(2).sum() - diag.pow(2).sum()
        return on + lambd * off, on, off


@OBJECTIVES.register("barlow_twins")
class BarlowTwins(nn.Module):
    """Barlow Twins loss with its projector.

    Call contract: ``loss = bt(encoder(x1), encoder(x2))`` (or two modalities' embeddings of the same
    patients, both of width ``dim``), rows aligned.

    Args:
        dim: Width of the encoder embeddings.
        proj_dim: Projector output width (paper: 8192; default 2048 to keep it light).
        hidden_dim: Projector hidden width (paper: 8192).
        proj_layers: Linear layers of the projector (paper: 3); 0 uses the embeddings directly.
        lambd: Weight of the off-diagonal (redundancy) term (paper: 0.0051).
        eps: Added to the variance when standardising.

    Attributes:
        diagnostics: Detached ``"barlow_twins/on_diag"``, ``"barlow_twins/off_diag"`` (unweighted
            sums) and ``"barlow_twins/std"`` (mean per-dimension std of L2-normalised projections).

    Raises:
        InputError: A width is not positive, ``proj_layers`` or ``lambd`` is negative.
    """

    info = ObjectiveInfo(
        "two_view", kinds=VIEW_KINDS, across=True, paper="Zbontar et al. 2021, Barlow Twins", dim_option="dim"
    )

    def __init__(
        self,
        dim: int,
        *,
        proj_dim: int = 2048,
        hidden_dim: int = 2048,
        proj_layers: int = 3,
        lambd: float = 0.0051,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if min(dim, proj_dim, hidden_dim) < 1 or proj_layers < 0 or lambd < 0 or eps <= 0:
            raise InputError(
                f"barlow_twins needs positive widths, proj_layers >= 0, lambd >= 0, eps > 0; got dim={dim}, "
                f"proj_dim={proj_dim}, hidden_dim={hidden_dim}, proj_layers={proj_layers}, lambd={lambd}, eps={eps}"
            )
        self.dim, self.lambd, self.eps = dim, lambd, eps
        self.projector = mlp_head(dim, hidden_dim, proj_dim if proj_layers else dim, n_layers=proj_layers)
        self.diagnostics: dict[str, torch.Tensor] = {}

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """Return the loss on the projections of the global batch (the same value on every rank).

        Args:
            y1: ``[B, dim]`` embeddings of view 1 (or modality A).
            y2: ``[B, dim]`` embeddings of view 2 (or modality B), same rows.

        Raises:
            ValueError: Shapes disagree or are not ``[B, dim]``, or the global batch is empty.
        """
        check_pair("barlow_twins", y1, y2, self.dim)
        z1, z2 = self.projector(y1), self.projector(y2)
        sizes = all_sizes(z1)
        if sum(sizes) == 0:
            raise ValueError("barlow_twins got an empty global batch")
        z1, z2 = gather_with_grad(z1, sizes=sizes), gather_with_grad(z2, sizes=sizes)
        loss, on, off = barlow_twins_loss(z1, z2, lambd=self.lambd, eps=self.eps)
        self.diagnostics = {
            "barlow_twins/on_diag": on.detach(),
            "barlow_twins/off_diag": off.detach(),
            "barlow_twins/std": (normalised_std(z1) + normalised_std(z2)) / 2,
        }
        return loss

"""VICReg (Bardes, Ponce & LeCun 2022).

Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", ICLR 2022 (arXiv:2105.04906).

For projections ``Z, Z'`` (``[N, D]``):

* invariance ``s = mean((Z - Z')^2)`` over all ``N * D`` entries;
* variance ``v(Z) = mean_j relu(gamma - sqrt(Var(Z_j) + eps))`` (unbiased variance, ``gamma = 1``);
* covariance ``c(Z) = sum_{i != j} Cov(Z)_ij^2 / D`` with ``Cov(Z) = (Z - mean)^T (Z - mean) / (N - 1)``.

``L = 25 * s + 25 * (v(Z) + v(Z')) / 2 + 1 * (c(Z) + c(Z'))``. The weights 25/25/1 are those of the
authors' released code, which averages the two variance terms and sums the two covariance terms (the
paper's Eq. 6 writes both as sums). Constant embeddings have ``Var = 0``, so each variance term is
``gamma - sqrt(eps)`` and, for identical views, ``L = 25 * (1 - 0.01) = 24.75`` exactly.
Under torch.distributed the projections are gathered with gradients and every rank computes the
loss on the global batch, as the authors do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biossl.distributed import all_sizes, gather_with_grad
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, VIEW_KINDS, ObjectiveInfo
from biossl.objectives._heads import at_least_float32, check_pair, mlp_head


def variance_term(z: torch.Tensor, *, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """``mean_j relu(gamma - sqrt(Var(z_j) + eps))`` with the unbiased variance over the batch."""
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} Cov(z)_ij^2 / D`` with the unbiased covariance over the batch."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


@OBJECTIVES.register("vicreg")
class VICReg(nn.Module):
    """VICReg loss with its expander (projector).

    Call contract: ``loss = vicreg(encoder(x1), encoder(x2))`` (or two modalities' embeddings of the
    same patients, both of width ``dim``), rows aligned.

    Args:
        dim: Width of the encoder embeddings.
        proj_dim: Expander output width (paper: 8192; default 2048 to keep it light).
        hidden_dim: Expander hidden width (paper: 8192).
        proj_layers: Linear layers of the expander (paper: 3); 0 uses the embeddings directly.
        sim_weight: Weight of the invariance term (paper: 25).
        var_weight: Weight of the variance term (paper: 25).
        cov_weight: Weight of the covariance term (paper: 1).
        gamma: Target standard deviation (paper: 1).
        eps: Added to the variance under the square root (paper: 1e-4).

    Attributes:
        diagnostics: Detached unweighted ``"vicreg/invariance"``, ``"vicreg/variance"``,
            ``"vicreg/covariance"`` and ``"vicreg/std"`` (mean per-dimension std of the projections).

    Raises:
        InputError: A width is not positive or a weight, ``gamma`` or ``eps`` is negative.
    """

    info = ObjectiveInfo(
        "two_view", kinds=VIEW_KINDS, across=True, paper="Bardes et al. 2022, VICReg", dim_option="dim"
    )

    def __init__(
        self,
        dim: int,
        *,
        proj_dim: int = 2048,
        hidden_dim: int = 2048,
        proj_layers: int = 3,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        if min(dim, proj_dim, hidden_dim) < 1 or min(proj_layers, sim_weight, var_weight, cov_weight, gamma) < 0:
            raise InputError(
                f"vicreg needs positive widths and non-negative proj_layers, weights and gamma; got dim={dim}, "
                f"proj_dim={proj_dim}, hidden_dim={hidden_dim}, proj_layers={proj_layers}, weights="
                f"{sim_weight}/{var_weight}/{cov_weight}, gamma={gamma}"
            )
        if not eps > 0:
            raise InputError(f"vicreg eps must be > 0 (it keeps sqrt differentiable at 0); got {eps}. Use 1e-4")
        self.dim = dim
        self.weights = (sim_weight, var_weight, cov_weight)
        self.gamma, self.eps = gamma, eps
        self.projector = mlp_head(dim, hidden_dim, proj_dim if proj_layers else dim, n_layers=proj_layers)
        self.diagnostics: dict[str, torch.Tensor] = {}

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """Return the weighted loss on the projections of the global batch (the same value on every rank).

        Args:
            y1: ``[B, dim]`` embeddings of view 1 (or modality A).
            y2: ``[B, dim]`` embeddings of view 2 (or modality B), same rows.

        Raises:
            ValueError: Shapes disagree or are not ``[B, dim]``, or the global batch has fewer than 2
                rows (variances are undefined).
        """
        check_pair("vicreg", y1, y2, self.dim)
        z1, z2 = self.projector(y1), self.projector(y2)
        sizes = all_sizes(z1)
        if sum(sizes) < 2:
            raise ValueError(f"vicreg needs at least 2 samples in the global batch; got {sum(sizes)}")
        z1, z2 = gather_with_grad(z1, sizes=sizes), gather_with_grad(z2, sizes=sizes)
        with torch.autocast(z1.device.type, enabled=False):  # batch statistics in bf16 are too coarse
            z1, z2 = at_least_float32(z1), at_least_float32(z2)
            inv = F.mse_loss(z1, z2)
            var1 = variance_term(z1, gamma=self.gamma, eps=self.eps)
            var = (var1 + variance_term(z2, gamma=self.gamma, eps=self.eps)) / 2
            cov = covariance_term(z1) + covariance_term(z2)
        w_sim, w_var, w_cov = self.weights
        self.diagnostics = {
            "vicreg/invariance": inv.detach(),
            "vicreg/variance": var.detach(),
            "vicreg/covariance": cov.detach(),
            "vicreg/std": ((z1.detach().std(0).mean() + z2.detach().std(0).mean()) / 2),
        }
        return w_sim * inv + w_var * var + w_cov * cov

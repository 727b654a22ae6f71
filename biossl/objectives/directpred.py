"""DirectPred (Tian, Chen & Ganguli 2021).

Tian, Chen & Ganguli, "Understanding Self-supervised Learning Dynamics without Contrastive Pairs",
ICML 2021 (arXiv:2102.06810).

BYOL (:mod:`biossl.objectives.byol`) with a predictor that is *set*, not learned. The online projections
``f`` feed an exponential moving average of their correlation matrix,
``F <- rho * F + (1 - rho) * E_batch[f f^T]``; every ``update_every`` training steps ``F`` is
eigendecomposed, ``F = U diag(s) U^T``, and the linear predictor becomes

    ``W_p = U diag(p) U^T``,  ``p_j = (s_j / max_k s_k) ** alpha + eps``

(``alpha = 1/2``: the paper's square-root rule with normalised eigenvalues; ``eps`` lifts the weak
directions so they keep receiving gradient). Until the first training step ``W_p`` is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from biossl.distributed import gather_no_grad
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, VIEW_KINDS, ObjectiveInfo
from biossl.objectives.byol import BYOL


class EigenPredictor(nn.Module):
    """Linear predictor ``p = W_p f`` set from the EMA correlation of its inputs (no parameters).

    Args:
        dim: Width of ``f``.
        rho: EMA factor of the correlation (weight of the old value).
        update_every: Recompute ``W_p`` every this many calls of :meth:`observe`.
        alpha: Power of the normalised eigenvalues.
        eps: Added to every ``p_j``.
    """

    corr: torch.Tensor
    weight: torch.Tensor
    steps: torch.Tensor

    def __init__(self, dim: int, *, rho: float, update_every: int, alpha: float, eps: float) -> None:
        super().__init__()
        self.rho, self.update_every, self.alpha, self.eps = rho, update_every, alpha, eps
        self.register_buffer("corr", torch.zeros(dim, dim))
        self.register_buffer("weight", torch.eye(dim))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def observe(self, f: torch.Tensor) -> None:
        """Fold the batch ``f`` ``[N, dim]`` (gathered over ranks) into ``F``; refresh ``W_p`` when due."""
        f = gather_no_grad(f.detach()).to(self.corr.dtype)
        if f.shape[0] == 0:
            return
        batch_corr = f.T @ f / f.shape[0]
        first = int(self.steps) == 0
        self.corr.copy_(batch_corr if first else self.rho * self.corr + (1.0 - self.rho) * batch_corr)
        if int(self.steps) % self.update_every == 0:
            self.weight.copy_(self.predictor_from(self.corr))
        self.steps += 1

    def predictor_from(self, corr: torch.Tensor) -> torch.Tensor:
        """Return ``U diag((s / max s) ** alpha + eps) U^T`` for the symmetric matrix ``corr``."""
        s, u = torch.linalg.eigh(corr.double())
        s = s.clamp(min=0.0)
        top = s.max()
        scaled = (s / top) ** self.alpha if top > 0 else torch.zeros_like(s)
        return ((u * (scaled + self.eps)) @ u.T).to(corr.dtype)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Return ``f @ W_p^T`` (``W_p`` is symmetric)."""
        return f @ self.weight.to(f.dtype).T


@OBJECTIVES.register("directpred")
class DirectPred(BYOL):
    """BYOL whose predictor is set from the eigendecomposition of the projections' correlation.

    Same call contract as :class:`biossl.objectives.byol.BYOL` (``forward(online_y1, online_y2,
    target_y1, target_y2)``, then :meth:`update_target` after the optimiser step). ``F`` is updated
    once per training-mode call from both views' online projections; in eval mode nothing changes.

    Args:
        dim: Width of the encoder embeddings.
        proj_dim: Projector output width (= predictor width).
        hidden_dim: Projector hidden width.
        rho: EMA factor of the correlation matrix (paper: 0.3).
        update_every: Recompute the predictor every ``k`` training steps (paper: 1 or 5).
        alpha: Eigenvalue power (0.5: square root).
        eps: Added to the normalised eigenvalue powers (paper: 0.1).
        stop_gradient: See :class:`BYOL` (False is the collapse ablation).

    Raises:
        InputError: An option is out of range.
    """

    info = ObjectiveInfo("momentum", kinds=VIEW_KINDS, paper="Tian et al. 2021, DirectPred", dim_option="dim")

    name = "directpred"

    def __init__(
        self,
        dim: int,
        *,
        proj_dim: int = 256,
        hidden_dim: int = 4096,
        rho: float = 0.3,
        update_every: int = 1,
        alpha: float = 0.5,
        eps: float = 0.1,
        stop_gradient: bool = True,
    ) -> None:
        if not (0.0 <= rho < 1.0 and update_every >= 1 and alpha > 0 and eps >= 0):
            raise InputError(
                f"directpred needs 0 <= rho < 1, update_every >= 1, alpha > 0, eps >= 0; got rho={rho}, "
                f"update_every={update_every}, alpha={alpha}, eps={eps}. The paper uses rho=0.3, alpha=0.5, eps=0.1"
            )
        self._rho, self._update_every, self._alpha, self._eps = rho, update_every, alpha, eps
        super().__init__(dim, proj_dim=proj_dim, hidden_dim=hidden_dim, stop_gradient=stop_gradient)

    def _make_predictor(self, proj_dim: int, hidden_dim: int) -> nn.Module:
        return EigenPredictor(
            proj_dim, rho=self._rho, update_every=self._update_every, alpha=self._alpha, eps=self._eps
        )

    def _observe(self, z: torch.Tensor) -> None:
        predictor = self.predictor
        if isinstance(predictor, EigenPredictor):
            predictor.observe(z)

"""BYOL: Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020 (arXiv:2006.07733).

The online branch (encoder -> projector -> predictor) regresses the target branch (a momentum copy of
encoder -> projector) with the normalised MSE ``||p/|p| - z'/|z'|||^2 = 2 - 2 cos(p, z')``, symmetrised
over the two views: ``L = l(p1, z2') + l(p2, z1')`` (the paper's ``L + L~``, each a batch mean). No
negatives are used; what prevents collapse is the stop-gradient on the target together with the
predictor (the ``stop_gradient=False`` ablation collapses, see ``tests/objectives/test_collapse.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, VIEW_KINDS, ObjectiveInfo
from biossl.objectives._heads import (
    at_least_float32,
    check_pair,
    global_batch_mean,
    make_target,
    mlp_head,
    momentum_update,
    normalised_std,
)


def normalised_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample ``|| p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``, shape ``[B]`` (at least float32)."""
    return 2.0 - 2.0 * F.cosine_similarity(at_least_float32(p), at_least_float32(z), dim=-1, eps=1e-8)


@OBJECTIVES.register("byol")
class BYOL(nn.Module):
    """BYOL loss with its projector, predictor and momentum target projector.

    Call contract (the caller owns the encoders and the target encoder)::

        target_encoder = make_target(encoder)                   # once, from biossl.objectives._heads
        loss = byol(encoder(x1), encoder(x2), target_encoder(x1), target_encoder(x2))
        loss.backward(); optimizer.step()
        m = cosine_momentum(step, total_steps)                  # 0.996 -> 1
        momentum_update(encoder, target_encoder, m); byol.update_target(m)

    Across modalities pass modality A as view 1 and modality B as view 2 (each from its own online and
    target encoder, all of width ``dim``), rows aligned by patient.

    Args:
        dim: Width of the encoder embeddings.
        proj_dim: Output width of projector and predictor (paper: 256).
        hidden_dim: Hidden width of projector and predictor (paper: 4096).
        stop_gradient: True (BYOL). False is the collapse ablation: the target branch is the *online*
            projector applied to the given target embeddings, with gradients -- pass the online encoder's
            embeddings as targets, so both branches are one network trained end to end.

    Attributes:
        diagnostics: Detached scalars from the last call: ``"byol/std"`` (mean per-dimension std of the
            L2-normalised online projections; ``~1/sqrt(proj_dim)`` when healthy, 0 when collapsed).

    Raises:
        InputError: A width is not positive.
    """

    info = ObjectiveInfo("momentum", kinds=VIEW_KINDS, paper="Grill et al. 2020, BYOL", dim_option="dim")

    name = "byol"

    def __init__(self, dim: int, *, proj_dim: int = 256, hidden_dim: int = 4096, stop_gradient: bool = True) -> None:
        super().__init__()
        if min(dim, proj_dim, hidden_dim) < 1:
            raise InputError(
                f"{self.name} widths must be positive; got dim={dim}, proj_dim={proj_dim}, hidden_dim={hidden_dim}"
            )
        self.dim = dim
        self.stop_gradient = stop_gradient
        self.projector = mlp_head(dim, hidden_dim, proj_dim)
        self.predictor = self._make_predictor(proj_dim, hidden_dim)
        self.target_projector = make_target(self.projector)
        self.diagnostics: dict[str, torch.Tensor] = {}

    def _make_predictor(self, proj_dim: int, hidden_dim: int) -> nn.Module:
        return mlp_head(proj_dim, hidden_dim, proj_dim)

    def _observe(self, z: torch.Tensor) -> None:
        """Hook called with both views' online projections ``[2B, proj_dim]`` before the predictor."""

    @torch.no_grad()
    def update_target(self, m: float) -> None:
        """Move the target projector towards the online projector (call after each optimiser step)."""
        momentum_update(self.projector, self.target_projector, m)

    def _targets(self, t1: torch.Tensor, t2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.stop_gradient:
            return self.projector(t1), self.projector(t2)
        with torch.no_grad():
            return self.target_projector(t1.detach()), self.target_projector(t2.detach())

    def forward(
        self,
        online_y1: torch.Tensor,
        online_y2: torch.Tensor,
        target_y1: torch.Tensor,
        target_y2: torch.Tensor,
    ) -> torch.Tensor:
        """Return the symmetric loss ``l(p1, z2') + l(p2, z1')`` (a scalar, global-batch mean).

        Args:
            online_y1: ``[B, dim]`` online-encoder embeddings of view 1 (or modality A).
            online_y2: ``[B, dim]`` online-encoder embeddings of view 2 (or modality B), same rows.
            target_y1: ``[B, dim]`` target-encoder embeddings of view 1 (no gradient is taken).
            target_y2: ``[B, dim]`` target-encoder embeddings of view 2.

        Raises:
            ValueError: Shapes disagree or are not ``[B, dim]``.
        """
        check_pair(self.name, online_y1, online_y2, self.dim)
        check_pair(self.name, target_y1, target_y2, self.dim)
        check_pair(self.name, online_y1, target_y1)
        z1, z2 = self.projector(online_y1), self.projector(online_y2)
        if self.training:
            self._observe(torch.cat([z1, z2]).detach())
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t1, t2 = self._targets(target_y1, target_y2)
        loss = global_batch_mean(normalised_mse(p1, t2) + normalised_mse(p2, t1))
        self.diagnostics = {f"{self.name}/std": (normalised_std(z1) + normalised_std(z2)) / 2}
        return loss

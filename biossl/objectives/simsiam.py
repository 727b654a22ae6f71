"""SimSiam: Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021 (arXiv:2011.10566).

One network on both views: projections ``z = g(f(x))`` and predictions ``p = h(z)``; each prediction
must match the *stop-gradient* projection of the other view under the negative cosine,
``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` with ``D(p, z) = -cos(p, z)`` (minimum -1). There is no
momentum encoder and no negatives; without the stop-gradient it collapses (paper Fig. 2; the
``stop_gradient=False`` flag, see ``tests/objectives/test_collapse.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, VIEW_KINDS, ObjectiveInfo
from biossl.objectives._heads import at_least_float32, check_pair, global_batch_mean, mlp_head, normalised_std


@OBJECTIVES.register("simsiam")
class SimSiam(nn.Module):
    """SimSiam loss with its projector (3 layers, BN on the output) and bottleneck predictor.

    Call contract: ``loss = simsiam(encoder(x1), encoder(x2))`` -- both views through the same online
    encoder, rows aligned. Across modalities pass the two modalities' embeddings (same width ``dim``)
    of the same patients.

    Args:
        dim: Width of the encoder embeddings.
        proj_dim: Projector output width (paper: 2048).
        hidden_dim: Projector hidden width (paper: 2048).
        pred_hidden: Predictor bottleneck width (paper: 512).
        proj_layers: Linear layers in the projector (paper: 3).
        stop_gradient: True (SimSiam); False is the collapse ablation.

    Attributes:
        diagnostics: ``"simsiam/std"``: mean per-dimension std of the L2-normalised projections
            (``~1/sqrt(proj_dim)`` healthy, 0 collapsed), detached, from the last call.

    Raises:
        InputError: A width or layer count is not positive.
    """

    info = ObjectiveInfo("two_view", kinds=VIEW_KINDS, across=True, paper="Chen and He 2021, SimSiam", dim_option="dim")

    def __init__(
        self,
        dim: int,
        *,
        proj_dim: int = 2048,
        hidden_dim: int = 2048,
        pred_hidden: int = 512,
        proj_layers: int = 3,
        stop_gradient: bool = True,
    ) -> None:
        super().__init__()
        if min(dim, proj_dim, hidden_dim, pred_hidden, proj_layers) < 1:
            raise InputError(
                f"simsiam widths and proj_layers must be positive; got dim={dim}, proj_dim={proj_dim}, "
                f"hidden_dim={hidden_dim}, pred_hidden={pred_hidden}, proj_layers={proj_layers}"
            )
        self.dim = dim
        self.stop_gradient = stop_gradient
        self.projector = mlp_head(dim, hidden_dim, proj_dim, n_layers=proj_layers, last_bn=True)
        self.predictor = mlp_head(proj_dim, pred_hidden, proj_dim)
        self.diagnostics: dict[str, torch.Tensor] = {}

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """Return ``(D(p1, sg(z2)) + D(p2, sg(z1))) / 2`` averaged over the global batch (in ``[-1, 1]``).

        Args:
            y1: ``[B, dim]`` encoder embeddings of view 1 (or modality A).
            y2: ``[B, dim]`` encoder embeddings of view 2 (or modality B), same rows.

        Raises:
            ValueError: Shapes disagree or are not ``[B, dim]``.
        """
        check_pair("simsiam", y1, y2, self.dim)
        z1, z2 = self.projector(y1), self.projector(y2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t1, t2 = (z1.detach(), z2.detach()) if self.stop_gradient else (z1, z2)
        p1, p2, t1, t2 = (at_least_float32(v) for v in (p1, p2, t1, t2))
        per_sample = -(F.cosine_similarity(p1, t2, dim=-1) + F.cosine_similarity(p2, t1, dim=-1)) / 2
        self.diagnostics = {"simsiam/std": (normalised_std(z1) + normalised_std(z2)) / 2}
        return global_batch_mean(per_sample)

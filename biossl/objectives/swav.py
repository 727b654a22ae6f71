"""SwAV: online clustering with swapped assignments between views (Caron et al. 2020).

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020 (arXiv:2006.09882).

Each view's embedding is projected, L2-normalised and scored against ``K`` L2-normalised prototypes
(``p = z @ C.T``, cosine scores). Codes ``q`` are soft assignments of the batch to the prototypes
from Sinkhorn-Knopp on ``exp(p / epsilon)`` under an equipartition constraint: every prototype
receives ``1 / K`` of the mass, every sample ``1 / B``. The loss is the swapped prediction
``l = -1/2 [sum_k q2_k log softmax(p1 / t)_k + q1_k log softmax(p2 / t)_k]``, averaged over samples.
Codes carry no gradient. An optional queue of past projections (per view) joins the Sinkhorn
problem when the batch is small compared with ``K``.

Under torch.distributed the Sinkhorn sums are all-reduced, so the codes equal those of one process
on the global batch (and its queues); the loss follows :mod:`biossl.distributed`'s convention.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from biossl.distributed import is_distributed
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, VIEW_KINDS, ObjectiveInfo
from biossl.objectives._heads import check_pair, global_batch_mean, mlp_head

logger = logging.getLogger(__name__)


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=op)
    return t


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, *, epsilon: float = 0.05, n_iters: int = 3) -> torch.Tensor:
    """Return SwAV codes ``[B, K]`` for prototype scores ``[B, K]`` (rows sum to 1).

    Alternately rescales the rows and columns of ``Q = exp(scores / epsilon)`` (``[K, B]`` in the
    paper's layout) so that each prototype gets total mass ``1 / K`` and each sample ``1 / B``; the
    last step is the per-sample normalisation, which is therefore exact, while the per-prototype
    marginals approach ``B / K`` (after the final scaling by ``B``) as ``n_iters`` grows. When
    distributed, ``B`` and every sum run over all ranks' rows.

    Args:
        scores: ``[B, K]`` cosine scores of this rank's rows against the prototypes.
        epsilon: Entropic regularisation (paper: 0.05).
        n_iters: Sinkhorn iterations (paper: 3).
    """
    logits = scores.detach().to(torch.promote_types(scores.dtype, torch.float32)) / epsilon
    peak = logits.max() if logits.numel() else logits.new_zeros(())
    peak = _all_reduce(peak.clone(), dist.ReduceOp.MAX)  # one shift for all ranks keeps Q exact
    q = torch.exp(logits - peak).T  # [K, B]
    n_rows = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    k = q.shape[0]
    q /= _all_reduce(q.sum())
    for _ in range(n_iters):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n_rows
    return (q * n_rows).T.to(scores.dtype)


@OBJECTIVES.register("swav")
class SwAV(nn.Module):
    """SwAV loss with projector, prototypes, Sinkhorn codes and an optional queue.

    Call contract (the caller owns the encoder)::

        loss = swav(encoder(x1), encoder(x2))              # two global views, [B, dim] each
        loss = swav(encoder(x1), encoder(x2), *small)      # multi-crop: extra views predict both codes
        loss.backward(); optimizer.step()

    Prototypes are re-normalised at the start of every training call (the paper does so after
    each step; the two are equivalent for the loss). Codes come from the two global views only;
    each of them is predicted from every other view. The queue is used once full and is then
    updated in training mode only (the paper also starts it after some epochs: give ``queue_size``
    only when the batch is much smaller than ``n_prototypes``).

    Args:
        dim: Width of the encoder embeddings.
        n_prototypes: Number of prototypes ``K`` (paper: 3000 on ImageNet; use about 10x the
            number of expected classes for a small cohort).
        proj_dim: Projector output width (paper: 128).
        hidden_dim: Projector hidden width (paper: 2048).
        n_proj_layers: Linear layers in the projector; 0 uses the embedding itself (then
            ``proj_dim`` must equal ``dim``).
        temperature: Softmax temperature of the predictions (paper: 0.1).
        epsilon: Sinkhorn regularisation (paper: 0.05).
        sinkhorn_iters: Sinkhorn iterations (paper: 3).
        queue_size: Past projections kept per global view (0: no queue; paper: 3840).

    Attributes:
        diagnostics: Detached ``"swav/code_entropy"`` (mean entropy of the codes, nats) and
            ``"swav/prototypes_used"`` (fraction of prototypes that are some sample's argmax code).

    Raises:
        InputError: A width, ``n_prototypes``, ``temperature`` or ``epsilon`` is not positive, or
            ``sinkhorn_iters`` / ``queue_size`` is negative.
    """

    info = ObjectiveInfo("two_view", kinds=VIEW_KINDS, across=True, paper="Caron et al. 2020, SwAV", dim_option="dim")

    queue: torch.Tensor
    queue_filled: torch.Tensor

    def __init__(
        self,
        dim: int,
        *,
        n_prototypes: int = 3000,
        proj_dim: int = 128,
        hidden_dim: int = 2048,
        n_proj_layers: int = 2,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iters: int = 3,
        queue_size: int = 0,
    ) -> None:
        super().__init__()
        if min(dim, n_prototypes, proj_dim, hidden_dim) < 1 or not (temperature > 0 and epsilon > 0):
            raise InputError(
                f"swav needs positive widths, n_prototypes, temperature and epsilon; got dim={dim}, "
                f"n_prototypes={n_prototypes}, proj_dim={proj_dim}, hidden_dim={hidden_dim}, "
                f"temperature={temperature}, epsilon={epsilon}. The paper uses temperature=0.1, epsilon=0.05"
            )
        if sinkhorn_iters < 0 or queue_size < 0 or n_proj_layers < 0:
            raise InputError(
                f"swav sinkhorn_iters, queue_size and n_proj_layers must be >= 0; got {sinkhorn_iters}, "
                f"{queue_size}, {n_proj_layers}"
            )
        if n_proj_layers == 0 and proj_dim != dim:
            raise InputError(f"swav with n_proj_layers=0 needs proj_dim == dim ({dim}); got proj_dim={proj_dim}")
        self.dim, self.temperature, self.epsilon, self.sinkhorn_iters = dim, temperature, epsilon, sinkhorn_iters
        self.projector = mlp_head(dim, hidden_dim, proj_dim, n_layers=n_proj_layers)
        self.prototypes = nn.Linear(proj_dim, n_prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.register_buffer("queue", torch.zeros(2, queue_size, proj_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.diagnostics: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise every prototype in place."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def _codes(self, scores: torch.Tensor, view: int) -> torch.Tensor:
        size = self.queue.shape[1]
        n = scores.shape[0]
        if size and int(self.queue_filled) >= size:
            with torch.no_grad():
                queued = self.queue[view].to(scores.dtype) @ self.prototypes.weight.detach().T
            scores = torch.cat([scores.detach(), queued])
        return sinkhorn(scores, epsilon=self.epsilon, n_iters=self.sinkhorn_iters)[:n]

    @torch.no_grad()
    def _enqueue(self, z: list[torch.Tensor]) -> None:
        size = self.queue.shape[1]
        if not size:
            return
        for view in range(2):
            new = z[view].detach().to(self.queue.dtype)[-size:]
            self.queue[view] = torch.cat([new, self.queue[view, : size - new.shape[0]]])
        self.queue_filled.fill_(min(size, int(self.queue_filled) + z[0].shape[0]))

    def forward(self, y1: torch.Tensor, y2: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """Return the swapped-prediction loss (a scalar, global-batch mean), then update the queue.

        Args:
            y1: ``[B, dim]`` encoder embeddings of global view 1.
            y2: ``[B, dim]`` encoder embeddings of global view 2 (same samples, same order).
            *extra: Further ``[B, dim]`` views (multi-crop); they are predicted, never coded.

        Raises:
            ValueError: Shapes disagree or are not ``[B, dim]``.
        """
        for y in (y2, *extra):
            check_pair("swav", y1, y, self.dim)
        if self.training:
            self.normalize_prototypes()
        z = [F.normalize(self.projector(y), dim=1) for y in (y1, y2, *extra)]
        scores = [self.prototypes(v) for v in z]  # [B, K] cosine scores
        codes = [self._codes(scores[i], i) for i in range(2)]
        log_p = [F.log_softmax(s / self.temperature, dim=1) for s in scores]
        per_sample = y1.new_zeros(y1.shape[0])
        n_terms = 0
        for i in range(2):
            for v in range(len(z)):
                if v != i:
                    per_sample = per_sample - (codes[i] * log_p[v]).sum(dim=1)
                    n_terms += 1
        with torch.no_grad():
            q = torch.cat(codes)
            self.diagnostics = {
                "swav/code_entropy": -(q * q.clamp_min(1e-12).log()).sum(1).mean(),
                "swav/prototypes_used": q.argmax(1).unique().numel() / torch.tensor(float(q.shape[1])),
            }
        loss = global_batch_mean(per_sample / n_terms)
        if self.training:
            self._enqueue(z)
        return loss

"""MoCo (He et al. 2020) with a queue of negatives and a momentum projector.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020
(arXiv:1911.05722), with the MLP projection head of MoCo v2 (Chen et al. 2020, arXiv:2003.04297) and
the symmetrised loss of MoCo v3 (Chen, Xie & He 2021).

A query ``q`` (online encoder -> projector, L2-normalised) must pick out its key ``k+`` (the other view
through the momentum encoder -> momentum projector, no gradient) among the negatives held in a FIFO
queue of past keys: ``l = -log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_{k in queue} exp(q.k / t)) )``.
After the loss is computed the keys of this step -- gathered from every rank, so the queue is the
same everywhere -- replace the oldest entries. The queue starts as random unit vectors drawn with a
fixed seed (identical on every rank), as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biossl.distributed import gather_no_grad
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, VIEW_KINDS, ObjectiveInfo
from biossl.objectives._heads import check_pair, global_batch_mean, make_target, mlp_head, momentum_update


@OBJECTIVES.register("moco")
class MoCo(nn.Module):
    """MoCo loss with projector, momentum projector and queue of negatives.

    Call contract (the caller owns the encoder and its momentum copy)::

        key_encoder = make_target(encoder)                      # once, from biossl.objectives._heads
        loss = moco(encoder(x1), encoder(x2), key_encoder(x1), key_encoder(x2))
        loss.backward(); optimizer.step()
        momentum_update(encoder, key_encoder, 0.99); moco.update_target(0.99)

    Across modalities pass modality A as view 1 and modality B as view 2 (rows aligned by patient).
    The queue is read and then updated in training mode only.

    Args:
        dim: Width of the encoder embeddings.
        proj_dim: Projector output width (MoCo v2: 128).
        hidden_dim: Projector hidden width (MoCo v2: 2048).
        queue_size: Number of negatives kept (paper: 65536; keep it well below the dataset size).
        temperature: Softmax temperature (MoCo v2: 0.2).
        symmetric: Score both directions, ``(l(q1, k2) + l(q2, k1)) / 2``, and enqueue both views' keys
            (True), or only ``l(q1, k2)`` and enqueue ``k2`` (False, MoCo v1/v2).

    Attributes:
        diagnostics: Detached ``"moco/pos_sim"`` (mean ``q.k+``) and ``"moco/neg_sim"`` (mean ``q.k``
            over the queue) from the last call.

    Raises:
        InputError: A width, ``queue_size`` or ``temperature`` is not positive.
    """

    info = ObjectiveInfo(
        "momentum", kinds=VIEW_KINDS, paper="He et al. 2020 / Chen et al. 2020, MoCo v1/v2", dim_option="dim"
    )

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(
        self,
        dim: int,
        *,
        proj_dim: int = 128,
        hidden_dim: int = 2048,
        queue_size: int = 4096,
        temperature: float = 0.2,
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        if min(dim, proj_dim, hidden_dim, queue_size) < 1 or not temperature > 0:
            raise InputError(
                f"moco needs positive widths, queue_size and temperature; got dim={dim}, proj_dim={proj_dim}, "
                f"hidden_dim={hidden_dim}, queue_size={queue_size}, temperature={temperature}. "
                "MoCo v2 uses queue_size=65536, temperature=0.2"
            )
        self.dim, self.temperature, self.symmetric = dim, temperature, symmetric
        self.projector = mlp_head(dim, hidden_dim, proj_dim)
        self.target_projector = make_target(self.projector)
        init = torch.randn(queue_size, proj_dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer("queue", F.normalize(init, dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.diagnostics: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update_target(self, m: float) -> None:
        """Move the momentum projector towards the projector (call after each optimiser step)."""
        momentum_update(self.projector, self.target_projector, m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` ``[n, proj_dim]`` (already gathered, normalised) over the oldest queue entries."""
        size = self.queue.shape[0]
        keys = keys[-size:].to(self.queue.dtype)
        idx = (int(self.queue_ptr) + torch.arange(keys.shape[0], device=self.queue.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.fill_((int(self.queue_ptr) + keys.shape[0]) % size)

    def _contrast(self, q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        pos = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([pos, q @ negatives.T], dim=1) / self.temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels, reduction="none")

    def forward(
        self,
        online_y1: torch.Tensor,
        online_y2: torch.Tensor,
        target_y1: torch.Tensor,
        target_y2: torch.Tensor,
    ) -> torch.Tensor:
        """Return the InfoNCE loss against the queue (a scalar, global-batch mean), then enqueue the keys.

        Args:
            online_y1: ``[B, dim]`` online-encoder embeddings of view 1 (queries).
            online_y2: ``[B, dim]`` online-encoder embeddings of view 2.
            target_y1: ``[B, dim]`` momentum-encoder embeddings of view 1 (keys; no gradient is taken).
            target_y2: ``[B, dim]`` momentum-encoder embeddings of view 2.

        Raises:
            ValueError: Shapes disagree or are not ``[B, dim]``.
        """
        check_pair("moco", online_y1, online_y2, self.dim)
        check_pair("moco", target_y1, target_y2, self.dim)
        check_pair("moco", online_y1, target_y1)
        negatives = self.queue.clone().to(online_y1.dtype)  # the in-place enqueue must not touch saved tensors
        q1 = F.normalize(self.projector(online_y1), dim=1)
        with torch.no_grad():
            k2 = F.normalize(self.target_projector(target_y2.detach()), dim=1)
        per_sample = self._contrast(q1, k2, negatives)
        new_keys = k2
        if self.symmetric:
            q2 = F.normalize(self.projector(online_y2), dim=1)
            with torch.no_grad():
                k1 = F.normalize(self.target_projector(target_y1.detach()), dim=1)
            per_sample = (per_sample + self._contrast(q2, k1, negatives)) / 2
            new_keys = torch.cat([k1, k2])
        with torch.no_grad():
            self.diagnostics = {
                "moco/pos_sim": (q1 * k2).sum(1).mean().detach(),
                "moco/neg_sim": (q1 @ negatives.T).mean().detach(),
            }
        loss = global_batch_mean(per_sample)
        if self.training:
            self.enqueue(gather_no_grad(new_keys))
        return loss

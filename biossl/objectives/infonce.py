"""NT-Xent, the two-view contrastive loss of SimCLR (Chen et al. 2020).

For ``N`` samples seen in two augmented views there are ``2N`` embeddings; each one must pick out
the other view of its sample among the remaining ``2N - 1`` (itself excluded) at temperature ``tau``.

Under torch.distributed each rank scores its local ``2B`` embeddings against the ``2N`` gathered from
every rank, with gradients through :func:`biossl.distributed.gather_with_grad`; with DDP's gradient
averaging this equals one process on the global batch (see :mod:`biossl.distributed`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biossl.distributed import all_sizes, gather_with_grad, global_mean_value, rank, world_size
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, VIEW_KINDS, ObjectiveInfo


@OBJECTIVES.register("infonce")
class NTXentLoss(nn.Module):
    """Normalised-temperature cross-entropy between two views of the same samples.

    Args:
        temperature: Softmax temperature ``tau`` (SimCLR uses 0.1 to 0.5).

    Raises:
        InputError: ``temperature`` is not positive.
    """

    info = ObjectiveInfo("two_view", kinds=VIEW_KINDS, across=True, paper="Chen et al. 2020, SimCLR (NT-Xent)")

    def __init__(self, *, temperature: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:
            raise InputError(f"infonce temperature must be > 0; got {temperature}. SimCLR uses 0.1 to 0.5")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Return the loss (a scalar; its value is the global loss on every rank).

        Args:
            z1: ``[B, D]`` embeddings of the first view of this rank's ``B`` samples.
            z2: ``[B, D]`` embeddings of the second view, same order.

        Raises:
            ValueError: Shapes disagree.
        """
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(
                f"NT-Xent needs two [B, D] embeddings of equal shape; got {z1.shape}, {z2.shape}"
            )
        sizes = all_sizes(z1)
        n_global = sum(sizes)
        if n_global == 0:
            return z1[:0].sum() + z2[:0].sum()
        z1 = F.normalize(z1, dim=-1)
        z2 = F.normalize(z2, dim=-1)
        keys = torch.cat([gather_with_grad(z1, sizes=sizes), gather_with_grad(z2, sizes=sizes)])
        queries = torch.cat([z1, z2])
        logits = queries @ keys.T / self.temperature  # [2B, 2N]

        local = torch.arange(z1.shape[0], device=z1.device) + sum(sizes[: rank()])
        own = torch.cat([local, local + n_global])  # each query's own column
        positive = torch.cat([local + n_global, local])  # the other view of the same sample
        rows = torch.arange(queries.shape[0], device=z1.device)
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[rows, own] = True
        logits = logits.masked_fill(is_self, float("-inf"))
        summed = F.cross_entropy(logits, positive, reduction="sum")
        return global_mean_value(summed * (world_size() / (2.0 * n_global)))

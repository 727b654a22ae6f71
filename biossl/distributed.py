"""Cross-process gathers for contrastive losses, with gradients.

Gradient convention (read this before writing a distributed loss):

* Every rank ``r`` computes a *local share* ``L_r`` of the loss such that the global loss is the
  mean over ranks, ``L = (1 / W) * sum_r L_r`` (``W`` = world size). A contrastive loss does this by
  scoring its local rows against the gathered global batch and dividing by the *global* number of
  scored rows times ``1 / W``.
* :func:`gather_with_grad` concatenates ``x`` from all ranks. Its backward all-reduces (SUM) the
  gradient of the gathered tensor and keeps the local slice, so rank ``s`` receives
  ``sum_r dL_r / dx_s`` -- the contributions of every rank's loss to its own rows.
* DistributedDataParallel then *averages* parameter gradients over ranks, which supplies the
  ``1 / W`` above: the synchronised gradient equals ``dL / dtheta`` of a single process that saw the
  whole global batch. Code that sums gradients over ranks instead of averaging must divide by ``W``.

Inputs may have different first-dimension sizes on different ranks (for example a short last batch):
they are padded to the largest size for the collective and unpadded afterwards. All other dimensions,
the dtype and the device type must agree across ranks.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.distributed as dist

_MAX_NDIM = 8


def is_distributed() -> bool:
    """Return True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Rank of this process, 0 when torch.distributed is not initialised."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes, 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_sizes(x: torch.Tensor) -> list[int]:
    """Return the first-dimension size of ``x`` on every rank (checking the other dimensions agree).

    Raises:
        ValueError: ``x`` has more than 8 dimensions, or its trailing shape differs between ranks.
    """
    if not is_distributed():
        return [int(x.shape[0])]
    if x.ndim == 0 or x.ndim > _MAX_NDIM:
        raise ValueError(
            f"gather needs a tensor with 1 to {_MAX_NDIM} dimensions, got shape {tuple(x.shape)}"
        )
    shape = torch.full((_MAX_NDIM + 1,), -1, dtype=torch.long, device=x.device)
    shape[0] = x.ndim
    shape[1 : x.ndim + 1] = torch.tensor(x.shape, dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    rows = [s.tolist() for s in shapes]
    trailing = {tuple(r[2 : r[0] + 1]) for r in rows}
    if len(trailing) != 1:
        listing = ", ".join(f"rank {i}: {tuple(r[1 : r[0] + 1])}" for i, r in enumerate(rows))
        raise ValueError(f"gather needs the same shape apart from dim 0 on every rank; got {listing}")
    return [r[1] for r in rows]


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    longest = max(sizes)
    padded = x
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        padded = torch.cat([x, pad], dim=0)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather in forward; all_reduce(SUM) of the gradient and local slice in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        me = rank()
        ctx.start = sum(sizes[:me])
        ctx.stop = ctx.start + sizes[me]
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[ctx.start : ctx.stop], None


def gather_with_grad(x: torch.Tensor, *, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, letting gradients flow back to the local slice.

    A no-op (returns ``x`` itself) when torch.distributed is not initialised or has one process.
    See the module docstring for the gradient convention; it assumes DDP's gradient averaging.
    ``x.requires_grad`` must be the same on every rank (the backward runs a collective), and every
    rank must call this the same number of times in the same order.

    Args:
        x: Local tensor ``[n_local, ...]``.
        sizes: The first-dimension size on every rank, if already known from :func:`all_sizes`
            (saves one small collective). Every rank must pass the same list.

    Returns:
        ``[sum(sizes), ...]``, rank 0's rows first.
    """
    if not is_distributed():
        return x
    if sizes is None:
        sizes = all_sizes(x)
    if len(sizes) != world_size() or sizes[rank()] != x.shape[0]:
        raise ValueError(f"sizes {sizes} do not match this rank's {x.shape[0]} rows (rank {rank()})")
    return cast(torch.Tensor, _GatherWithGrad.apply(x, sizes))


def gather_no_grad(x: torch.Tensor, *, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` (any dtype, no gradient) from all ranks along dim 0; ``x`` when not distributed."""
    if not is_distributed():
        return x
    if sizes is None:
        sizes = all_sizes(x)
    if x.dtype == torch.bool:  # not every backend all-gathers bool tensors
        return _gather_padded(x.to(torch.uint8), sizes).bool()
    with torch.no_grad():
        return _gather_padded(x, sizes)


def global_mean_value(share: torch.Tensor) -> torch.Tensor:
    """Return ``share`` with its *value* replaced by the mean of ``share`` over ranks.

    The gradient is that of the local ``share`` (what DDP needs, see the module docstring), while the
    value -- what gets logged -- is the global loss, identical on every rank.
    """
    if not is_distributed():
        return share
    total = share.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return share + (total / world_size() - share.detach())

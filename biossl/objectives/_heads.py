"""Projection / prediction MLP heads and the momentum (EMA) helpers shared by the joint-embedding objectives.

* :func:`mlp_head` builds the ``Linear -> BatchNorm -> ReLU -> ... -> Linear`` heads of SimCLR, MoCo v2,
  BYOL, SimSiam, Barlow Twins and VICReg (``n_layers=0`` gives an identity: the embedding is used as is).
* :func:`make_target` makes a frozen copy of a module to serve as a momentum ("target", "key") network.
* :func:`momentum_update` moves it towards the online module: ``target = m * target + (1 - m) * online``
  (He et al. 2020, MoCo; Grill et al. 2020, BYOL), run **after** each optimiser step.
* :func:`cosine_momentum` is BYOL's schedule, ``1 - (1 - base) * (cos(pi * k / K) + 1) / 2``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from biossl.distributed import all_sizes, global_mean_value, world_size


def mlp_head(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    *,
    n_layers: int = 2,
    last_bn: bool = False,
) -> nn.Module:
    """Return an MLP head of ``n_layers`` linear layers with BatchNorm + ReLU between them.

    Args:
        in_dim: Input width (the encoder's embedding width).
        hidden_dim: Width of the hidden layers.
        out_dim: Output width.
        n_layers: Number of linear layers; 0 returns :class:`torch.nn.Identity` (then ``out_dim`` must
            equal ``in_dim``).
        last_bn: Append an affine-free BatchNorm on the output (SimSiam's projector).

    Raises:
        ValueError: A width is not positive, ``n_layers`` is negative, or ``n_layers=0`` with
            ``out_dim != in_dim``.
    """
    if min(in_dim, hidden_dim, out_dim) < 1 or n_layers < 0:
        raise ValueError(
            f"MLP head needs positive widths and n_layers >= 0; got in_dim={in_dim}, hidden_dim={hidden_dim}, "
            f"out_dim={out_dim}, n_layers={n_layers}"
        )
    if n_layers == 0:
        if out_dim != in_dim:
            raise ValueError(f"an identity head (n_layers=0) keeps the width: out_dim {out_dim} != in_dim {in_dim}")
        return nn.Identity()
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(n_layers - 1):
        layers += [nn.Linear(width, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def make_target(online: nn.Module) -> nn.Module:
    """Return a deep copy of ``online`` with gradients switched off, to be updated by :func:`momentum_update`."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """Set every target parameter to ``m * target + (1 - m) * online`` and copy the buffers (BN statistics).

    Args:
        online: The module trained by the optimiser.
        target: Its momentum copy (same architecture, e.g. from :func:`make_target`).
        m: Momentum in ``[0, 1]``; 0 copies the online weights, 1 leaves the target unchanged.

    Raises:
        ValueError: ``m`` is outside ``[0, 1]`` or the two modules' parameters do not correspond.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got {m}")
    on_p, tg_p = dict(online.named_parameters()), dict(target.named_parameters())
    on_b, tg_b = dict(online.named_buffers()), dict(target.named_buffers())
    if on_p.keys() != tg_p.keys() or on_b.keys() != tg_b.keys():
        missing = sorted(set(on_p) ^ set(tg_p) | set(on_b) ^ set(tg_b))
        raise ValueError(f"online and target modules differ in parameters/buffers {missing[:5]}; use make_target()")
    for name, p in on_p.items():
        tg_p[name].mul_(m).add_(p.detach(), alpha=1.0 - m)
    for name, b in on_b.items():
        tg_b[name].copy_(b)


def cosine_momentum(step: int, total_steps: int, *, base: float = 0.996) -> float:
    """BYOL's momentum schedule: ``base`` at step 0 rising to 1 at ``total_steps`` (cosine).

    Raises:
        ValueError: ``total_steps`` is not positive or ``base`` is outside ``[0, 1]``.
    """
    if total_steps < 1 or not 0.0 <= base <= 1.0:
        raise ValueError(f"cosine_momentum needs total_steps >= 1 and base in [0, 1]; got {total_steps}, {base}")
    frac = min(max(step, 0), total_steps) / total_steps
    return 1.0 - (1.0 - base) * (math.cos(math.pi * frac) + 1.0) / 2.0


def normalised_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the per-dimension std of the L2-normalised rows of ``z`` (detached).

    The collapse diagnostic of Chen & He (2021): about ``1 / sqrt(D)`` for well-spread embeddings,
    0 when every sample maps to the same direction.
    """
    with torch.no_grad():
        if z.shape[0] < 2:
            return z.new_zeros(())
        return F.normalize(z.float(), dim=-1).std(dim=0).mean()


def global_batch_mean(per_sample: torch.Tensor) -> torch.Tensor:
    """Mean of a per-sample loss ``[B]`` over the global batch, as this rank's share (see :mod:`biossl.distributed`).

    Its value is the global mean on every rank; its gradient is that of ``W / N * sum(local)``, which
    DDP's gradient averaging turns into the gradient of the global mean. Without torch.distributed it
    is ``per_sample.mean()``.
    """
    sizes = all_sizes(per_sample)
    n_global = sum(sizes)
    if n_global == 0:
        return per_sample.sum()
    return global_mean_value(per_sample.sum() * (world_size() / n_global))


def at_least_float32(z: torch.Tensor) -> torch.Tensor:
    """Return ``z`` in float32 if it is float16/bfloat16 (loss statistics), else unchanged (float64 stays)."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def check_pair(name: str, a: torch.Tensor, b: torch.Tensor, dim: int | None = None) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` are ``[B, D]`` of equal shape (and ``D == dim`` if given)."""
    if a.ndim != 2 or a.shape != b.shape or (dim is not None and a.shape[1] != dim):
        want = f"[B, {dim}]" if dim is not None else "[B, D]"
        raise ValueError(f"{name} needs two {want} embeddings of equal shape; got {tuple(a.shape)}, {tuple(b.shape)}")

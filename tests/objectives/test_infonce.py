"""NT-Xent (SimCLR) in one process against a loop reference and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.infonce import NTXentLoss


def reference_ntxent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Loop-by-loop NT-Xent over the 2N views, each excluding itself from its denominator."""
    views = [v / v.norm() for v in torch.cat([z1, z2])]
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = {k: float(views[i] @ views[k]) / tau for k in range(2 * n) if k != i}
        total -= sims[pos] - math.log(sum(math.exp(s) for s in sims.values()))
    return total / (2 * n)


def test_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    z2 = z1 + 0.4 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    got = NTXentLoss(temperature=0.2)(z1, z2)
    assert got.item() == pytest.approx(reference_ntxent(z1, z2, 0.2), rel=1e-12)
    assert NTXentLoss(temperature=0.2)(z2, z1).item() == pytest.approx(got.item(), rel=1e-12)


def test_closed_form_orthonormal_views() -> None:
    # Both views e_i: positive sim 1/tau, the 2N - 2 others 0 -> log(1 + (2N - 2) exp(-1/tau)).
    eye = torch.eye(3, dtype=torch.float64)
    assert NTXentLoss(temperature=0.5)(eye, eye).item() == pytest.approx(math.log(1 + 4 * math.exp(-2.0)))


def test_better_aligned_views_give_lower_loss_and_gradients_flow() -> None:
    g = torch.Generator().manual_seed(6)
    z = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(8, 4, generator=g, dtype=torch.float64)
    loss = NTXentLoss(temperature=0.1)
    close, far = loss(z, z + 0.05 * noise), loss(z, z + 2.0 * noise)
    assert close.item() < far.item()
    far.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_bad_input_rejected_and_registered() -> None:
    with pytest.raises(InputError, match="temperature"):
        NTXentLoss(temperature=-1.0)
    with pytest.raises(ValueError, match="equal shape"):
        NTXentLoss()(torch.ones(3, 2), torch.ones(2, 2))
    assert OBJECTIVES.get("infonce") is NTXentLoss

"""VICReg against explicit-sum references and hand-computed values for constant embeddings."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.vicreg import VICReg


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and unaffected by a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_vicreg(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> float:
    """25 * invariance + 25 * mean of the two variance terms + 1 * sum of the two covariance terms, by loops."""
    n, d = z1.shape
    inv = sum((float(z1[i, j]) - float(z2[i, j])) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def var_cov(z: torch.Tensor) -> tuple[float, float]:
        means = [sum(float(z[i, j]) for i in range(n)) / n for j in range(d)]
        centred = [[float(z[k, j]) - means[j] for j in range(d)] for k in range(n)]
        cov = [[sum(row[i] * row[j] for row in centred) / (n - 1) for j in range(d)] for i in range(d)]
        var = sum(max(0.0, 1.0 - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        off = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return var, off

    (v1, c1), (v2, c2) = var_cov(z1), var_cov(z2)
    return 25.0 * inv + 25.0 * (v1 + v2) / 2 + 1.0 * (c1 + c2)


def test_matches_loop_reference_without_and_with_projector() -> None:
    g = torch.Generator().manual_seed(11)
    y1 = 0.7 * torch.randn(10, 4, generator=g, dtype=torch.float64)
    y2 = y1 + 0.2 * torch.randn(10, 4, generator=g, dtype=torch.float64)
    y1[:, 3] = 3.0 * y1[:, 0] + 0.1 * y1[:, 3]  # a correlated, high-variance column: hinge partly inactive
    got = VICReg(4, proj_layers=0)(y1, y2)
    assert got.item() == pytest.approx(reference_vicreg(y1, y2), rel=1e-10)

    torch.manual_seed(0)
    model = VICReg(4, proj_dim=5, hidden_dim=6).double()
    got = model(y1, y2)
    with torch.no_grad():
        want = reference_vicreg(model.projector(y1), model.projector(y2))
    assert got.item() == pytest.approx(want, rel=1e-10)
    d = model.diagnostics
    recombined = 25 * d["vicreg/invariance"] + 25 * d["vicreg/variance"] + d["vicreg/covariance"]
    assert got.item() == pytest.approx(float(recombined), rel=1e-10)


def test_constant_embeddings_hand_computed() -> None:
    # Var = 0 -> each variance term is 1 - sqrt(1e-4) = 0.99; covariance 0; identical views: invariance 0.
    model = VICReg(6, proj_layers=0)
    z = torch.full((8, 6), 2.5, dtype=torch.float64)
    assert model(z, z).item() == pytest.approx(25 * 0.99, abs=1e-12)
    # Two different constants, 0 and 1: invariance mean((0 - 1)^2) = 1 adds 25.
    zeros, ones = torch.zeros(8, 6, dtype=torch.float64), torch.ones(8, 6, dtype=torch.float64)
    assert model(zeros, ones).item() == pytest.approx(25 * 1.0 + 25 * 0.99, abs=1e-12)


def test_spread_decorrelated_views_cost_nothing() -> None:
    # +-2 Hadamard columns: unbiased std 2 * sqrt(4/3) > 1 (hinge off), orthogonal (covariance 0).
    h = 2.0 * torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)[:, 1:]
    assert VICReg(3, proj_layers=0)(h, h).item() == pytest.approx(0.0, abs=1e-12)


def test_gradients_flow_and_bad_input_rejected() -> None:
    y1 = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    VICReg(4, proj_layers=0)(y1, torch.randn(8, 4, dtype=torch.float64)).backward()
    assert y1.grad is not None and torch.isfinite(y1.grad).all() and y1.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 2"):
        VICReg(4, proj_layers=0)(torch.ones(1, 4), torch.ones(1, 4))
    with pytest.raises(InputError, match="eps"):
        VICReg(4, eps=0.0)
    with pytest.raises(InputError, match="weights"):
        VICReg(4, var_weight=-1.0)
    assert OBJECTIVES.get("vicreg") is VICReg

"""SimSiam against a loop reference, including its gradients with and without stop-gradient."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.simsiam import SimSiam


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and unaffected by a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """(D(p1, t2) + D(p2, t1)) / 2 with D = -cos, written one sample at a time (differentiable)."""
    total = p1.new_zeros(())
    for i in range(p1.shape[0]):
        for p, t in ((p1[i], t2[i]), (p2[i], t1[i])):
            total = total - (p * t).sum() / (p.pow(2).sum().sqrt() * t.pow(2).sum().sqrt()) / 2
    return total / p1.shape[0]


def _setup(stop_gradient: bool) -> tuple[SimSiam, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = SimSiam(5, proj_dim=4, hidden_dim=6, pred_hidden=3, stop_gradient=stop_gradient).double()
    g = torch.Generator().manual_seed(3)
    y1 = torch.randn(8, 5, generator=g, dtype=torch.float64)
    return model, y1, y1 + 0.3 * torch.randn(8, 5, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_value_and_gradients_match_reference(stop_gradient: bool) -> None:
    model, y1, y2 = _setup(stop_gradient)
    got = model(y1, y2)
    got.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    z1, z2 = model.projector(y1), model.projector(y2)
    t1, t2 = (z1.detach(), z2.detach()) if stop_gradient else (z1, z2)
    want = reference_loss(model.predictor(z1), model.predictor(z2), t1, t2)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert -1.0 <= got.item() <= 1.0
    ref_grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(ref_grads)
    assert all(torch.allclose(a, b, rtol=1e-8, atol=1e-12) for a, b in zip(grads, ref_grads))


def test_stop_gradient_changes_the_projector_gradient() -> None:
    grads = []
    for flag in (True, False):
        model, y1, y2 = _setup(flag)
        model(y1, y2).backward()
        weight = dict(model.projector.named_parameters())["0.weight"]
        assert weight.grad is not None
        grads.append(weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_identical_views_after_predictor_reach_minus_one() -> None:
    # With p = z (identity-like predictor) and identical views the loss is exactly -1.
    model, y1, _ = _setup(True)
    model.predictor = torch.nn.Identity()
    assert model(y1, y1).item() == pytest.approx(-1.0, abs=1e-12)
    assert "simsiam/std" in model.diagnostics


def test_bad_input_rejected_and_registered() -> None:
    with pytest.raises(InputError, match="proj_layers"):
        SimSiam(5, proj_layers=0)
    with pytest.raises(ValueError, match="equal shape"):
        SimSiam(5, proj_dim=4, hidden_dim=6, pred_hidden=3)(torch.randn(4, 5), torch.randn(3, 5))
    assert OBJECTIVES.get("simsiam") is SimSiam

"""BYOL against a loop reference; stop-gradient, momentum helpers and input checks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import cast

import pytest
import torch
from torch import nn

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives._heads import cosine_momentum, make_target, mlp_head, momentum_update
from biossl.objectives.byol import BYOL


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and unaffected by a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def first_linear(head: nn.Module) -> nn.Linear:
    """The first layer of an MLP head."""
    layer = cast(nn.Sequential, head)[0]
    assert isinstance(layer, nn.Linear)
    return layer

def reference_nmse(p: torch.Tensor, t: torch.Tensor) -> float:
    """Batch mean of ||p/|p| - t/|t|||^2, one sample and one coordinate at a time."""
    total = 0.0
    for i in range(p.shape[0]):
        np_ = math.sqrt(sum(float(v) ** 2 for v in p[i]))
        nt = math.sqrt(sum(float(v) ** 2 for v in t[i]))
        total += sum((float(a) / np_ - float(b) / nt) ** 2 for a, b in zip(p[i], t[i]))
    return total / p.shape[0]


def _inputs(seed: int, n: int = 6, d: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(4)]


def test_matches_loop_reference() -> None:
    torch.manual_seed(0)
    byol = BYOL(5, proj_dim=3, hidden_dim=7).double()
    nn.init.normal_(first_linear(byol.target_projector).weight)  # make the target differ from the online
    o1, o2, t1, t2 = _inputs(1)
    got = byol(o1, o2, t1, t2)
    with torch.no_grad():
        p1, p2 = byol.predictor(byol.projector(o1)), byol.predictor(byol.projector(o2))
        z1, z2 = byol.target_projector(t1), byol.target_projector(t2)
    want = reference_nmse(p1, z2) + reference_nmse(p2, z1)
    assert got.item() == pytest.approx(want, rel=1e-10)
    assert 0.0 <= got.item() <= 8.0
    assert set(byol.diagnostics) == {"byol/std"}


def test_stop_gradient_blocks_target_branch_and_flag_opens_it() -> None:
    torch.manual_seed(0)
    o1, o2, t1, t2 = (x.requires_grad_() for x in _inputs(2))
    byol = BYOL(5, proj_dim=3, hidden_dim=7).double()
    byol(o1, o2, t1, t2).backward()
    assert t1.grad is None and t2.grad is None
    assert o1.grad is not None and o1.grad.abs().sum() > 0
    assert all(p.grad is None for p in byol.target_projector.parameters())
    assert all(p.grad is not None for p in byol.predictor.parameters())

    ablation = BYOL(5, proj_dim=3, hidden_dim=7, stop_gradient=False).double()
    ablation(o1, o2, t1, t2).backward()
    assert t1.grad is not None and t1.grad.abs().sum() > 0


def test_momentum_update_formula_and_target_copy() -> None:
    torch.manual_seed(0)
    online = mlp_head(4, 6, 3)
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    running = dict(online.named_buffers())["1.running_mean"]
    running.fill_(0.7)
    momentum_update(online, target, 0.9)
    for old, new, src in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * src)
    assert torch.equal(dict(target.named_buffers())["1.running_mean"], running)
    momentum_update(online, target, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters()))
    with pytest.raises(ValueError, match="momentum"):
        momentum_update(online, target, 1.5)
    with pytest.raises(ValueError, match="differ"):
        momentum_update(online, mlp_head(4, 6, 3, n_layers=3), 0.5)


def test_update_target_moves_only_the_target_projector() -> None:
    byol = BYOL(5, proj_dim=3, hidden_dim=7)
    online, target = first_linear(byol.projector), first_linear(byol.target_projector)
    with torch.no_grad():
        online.weight.add_(2.0)
    old = target.weight.clone()
    byol.update_target(0.75)
    assert torch.allclose(target.weight, 0.75 * old + 0.25 * online.weight)


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0, 100, base=0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, base=0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, base=0.99) == pytest.approx(1.0)
    assert cosine_momentum(500, 100, base=0.99) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cosine_momentum(0, 0)


def test_bad_input_rejected_and_registered() -> None:
    with pytest.raises(InputError, match="widths"):
        BYOL(0)
    byol = BYOL(5, proj_dim=3, hidden_dim=7)
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        byol(x, x, x, torch.randn(4, 6))
    with pytest.raises(ValueError, match="equal shape"):
        byol(x, x, x[:3], x[:3])
    with pytest.raises(ValueError, match="identity head"):
        mlp_head(4, 8, 3, n_layers=0)
    assert OBJECTIVES.get("byol") is BYOL

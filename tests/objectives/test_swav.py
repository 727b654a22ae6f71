"""SwAV against a slow hand-written Sinkhorn and swapped-prediction formula, in 1 and 2 processes."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.swav import SwAV, sinkhorn


def slow_sinkhorn(scores: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """The paper's Algorithm with plain Python loops: Q[k][b] = exp(s[b][k] / eps), alternate scalings."""
    n_b, n_k = len(scores), len(scores[0])
    q = [[math.exp(scores[b][k] / eps) for b in range(n_b)] for k in range(n_k)]
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        for k in range(n_k):
            r = sum(q[k])
            q[k] = [v / r / n_k for v in q[k]]
        for b in range(n_b):
            c = sum(q[k][b] for k in range(n_k))
            for k in range(n_k):
                q[k][b] = q[k][b] / c / n_b
    return [[q[k][b] * n_b for k in range(n_k)] for b in range(n_b)]


def fixed_scores(n: int = 6, k: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=1) @ (
        torch.nn.functional.normalize(torch.randn(k, 4, generator=g, dtype=torch.float64), dim=1).T
    )


def test_sinkhorn_matches_slow_reference_and_marginals() -> None:
    scores = fixed_scores()
    codes = sinkhorn(scores, epsilon=0.05, n_iters=3)
    ref = torch.tensor(slow_sinkhorn(scores.tolist(), 0.05, 3), dtype=torch.float64)
    assert torch.allclose(codes, ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(codes.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-12)  # each sample: 1
    assert not torch.allclose(codes.sum(0), torch.full((5,), 6 / 5, dtype=torch.float64), atol=1e-3)
    converged = sinkhorn(scores, epsilon=0.05, n_iters=500)  # equipartition: each prototype B / K
    assert torch.allclose(converged.sum(0), torch.full((5,), 6 / 5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(converged.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-12)


def test_sinkhorn_is_stable_for_large_scores() -> None:
    codes = sinkhorn(fixed_scores() * 1.0, epsilon=1e-3, n_iters=3)  # exp(1000) without the shift
    assert torch.isfinite(codes).all()


def explicit_loss(model: SwAV, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """-1/2 [q2 . log softmax(p1 / t) + q1 . log softmax(p2 / t)], q from the slow Sinkhorn (no gradient)."""
    w = torch.nn.functional.normalize(model.prototypes.weight, dim=1)
    p1 = torch.nn.functional.normalize(y1, dim=1) @ w.T
    p2 = torch.nn.functional.normalize(y2, dim=1) @ w.T
    q1 = torch.tensor(slow_sinkhorn(p1.tolist(), 0.05, 3), dtype=y1.dtype)
    q2 = torch.tensor(slow_sinkhorn(p2.tolist(), 0.05, 3), dtype=y1.dtype)
    total = y1.new_zeros(())
    for b in range(y1.shape[0]):
        lse1, lse2 = torch.logsumexp(p1[b] / 0.1, 0), torch.logsumexp(p2[b] / 0.1, 0)
        for k in range(w.shape[0]):
            total = total - 0.5 * (q2[b, k] * (p1[b, k] / 0.1 - lse1) + q1[b, k] * (p2[b, k] / 0.1 - lse2))
    return total / y1.shape[0]


def test_swapped_loss_and_gradient_match_explicit_formula() -> None:
    torch.manual_seed(0)
    model = SwAV(4, n_prototypes=5, proj_dim=4, n_proj_layers=0).double()
    with torch.no_grad():
        model.prototypes.weight.mul_(torch.arange(1, 6, dtype=torch.float64).unsqueeze(1))  # not unit norm
    g = torch.Generator().manual_seed(3)
    y1 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y2 = (y1.detach() + 0.3 * torch.randn(6, 4, generator=g, dtype=torch.float64)).requires_grad_()
    expected = explicit_loss(model, y1, y2)
    expected_grads = torch.autograd.grad(expected, [y1, y2])
    loss = model(y1, y2)
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(loss, expected, rtol=1e-10)
    grads = torch.autograd.grad(loss, [y1, y2])
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-12)
    assert model.diagnostics["swav/code_entropy"] > 0


def test_queue_joins_sinkhorn_once_full() -> None:
    torch.manual_seed(0)
    model = SwAV(4, n_prototypes=5, proj_dim=4, n_proj_layers=0, queue_size=6).double()
    plain = SwAV(4, n_prototypes=5, proj_dim=4, n_proj_layers=0).double()
    plain.prototypes.load_state_dict(model.prototypes.state_dict())
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 6, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    assert torch.allclose(model(*batches[0]), plain(*batches[0]))  # queue empty: not used
    assert torch.allclose(model.queue[0], torch.nn.functional.normalize(batches[0][0], dim=1))
    y1, y2 = batches[1]
    w = model.prototypes.weight
    s1 = torch.nn.functional.normalize(y1, dim=1) @ w.T
    queued = torch.cat([s1, model.queue[0] @ w.T])
    q1 = torch.tensor(slow_sinkhorn(queued.tolist(), 0.05, 3), dtype=torch.float64)[:6]
    assert torch.allclose(model._codes(s1, 0), q1, rtol=1e-10)
    assert not torch.allclose(model(y1, y2), plain(y1, y2))


def test_multicrop_and_validation() -> None:
    model = SwAV(4, n_prototypes=5, proj_dim=8, hidden_dim=8)
    views = [torch.randn(3, 4) for _ in range(4)]
    assert model(*views).ndim == 0
    assert isinstance(OBJECTIVES.build("swav", dim=4, n_prototypes=5, hidden_dim=8), SwAV)
    for bad in ({"temperature": 0.0}, {"epsilon": -1.0}, {"n_prototypes": 0}, {"queue_size": -1}):
        with pytest.raises(InputError):
            SwAV(4, **bad)
    with pytest.raises(ValueError, match="swav needs"):
        model(torch.randn(3, 4), torch.randn(2, 4))


N, SPLIT = 8, [5, 3]


def swav_case() -> tuple[SwAV, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = SwAV(4, n_prototypes=5, proj_dim=6, hidden_dim=6, n_proj_layers=1).double()
    g = torch.Generator().manual_seed(2)
    y1 = torch.randn(N, 4, generator=g, dtype=torch.float64)
    return model, y1, y1 + 0.3 * torch.randn(N, 4, generator=g, dtype=torch.float64)


def worker(rank: int, init_file: str, out_dir: str) -> None:
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        scores = fixed_scores(N, 5)
        rows = slice(sum(SPLIT[:rank]), sum(SPLIT[: rank + 1]))
        codes = sinkhorn(scores[rows], epsilon=0.05, n_iters=3)
        torch.save(codes, Path(out_dir) / f"codes_{rank}.pt")
        model, y1, y2 = swav_case()
        loss = model(y1[rows], y2[rows])
        loss.backward()
        assert model.prototypes.weight.grad is not None
        grad = model.prototypes.weight.grad.clone()
        dist.all_reduce(grad)  # DDP averages gradients over ranks
        torch.save({"loss": loss.detach(), "grad": grad / 2}, Path(out_dir) / f"loss_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sinkhorn_and_loss_two_processes_equal_one(tmp_path: Path, two_processes: Any) -> None:
    two_processes(__file__, tmp_path)
    got = torch.cat([torch.load(tmp_path / f"codes_{r}.pt") for r in range(2)])
    assert torch.allclose(got, sinkhorn(fixed_scores(N, 5), epsilon=0.05, n_iters=3), rtol=1e-12, atol=1e-14)
    model, y1, y2 = swav_case()
    loss = model(y1, y2)
    loss.backward()
    for rank in range(2):
        shares = torch.load(tmp_path / f"loss_{rank}.pt")
        assert torch.allclose(shares["loss"], loss.detach(), rtol=1e-12)
        assert model.prototypes.weight.grad is not None and model.prototypes.weight.grad.abs().max() > 0
        assert torch.allclose(shares["grad"], model.prototypes.weight.grad, rtol=1e-9, atol=1e-13)

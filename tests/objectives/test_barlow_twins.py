"""Barlow Twins against an explicit-sum reference and closed forms (constant and whitened embeddings).

Also the 2-process (gloo) checks of the global-batch objectives: Barlow Twins, VICReg, MoCo's queue.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.barlow_twins import BarlowTwins
from biossl.objectives.moco import MoCo
from biossl.objectives.vicreg import VICReg


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and unaffected by a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_bt(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float = 1e-5) -> float:
    """Standardise each column with the biased variance, then sum (1 - C_ii)^2 + lambda * C_ij^2 by loops."""
    n, d = z1.shape

    def standardise(z: torch.Tensor) -> list[list[float]]:
        cols = []
        for j in range(d):
            col = [float(z[i, j]) for i in range(n)]
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / n
            cols.append([(v - mean) / math.sqrt(var + eps) for v in col])
        return cols

    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1.0 - c) ** 2 if i == j else lambd * c**2
    return loss


def test_matches_loop_reference_without_and_with_projector() -> None:
    g = torch.Generator().manual_seed(7)
    y1 = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y2 = y1 + 0.5 * torch.randn(9, 4, generator=g, dtype=torch.float64)
    plain = BarlowTwins(4, proj_layers=0, lambd=0.3)
    assert plain(y1, y2).item() == pytest.approx(reference_bt(y1, y2, 0.3), rel=1e-10)
    assert plain(y1, y2).item() == pytest.approx(plain(y2, y1).item(), rel=1e-10)

    torch.manual_seed(0)
    bt = BarlowTwins(4, proj_dim=6, hidden_dim=5).double()
    got = bt(y1, y2)
    with torch.no_grad():
        want = reference_bt(bt.projector(y1), bt.projector(y2), 0.0051)
    assert got.item() == pytest.approx(want, rel=1e-10)
    assert got.item() == pytest.approx(
        float(bt.diagnostics["barlow_twins/on_diag"] + 0.0051 * bt.diagnostics["barlow_twins/off_diag"]), rel=1e-10
    )


def test_constant_embeddings_cost_exactly_d() -> None:
    # Constant columns standardise to 0, so C = 0: every diagonal term is (1 - 0)^2 and off-diagonals vanish.
    bt = BarlowTwins(6, proj_layers=0)
    z1 = torch.full((8, 6), 3.0, dtype=torch.float64)
    z2 = torch.full((8, 6), -1.5, dtype=torch.float64)
    assert bt(z1, z2).item() == 6.0
    assert bt(z1, z1).item() == 6.0


def test_whitened_identical_views_cost_almost_nothing() -> None:
    # Columns of a 4x4 Hadamard matrix without the constant one: zero mean, biased variance 1, orthogonal.
    # Then C = I / (1 + eps) and L = 3 * (eps / (1 + eps))^2.
    h = torch.tensor(
        [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64
    )[:, 1:]
    eps = 1e-5
    got = BarlowTwins(3, proj_layers=0, eps=eps)(h, h)
    assert got.item() == pytest.approx(3 * (eps / (1 + eps)) ** 2, rel=1e-9)
    # Swapping two columns in one view moves mass off the diagonal: 2 diagonal misses, 2 off-diagonal hits.
    swapped = h[:, [1, 0, 2]]
    want = 2 * 1.0 + 1 * (1 - 1 / (1 + eps)) ** 2 + 0.0051 * 2 * (1 / (1 + eps)) ** 2
    assert BarlowTwins(3, proj_layers=0, eps=eps)(h, swapped).item() == pytest.approx(want, rel=1e-9)


def test_gradients_flow_and_bad_input_rejected() -> None:
    y1 = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    BarlowTwins(4, proj_layers=0)(y1, torch.randn(8, 4, dtype=torch.float64)).backward()
    assert y1.grad is not None and torch.isfinite(y1.grad).all() and y1.grad.abs().sum() > 0
    with pytest.raises(InputError, match="lambd"):
        BarlowTwins(4, lambd=-1.0)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        BarlowTwins(4, proj_layers=0)(torch.ones(3, 5), torch.ones(3, 5))
    assert OBJECTIVES.get("barlow_twins") is BarlowTwins


# --- Real 2-process (gloo, CPU) run: Barlow Twins and VICReg on a split batch equal one process; MoCo's
# queue receives both ranks' keys in rank order and stays identical on every rank. One spawn for all.

SPLIT = [5, 3]  # unequal on purpose


def _dist_case(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    loss: nn.Module = BarlowTwins(4, proj_layers=0) if name == "bt" else VICReg(4, proj_layers=0)
    model = nn.ModuleDict({"enc": nn.Linear(6, 4), "loss": loss}).double()
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(8, 6, generator=g, dtype=torch.float64)
    return model, x1, x1 + 0.3 * torch.randn(8, 6, generator=g, dtype=torch.float64)


def _dist_loss(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    enc, loss = cast(nn.ModuleDict, model)["enc"], cast(nn.ModuleDict, model)["loss"]
    return loss(enc(x1), enc(x2))


def worker(rank: int, init_file: str, out_dir: str) -> None:
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = slice(sum(SPLIT[:rank]), sum(SPLIT[: rank + 1]))
        for name in ("bt", "vicreg"):
            model, x1, x2 = _dist_case(name)
            loss = _dist_loss(model, x1[rows], x2[rows])
            loss.backward()
            grads = {}
            for key, p in model.named_parameters():  # DDP's gradient averaging
                grad = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                dist.all_reduce(grad)
                grads[key] = grad / 2
            torch.save({"loss": loss.detach(), "grads": grads}, Path(out_dir) / f"{name}_{rank}.pt")
        torch.manual_seed(0)
        moco = MoCo(6, proj_dim=3, hidden_dim=5, queue_size=20).double()
        _, x1, x2 = _dist_case("bt")
        moco(x1[rows], x2[rows], x1[rows], x2[rows])
        with torch.no_grad():
            keys = torch.cat([F.normalize(moco.target_projector(x[rows]), dim=1) for x in (x1, x2)])
        torch.save({"queue": moco.queue.clone(), "keys": keys}, Path(out_dir) / f"moco_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory, two_processes: Any) -> Path:
    out = tmp_path_factory.mktemp("ddp_bt")
    two_processes(__file__, out)
    return out


@pytest.mark.parametrize("name", ["bt", "vicreg"])
def test_two_processes_equal_one_process(distributed_results: Path, name: str) -> None:
    model, x1, x2 = _dist_case(name)
    loss = _dist_loss(model, x1, x2)
    loss.backward()
    for rank in range(2):
        got = torch.load(distributed_results / f"{name}_{rank}.pt")
        assert torch.allclose(got["loss"], loss.detach(), rtol=1e-10), (rank, got["loss"], loss)
        for key, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().max() > 0
            assert torch.allclose(got["grads"][key], p.grad, rtol=1e-9, atol=1e-12), (rank, key)


def test_moco_queue_gets_all_ranks_keys(distributed_results: Path) -> None:
    r0, r1 = (torch.load(distributed_results / f"moco_{rank}.pt") for rank in range(2))
    assert torch.equal(r0["queue"], r1["queue"])
    expected = torch.cat([r0["keys"], r1["keys"]])  # rank 0's [k1; k2] then rank 1's
    assert torch.allclose(r0["queue"][: expected.shape[0]], expected)

"""MoCo against a loop reference; the queue's FIFO behaviour; stop-gradient on keys."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import cast

import pytest
import torch
import torch.nn.functional as F

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.moco import MoCo


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and unaffected by a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> float:
    """Mean over queries of -log softmax of the positive among [k_i, queue...], one entry at a time."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = sum(float(a) * float(b) for a, b in zip(q[i], k[i])) / tau
        negs = [sum(float(a) * float(b) for a, b in zip(q[i], row)) / tau for row in queue]
        total += -pos + math.log(math.exp(pos) + sum(math.exp(s) for s in negs))
    return total / q.shape[0]


def _moco(symmetric: bool = True, queue_size: int = 10) -> MoCo:
    torch.manual_seed(0)
    moco = MoCo(5, proj_dim=3, hidden_dim=7, queue_size=queue_size, temperature=0.2, symmetric=symmetric).double()
    layer = cast(torch.nn.Sequential, moco.target_projector)[0]
    assert isinstance(layer, torch.nn.Linear)
    torch.nn.init.normal_(layer.weight)
    return moco


def _inputs(seed: int, n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 5, generator=g, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_loop_reference(symmetric: bool) -> None:
    moco = _moco(symmetric)
    o1, o2, t1, t2 = _inputs(1)
    queue = moco.queue.clone()
    got = moco(o1, o2, t1, t2)
    with torch.no_grad():
        q1, q2 = (F.normalize(moco.projector(o), dim=1) for o in (o1, o2))
        k1, k2 = (F.normalize(moco.target_projector(t), dim=1) for t in (t1, t2))
    want = reference_infonce(q1, k2, queue, 0.2)
    if symmetric:
        want = (want + reference_infonce(q2, k1, queue, 0.2)) / 2
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_queue_is_fifo_of_keys_and_used_next_step() -> None:
    moco = _moco(symmetric=True, queue_size=10)
    assert torch.allclose(moco.queue.norm(dim=1), torch.ones(10, dtype=torch.float64))
    o1, o2, t1, t2 = _inputs(2)
    moco(o1, o2, t1, t2)
    with torch.no_grad():
        k1, k2 = (F.normalize(moco.target_projector(t), dim=1) for t in (t1, t2))
    assert torch.allclose(moco.queue[:8], torch.cat([k1, k2]))
    assert int(moco.queue_ptr) == 8
    # The second step's negatives are the first step's keys: the loss uses the updated queue.
    queue = moco.queue.clone()
    o1b, o2b, t1b, t2b = _inputs(3)
    got = moco(o1b, o2b, t1b, t2b)
    with torch.no_grad():
        q1, q2 = (F.normalize(moco.projector(o), dim=1) for o in (o1b, o2b))
        k1b, k2b = (F.normalize(moco.target_projector(t), dim=1) for t in (t1b, t2b))
    want = (reference_infonce(q1, k2b, queue, 0.2) + reference_infonce(q2, k1b, queue, 0.2)) / 2
    assert got.item() == pytest.approx(want, rel=1e-10)
    # Wrap-around: 8 new keys go to rows 8, 9, 0, ..., 5.
    assert int(moco.queue_ptr) == 6
    assert torch.allclose(moco.queue[8:], torch.cat([k1b, k2b])[:2])
    assert torch.allclose(moco.queue[:6], torch.cat([k1b, k2b])[2:])


def test_eval_mode_leaves_queue_alone_and_keys_get_no_gradient() -> None:
    moco = _moco()
    o1, o2, t1, t2 = (x.requires_grad_() for x in _inputs(4))
    moco.eval()
    before = moco.queue.clone()
    moco(o1, o2, t1, t2).backward()
    assert torch.equal(moco.queue, before) and int(moco.queue_ptr) == 0
    assert t1.grad is None and t2.grad is None
    assert o1.grad is not None and o1.grad.abs().sum() > 0
    assert all(p.grad is None for p in moco.target_projector.parameters())


def test_training_backward_after_enqueue_works() -> None:
    moco = _moco(queue_size=3)  # more keys (8) than queue rows: the newest 3 are kept
    o1, o2, t1, t2 = (x.requires_grad_() for x in _inputs(5))
    loss = moco(o1, o2, t1, t2)
    loss.backward()  # the in-place enqueue must not invalidate the autograd graph
    with torch.no_grad():
        k2 = F.normalize(moco.target_projector(t2), dim=1)
    assert torch.allclose(moco.queue, k2[1:])
    assert set(moco.diagnostics) == {"moco/pos_sim", "moco/neg_sim"}


def test_bad_input_rejected_and_registered() -> None:
    with pytest.raises(InputError, match="temperature"):
        MoCo(5, temperature=0.0)
    with pytest.raises(InputError, match="queue_size"):
        MoCo(5, queue_size=0)
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match="equal shape"):
        MoCo(5, proj_dim=3, hidden_dim=7)(x, x, x, x[:2])
    assert OBJECTIVES.get("moco") is MoCo

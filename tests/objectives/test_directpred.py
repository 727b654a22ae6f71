"""DirectPred: correlation EMA, eigen-rule predictor against a hand-built reference, update cadence."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.directpred import DirectPred, EigenPredictor


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and unaffected by a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_predictor(corr: np.ndarray, alpha: float, eps: float) -> np.ndarray:
    """Sum over eigenpairs of ((s_j / s_max) ** alpha + eps) u_j u_j^T, one pair at a time."""
    s, u = np.linalg.eigh(corr)
    s = np.clip(s, 0.0, None)
    w = np.zeros_like(corr)
    for j in range(len(s)):
        w += ((s[j] / s.max()) ** alpha + eps) * np.outer(u[:, j], u[:, j])
    return w


def _batches(n_batches: int, d: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    scale = torch.tensor([3.0, 1.0, 0.5, 0.1])[:d]
    return [torch.randn(16, d, generator=g, dtype=torch.float64) * scale for _ in range(n_batches)]


def test_correlation_ema_and_eigen_rule() -> None:
    pred = EigenPredictor(4, rho=0.3, update_every=1, alpha=0.5, eps=0.1).double()
    f1, f2 = _batches(2)
    pred.observe(f1)
    c1 = f1.numpy().T @ f1.numpy() / 16
    assert np.allclose(pred.corr.numpy(), c1)
    pred.observe(f2)
    c2 = 0.3 * c1 + 0.7 * f2.numpy().T @ f2.numpy() / 16
    assert np.allclose(pred.corr.numpy(), c2)
    assert np.allclose(pred.weight.numpy(), reference_predictor(c2, 0.5, 0.1))
    # On an eigenvector the predictor scales by sqrt(s_j / s_max) + eps.
    s, u = np.linalg.eigh(c2)
    out = pred(torch.from_numpy(u.T.copy())).numpy()
    for j in range(4):
        assert np.allclose(out[j], (math.sqrt(s[j] / s.max()) + 0.1) * u[:, j])


def test_predictor_recomputed_every_k_steps_only() -> None:
    pred = EigenPredictor(4, rho=0.5, update_every=3, alpha=0.5, eps=0.0).double()
    assert torch.equal(pred.weight, torch.eye(4, dtype=torch.float64))  # identity before any step
    weights = []
    for f in _batches(4):
        pred.observe(f)
        weights.append(pred.weight.clone())
    assert not torch.equal(weights[0], torch.eye(4, dtype=torch.float64))
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[1], weights[2])
    assert not torch.equal(weights[2], weights[3])  # step 3 refreshes
    assert np.allclose(weights[3].numpy(), reference_predictor(pred.corr.numpy(), 0.5, 0.0))


def test_loss_uses_set_predictor_and_eval_mode_freezes_it() -> None:
    torch.manual_seed(0)
    model = DirectPred(5, proj_dim=4, hidden_dim=6, eps=0.2).double()
    assert all("predictor" not in name for name, _ in model.named_parameters())
    g = torch.Generator().manual_seed(2)
    o1, o2, t1, t2 = (torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(4))
    loss = model(o1, o2, t1, t2)
    with torch.no_grad():
        z1, z2 = model.projector(o1), model.projector(o2)
        corr = (torch.cat([z1, z2]).T @ torch.cat([z1, z2]) / 16).numpy()
        w = torch.from_numpy(reference_predictor(corr, 0.5, 0.2))
        y1, y2 = model.target_projector(t1), model.target_projector(t2)

    def nmse(p: torch.Tensor, t: torch.Tensor) -> float:
        return float(sum(2 - 2 * (p[i] @ t[i]) / (p[i].norm() * t[i].norm()) for i in range(8)) / 8)

    assert loss.item() == pytest.approx(nmse(z1 @ w, y2) + nmse(z2 @ w, y1), rel=1e-9)
    model.eval()
    predictor = model.predictor
    assert isinstance(predictor, EigenPredictor)
    before = predictor.corr.clone()
    model(o1, o2, t1, t2)
    assert torch.equal(predictor.corr, before) and int(predictor.steps) == 1
    assert "directpred/std" in model.diagnostics


def test_bad_input_rejected_and_registered() -> None:
    with pytest.raises(InputError, match="rho"):
        DirectPred(5, rho=1.0)
    with pytest.raises(InputError, match="update_every"):
        DirectPred(5, update_every=0)
    assert OBJECTIVES.get("directpred") is DirectPred

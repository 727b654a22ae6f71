"""Heads and losses: each loss against a slow hand-written reference; fits against lifelines / scikit-learn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from biossl.downstream.heads import (
    CoxHead,
    DiscreteTimeHead,
    SubtypeHead,
    cox_ph_loss,
    discrete_time_nll,
    survival_bin_edges,
    to_bins,
)
from biossl.downstream.methods import fit_head
from biossl.errors import InputError


def cox_breslow_reference(risk: torch.Tensor, time: list[float], event: list[int]) -> torch.Tensor:
    """-(1/n_events) sum over events of [r_i - log sum_{j: t_j >= t_i} exp(r_j)], one patient at a time."""
    terms = []
    for i in range(len(time)):
        if event[i]:
            at_risk = [torch.exp(risk[j]) for j in range(len(time)) if time[j] >= time[i]]
            terms.append(risk[i] - torch.log(torch.stack(at_risk).sum()))
    return -torch.stack(terms).sum() / len(terms)


def discrete_reference(logits: torch.Tensor, bins: list[int], event: list[int]) -> torch.Tensor:
    """Likelihood written out: S(y-1) * h_y for an event in bin y, S(y) for a patient censored in bin y."""
    total = []
    for i, y in enumerate(bins):
        h = [torch.sigmoid(logits[i, j]) for j in range(logits.shape[1])]
        lik = torch.ones((), dtype=logits.dtype)
        for j in range(y):
            lik = lik * (1 - h[j])
        lik = lik * (h[y] if event[i] else 1 - h[y])
        total.append(-torch.log(lik))
    return torch.stack(total).mean()


TIME = [5.0, 3.0, 3.0, 8.0, 1.0, 3.0, 8.0, 2.0, 6.0, 4.0]  # ties at 3 (event+event+censored) and at 8
EVENT = [1, 1, 1, 0, 1, 0, 1, 0, 0, 1]


def test_cox_loss_matches_breslow_reference_with_ties_values_and_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    risk = torch.randn(len(TIME), generator=gen, dtype=torch.float64, requires_grad=True)
    fast = cox_ph_loss(risk, torch.tensor(TIME, dtype=torch.float64), torch.tensor(EVENT))
    (g_fast,) = torch.autograd.grad(fast, risk)
    slow = cox_breslow_reference(risk, TIME, EVENT)
    (g_slow,) = torch.autograd.grad(slow, risk)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-12)
    assert torch.allclose(g_fast, g_slow, atol=1e-12)
    # Shuffling the patients changes nothing.
    perm = torch.randperm(len(TIME), generator=gen)
    shuffled = cox_ph_loss(risk[perm], torch.tensor(TIME, dtype=torch.float64)[perm], torch.tensor(EVENT)[perm])
    assert shuffled.item() == pytest.approx(fast.item(), rel=1e-12)


def test_cox_loss_without_events_is_zero() -> None:
    risk = torch.tensor([0.3, -1.0], requires_grad=True)
    loss = cox_ph_loss(risk, torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(risk.grad, torch.zeros(2))


def test_discrete_time_nll_matches_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(len(TIME), 4, generator=gen, dtype=torch.float64)
    bins = [0, 1, 1, 3, 0, 1, 3, 0, 2, 2]
    fast = discrete_time_nll(logits, torch.tensor(bins), torch.tensor(EVENT))
    assert fast.item() == pytest.approx(discrete_reference(logits, bins, EVENT).item(), rel=1e-12)


def test_bins_from_training_event_times_of_the_demo(demo_cohort: Path) -> None:
    labels = pd.read_csv(demo_cohort / "labels.csv")
    time, event = labels["time"].to_numpy(), labels["event"].to_numpy()
    edges = survival_bin_edges(time, event, 4)
    assert len(edges) == 3 and np.all(np.diff(edges) > 0)
    bins = to_bins(time, edges).numpy()
    assert bins.min() == 0 and bins.max() == 3
    # The 8 real event times fall 2 per bin (quantile bins of event times).
    assert np.bincount(bins[event == 1], minlength=4).tolist() == [2, 2, 2, 2]
    # A time equal to an edge opens the next bin; censored times past the last edge go to the last bin.
    assert to_bins(np.array([edges[0], 1e9]), edges).tolist() == [1, 3]
    # One event: every quantile is that time, merged into a single edge.
    assert survival_bin_edges(np.array([3.0, 5.0]), np.array([1, 0]), 4).tolist() == [3.0]
    with pytest.raises(InputError, match="no event"):
        survival_bin_edges(time, np.zeros_like(event), 4)


def test_discrete_head_risk_rises_with_hazard() -> None:
    head = DiscreteTimeHead(3, [1.0, 2.0])
    out = torch.tensor([[-2.0, -2.0, -2.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    risk = head.predict(out)
    assert risk.shape == (3,) and risk[0] < risk[1] < risk[2]
    target = {"time": torch.tensor([0.5, 1.5, 9.0]), "event": torch.tensor([1.0, 0.0, 1.0])}
    expected = discrete_time_nll(out, torch.tensor([0, 1, 2]), target["event"])
    assert head.loss(out, target).item() == pytest.approx(expected.item())


def test_subtype_head_loss_and_probabilities() -> None:
    head = SubtypeHead(5, 3, class_weight=torch.tensor([1.0, 2.0, 0.5]))
    gen = torch.Generator().manual_seed(2)
    out = torch.randn(6, 3, generator=gen)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    assert head.loss(out, {"y": y}).item() == pytest.approx(
        F.cross_entropy(out, y, weight=torch.tensor([1.0, 2.0, 0.5])).item())
    proba = head.predict(out)
    assert proba.shape == (6, 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert SubtypeHead(5, 3, hidden=8)(torch.zeros(2, 5)).shape == (2, 3)
    with pytest.raises(InputError, match="at least 2 classes"):
        SubtypeHead(5, 1)


@pytest.fixture(scope="module")
def demo_pcs(demo_cohort: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Three principal components of the demo's real expression table, with its labels."""
    expression = pd.read_csv(demo_cohort / "expression.csv", index_col="patient_id")
    labels = pd.read_csv(demo_cohort / "labels.csv", index_col="patient_id").loc[expression.index]
    x = expression.to_numpy(dtype=np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :3] * s[:3] / np.sqrt(len(x)), labels


def test_unpenalised_cox_head_finds_lifelines_coefficients(demo_pcs: tuple[np.ndarray, pd.DataFrame]) -> None:
    from lifelines import CoxPHFitter

    z, labels = demo_pcs  # no tied times in the demo: Breslow = Efron
    assert not labels["time"].duplicated().any()
    frame = pd.DataFrame(z, columns=["a", "b", "c"]).assign(time=labels["time"].to_numpy(),
                                                           event=labels["event"].to_numpy())
    reference = CoxPHFitter(penalizer=0.0).fit(frame, "time", "event").params_.to_numpy()
    head = CoxHead(3).double()
    target = {"time": torch.tensor(labels["time"].to_numpy()), "event": torch.tensor(labels["event"].to_numpy())}
    fit_head(head, torch.from_numpy(z), target, l2=0.0)
    assert np.allclose(head.body.weight.detach().numpy().ravel(), reference, atol=1e-4)


def test_linear_subtype_head_matches_scikit_learn_logistic_regression(
        demo_pcs: tuple[np.ndarray, pd.DataFrame]) -> None:
    from sklearn.linear_model import LogisticRegression

    z, labels = demo_pcs
    y = (labels["subtype"] == "PRCC").to_numpy().astype(int)
    c = 0.5
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(z, y).predict_proba(z)
    # sklearn: C * sum(CE) + |w|^2 / 2. Two softmax weight rows at the optimum are w/2 and -w/2, so the
    # same optimum is mean(CE) + l2/2 (|w0|^2 + |w1|^2) with l2 = 2 / (C n).
    head = SubtypeHead(3, 2).double()
    fit_head(head, torch.from_numpy(z), {"y": torch.from_numpy(y)}, l2=2.0 / (c * len(y)))
    with torch.no_grad():
        ours = head.predict(head(torch.from_numpy(z)))
    assert np.allclose(ours, reference, atol=1e-4)
    assert not math.isnan(float(ours.sum()))

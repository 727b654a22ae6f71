"""Pseudo-label loss against a slow row-by-row reference; the threshold is applied exactly."""

from __future__ import annotations

import math

import pytest
import torch

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.pseudo_label import PseudoLabelLoss


def slow_reference(
    logits: list[list[float]], labels: list[int], weak: list[list[float]], tau: float, lam: float
) -> tuple[float, float]:
    """Row-by-row: mean CE over labelled rows + lam * sum of kept CE / number of unlabelled rows."""

    def log_softmax(row: list[float]) -> list[float]:
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        return [v - lse for v in row]

    sup, n_lab, unsup, n_unlab, kept = 0.0, 0, 0.0, 0, 0
    for row, label, weak_row in zip(logits, labels, weak):
        if label >= 0:
            sup -= log_softmax(row)[label]
            n_lab += 1
            continue
        n_unlab += 1
        probs = [math.exp(v) for v in log_softmax(weak_row)]
        best = max(range(len(probs)), key=lambda c: probs[c])
        if probs[best] >= tau:
            unsup -= log_softmax(row)[best]
            kept += 1
    return sup / max(n_lab, 1) + lam * unsup / max(n_unlab, 1), kept / max(n_unlab, 1)


def confident_logits(confidence: float, cls: int, n_classes: int = 3) -> list[float]:
    """Logits whose softmax gives ``confidence`` to ``cls`` and splits the rest evenly."""
    rest = (1 - confidence) / (n_classes - 1)
    return [math.log(confidence if c == cls else rest) for c in range(n_classes)]


def test_matches_slow_reference_with_weak_view() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, -1, -1, 1, -1, -1, -1])
    rows = {2: (0.97, 1), 3: (0.90, 0), 5: (0.99, 2), 6: (0.949, 0), 7: (0.96, 1)}  # unlabelled rows
    weak = torch.tensor(
        [confident_logits(*rows[r]) if r in rows else [0.0] * 3 for r in range(8)], dtype=torch.float64
    )
    loss_fn = PseudoLabelLoss(threshold=0.95, weight=0.5)
    loss = loss_fn(logits, labels, weak)
    expected, used = slow_reference(logits.tolist(), labels.tolist(), weak.tolist(), 0.95, 0.5)
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    assert math.isclose(float(loss_fn.diagnostics["pseudo_label/used_fraction"]), used, abs_tol=1e-6)
    assert used == 3 / 5  # 0.97, 0.99 and 0.96 pass; 0.90 and 0.949 do not
    loss.backward()
    assert logits.grad is not None
    for row in (3, 6):  # below the threshold: exactly no gradient
        assert torch.equal(logits.grad[row], torch.zeros(3, dtype=torch.float64))


def test_rows_below_threshold_are_ignored_exactly() -> None:
    labels = torch.tensor([1, -1, -1])
    logits = torch.tensor([[0.2, 1.0], [3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    loss_fn = PseudoLabelLoss(threshold=0.9, weight=1.0)
    with_low = loss_fn(logits, labels)  # row 2 has confidence 0.62: ignored
    changed = logits.clone()
    changed[2] = torch.tensor([0.3, 0.0])  # still below the threshold, other values
    assert torch.equal(loss_fn(changed, labels), with_low)
    sup = torch.nn.functional.cross_entropy(logits[:1], labels[:1])
    unsup = torch.nn.functional.cross_entropy(logits[1:2], torch.tensor([0])) / 2  # / all unlabelled rows
    assert torch.allclose(with_low, sup + unsup, rtol=1e-12)
    only_sup = PseudoLabelLoss(threshold=1.0)(logits, labels)
    assert torch.allclose(only_sup, sup)


def test_all_labelled_all_unlabelled_and_validation() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 4.0]])
    labelled = PseudoLabelLoss()(logits, torch.tensor([0, 1]))
    assert torch.allclose(labelled, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])))
    loss_fn = PseudoLabelLoss(threshold=0.5, unlabelled=-100)
    unlabelled = loss_fn(logits, torch.tensor([-100, -100]))
    assert torch.allclose(unlabelled, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])))
    assert float(loss_fn.diagnostics["pseudo_label/used_fraction"]) == 1.0
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        PseudoLabelLoss()(logits, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="weak_logits"):
        PseudoLabelLoss()(logits, torch.tensor([0, 1]), torch.zeros(2, 3))
    for bad in ({"threshold": 1.5}, {"weight": -1.0}):
        with pytest.raises(InputError):
            PseudoLabelLoss(**bad)  # type: ignore[arg-type]
    assert isinstance(OBJECTIVES.build("pseudo_label", threshold=0.8), PseudoLabelLoss)

"""BERT-style selection, 80/10/10 corruption and masked losses."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from biossl.objectives import OBJECTIVES
from biossl.objectives.masked_tokens import MaskedTokens, select_positions


def test_select_counts_and_validity() -> None:
    torch.manual_seed(0)
    valid = torch.zeros(4, 100, dtype=torch.bool)
    valid[0] = True
    valid[1, :40] = True
    valid[2, :3] = True  # 0.45 rounds to 0 -> at least one
    sel = select_positions(valid, 0.15)
    assert sel.sum(1).tolist() == [15, 6, 1, 0]
    assert not (sel & ~valid).any()


def test_corruption_follows_80_10_10() -> None:
    torch.manual_seed(0)
    obj = OBJECTIVES.build("masked_tokens", mask_ratio=0.5)
    assert isinstance(obj, MaskedTokens)
    tokens = torch.randint(1, 6, (200, 500))
    sel = obj.select(torch.ones_like(tokens, dtype=torch.bool))
    out = obj.corrupt_tokens(tokens, sel, mask_token=6, random_low=1, random_high=6)
    assert torch.equal(out[~sel], tokens[~sel])
    frac_mask = (out[sel] == 6).float().mean().item()
    frac_same = (out[sel] == tokens[sel]).float().mean().item()
    assert frac_mask == pytest.approx(0.8, abs=0.01)
    assert frac_same == pytest.approx(0.1 + 0.1 / 5, abs=0.01)  # kept + random that hit the same id
    assert out.min() >= 1 and out.max() <= 6


def test_losses_use_selected_positions_only() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 10, 7, requires_grad=True)
    targets = torch.randint(1, 6, (3, 10))
    sel = torch.zeros(3, 10, dtype=torch.bool)
    sel[0, 2] = sel[2, 7] = True
    loss = MaskedTokens.classification_loss(logits, targets, sel)
    ref = F.cross_entropy(torch.stack([logits[0, 2], logits[2, 7]]), torch.stack([targets[0, 2], targets[2, 7]]))
    assert loss.item() == pytest.approx(ref.item())
    loss.backward()
    assert logits.grad is not None
    assert (logits.grad[~sel] == 0).all() and (logits.grad[sel] != 0).any()
    pred = torch.zeros(3, 10)
    assert MaskedTokens.regression_loss(pred, torch.ones(3, 10) * 2, sel).item() == pytest.approx(4.0)
    assert MaskedTokens.regression_loss(pred, pred, torch.zeros_like(sel)).item() == 0.0


def test_bad_ratios() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedTokens(mask_ratio=0.0)
    with pytest.raises(ValueError, match="sum <= 1"):
        MaskedTokens(mask_prob=0.9, random_prob=0.2)

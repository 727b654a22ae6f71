"""CLIPLoss / MultiModalCLIP in one process: values, masking, symmetry, temperature."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from biossl.distributed import gather_with_grad, rank, world_size
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.clip import CLIPLoss, MultiModalCLIP


def reference_clip(a: torch.Tensor, b: torch.Tensor, valid: list[bool], scale: float) -> float:
    """Slow, loop-by-loop symmetric InfoNCE over the valid patients only."""
    idx = [i for i, v in enumerate(valid) if v]

    def unit(v: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    an = {i: unit(a[i].tolist()) for i in idx}
    bn = {i: unit(b[i].tolist()) for i in idx}
    total = 0.0
    for q, k in ((an, bn), (bn, an)):
        for i in idx:
            logits = {j: scale * sum(x * y for x, y in zip(q[i], k[j])) for j in idx}
            total -= logits[i] - math.log(sum(math.exp(v) for v in logits.values()))
    return total / (2 * len(idx))


def fixed(n: int = 7, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(
        n, d, generator=g, dtype=torch.float64
    )


VALID = [True, False, True, True, False, True, True]


def test_matches_loop_reference_with_invalid_patients() -> None:
    a, b = fixed()
    loss = CLIPLoss().double()
    got = loss(a, b, torch.tensor(VALID))
    scale = loss.logit_scale.exp().item()  # 1 / 0.07 rounded to float32, as initialised
    assert scale == pytest.approx(1 / 0.07)
    assert got.item() == pytest.approx(reference_clip(a, b, VALID, scale), rel=1e-12)
    assert loss.last_n_valid == 5
    all_valid = loss(a, b)
    assert all_valid.item() == pytest.approx(reference_clip(a, b, [True] * 7, scale), rel=1e-12)
    assert all_valid.item() != pytest.approx(got.item())


def test_closed_form_for_orthonormal_pairs() -> None:
    # a_i = b_i = e_i: every positive logit is s, every negative 0 -> log(1 + (n - 1) exp(-s)).
    eye = torch.eye(4, dtype=torch.float64)
    loss = CLIPLoss(init_temperature=0.5).double()
    s = loss.logit_scale.exp().item()
    assert s == pytest.approx(2.0)
    assert loss(eye, eye).item() == pytest.approx(math.log(1 + 3 * math.exp(-s)), rel=1e-12)


def test_invalid_patients_change_neither_loss_nor_valid_gradients() -> None:
    a, b = fixed()
    valid = torch.tensor(VALID)
    results = []
    for shift in (0.0, 5.0):
        a2, b2 = a.clone(), b.clone()
        a2[~valid] += shift
        b2[~valid] -= 3 * shift
        a2.requires_grad_(True)
        b2.requires_grad_(True)
        value = CLIPLoss().double()(a2, b2, valid)
        value.backward()
        assert a2.grad is not None and b2.grad is not None
        results.append((value.detach(), a2.grad, b2.grad))
    (l0, ga0, gb0), (l1, ga1, gb1) = results
    assert torch.equal(l0, l1)
    assert torch.allclose(ga0[valid], ga1[valid]) and torch.allclose(gb0[valid], gb1[valid])
    assert ga0[valid].abs().sum() > 0
    assert torch.all(ga0[~valid] == 0) and torch.all(gb1[~valid] == 0)
    nan_rows = a.clone()
    nan_rows[~valid] = float("nan")  # e.g. an encoder's output on an all-padding bag gone wrong
    assert torch.equal(CLIPLoss().double()(nan_rows, b, valid), l0)


def test_symmetric_in_its_two_modalities() -> None:
    a, b = fixed()
    loss = CLIPLoss().double()
    valid = torch.tensor(VALID)
    assert loss(a, b, valid).item() == pytest.approx(loss(b, a, valid).item(), rel=1e-12)


def test_temperature_is_learnable_and_clamped() -> None:
    a, b = fixed()
    loss = CLIPLoss().double()
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    loss(a, b).backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.abs() > 0

    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1000.0))
    loss.logit_scale.grad = None
    value = loss(a, b)
    value.backward()
    assert value.item() == pytest.approx(reference_clip(a, b, [True] * 7, 100.0), rel=1e-12)
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.item() == 0.0
    assert loss.temperature == pytest.approx(0.01)
    assert not CLIPLoss(learnable_temperature=False).logit_scale.requires_grad


def test_fewer_than_two_valid_patients_gives_zero_with_graph(caplog: pytest.LogCaptureFixture) -> None:
    a, b = fixed()
    a.requires_grad_(True)
    loss = CLIPLoss().double()
    with caplog.at_level(logging.WARNING, logger="biossl.objectives.clip"):
        value = loss(a, b, torch.tensor([False, True, False, False, False, False, False]))
    assert value.item() == 0.0 and loss.n_skipped == 1 and loss.last_n_valid == 1
    assert "1 patient(s) with both modalities" in caplog.text
    value.backward()
    assert a.grad is not None and torch.all(a.grad == 0)
    nan_rows = torch.full((3, 5), float("nan"), dtype=torch.float64)
    assert loss(nan_rows, nan_rows, torch.tensor([True, False, False])).item() == 0.0
    assert loss.logit_scale.grad is not None  # stays in the graph: DDP sees every parameter used


def test_bad_shapes_and_config_are_rejected() -> None:
    a, b = fixed()
    with pytest.raises(ValueError, match="equal shape"):
        CLIPLoss()(a, b[:, :3])
    with pytest.raises(ValueError, match="valid mask"):
        CLIPLoss()(a, b, torch.ones(3, dtype=torch.bool))
    with pytest.raises(InputError, match="temperature"):
        CLIPLoss(init_temperature=0.0)


def test_multimodal_pairs_masks_and_missing_modality() -> None:
    a, b = fixed()
    c = a.flip(0) * 0.5 + b
    present = {
        "wsi": torch.tensor([1, 1, 1, 0, 1, 1, 0], dtype=torch.bool),
        "expression": torch.tensor([1, 0, 1, 1, 1, 1, 1], dtype=torch.bool),
        "sequence": torch.tensor([1, 1, 0, 1, 0, 0, 0], dtype=torch.bool),
    }
    model = MultiModalCLIP(["sequence", "wsi", "expression"]).double()
    assert model.pairs == [("wsi", "expression"), ("wsi", "sequence"), ("expression", "sequence")]
    total, parts = model({"wsi": a, "expression": b, "sequence": c}, present)
    scale = math.exp(model.losses["wsi-expression"].get_parameter("logit_scale").item())
    valid_we = (present["wsi"] & present["expression"]).tolist()
    assert parts["clip/wsi-expression"].item() == pytest.approx(
        reference_clip(a, b, valid_we, scale), rel=1e-12
    )
    valid_es = (present["expression"] & present["sequence"]).tolist()
    assert parts["clip/expression-sequence"].item() == pytest.approx(reference_clip(b, c, valid_es, scale))
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()) / 3)

    # No patient of the batch has sequence data: its pairs contribute 0 and leave the mean.
    total, parts = model({"wsi": a, "expression": b}, present)
    assert parts["clip/wsi-sequence"].item() == 0.0 and parts["clip/expression-sequence"].item() == 0.0
    assert total.item() == pytest.approx(parts["clip/wsi-expression"].item())
    # Named modalities: pairs are named by the names, legacy names first in their old order.
    assert [f"{a}-{b}" for a, b in MultiModalCLIP(["t2", "wsi", "t1"]).pairs] == ["wsi-t2", "wsi-t1", "t2-t1"]
    with pytest.raises(InputError, match="two or more"):
        MultiModalCLIP(["wsi"])


def test_registered_and_single_process_gather_is_identity() -> None:
    assert OBJECTIVES.get("clip") is CLIPLoss
    assert OBJECTIVES.get("multimodal_clip") is MultiModalCLIP
    x = torch.ones(3, 2)
    assert gather_with_grad(x) is x and rank() == 0 and world_size() == 1

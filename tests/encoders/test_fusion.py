"""Fusion of patient-modality embeddings with missing modalities (real 512-d tile features as inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from biossl.encoders.fusion import AttentionFusion, MeanFusion, build_fusion
from biossl.errors import InputError

MODS = ["wsi", "expression", "sequence"]


@pytest.fixture(scope="module")
def inputs(fixtures: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """4 patients: all three modalities, wsi only, expression + sequence, none."""
    feats = torch.from_numpy(np.load(fixtures / "mil" / "tcga_ad_6964_feats32.npy"))
    emb = {m: feats[4 * i : 4 * i + 4] for i, m in enumerate(MODS)}
    present = {
        "wsi": torch.tensor([1, 1, 0, 0], dtype=torch.bool),
        "expression": torch.tensor([1, 0, 1, 0], dtype=torch.bool),
        "sequence": torch.tensor([1, 0, 1, 0], dtype=torch.bool),
    }
    return emb, present


def fusers() -> list[MeanFusion | AttentionFusion]:
    torch.manual_seed(0)
    return [MeanFusion(512, MODS), AttentionFusion(512, MODS)]


def test_missing_modality_changes_nothing(
    inputs: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
) -> None:
    emb, present = inputs
    for fuse in fusers():
        fused, weights = fuse(emb, present)
        assert weights.shape == (4, 3) and torch.all(
            weights[~torch.stack([present[m] for m in MODS], 1)] == 0
        )
        changed = {m: e.clone().requires_grad_(True) for m, e in emb.items()}
        with torch.no_grad():
            for m in MODS:
                changed[m][~present[m]] = float("nan")
        again, _ = fuse(changed, present)
        assert torch.equal(again, fused)
        again.sum().backward()
        for m in MODS:
            grad = changed[m].grad
            assert grad is not None and torch.all(grad[~present[m]] == 0) and grad[present[m]].abs().sum() > 0


def test_no_modality_patient_gives_zeros(
    inputs: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
) -> None:
    emb, present = inputs
    for fuse in fusers():
        fused, weights = fuse(emb, present)
        assert torch.all(fused[3] == 0) and torch.all(weights[3] == 0) and torch.isfinite(fused).all()
        # A patient with one modality gets exactly that embedding.
        assert torch.allclose(fused[1], emb["wsi"][1])
        assert torch.allclose(weights[:3].sum(dim=1), torch.ones(3))


def test_mean_and_attention_values(inputs: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]) -> None:
    emb, present = inputs
    mean, attention = fusers()
    fused, _ = mean(emb, present)
    assert torch.allclose(fused[0], (emb["wsi"][0] + emb["expression"][0] + emb["sequence"][0]) / 3)
    assert torch.allclose(fused[2], (emb["expression"][2] + emb["sequence"][2]) / 2)
    fused, weights = attention(emb, present)
    expected = sum(weights[0, i] * emb[m][0] for i, m in enumerate(MODS))
    assert isinstance(expected, torch.Tensor) and torch.allclose(fused[0], expected, atol=1e-6)
    assert not torch.allclose(weights[0], torch.full((3,), 1 / 3))  # learned, not uniform


def test_modality_missing_from_dict_counts_as_absent(
    inputs: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
) -> None:
    emb, present = inputs
    for fuse in fusers():
        without = {m: e for m, e in emb.items() if m != "sequence"}
        absent = dict(present, sequence=torch.zeros(4, dtype=torch.bool))
        assert torch.allclose(fuse(without, present)[0], fuse(emb, absent)[0])


def test_bad_config_rejected() -> None:
    with pytest.raises(InputError, match="unknown fusion"):
        build_fusion("concat", 8, MODS)
    with pytest.raises(InputError, match="at least one modality"):
        MeanFusion(8, [])
    # Any modality names (kinds: t1, rna, ...), legacy names first in their old order.
    assert MeanFusion(8, ["rna", "wsi", "t1"]).modalities == ("wsi", "rna", "t1")
    assert isinstance(build_fusion("attention", 8, MODS), AttentionFusion)

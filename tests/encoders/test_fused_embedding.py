"""``fused_embedding``: the one definition of ``X_fused`` (mean of the present modalities' unit vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from biossl.encoders.fusion import fused_embedding

MODS = ["wsi", "expression", "sequence"]


def test_mean_of_unit_vectors_of_present_modalities_on_real_features(fixtures: Path) -> None:
    feats = torch.from_numpy(np.load(fixtures / "mil" / "tcga_ad_6964_feats32.npy")).double()
    emb = {m: feats[4 * i: 4 * i + 4] for i, m in enumerate(MODS)}
    present = {"wsi": torch.tensor([1, 1, 0, 0]).bool(), "expression": torch.tensor([1, 0, 1, 0]).bool(),
               "sequence": torch.tensor([1, 0, 1, 0]).bool()}
    emb["sequence"][1] = float("nan")  # an absent modality's values are never read
    fused = fused_embedding(emb, present)
    assert fused.dtype == torch.float32 and fused.shape == (4, feats.shape[1])
    stacked = np.stack([emb[m].numpy() for m in MODS])
    unit = stacked / np.linalg.norm(stacked, axis=2, keepdims=True)
    unit[~np.stack([present[m].numpy() for m in MODS])] = np.nan
    expected = np.nanmean(unit[:, :3], axis=0)
    np.testing.assert_allclose(fused[:3].numpy(), expected, atol=1e-6)
    assert torch.equal(fused[3], torch.zeros(feats.shape[1]))  # no modality: zeros, not NaN
    # The order of the dicts does not matter (modalities are fused in canonical order).
    reordered = fused_embedding(dict(reversed(list(emb.items()))), present)
    assert torch.equal(reordered, fused)


def test_no_modality_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one modality"):
        fused_embedding({}, {})

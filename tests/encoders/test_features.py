"""features/mlp on real cached tile features: shapes, masking, training signal, use in pretraining."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biossl import keys
from biossl.data.features import SlideFeatures, write_tile_features
from biossl.data.tiling import tile_slide
from biossl.encoders import ENCODERS
from biossl.encoders.features import FeatureMLP
from biossl.modules.pretrain import PretrainModule


@pytest.fixture(scope="module")
def cached(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """Features [64, 96] of the 64 real 64-px tiles of he_small.svs from a (seeded) vit_tiny."""
    tmp = tmp_path_factory.mktemp("feat")
    coords = tile_slide(fixtures / "wsi" / "he_small.svs", tmp / "c", tile_size=64).h5_path
    torch.manual_seed(0)
    vit = ENCODERS.build("image/vit_tiny", img_size=64, patch_size=8)
    feats = SlideFeatures(write_tile_features(coords, vit, tmp / "f", progress=False))
    return torch.from_numpy(feats.read(range(len(feats))))


def test_registered_and_shapes(cached: torch.Tensor) -> None:
    model = ENCODERS.build("features/mlp", in_dim=96, embed_dim=32)
    assert isinstance(model, FeatureMLP) and model.embed_dim == 32
    z = model.embed(cached)
    assert z.shape == (64, 32) and torch.isfinite(z).all()
    assert model.masked_loss(cached).ndim == 0
    with pytest.raises(ValueError, match=r"in_dim=96.*\[N, 96\].*\(64, 95\)"):
        model.embed(cached[:, :95])
    with pytest.raises(ValueError, match="mask_ratio"):
        FeatureMLP(in_dim=96, mask_ratio=1.0)


def test_mask_hides_exactly_the_ratio_and_loss_is_mse_on_hidden_dims(cached: torch.Tensor) -> None:
    model = FeatureMLP(in_dim=96, embed_dim=16, mask_ratio=0.25, noise_std=0.0, visible_weight=0.0)
    mask = model.random_mask(64, cached.device)
    assert (mask.sum(1) == 24).all() and not torch.equal(mask[0], mask[1])
    # Only the masked targets enter the loss, and their inputs are zeroed: a hand-computed MSE.
    clean = (cached - cached.mean(0)) / torch.sqrt(cached.var(0, unbiased=False) + 1e-5)
    recon = model.decoder(model.mlp(clean.masked_fill(mask, 0.0)))
    torch.testing.assert_close(model.masked_loss(cached, mask=mask), ((recon - clean) ** 2)[mask].mean())
    # A single tile is standardised with the running statistics (no batch statistics of one row).
    assert torch.isfinite(model.masked_loss(cached[:1])) and model.embed(cached[:1]).shape == (1, 16)


def test_masked_modelling_beats_the_average_tile_on_held_out_real_features(cached: torch.Tensor) -> None:
    torch.manual_seed(0)
    order = torch.randperm(64)
    train, held_out = cached[order[:48]], cached[order[48:]]
    model = FeatureMLP(in_dim=96, embed_dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = model.masked_loss(train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.3 * sum(losses[:5]), losses
    model.eval()
    model.noise_std, model.visible_weight = 0.0, 0.0
    mask = model.random_mask(16, cached.device)
    with torch.no_grad():
        clean = model._standardise(held_out)
        average_tile = float((clean[mask] ** 2).mean())  # predicting the training mean (0 after standardising)
        masked = float(model.masked_loss(held_out, mask=mask))
    assert average_tile > 0.5  # the running statistics describe these tiles
    assert masked < 0.5 * average_tile, (masked, average_tile)


def test_runs_as_the_wsi_encoder_of_pretraining(cached: torch.Tensor) -> None:
    module = PretrainModule({keys.WSI: {"encoder": "features/mlp", "in_dim": 96, "embed_dim": 32}}, embed_dim=16)
    module.configure_model()
    x = torch.zeros(2, 5, 96)
    x[0, :5], x[1, :3] = cached[:5], cached[5:8]
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    batch = {keys.WSI: {keys.X: x, keys.MASK: mask, keys.PRESENT: mask.any(1)}, "patient_id": ["a", "b"]}
    pooled, present, masked = module.encode_batch(batch)
    assert pooled[keys.WSI].shape == (2, 16) and present[keys.WSI].all()
    assert masked["masked/wsi"].ndim == 0 and torch.isfinite(masked["masked/wsi"])

"""Patient-level pretraining from cached tile features (the way to handle 10k-50k tiles a slide)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from biossl import keys
from biossl.data.bags import BagSpec
from biossl.data.demo import DEMO_MANIFEST
from biossl.data.features import write_tile_features
from biossl.encoders import ENCODERS
from biossl.modules.datamodule import BagDataModule
from biossl.modules.pretrain import PretrainModule

SPEC = BagSpec(tiles=4, tile_px=32, windows=2, window_length=32)


def test_pretraining_reads_cached_features_instead_of_pixels(tmp_path: Path) -> None:
    pixels = BagDataModule(DEMO_MANIFEST, work_dir=tmp_path / "work", spec=SPEC)
    pixels.prepare_data()  # tiles the 8 demo slides
    torch.manual_seed(0)
    frozen = ENCODERS.build("image/vit_tiny", img_size=32, patch_size=8)
    feats = tmp_path / "features"
    for h5 in sorted(pixels.coords_dir.glob("*.h5")):
        write_tile_features(h5, frozen, feats, batch_size=16, tile_px=32, progress=False)

    dm = BagDataModule(DEMO_MANIFEST, work_dir=tmp_path / "work2", spec=SPEC, features_dir=feats, batch_size=8)
    dm.prepare_data()
    assert not (tmp_path / "work2" / "tiles").exists(), "feature mode must not tile again"
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    x = batch[keys.WSI][keys.X]
    assert x.shape[2:] == (frozen.embed_dim,) and x.dtype == torch.float32
    assert torch.isfinite(x).all()

    module = PretrainModule(
        {"wsi": {"encoder": "features/mlp", "embed_dim": 32},
         "expression": {"encoder": "expression/transformer", "embed_dim": 32, "depth": 1}},
        embed_dim=32, warmup_steps=1,
    )
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert module.modality_specs["wsi"]["in_dim"] == frozen.embed_dim
    assert trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())

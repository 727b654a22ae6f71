"""Joint pretraining on the bundled (real) demo cohort: missing modalities, exact resume, checkpoints."""

from __future__ import annotations

import copy
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from biossl import keys
from biossl.data.bags import BagSpec
from biossl.data.demo import DEMO_MANIFEST
from biossl.errors import InputError
from biossl.modules.callbacks import CheckpointOnInterrupt
from biossl.modules.datamodule import BagDataModule
from biossl.modules.pretrain import PretrainModule

SPEC = BagSpec(tiles=2, tile_px=32, patches=1, patch_size=(16, 16, 16), windows=2, window_length=32)
MODALITIES: dict[str, dict[str, Any]] = {
    "wsi": {"encoder": "image/vit_tiny", "img_size": 32, "patch_size": 8},
    "volume": {"encoder": "image/vit_tiny", "spatial_dims": 3, "in_channels": 1, "img_size": 16, "patch_size": 8},
    "expression": {"encoder": "expression/transformer", "embed_dim": 32, "depth": 1},
    "sequence": {"encoder": "sequence/transformer", "embed_dim": 32, "depth": 1},
}


def _datamodule(work: Path, batch_size: int = 6) -> BagDataModule:
    return BagDataModule(DEMO_MANIFEST, work_dir=work, spec=SPEC, batch_size=batch_size, seed=0)


def _module(modalities: dict[str, dict[str, Any]] | None = None, **kw: Any) -> PretrainModule:
    return PretrainModule(copy.deepcopy(modalities or MODALITIES), embed_dim=32, warmup_steps=2, seed=0, **kw)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("work")
    dm = _datamodule(work)
    dm.prepare_data()  # tiles the demo slides once for every test here
    return work


def _built(work: Path, modalities: dict[str, dict[str, Any]] | None = None) -> tuple[PretrainModule, BagDataModule]:
    dm = _datamodule(work)
    dm.setup("fit")
    module = _module(modalities)
    module.modality_specs["expression"]["n_genes"] = len(dm.vocabulary)
    if "sequence" in module.modality_specs:
        module.modality_specs["sequence"]["max_len"] = SPEC.window_length
    module.configure_model()
    return module, dm


def test_missing_modalities_train_without_nan_and_stay_out_of_their_pairs(work: Path) -> None:
    torch.manual_seed(0)
    module, dm = _built(work)
    module.eval()  # no dropout: embeddings are a function of the inputs
    batch = next(iter(dm.train_dataloader()))
    present = {m: batch[m][keys.PRESENT] for m in keys.MODALITIES}
    # A patient with expression and sequence but no slide.
    idx = next(i for i in range(len(batch["patient_id"]))
               if present["expression"][i] and present["sequence"][i] and not present["wsi"][i])
    pooled, pres, masked = module.encode_batch(batch)
    total, pairs = module.contrastive(pooled, pres)
    loss = total + sum(masked.values())
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in module.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name

    # Change that patient's expression profile: pairs without a slide for this patient ...
    changed = copy.deepcopy(batch)
    changed["expression"][keys.X][idx] += 3.0
    with torch.no_grad():
        p0 = module.contrastive(*module.encode_batch(batch, with_masked_loss=False)[:2])[1]
        p1 = module.contrastive(*module.encode_batch(changed, with_masked_loss=False)[:2])[1]
    # ... the wsi-expression pair must not see it (the patient has no slide), the sequence-expression pair must.
    assert torch.equal(p0["clip/wsi-expression"], p1["clip/wsi-expression"])
    assert not torch.equal(p0["clip/expression-sequence"], p1["clip/expression-sequence"])


class _Interrupt(pl.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt


def _fit(work: Path, root: Path, *, max_steps: int, callbacks: list[pl.Callback] = (), ckpt: Path | str | None = None,
         modalities: dict[str, dict[str, Any]] | None = None) -> PretrainModule:
    module = _module(modalities, total_steps=max_steps)
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root, every_n_train_steps=1000), CheckpointOnInterrupt(root), *callbacks],
    )
    trainer.fit(module, datamodule=_datamodule(work, batch_size=5), ckpt_path=ckpt)
    return module


RESUME_MODALITIES = {m: MODALITIES[m] for m in ("wsi", "expression", "sequence")}


def test_interrupted_and_resumed_run_ends_with_the_same_weights(work: Path, tmp_path: Path) -> None:
    # 24 patients, batches of 5 -> 4 batches an epoch; 7 steps cross an epoch; the interrupt is mid-epoch 1.
    straight = _fit(work, tmp_path / "a", max_steps=7, modalities=RESUME_MODALITIES)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            _fit(work, tmp_path / "b", max_steps=7, callbacks=[_Interrupt(5)], modalities=RESUME_MODALITIES)
    finally:
        signal.signal(signal.SIGINT, previous)
    ckpt = tmp_path / "b" / "last-interrupted.ckpt"
    assert ckpt.is_file()
    resumed = _fit(work, tmp_path / "c", max_steps=7, ckpt=ckpt, modalities=RESUME_MODALITIES)
    # --ckpt_path last (--resume last) finds the interrupted run's checkpoint by itself
    by_keyword = _fit(work, tmp_path / "b", max_steps=7, ckpt="last", modalities=RESUME_MODALITIES)
    a = straight.state_dict()
    for other in (resumed.state_dict(), by_keyword.state_dict()):
        assert a.keys() == other.keys()
        for k in a:
            assert torch.equal(a[k], other[k]), k


def test_checkpoint_loads_safely_and_carries_vocabulary_tokeniser_fingerprint(work: Path, tmp_path: Path) -> None:
    module = _fit(work, tmp_path, max_steps=1, modalities=RESUME_MODALITIES)
    path = tmp_path / "model.ckpt"
    module.trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    state = raw["biossl"]
    genes = list(dict.fromkeys(state["vocabulary"]))
    assert len(genes) == 256 and genes[:3] == list(module.trainer.datamodule.vocabulary.genes)[:3]
    assert state["tokeniser"]["alphabet"] == "ACGTN"
    assert len(state["data_fingerprint"]) >= 8
    assert state["modality_specs"]["expression"]["n_genes"] == 256
    loaded = PretrainModule.from_checkpoint(path)
    module.eval()
    loaded.eval()
    dm = _datamodule(work)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        a = module.encode_batch(batch, with_masked_loss=False)[0]
        b = loaded.encode_batch(batch, with_masked_loss=False)[0]
    for m in a:
        assert torch.allclose(a[m], b[m]), m


def test_from_checkpoint_rejects_a_foreign_file(tmp_path: Path) -> None:
    from biossl.errors import InputError

    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(InputError, match="not a biossl pretraining checkpoint"):
        PretrainModule.from_checkpoint(path)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        PretrainModule.from_checkpoint(tmp_path / "junk.ckpt")


def test_unknown_encoder_lists_known_names() -> None:
    # At construction (before any data is read), as one InputError naming the config key.
    with pytest.raises(InputError, match=r"model.modalities.wsi.encoder: .*Known encoders: .*image/vit_tiny"):
        PretrainModule({"wsi": {"encoder": "image/vit_tiniest"}, "expression": {"encoder": "expression/mlp"}},
                       embed_dim=8)


def test_compile_compiles_the_entry_points_the_engine_calls(work: Path) -> None:
    """``compile`` must reach embed/masked_loss (not only forward), with unchanged results and parameter names."""
    specs = {"expression": dict(MODALITIES["expression"])}
    plain, dm = _built(work, specs)
    compiled = _module(specs, compile="eager")
    compiled.modality_specs["expression"]["n_genes"] = len(dm.vocabulary)
    compiled.configure_model()
    compiled.load_state_dict(plain.state_dict())
    assert list(compiled.state_dict()) == list(plain.state_dict())
    enc = compiled.encoders["expression"]
    assert hasattr(enc.embed, "_torchdynamo_orig_callable")  # a torch.compile-d function, not the plain method
    plain.eval()
    compiled.eval()
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        a = plain.encode_batch(batch, with_masked_loss=False)[0]["expression"]
        b = compiled.encode_batch(batch, with_masked_loss=False)[0]["expression"]
    assert torch.allclose(a, b, atol=1e-6)

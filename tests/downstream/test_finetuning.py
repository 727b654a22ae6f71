"""Fine-tuning and from-scratch training on the demo cohort from a tiny real checkpoint (``pretrained`` fixture)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from biossl.data.labels import read_labels
from biossl.downstream.cv import fold_indices, folds_for
from biossl.downstream.finetuning import (
    SCRATCH_SEED_OFFSET,
    CohortBags,
    EncoderFinetune,
    FinetuneSettings,
)
from biossl.downstream.tasks import Task, subtype_task, survival_task
from biossl.errors import InputError

MODALITIES = ("wsi", "volume", "expression", "sequence")


@pytest.fixture(scope="module")
def bags(pretrained: tuple[Path, Path], demo_cohort: Path) -> CohortBags:
    checkpoint, work = pretrained
    return CohortBags(checkpoint, demo_cohort / "manifest.csv", work_dir=work)


@pytest.fixture(scope="module")
def labels(demo_cohort: Path) -> pd.DataFrame:
    return read_labels(demo_cohort / "labels.csv")


@pytest.fixture(scope="module")
def checkpoint_encoders(pretrained: tuple[Path, Path]) -> dict[str, torch.Tensor]:
    state = torch.load(pretrained[0], map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("encoders.")}


def _encoders(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith("encoders.")}


def _fold(task: Task) -> tuple[Task, np.ndarray, np.ndarray]:
    task, folds = folds_for(task, n_folds=3, seed=0)
    _, train, test = fold_indices(task, folds)[0]
    return task, train, test


def test_frozen_embeddings_are_those_of_biossl_embed(bags: CohortBags, embedded: Path) -> None:
    adata = ad.read_h5ad(embedded)
    fused = bags.embeddings("X_fused")
    assert list(fused.index) == list(adata.obs_names)  # all 24 patients have some modality
    assert np.allclose(fused.to_numpy(), adata.obsm["X_fused"], atol=1e-5)
    expr = bags.embeddings("X_expression")
    assert len(expr) == 21
    assert np.allclose(expr.to_numpy(), adata[list(expr.index)].obsm["X_expression"], atol=1e-5)
    with pytest.raises(InputError, match="--embedding X_rna: checkpoint last.ckpt encodes wsi, volume"):
        bags.modalities_for("X_rna")


def test_finetune_changes_the_encoders_and_the_probe_does_not(bags: CohortBags, labels: pd.DataFrame,
                                                              checkpoint_encoders: dict[str, torch.Tensor]) -> None:
    before = bags.embeddings("X_fused")
    method = EncoderFinetune(bags, mode="finetune", settings=FinetuneSettings(epochs=2), device="cpu")
    assert method.patients() == set(labels.index)
    task, train, test = _fold(subtype_task(labels, "subtype"))
    start = _encoders(method.backbone(0))
    assert start.keys() == checkpoint_encoders.keys()
    assert all(torch.equal(start[k], checkpoint_encoders[k]) for k in start)  # starts from the checkpoint
    proba = method.fit_predict(task, train, test, seed=0)
    assert proba.shape == (len(test), 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert method.last_model is not None and method.last_fit["steps"] == 2  # 16 patients = 1 batch x 2 epochs
    trained = _encoders(method.last_model.backbone)
    for m in MODALITIES:  # every modality's encoder moved
        names = [k for k in trained if k.startswith(f"encoders.{m}.")]
        assert any(not torch.equal(trained[k], checkpoint_encoders[k]) for k in names), m
    fixed = [k for k in trained if k not in bags.trainable]
    assert fixed and all(torch.equal(trained[k], checkpoint_encoders[k]) for k in fixed)  # fixed stays fixed
    # The probe's frozen module is untouched: same weights as the checkpoint, same embeddings.
    frozen = _encoders(bags.module)
    assert all(torch.equal(frozen[k], checkpoint_encoders[k]) for k in frozen)
    assert all(not p.requires_grad for p in bags.module.parameters())
    assert np.array_equal(bags.embeddings("X_fused").to_numpy(), before.to_numpy())


def test_scratch_has_the_same_architecture_with_fresh_weights(bags: CohortBags,
                                                              checkpoint_encoders: dict[str, torch.Tensor]) -> None:
    scratch = EncoderFinetune(bags, mode="scratch", device="cpu")
    start = _encoders(scratch.backbone(0))
    assert {k: v.shape for k, v in start.items()} == {k: v.shape for k, v in checkpoint_encoders.items()}
    matrices = [k for k, v in start.items() if v.ndim >= 2 and k in bags.trainable]
    assert len(matrices) > 20
    assert all(not torch.equal(start[k], checkpoint_encoders[k]) for k in matrices)  # no pretrained weight
    # The ViTs' sin-cos position embeddings are fixed by the architecture: equal, and never trained.
    fixed = sorted(k for k in start if k not in bags.trainable and k.endswith("position_embeddings"))
    assert fixed == [f"encoders.{m}.encoder.patch_embedding.position_embeddings" for m in ("volume", "wsi")]
    assert all(torch.equal(start[k], checkpoint_encoders[k]) for k in fixed)
    again, other = _encoders(scratch.backbone(0)), _encoders(scratch.backbone(1))
    assert all(torch.equal(start[k], again[k]) for k in start)  # a function of the seed
    assert any(not torch.equal(start[k], other[k]) for k in matrices)
    # Never the pretraining's own initial weights (drawn with its seed, 0 here).
    assert bags.module.hparams["seed"] != SCRATCH_SEED_OFFSET + 0
    assert scratch.describe()["init_seed"] == f"{SCRATCH_SEED_OFFSET} + seed"


@pytest.mark.parametrize("loss", ["cox", "discrete"])
def test_survival_finetune_and_scratch_on_one_modality(bags: CohortBags, labels: pd.DataFrame, loss: str) -> None:
    settings = FinetuneSettings(epochs=2, batch_size=8, survival_loss=loss)  # type: ignore[arg-type]
    task, train, test = _fold(survival_task(labels).subset(sorted(bags.patients_with(["expression"]))))
    for mode in ("finetune", "scratch"):
        method = EncoderFinetune(bags, mode=mode, embedding="X_expression", settings=settings,  # type: ignore[arg-type]
                                 device="cpu")
        risk = method.fit_predict(task, train, test, seed=0)
        assert risk.shape == (len(test),) and np.isfinite(risk).all()
        assert method.last_fit["steps"] == 2 * int(np.ceil(len(train) / 8))
        assert method.describe()["modalities"] == ["expression"]


def test_semi_supervised_finetune_puts_the_unlabelled_patients_in_the_loss(bags: CohortBags,
                                                                           labels: pd.DataFrame) -> None:
    hidden = ["DEMO-02", "DEMO-09", "DEMO-14", "DEMO-20"]
    task, train, test = _fold(subtype_task(labels.drop(index=hidden), "subtype"))
    settings = FinetuneSettings(epochs=2, pseudo_threshold=0.0)
    method = EncoderFinetune(bags, mode="finetune", settings=settings, semi_supervised=True, device="cpu")
    assert method.name == "finetune+pl"
    method.fit_predict(task, train, test, seed=0, unlabelled=[*hidden, "NOT-IN-COHORT"])
    pl = method.last_fit["pseudo_label"]
    assert pl["n_unlabelled"] == 4  # the unknown ID is not one of the method's patients
    assert pl["used_fraction"] == 1.0 and pl["unsupervised_loss_last_epoch"] > 0
    # 16 labelled + 4 unlabelled patients = 2 batches of 16 per epoch.
    assert method.last_fit["steps"] == 4
    strict = EncoderFinetune(bags, mode="finetune", settings=FinetuneSettings(epochs=1, pseudo_threshold=1.0),
                             semi_supervised=True, device="cpu")
    strict.fit_predict(task, train, test, seed=0, unlabelled=hidden)
    assert strict.last_fit["pseudo_label"]["used_fraction"] < 1.0  # an untrained head is never that confident
    with pytest.raises(InputError, match="--semi-supervised applies to --task subtype only"):
        method.fit_predict(survival_task(labels).subset(task.patients), train, test, seed=0, unlabelled=hidden)


@pytest.mark.parametrize(("change", "message"), [
    ({"epochs": 0}, "--epochs must be at least 1; got 0"),
    ({"encoder_lr": 0.0}, "--encoder-lr must be a positive learning rate"),
    ({"pseudo_threshold": 1.5}, "--pseudo-threshold must be in [0, 1]"),
])
def test_bad_settings_name_the_option(bags: CohortBags, change: dict[str, float], message: str) -> None:
    with pytest.raises(InputError) as err:
        EncoderFinetune(bags, settings=FinetuneSettings(**change))  # type: ignore[arg-type]
    assert message in str(err.value)

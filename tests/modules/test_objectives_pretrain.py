"""Every objective selected per modality in the pretraining engine, one small step on the demo cohort."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch

from biossl.cli import main
from biossl.data.bags import BagSpec
from biossl.data.demo import DEMO_MANIFEST
from biossl.errors import InputError
from biossl.keys import LEGACY_KINDS
from biossl.modules.datamodule import BagDataModule
from biossl.modules.pretrain import PretrainModule
from biossl.modules.tasks import Task
from biossl.objectives import OBJECTIVES, catalogue

REPO = Path(__file__).resolve().parents[2]
SPEC = BagSpec(tiles=2, tile_px=32, patches=1, patch_size=(16, 16, 16), windows=2, window_length=32)
HEAD = {"proj_dim": 16, "hidden_dim": 32}
# Small options so that a step of every objective takes seconds on a CPU.
OPTIONS: dict[str, dict[str, Any]] = {
    "moco": {**HEAD, "queue_size": 32},
    "byol": HEAD,
    "directpred": HEAD,
    "simsiam": {**HEAD, "pred_hidden": 8},
    "barlow_twins": HEAD,
    "vicreg": HEAD,
    "swav": {**HEAD, "n_prototypes": 8},
    "deepcluster": {"n_clusters": 3, "memory_size": 16, "recluster_every": 1, "kmeans_iters": 3},
    "jepa": {"predictor_dim": 48, "predictor_depth": 1, "predictor_heads": 4},
    "cpc": {"context_dim": 16, "horizons": 2},
    "jigsaw": {"grid": 2},
    "rotation": {"all_rotations": False},
    "denoising_ae": {"hidden_dims": [32]},
    "vae": {"hidden_dims": [32]},
}
ENCODERS: dict[str, dict[str, Any]] = {
    "wsi": {"encoder": "image/vit_tiny", "img_size": 32, "patch_size": 8},
    "volume": {"encoder": "image/vit_tiny", "spatial_dims": 3, "in_channels": 1, "img_size": 16, "patch_size": 4},
    "expression": {"encoder": "expression/transformer", "embed_dim": 24, "depth": 1},
    "sequence": {"encoder": "sequence/transformer", "embed_dim": 24, "depth": 1},
}
WITHIN = {m: sorted(n for n, i in catalogue().items() if LEGACY_KINDS[m] in i.kinds) for m in ENCODERS}
ACROSS = sorted(n for n, i in catalogue().items() if i.across and i.contract != "cross") + ["clip"]


def entry(name: str) -> dict[str, Any]:
    return {"name": name, **OPTIONS.get(name, {})}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("work")
    BagDataModule(DEMO_MANIFEST, work_dir=work, spec=SPEC, batch_size=8, seed=0).prepare_data()
    return work


class Snapshot(pl.Callback):
    """Keep the weights as they are when training starts (after the model is built)."""

    state: dict[str, torch.Tensor]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


def fit(
    work: Path, modalities: dict[str, dict[str, Any]], steps: int, **kw: Any
) -> tuple[PretrainModule, dict[str, float], dict[str, torch.Tensor]]:
    dm = BagDataModule(DEMO_MANIFEST, work_dir=work, spec=SPEC, batch_size=8, seed=0)
    module = PretrainModule(copy.deepcopy(modalities), embed_dim=24, warmup_steps=1, seed=0, **kw)
    snap = Snapshot()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[snap])
    trainer.fit(module, datamodule=dm)
    return module, {k: float(v) for k, v in module.last_terms.items()}, snap.state


def test_catalogue_covers_the_registry() -> None:
    assert set(catalogue()) == set(OBJECTIVES.names())
    required = {"infonce", "moco", "clip", "byol", "simsiam", "directpred", "barlow_twins", "vicreg", "mae",
                "masked_tokens", "jepa", "cpc", "rc_contrastive", "denoising_ae", "vae", "swav", "deepcluster",
                "rotation", "jigsaw", "pseudo_label"}
    assert required <= set(OBJECTIVES.names())


@pytest.mark.parametrize("modality", list(ENCODERS))
def test_every_objective_of_a_modality_trains_one_step_on_the_demo_cohort(work: Path, modality: str) -> None:
    """All of the modality's objectives at once, two optimiser steps: each term is logged and finite,
    every objective's trainable parameters move, and the momentum encoder follows the online one."""
    names = WITHIN[modality]
    specs = {m: dict(s) for m, s in ENCODERS.items() if m in (modality, "expression")}
    specs[modality]["objective"] = [entry(n) for n in names]
    torch.manual_seed(0)
    module, logged, start = fit(work, specs, steps=2, cross_modal={"name": "vicreg", **HEAD})
    assert math.isfinite(logged["train/loss"])
    for name in names:
        key = f"train/{'masked' if name in ('mae', 'masked_tokens') else name}/{modality}"
        assert key in logged and math.isfinite(logged[key]), key
    end = module.state_dict()
    tasks: list[Task] = list(module.tasks[modality])  # type: ignore[call-overload]
    assert [t.name for t in tasks] == names
    parameter_free = {"mae", "masked_tokens", "infonce", "rc_contrastive"}  # no head of their own
    for i, task in enumerate(tasks):
        trainable = [n for n, p in task.named_parameters() if p.requires_grad]
        assert bool(trainable) == (task.name not in parameter_free), task.name
        prefix = f"tasks.{modality}.{i}."
        moved = [n for n in trainable if not torch.equal(start[prefix + n], end[prefix + n])]
        assert moved or not trainable, f"{task.name}: no parameter of its head moved"
    assert (modality in module.targets) == bool({"byol", "moco", "directpred", "jepa"} & set(names))
    if modality in module.targets:
        followed = 0
        for n, p in module.targets[modality].named_parameters():
            assert not p.requires_grad
            online_moved = not torch.equal(start[f"encoders.{modality}.{n}"], end[f"encoders.{modality}.{n}"])
            if online_moved:
                assert not torch.equal(start[f"targets.{modality}.{n}"], p), f"target {n} did not follow"
                assert not torch.equal(end[f"encoders.{modality}.{n}"], p), f"target {n} is a copy, not an EMA"
                followed += 1
        assert followed


@pytest.mark.parametrize("name", ACROSS)
def test_cross_modal_objectives_score_the_patients_with_both(work: Path, name: str) -> None:
    specs = {m: ENCODERS[m] for m in ("expression", "sequence", "wsi")}
    module, logged, _ = fit(work, specs, steps=1, cross_modal=entry(name))
    assert math.isfinite(logged["train/contrastive"])
    pairs = [k for k in logged if k.startswith(f"train/{name}/")]
    assert pairs, logged.keys()


def test_pseudo_label_trains_a_head_on_demo_embeddings(demo_cohort: Path) -> None:
    """Semi-supervised step: demo subtype labels (KIRC vs KIRP) with half of them hidden."""
    labels = pd.read_csv(demo_cohort / "labels.csv")
    expr = pd.read_csv(demo_cohort / "expression.csv", index_col=0)
    common = [p for p in labels["patient_id"] if p in expr.index]
    x = torch.tensor(expr.loc[common].to_numpy(), dtype=torch.float32)
    classes = sorted(labels["subtype"].dropna().unique())
    y = torch.tensor([classes.index(s) for s in labels.set_index("patient_id").loc[common, "subtype"]])
    y_semi = y.clone()
    y_semi[::2] = -1
    head = torch.nn.Linear(x.shape[1], len(classes))
    loss_fn = OBJECTIVES.build("pseudo_label", threshold=0.6)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    first = None
    for _ in range(20):
        loss = loss_fn(head(x), y_semi)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first
    with pytest.raises(InputError, match="finetune"):
        PretrainModule({"expression": {"encoder": "expression/mlp", "objective": "pseudo_label"}})


def test_bad_objective_choices_are_clear_errors() -> None:
    cpc_on_slides = r"cpc.*cannot train the wsi encoder \(slide\).*Objectives for slide modalities: .*byol"
    with pytest.raises(InputError, match=cpc_on_slides):
        PretrainModule({"wsi": {"encoder": "image/vit_tiny", "objective": "cpc"}})
    with pytest.raises(InputError, match="Did you mean 'byol'"):
        PretrainModule({"wsi": {"encoder": "image/vit_tiny", "objective": "byl"}})
    with pytest.raises(InputError, match="between modalities"):
        PretrainModule({"wsi": {"encoder": "image/vit_tiny", "objective": "clip"}})
    with pytest.raises(InputError, match="cannot be used between modalities"):
        PretrainModule({m: ENCODERS[m] for m in ("expression", "sequence")}, cross_modal="byol")
    module = PretrainModule({"wsi": {"encoder": "features/mlp", "in_dim": 8, "objective": "byol"}})
    with pytest.raises(InputError, match="cached features"):
        module.configure_model()


@pytest.mark.integration
def test_objectives_config_runs_through_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "run"
    config = REPO / "configs" / "pretrain" / "objectives_demo.yaml"
    code = main(["pretrain", "--config", str(config), "--data.manifest", str(DEMO_MANIFEST),
                 "--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(root),
                 "--trainer.max_steps", "2"])
    assert code == 0
    metrics = pd.read_csv(root / "metrics.csv")
    for term in ("train/byol/wsi", "train/masked/wsi", "train/rotation/volume", "train/vicreg/expression",
                 "train/rc_contrastive/sequence", "train/contrastive"):
        assert term in metrics.columns, term

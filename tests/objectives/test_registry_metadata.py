"""One objective registry: each registered class carries its :class:`ObjectiveInfo`, and a plug-in objective
registered from outside the package trains in the pretraining engine with no edit anywhere else."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biossl.cli import main
from biossl.data.bags import BagSpec
from biossl.data.demo import DEMO_MANIFEST
from biossl.encoders.base import ModalityModel
from biossl.errors import InputError
from biossl.kinds import KINDS
from biossl.modules import tasks
from biossl.modules.datamodule import BagDataModule
from biossl.modules.pretrain import PretrainModule
from biossl.objectives import CONTRACTS, OBJECTIVES, ObjectiveInfo, catalogue, objective_info
from biossl.objectives.byol import BYOL

TOY = "toy_cosine"
SPEC = BagSpec(tiles=2, tile_px=32, patches=1, patch_size=(16, 16, 16), windows=2, window_length=32)
SMALL = {"embed_dim": 24, "depth": 1}


class ToyCosine(nn.Module):
    """A two-view plug-in objective: cosine distance between the two views after a linear head."""

    info = ObjectiveInfo("two_view", kinds=("table",), across=True, paper="a test plug-in", dim_option="dim")

    def __init__(self, dim: int, *, scale: float = 1.0, kind_seen: str = "") -> None:
        super().__init__()
        self.head = nn.Linear(dim, dim)
        self.scale, self.kind_seen = scale, kind_seen

    @classmethod
    def options_from_encoder(cls, encoder: ModalityModel, *, modality: str, kind: str) -> dict[str, Any]:
        """Record which kind the engine says the encoder reads."""
        return {"kind_seen": kind}

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """``scale * (1 - mean cosine)`` of the two views' heads."""
        return self.scale * (1.0 - F.cosine_similarity(self.head(z1), self.head(z2), dim=-1).mean())


class Snapshot(pl.Callback):
    """The weights as they are when training starts (after the model is built from the data)."""

    state: dict[str, torch.Tensor]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


@pytest.fixture
def toy() -> Iterator[str]:
    OBJECTIVES.register(TOY)(ToyCosine)
    try:
        yield TOY
    finally:
        OBJECTIVES.unregister(TOY)


def test_every_registered_objective_declares_its_own_info() -> None:
    built_in_kinds = set(KINDS.names())
    for name in OBJECTIVES.names():
        cls = OBJECTIVES.get(name)
        meta = vars(cls).get("info")
        assert isinstance(meta, ObjectiveInfo), f"{name}: no info of its own"
        assert meta.contract in CONTRACTS and meta.paper, name
        assert set(meta.kinds) <= built_in_kinds, name
        assert bool(meta.kinds) == (meta.contract not in ("cross", "finetune")), name
        if meta.dim_option is not None:
            assert meta.dim_option in inspect.signature(cls).parameters, f"{name}: no argument {meta.dim_option!r}"
        if meta.pairs_objective is not None:
            assert objective_info(meta.pairs_objective).contract == "cross", name
        assert tasks.info(name) is meta
    assert set(catalogue()) == set(OBJECTIVES.names())
    # The values the engine had in its own table before (kinds of modality, call contracts).
    assert objective_info("mae").kinds == ("slide", "volume", "features")
    assert objective_info("masked_tokens").kinds == ("table", "sequence")
    assert objective_info("vicreg").kinds == ("slide", "volume", "table", "sequence")
    assert objective_info("directpred").paper.startswith("Tian")  # not BYOL's, which it subclasses
    assert objective_info("pseudo_label").contract == "finetune"
    assert objective_info("clip").pairs_objective == "multimodal_clip"
    assert tasks.MASKED == ("mae", "masked_tokens")


def test_objective_info_refuses_contradictions() -> None:
    with pytest.raises(ValueError, match="unknown objective contract 'two_views'"):
        ObjectiveInfo("two_views", kinds=("table",))
    with pytest.raises(ValueError, match="tuple of kind names"):
        ObjectiveInfo("two_view", kinds="table")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="give it no kinds"):
        ObjectiveInfo("cross", kinds=("table",), across=True)
    with pytest.raises(ValueError, match="across=True"):
        ObjectiveInfo("cross")


def test_an_objective_without_info_of_its_own_is_a_clear_error() -> None:
    class Bare(nn.Module):
        pass

    class Inherits(BYOL):  # BYOL's info is not this one's
        pass

    OBJECTIVES.register("toy_bare")(Bare)
    OBJECTIVES.register("toy_inherits")(Inherits)
    try:
        for name in ("toy_bare", "toy_inherits"):
            with pytest.raises(InputError, match=rf"objective '{name}'.*`info = ObjectiveInfo"):
                PretrainModule({"expression": {"encoder": "expression/mlp", "objective": name}})
    finally:
        OBJECTIVES.unregister("toy_bare")
        OBJECTIVES.unregister("toy_inherits")
    with pytest.raises(InputError, match="Did you mean 'byol'"):
        tasks.info("byl")


def test_a_plug_in_objective_is_listed_and_checked_against_its_kinds(
    toy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", "objectives"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{toy} "))
    assert line.split()[1:4] == ["two_view", "table", "within"] and "a test plug-in" in line
    with pytest.raises(InputError, match=rf"{toy}.*cannot train the sequence encoder \(sequence\).*on table"):
        PretrainModule({"sequence": {"encoder": "sequence/transformer", "objective": toy}})


def test_a_plug_in_objective_trains_a_table_modality_and_across_modalities(toy: str, tmp_path: Path) -> None:
    """Selected by name for the legacy ``expression`` modality (kind ``table``) and as the cross-modal
    objective: one optimiser step on the demo cohort, its loss terms logged and finite, its heads moved."""
    specs = {
        "expression": {"encoder": "expression/transformer", **SMALL, "objective": [{"name": toy, "scale": 2.0}]},
        "sequence": {"encoder": "sequence/transformer", **SMALL},
    }
    dm = BagDataModule(DEMO_MANIFEST, work_dir=tmp_path, spec=SPEC, batch_size=8, seed=0,
                       modalities=list(specs))
    torch.manual_seed(0)
    module = PretrainModule(specs, embed_dim=24, warmup_steps=1, seed=0, cross_modal=toy)
    snap = Snapshot()
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[snap])
    trainer.fit(module, datamodule=dm)
    task = module.tasks["expression"][0]  # type: ignore[index]
    assert isinstance(task.objective, ToyCosine)
    assert (task.contract, task.objective.scale, task.objective.kind_seen) == ("two_view", 2.0, "table")
    logged = {k: float(v) for k, v in module.last_terms.items()}
    assert math.isfinite(logged[f"train/{toy}/expression"])
    assert math.isfinite(logged["train/contrastive"])
    assert [k for k in logged if k.startswith(f"train/{toy}/") and "-" in k], logged.keys()
    heads = [n for n in snap.state if ".head." in n]
    assert any(n.startswith("tasks.expression.") for n in heads), heads
    assert any(n.startswith("contrastive.per_pair.") for n in heads), heads
    end = module.state_dict()
    for name in heads:
        assert not torch.equal(snap.state[name], end[name]), f"{name} did not move"

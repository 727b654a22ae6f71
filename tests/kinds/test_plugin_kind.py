"""A kind registered inside this file pretrains, embeds and audits through the CLI, with no edit elsewhere.

The toy kind ``rows`` reads one ``.npy`` matrix per patient file (rows = instances). The data are real:
tile features of a TCGA slide (``tests/fixtures/mil``), split into patients; the split is arbitrary, so
nothing here measures representation quality, only that a new kind is one class.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from biossl.cli import main
from biossl.data.bags import Pick, SourceContext
from biossl.errors import InputError
from biossl.kinds.base import Kind
from biossl.registry import KINDS

FEATURES = Path(__file__).resolve().parents[1] / "fixtures" / "mil" / "tcga_ad_6964_feats32.npy"


class RowSource:
    def __init__(self, k: int, rows: dict[str, np.ndarray]) -> None:
        self.k, self.rows = k, rows

    def state(self) -> dict[str, Any]:
        return {"feature_dim": int(next(iter(self.rows.values())).shape[1])}

    def draw(self, patient: str, pick: Pick) -> dict[str, torch.Tensor] | None:
        x = self.rows.get(patient)
        return None if x is None else {"x": torch.from_numpy(x[pick(len(x), self.k)])}


class Rows(Kind):
    """Instances are the rows of a patient's ``.npy`` matrix."""

    name = "rows"
    objectives_kind = "features"  # masked feature modelling and the features/mlp encoder fit
    default_encoder = "features/mlp"
    default_objective = "mae"
    instances = "tiles"

    def probe(self, path: Path, *, thorough: bool = False, options: Mapping[str, Any] | None = None) -> None:
        x = np.load(path, mmap_mode="r")
        if x.ndim != 2:
            raise InputError(f"{path}: a rows file holds a 2-D matrix, got shape {x.shape}")

    def open(self, modality: str, cohort: Any, patients: list[str], ctx: SourceContext) -> RowSource:
        rows = {p: np.concatenate([np.load(f).astype(np.float32) for f in cohort.files(p, modality)])
                for p in patients if cohort.files(p, modality)}
        return RowSource(int(ctx.spec.tiles), rows)

    def encoder_options(self, state: Mapping[str, Any], spec: Any) -> dict[str, Any]:
        return {"in_dim": int(state["feature_dim"])} if state.get("feature_dim") else {}


@pytest.fixture
def rows_kind() -> Iterator[None]:
    KINDS.register("rows")(Rows)
    yield
    KINDS.unregister("rows")


CONFIG = """\
seed_everything: 0
trainer: {max_steps: 2, enable_model_summary: false, enable_progress_bar: false}
model:
  modalities:
    left: {embed_dim: 16}
    right: {encoder: features/mlp, embed_dim: 16}
  embed_dim: 16
  warmup_steps: 1
data: {batch_size: 4, spec: {tiles: 3}}
"""


def _cohort(folder: Path) -> Path:
    """Ten patients; each has a ``left`` and (all but the last) a ``right`` matrix of real tile features."""
    feats = np.load(FEATURES)
    folder.mkdir()
    rows = []
    for i in range(10):
        p = f"P{i}"
        np.save(folder / f"{p}_left.npy", feats[i * 3: i * 3 + 3])
        rows.append({"patient_id": p, "modality": "left", "path": f"{p}_left.npy", "kind": "rows", "site": f"S{i % 2}"})
        if i != 9:
            np.save(folder / f"{p}_right.npy", feats[(i * 3 + 16) % 30: (i * 3 + 16) % 30 + 2])
            rows.append({"patient_id": p, "modality": "right", "path": f"{p}_right.npy", "kind": "rows",
                         "site": f"S{i % 2}"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_a_kind_registered_in_a_test_file_pretrains_embeds_and_audits(rows_kind: None, tmp_path: Path) -> None:
    manifest = _cohort(tmp_path / "cohort")
    (tmp_path / "c.yaml").write_text(CONFIG)
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(tmp_path / "c.yaml"), "--data.manifest", str(manifest),
                 "--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(run)]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert "train/masked/left" in metrics and "train/clip/left-right" in metrics  # pairs named by the names
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["biossl"]
    assert state["modality_specs"]["left"]["kind"] == "rows"
    assert state["modality_specs"]["left"]["encoder"] == "features/mlp"  # the kind's default encoder
    assert state["modality_specs"]["left"]["in_dim"] == 512  # filled in from the data by the kind

    out = tmp_path / "emb.h5ad"
    assert main(["embed", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--manifest", str(manifest),
                 "--out", str(out)]) == 0
    adata = ad.read_h5ad(out)
    assert {"X_left", "X_right", "X_fused"} <= set(adata.obsm)
    assert adata.obs["has_right"].tolist() == [True] * 9 + [False]
    assert np.isnan(adata.obsm["X_right"][9]).all() and np.isfinite(adata.obsm["X_left"]).all()

    report = tmp_path / "audit"
    assert main(["audit", "--embeddings", str(out), "--columns", "site", "--out", str(report)]) in (0, 1, 3)
    assert (report / "audit.json").is_file()


def test_an_unregistered_kind_is_a_row_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _cohort(tmp_path / "cohort")
    assert main(["cohort", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "row 2" in err and "unknown kind 'rows'" in err and "slide, volume, table, sequence, features" in err

"""The pretraining probe callback on the real demo cohort: held-out patients, logged probes, no side effects."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
import torch

from biossl.cli import main
from biossl.data.bags import BagSpec
from biossl.data.demo import DEMO_MANIFEST
from biossl.errors import InputError
from biossl.modules.datamodule import BagDataModule

CONFIG = """\
seed_everything: 0
trainer:
  max_steps: 4
  enable_model_summary: false
  enable_progress_bar: false
  log_every_n_steps: 1
{callbacks}
model:
  modalities:
    expression: {{encoder: expression/transformer, embed_dim: 32, depth: 1}}
    sequence: {{encoder: sequence/transformer, embed_dim: 32, depth: 1}}
  embed_dim: 32
  warmup_steps: 1
data:
  batch_size: 6
  holdout: 0.5
  spec: {{windows: 2, window_length: 32, profiles: 1}}
"""

PROBE = """\
  callbacks:
  - class_path: biossl.audit.callback.NuisanceProbe
    init_args: {columns: [site], every_n_steps: 2, n_folds: 2, k: 3, n_permutations: 19}
"""


def _pretrain(root: Path, callbacks: str, work: Path, manifest: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "c.yaml").write_text(CONFIG.format(callbacks=callbacks))
    code = main(["pretrain", "--config", str(root / "c.yaml"), "--data.manifest", str(manifest),
                 "--data.work_dir", str(work), "--trainer.default_root_dir", str(root / "run")])
    assert code == 0
    return root / "run"


def _without_slides(tmp_path: Path) -> Path:
    """The demo manifest without its slide rows (nothing to tile), paths made absolute."""
    table = pd.read_csv(DEMO_MANIFEST)
    table = table[table["modality"] != "wsi"].assign(path=lambda t: [str(DEMO_MANIFEST.parent / p) for p in t["path"]])
    path = tmp_path / "manifest.csv"
    table.to_csv(path, index=False)
    return path


def test_holdout_patients_are_left_out_of_pretraining(tmp_path: Path) -> None:
    manifest = _without_slides(tmp_path)
    dm = BagDataModule(manifest, work_dir=tmp_path, spec=BagSpec(windows=1, window_length=16), holdout=0.25)
    dm.setup("fit")
    assert dm.dataset is not None and dm.holdout_dataset is not None
    held, train = set(dm.holdout_patients), set(dm.dataset.patients)
    assert len(held) == 6 and not held & train and len(held | train) == 24
    assert list(dm.holdout_dataset.patients) == sorted(held)
    # The same seed holds out the same patients; another seed others.
    again = BagDataModule(manifest, work_dir=tmp_path, spec=BagSpec(windows=1, window_length=16), holdout=0.25)
    again.setup("fit")
    other = BagDataModule(manifest, work_dir=tmp_path, spec=BagSpec(windows=1, window_length=16), holdout=0.25,
                          seed=1)
    other.setup("fit")
    assert again.holdout_patients == dm.holdout_patients != other.holdout_patients
    with pytest.raises(InputError, match="data.holdout must be in"):
        BagDataModule(DEMO_MANIFEST, holdout=1.0)
    with pytest.raises(InputError, match="fewer than 2 to pretrain on"):
        BagDataModule(manifest, work_dir=tmp_path, holdout=0.95).setup("fit")


@pytest.mark.integration
def test_probe_callback_logs_site_probes_and_changes_nothing_in_training(tmp_path: Path) -> None:
    work, manifest = tmp_path / "work", _without_slides(tmp_path)
    with_probe = _pretrain(tmp_path / "with", PROBE, work, manifest)
    metrics = pd.read_csv(with_probe / "metrics.csv")
    cols = [c for c in metrics.columns if c.startswith("probe/site/")]
    for key in ("X_fused", "X_expression"):
        for name in ("linear_bacc", "knn_bacc", "chance", "linear_p", "knn_p"):
            assert f"probe/site/{key}/{name}" in cols, cols
    rows = metrics.dropna(subset=["probe/site/X_fused/linear_bacc"])
    assert sorted(rows["step"].astype(int)) == [2, 4]  # every 2 optimiser steps
    assert rows["probe/site/X_fused/linear_bacc"].between(0, 1).all()
    assert rows["probe/site/X_fused/linear_p"].between(1 / 20, 1).all()
    assert (rows["probe/site/X_fused/chance"] < 0.5).all()  # several sites among the held-out patients

    # The callback draws no training randomness: the same run without it ends with the same weights.
    without = _pretrain(tmp_path / "without", "", work, manifest)
    ckpt = torch.load(with_probe / "checkpoints" / "last.ckpt", weights_only=False)
    assert len(ckpt["biossl"]["holdout_patients"]) == 12  # recorded, so audits can tell them apart
    embedded = tmp_path / "e.h5ad"
    assert main(["embed", "--checkpoint", str(with_probe / "checkpoints" / "last.ckpt"), "--manifest", str(manifest),
                 "--work-dir", str(work), "--out", str(embedded)]) == 0
    obs = ad.read_h5ad(embedded).obs
    assert sorted(obs.index[obs["pretrain_holdout"].astype(bool)]) == sorted(ckpt["biossl"]["holdout_patients"])
    a = ckpt["state_dict"]
    b = torch.load(without / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_probe_callback_rejects_an_unknown_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "c.yaml").write_text(CONFIG.format(callbacks=PROBE.replace("[site]", "[scanner]")))
    code = main(["pretrain", "--config", str(root / "c.yaml"), "--data.manifest", str(_without_slides(tmp_path)),
                 "--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(root / "run")])
    assert code == 2
    assert "column(s) ['scanner'] are not manifest metadata" in capsys.readouterr().err

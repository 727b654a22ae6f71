"""Tile features written by other tools (TRIDENT, CLAM) pretrain, embed and fine-tune through the CLI.

The files are written here in the layouts of the tools' own writers (read from their source):

* TRIDENT (``trident/wsi_objects/WSI.py::extract_patch_features``, ``trident/IO.py::save_h5``):
  ``<job>/20x_256px_0px_overlap/features_<encoder>/<slide>.h5`` with datasets ``features`` ``[N, D]``
  (float32 for UNI) and ``coords`` ``[N, 2]`` (int64, level-0 corners), chunked ``(1, ...)`` and resizable;
  the attributes are on the datasets (``features``: name, savetodir, encoder; ``coords``: patch_size,
  patch_size_level0, level0_magnification, target_magnification, overlap, name, savetodir, level0_width,
  level0_height), none on the file. A slide without patches gets a 1-D empty ``features``. Beside it,
  ``patches/<slide>_patches.h5`` holds the coordinates alone.
* CLAM (``extract_features_fp.py``, ``utils/file_utils.py::save_hdf5``): ``<feat_dir>/h5_files/<slide>.h5``
  (``features`` float32, ``coords`` int32, no attributes) and ``<feat_dir>/pt_files/<slide>.pt``
  (``torch.save`` of the features tensor).

The numbers are real: 288 tile features (512-d) of TCGA slide TCGA-AD-6964-01Z-00-DX1
(``tests/fixtures/tool_features``), cut into blocks of neighbouring tiles, one block per slide. The split
into patients and the labels are arbitrary: this checks the route, not representation quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from biossl.cli import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tool_features" / "tcga_ad_6964_feats288.npz"
N_PATIENTS = 12
TILES = 24  # rows per slide block; patient P00 has two slides

CONFIG = """\
seed_everything: 0
trainer: {max_steps: 2, enable_model_summary: false, enable_progress_bar: false}
model:
  modalities:
    he: {encoder: features/mlp, embed_dim: 16}
  embed_dim: 16
  warmup_steps: 1
data: {batch_size: 6, spec: {tiles: 4}}
"""

COORDS_ATTRS = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                "target_magnification": 20, "overlap": 0, "level0_width": 30000, "level0_height": 30000}


def _trident_h5(path: Path, name: str, features: np.ndarray, coords: np.ndarray, encoder: str) -> None:
    """Write one slide's file as TRIDENT's ``save_h5`` does (chunks (1, ...), resizable, attrs on datasets)."""
    with h5py.File(path, "w") as f:
        for key, val in {"features": features, "coords": coords}.items():
            d = f.create_dataset(key, shape=val.shape, maxshape=(None, *val.shape[1:]), chunks=(1, *val.shape[1:]),
                                 dtype=val.dtype)
            d[:] = val
        f["features"].attrs.update({"name": name, "savetodir": str(path.parent), "encoder": encoder})
        f["coords"].attrs.update({**COORDS_ATTRS, "name": name, "savetodir": str(path.parent.parent)})


def _slides() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{slide name: (features, coords)}``: 12 blocks of 24 neighbouring real tiles."""
    data = np.load(FIXTURE)
    x, c = data["features"], data["coords"]
    return {f"TCGA-XX-{i:04d}-01Z-00-DX1": (x[i * TILES:(i + 1) * TILES], c[i * TILES:(i + 1) * TILES])
            for i in range(N_PATIENTS)}


def _patient(i: int) -> str:
    return f"P{max(i - 1, 0):02d}"  # slides 0 and 1 are both P00's: a patient with two slides


def _trident_job(root: Path, *, encoder: str = "mopadi512", widen: bool = False) -> tuple[Path, Path]:
    """A TRIDENT job folder and a manifest of its feature files; ``(manifest, labels)``."""
    coords_dir = root / "job" / "20x_256px_0px_overlap"
    feats_dir = coords_dir / f"features_{encoder}"
    (coords_dir / "patches").mkdir(parents=True)
    feats_dir.mkdir()
    rows = []
    for i, (name, (x, c)) in enumerate(_slides().items()):
        if widen:  # a 1024-wide extractor (UNI-like) over the same tiles
            x = np.concatenate([x, x[::-1]], axis=1)
        with h5py.File(coords_dir / "patches" / f"{name}_patches.h5", "w") as f:
            f.create_dataset("coords", data=c).attrs.update({**COORDS_ATTRS, "name": name})
        _trident_h5(feats_dir / f"{name}.h5", name, x, c, encoder)
        rows.append({"patient_id": _patient(i), "modality": "he", "path": str(feats_dir / f"{name}.h5"),
                     "kind": "features", "site": f"S{i % 2}"})
    # a slide where TRIDENT found no tissue: 1-D empty features (encoder without embedding_dim)
    empty = "TCGA-XX-9999-01Z-00-DX1"
    _trident_h5(feats_dir / f"{empty}.h5", empty, np.empty((0,), np.float32), np.empty((0, 2), np.int64), encoder)
    rows.append({"patient_id": "P03", "modality": "he", "path": str(feats_dir / f"{empty}.h5"), "kind": "features",
                 "site": "S1"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    labels = root / "labels.csv"
    patients = sorted({r["patient_id"] for r in rows})
    pd.DataFrame({"patient_id": patients, "subtype": ["A", "B"] * (len(patients) // 2) + ["A"] * (len(patients) % 2)}
                 ).to_csv(labels, index=False)
    return manifest, labels


def _clam_dir(root: Path) -> Path:
    """A CLAM ``--feat_dir`` (h5_files and pt_files) of the same slides; a manifest of its .pt files."""
    rows = []
    for sub in ("h5_files", "pt_files"):
        (root / "clam" / sub).mkdir(parents=True)
    for i, (name, (x, c)) in enumerate(_slides().items()):
        with h5py.File(root / "clam" / "h5_files" / f"{name}.h5", "w") as f:
            f.create_dataset("features", data=x.astype(np.float32), maxshape=(None, x.shape[1]),
                             chunks=(32, x.shape[1]))
            f.create_dataset("coords", data=c.astype(np.int32), maxshape=(None, 2), chunks=(32, 2))
        torch.save(torch.from_numpy(x.astype(np.float32)), root / "clam" / "pt_files" / f"{name}.pt")
        pt = root / "clam" / "pt_files" / f"{name}.pt"
        rows.append({"patient_id": _patient(i), "modality": "he", "path": str(pt), "kind": "features",
                     "site": f"S{i % 2}"})
    pd.DataFrame(rows).to_csv(root / "clam_manifest.csv", index=False)
    return root / "clam_manifest.csv"


@pytest.fixture(scope="module")
def trident_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """``(root, manifest, labels, checkpoint)``: 2 pretraining steps on a TRIDENT feature folder."""
    root = tmp_path_factory.mktemp("trident")
    manifest, labels = _trident_job(root)
    (root / "c.yaml").write_text(CONFIG)
    assert main(["pretrain", "--config", str(root / "c.yaml"), "--data.manifest", str(manifest),
                 "--data.work_dir", str(root / "work"), "--trainer.default_root_dir", str(root / "run")]) == 0
    return root, manifest, labels, root / "run" / "checkpoints" / "last.ckpt"


def test_a_trident_feature_folder_pretrains_embeds_and_finetunes(trident_run: tuple[Path, Path, Path, Path]) -> None:
    root, manifest, labels, ckpt = trident_run
    state = torch.load(ckpt, weights_only=True)["biossl"]
    assert state["modality_specs"]["he"]["kind"] == "features" and state["modality_specs"]["he"]["in_dim"] == 512
    out = root / "emb.h5ad"
    assert main(["embed", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--labels", str(labels),
                 "--work-dir", str(root / "work"), "--out", str(out)]) == 0
    adata = ad.read_h5ad(out)
    assert adata.n_obs == N_PATIENTS - 1 and np.isfinite(adata.obsm["X_he"]).all()
    assert len(np.unique(adata.obsm["X_he"].round(5), axis=0)) == adata.n_obs  # patients differ
    result = root / "ft.json"
    assert main(["finetune", "--embeddings", str(out), "--embedding", "X_he", "--labels", str(labels),
                 "--task", "subtype", "--label-column", "subtype", "--folds", "3", "--out", str(result)]) == 0
    assert json.loads(result.read_text())


def test_clam_pt_files_give_the_same_embeddings_as_the_trident_h5(trident_run: tuple[Path, Path, Path, Path],
                                                                   tmp_path: Path) -> None:
    root, manifest, _, ckpt = trident_run
    trident_out, clam_out = tmp_path / "trident.h5ad", tmp_path / "clam.h5ad"
    work = ["--work-dir", str(tmp_path / "work")]
    assert main(["embed", "--checkpoint", str(ckpt), "--manifest", str(manifest), *work, "--out",
                 str(trident_out)]) == 0
    assert main(["embed", "--checkpoint", str(ckpt), "--manifest", str(_clam_dir(tmp_path)), *work, "--out",
                 str(clam_out)]) == 0
    a, b = ad.read_h5ad(trident_out), ad.read_h5ad(clam_out)
    assert list(a.obs_names) == list(b.obs_names)
    np.testing.assert_allclose(a.obsm["X_he"], b.obsm["X_he"], rtol=0, atol=1e-5)


def test_features_of_another_width_are_one_line_naming_file_and_widths(
        trident_run: tuple[Path, Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, _, ckpt = trident_run
    wide, _ = _trident_job(tmp_path, encoder="uni_v1", widen=True)
    out = tmp_path / "emb.h5ad"
    capsys.readouterr()
    assert main(["embed", "--checkpoint", str(ckpt), "--manifest", str(wide), "--work-dir", str(tmp_path / "work"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not out.exists()
    assert "features_uni_v1/TCGA-XX-0000-01Z-00-DX1.h5" in err and "1024-wide" in err and "512-wide" in err


@pytest.mark.parametrize("content, said", [
    ("pickle", "holds a pickled torch.nn.modules.linear.Linear object"),
    ("3d", "holds a tensor of shape (2, 3, 4)"),
])
def test_a_pt_file_that_is_not_features_is_a_row_error(content: str, said: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "S1.pt"
    if content == "pickle":
        torch.save({"model": torch.nn.Linear(2, 2)}, bad)
    else:
        torch.save(torch.zeros(2, 3, 4), bad)
    pd.DataFrame([{"patient_id": "P1", "modality": "he", "path": str(bad), "kind": "features"}]).to_csv(
        tmp_path / "m.csv", index=False)
    assert main(["cohort", str(tmp_path / "m.csv")]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.strip().startswith("row 2:")]
    assert str(bad) in line and said in line and "is not a tile-features file (an .h5" in line

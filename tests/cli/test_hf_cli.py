"""Hugging Face folders through the plain CLI: ``biossl pretrain`` adapts a ViT, an ESM masked LM and a gene-token
BERT jointly with a native table encoder on the demo cohort (real slides, promoter DNA, TCGA tables); ``embed``,
``finetune``, ``audit`` and ``cache-features`` load the checkpoint; bad folders are one line and exit 2.

The models are tiny, randomly initialised and written by the test with ``save_pretrained`` (no downloads).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from biossl.cli import main  # noqa: E402

spec = importlib.util.spec_from_file_location("hf_models", Path(__file__).parents[1] / "encoders" / "hf_models.py")
assert spec is not None and spec.loader is not None
hf_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hf_models)

CONFIG = """\
seed_everything: 0
trainer: {{max_steps: 2, enable_model_summary: false, enable_progress_bar: false}}
model:
  modalities:
{modalities}
  embed_dim: 16
  warmup_steps: 1
data:
  batch_size: 12
  spec: {{tiles: 2, tile_px: {tile_px}, windows: 2, window_length: 32}}
"""
MODALITIES = {
    "wsi": "{encoder: hf, path: ROOT/vit}",
    "expression": "{encoder: hf, path: ROOT/bert, max_length: 64}",
    "sequence": "{encoder: hf, path: ROOT/esm}",
    "cnv": "{encoder: table/mlp, embed_dim: 16}",  # a native encoder trained alongside
}


def _config(path: Path, root: Path, modalities: dict[str, str], tile_px: int = 32) -> Path:
    lines = "\n".join(f"    {m}: {v.replace('ROOT', str(root))}" for m, v in modalities.items())
    path.write_text(CONFIG.format(modalities=lines, tile_px=tile_px))
    return path


def _pretrain(config: Path, demo_cohort: Path, work: Path, run: Path) -> int:
    return main(["pretrain", "--config", str(config), "--data.manifest", str(demo_cohort / "manifest.csv"),
                 "--data.work_dir", str(work), "--trainer.default_root_dir", str(run)])


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory, demo_cohort: Path) -> dict[str, Path]:
    """Two pretraining steps of three hf models and a native encoder on the demo cohort (~6 s)."""
    root = tmp_path_factory.mktemp("hf_cli")
    models = root / "models"
    genes = hf_models.gene_symbols(demo_cohort / "expression.csv")
    hf_models.vit(models / "vit")
    hf_models.esm(models / "esm")
    hf_models.gene_bert(models / "bert", genes[:200] + hf_models.FOREIGN_GENES)
    config = _config(root / "hf.yaml", models, MODALITIES)
    assert _pretrain(config, demo_cohort, root / "work", root / "run") == 0
    return {"root": root, "models": models, "work": root / "work", "ckpt": root / "run" / "checkpoints" / "last.ckpt"}


def _folder_weights(folder: Path, masked_lm: bool) -> dict[str, torch.Tensor]:
    """The folder's weights under the names transformers gives them in memory (they may differ from the file's)."""
    from transformers import AutoModel, AutoModelForMaskedLM

    return (AutoModelForMaskedLM if masked_lm else AutoModel).from_pretrained(str(folder)).state_dict()


@pytest.mark.integration
def test_pretrain_adapts_the_hf_models_jointly_with_a_native_encoder(hf_run: dict[str, Path]) -> None:
    ckpt = torch.load(hf_run["ckpt"], weights_only=True)
    specs = ckpt["biossl"]["modality_specs"]
    assert specs["wsi"]["img_size"] == 32 and specs["sequence"]["max_len"] == 32
    assert len(specs["expression"]["genes"]) == 256 and "genes" not in specs["cnv"]  # table/mlp takes no names
    state = ckpt["state_dict"]
    for m, folder in (("wsi", "vit"), ("sequence", "esm"), ("expression", "bert")):
        before = _folder_weights(hf_run["models"] / folder, masked_lm=folder != "vit")
        after = {k.removeprefix(f"encoders.{m}.model."): v for k, v in state.items()
                 if k.startswith(f"encoders.{m}.model.")}
        assert set(after) == set(before), m
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert any("layers.0." in k or "layer.0." in k for k in changed), f"{m}: not adapted"
        if m == "wsi":  # the ViT's unused pooler stays as the folder has it, so an export writes it back unchanged
            assert not [k for k in changed if k.startswith("pooler.")]
    assert any(k.startswith("encoders.cnv.") for k in state)


@pytest.mark.integration
def test_embed_finetune_audit_and_cache_features_load_the_checkpoint(hf_run: dict[str, Path], demo_cohort: Path,
                                                                     tmp_path: Path) -> None:
    ckpt, work = hf_run["ckpt"], hf_run["work"]
    cohort = ["--manifest", str(demo_cohort / "manifest.csv"), "--work-dir", str(work)]
    labels = str(demo_cohort / "labels.csv")
    out = tmp_path / "e.h5ad"
    assert main(["embed", "--checkpoint", str(ckpt), *cohort, "--labels", labels, "--out", str(out)]) == 0
    adata = ad.read_h5ad(out)
    for m, n in (("wsi", 8), ("expression", 21), ("sequence", 16), ("cnv", 10)):
        x = adata.obsm[f"X_{m}"]
        assert x.shape == (24, 16) and int(np.isfinite(x).all(axis=1).sum()) == n
    assert main(["finetune", "--embeddings", str(out), "--labels", labels, "--task", "subtype", "--label-column",
                 "subtype", "--folds", "2", "--out", str(tmp_path / "probe.json")]) == 0
    assert main(["finetune", "--checkpoint", str(ckpt), *cohort, "--labels", labels, "--task", "subtype",
                 "--label-column", "subtype", "--mode", "finetune", "--epochs", "1", "--folds", "2", "--device", "cpu",
                 "--out", str(tmp_path / "ft.json")]) == 0
    assert json.loads((tmp_path / "ft.json").read_text())
    code = main(["audit", "--checkpoint", str(ckpt), *cohort, "--labels", labels, "--columns", "site",
                 "--keys", "X_fused", "--permutations", "99", "--folds", "2", "--out", str(tmp_path / "audit")])
    assert code in (0, 1) and (tmp_path / "audit" / "audit.json").is_file()
    assert main(["cache-features", str(work / "tiles"), "--out", str(tmp_path / "feats"), "--checkpoint", str(ckpt),
                 "--num-workers", "0", "--no-progress"]) == 0
    import h5py

    with h5py.File(next((tmp_path / "feats").glob("DEMO-04*.h5")), "r") as f:
        assert f["features"].shape[1] == 32  # the ViT's hidden size


@pytest.mark.integration
def test_a_moved_model_folder_is_one_line_and_found_through_the_environment(
        hf_run: dict[str, Path], demo_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["embed", "--checkpoint", str(hf_run["ckpt"]), "--manifest", str(demo_cohort / "manifest.csv"),
            "--work-dir", str(hf_run["work"])]
    assert main([*args, "--out", str(tmp_path / "before.h5ad")]) == 0
    moved = hf_run["root"] / "elsewhere"
    shutil.move(hf_run["models"], moved)
    try:
        capsys.readouterr()
        assert main([*args, "--out", str(tmp_path / "lost.h5ad")]) == 2
        err = capsys.readouterr().err
        line = next(x for x in err.splitlines() if x.startswith("biossl embed: error:"))
        assert "not found (moved or deleted?)" in line and "BIOSSL_HF_MODELS" in line and "Traceback" not in err
        assert "does not rebuild" not in line  # not read as a damaged checkpoint
        assert not (tmp_path / "lost.h5ad").exists()
        monkeypatch.setenv("BIOSSL_HF_MODELS", str(moved))
        assert main([*args, "--out", str(tmp_path / "after.h5ad")]) == 0
    finally:
        shutil.move(moved, hf_run["models"])
    before, after = ad.read_h5ad(tmp_path / "before.h5ad"), ad.read_h5ad(tmp_path / "after.h5ad")
    assert np.allclose(before.obsm["X_fused"], after.obsm["X_fused"], atol=1e-6)  # the checkpoint's weights


@pytest.mark.integration
def test_without_transformers_embed_says_how_to_install(hf_run: dict[str, Path], demo_cohort: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    code = main(["embed", "--checkpoint", str(hf_run["ckpt"]), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--work-dir", str(hf_run["work"]), "--out", str(tmp_path / "e.h5ad")])
    assert code == 2 and 'pip install "biossl[hf]"' in capsys.readouterr().err


def _bad_folder(case: str, root: Path, models: Path) -> tuple[dict[str, str], int]:
    """A one-modality config naming a bad folder, and its tile size."""
    bad = root / "bad"
    if case == "not_a_model":
        bad.mkdir()
        (bad / "config.json").write_text("<html>404</html>")
        return {"sequence": f"{{encoder: hf, path: {bad}}}"}, 32
    if case == "no_config":
        bad.mkdir()
        (bad / "README.md").write_text("weights go here")
        return {"sequence": f"{{encoder: hf, path: {bad}}}"}, 32
    if case == "tokenizer":  # the model's 10 embedding rows, a tokenizer of 14 tokens
        hf_models.esm(bad, vocab=[*hf_models.ESM_VOCAB, "R", "Y", "S", "W"], rows=len(hf_models.ESM_VOCAB))
        return {"sequence": f"{{encoder: hf, path: {bad}}}"}, 32
    if case == "tile_size":  # a 32 px ViT, 64 px tiles
        return {"wsi": f"{{encoder: hf, path: {models}/vit}}"}, 64
    assert case == "genes"  # a gene vocabulary with none of the table's genes
    hf_models.gene_bert(bad, ["NOTAGENE1", "NOTAGENE2", "NOTAGENE3"])
    return {"expression": f"{{encoder: hf, path: {bad}}}"}, 32


@pytest.mark.integration
@pytest.mark.parametrize(("case", "message"), [
    ("not_a_model", "config.json is not a readable model config"),
    ("no_config", "is not a Hugging Face model folder (no config.json)"),
    ("tokenizer", "its tokenizer has 14 tokens but the model's embedding has 10 rows"),
    ("tile_size", "reads 32 px images but the tiles are 64 px; set data.spec.tile_px: 32"),
    ("genes", "none of the table's 256 features (e.g. CAMKV, PPY, CCL7) is in the vocabulary"),
])
def test_bad_model_folders_stop_pretraining_with_one_line(case: str, message: str, hf_run: dict[str, Path],
                                                          demo_cohort: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    modalities, tile_px = _bad_folder(case, tmp_path, hf_run["models"])
    config = _config(tmp_path / "bad.yaml", hf_run["models"], modalities, tile_px=tile_px)
    capsys.readouterr()
    assert _pretrain(config, demo_cohort, hf_run["work"], tmp_path / "run") == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("biossl pretrain: error:"))
    assert message in line and "Traceback" not in err
    assert not list((tmp_path / "run").rglob("*.ckpt"))

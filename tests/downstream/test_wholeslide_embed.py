"""Whole-slide embedding: ``biossl embed`` (and finetune/audit from a checkpoint) use every tissue tile of every slide.

Real slides: ``tests/fixtures/wsi/he_small.svs`` and the demo cohort's pyramidal JPEG ``.svs`` built from real
H&E tiles (``biossl.data.demo.write_aperio_svs``); the checkpoint is the session's tiny pretraining (bags of 2
tiles, 2 DNA windows, 1 scan patch).
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

FIXTURE_SLIDE = Path(__file__).resolve().parents[1] / "fixtures" / "wsi" / "he_small.svs"


def _tiles_kept(slides: list[Path], out: Path) -> int:
    """Tiles that `biossl tile` keeps for ``slides`` with the pretraining run's tiling options (the defaults)."""
    assert main(["tile", *map(str, slides), "--out", str(out), "--no-progress"]) == 0
    total = 0
    for h5 in sorted(out.glob("*.h5")):
        with h5py.File(h5, "r") as f:
            total += len(f["coords"])
    return total


def _slides(demo_cohort: Path) -> list[Path]:
    """The fixture slide and the demo's largest pyramidal .svs (real H&E tiles), one patient's two slides."""
    return [FIXTURE_SLIDE, demo_cohort / "slides" / "DEMO-04.svs"]


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory, demo_cohort: Path) -> Path:
    """DEMO-01: two slides and its expression row; DEMO-02: expression only (no slide)."""
    root = tmp_path_factory.mktemp("wholeslide")
    rows = [*(("DEMO-01", "wsi", s) for s in _slides(demo_cohort)),
            ("DEMO-01", "expression", demo_cohort / "expression.csv"),
            ("DEMO-02", "expression", demo_cohort / "expression.csv")]
    pd.DataFrame(rows, columns=["patient_id", "modality", "path"]).to_csv(root / "manifest.csv", index=False)
    return root


def _embed(pretrained: tuple[Path, Path], cohort: Path, out: Path, *extra: str) -> ad.AnnData:
    checkpoint, _ = pretrained
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(cohort / "manifest.csv"),
                 "--work-dir", str(cohort / "work"), "--out", str(out), *extra]) == 0
    return ad.read_h5ad(out)


def test_embed_uses_every_tissue_tile_of_every_slide(pretrained: tuple[Path, Path], small_cohort: Path,
                                                     demo_cohort: Path, tmp_path: Path) -> None:
    n_tiles = _tiles_kept(_slides(demo_cohort), tmp_path / "tiles")
    assert n_tiles > 8  # more than the pretraining bag of 2 and the sample of 4 below
    full = _embed(pretrained, small_cohort, tmp_path / "all.h5ad")
    assert full.obs.loc["DEMO-01", "n_instances_wsi"] == n_tiles == full.obs.loc["DEMO-01", "n_available_wsi"]
    assert full.uns["biossl"]["instances"]["policy"] == "all"
    # A patient without the modality: NaN, no instances.
    assert not full.obs.loc["DEMO-02", "has_wsi"] and full.obs.loc["DEMO-02", "n_instances_wsi"] == 0
    assert np.isnan(full[["DEMO-02"]].obsm["X_wsi"]).all() and np.isfinite(full[["DEMO-01"]].obsm["X_wsi"]).all()
    assert (full.obs["n_instances_expression"] == 1).all()

    sampled = _embed(pretrained, small_cohort, tmp_path / "four.h5ad", "--max-tiles", "4")
    assert sampled.obs.loc["DEMO-01", "n_instances_wsi"] == 4
    assert sampled.obs.loc["DEMO-01", "n_available_wsi"] == n_tiles
    assert sampled.uns["biossl"]["instances"]["policy"] == "sampled 4"
    assert np.abs(sampled.obsm["X_wsi"][0] - full.obsm["X_wsi"][0]).max() > 1e-4
    again = _embed(pretrained, small_cohort, tmp_path / "four_again.h5ad", "--max-instances", "4")
    np.testing.assert_allclose(again.obsm["X_wsi"], sampled.obsm["X_wsi"], atol=1e-6, equal_nan=True)

    # Chunks of 3 tiles give the embedding of one batch of every tile.
    chunked = _embed(pretrained, small_cohort, tmp_path / "chunk3.h5ad", "--chunk-size", "3")
    one = _embed(pretrained, small_cohort, tmp_path / "one.h5ad", "--chunk-size", "100000")
    for key in full.obsm:
        np.testing.assert_allclose(chunked.obsm[key], one.obsm[key], rtol=0, atol=1e-5, equal_nan=True)
        np.testing.assert_allclose(full.obsm[key], one.obsm[key], rtol=0, atol=1e-5, equal_nan=True)


def test_the_embedding_is_the_pool_of_every_tile_read_by_hand(pretrained: tuple[Path, Path], small_cohort: Path,
                                                              demo_cohort: Path, tmp_path: Path) -> None:
    """Independent check: read every tile of both slides with OpenSlide, encode them in one batch, pool once."""
    import openslide
    from PIL import Image

    from biossl.data.tiling import slide_key
    from biossl.encoders.patient import PatientEncoder

    checkpoint, _ = pretrained
    full = _embed(pretrained, small_cohort, tmp_path / "all.h5ad", "--chunk-size", "5")
    tiles = []
    for path in _slides(demo_cohort):
        with h5py.File(small_cohort / "work" / "tiles" / f"{slide_key(path)}.h5", "r") as f:
            coords, level, size = f["coords"][:], int(f.attrs["level"]), int(f.attrs["read_size"])
            tile_size = int(f.attrs["tile_size"])
        with openslide.OpenSlide(str(path)) as slide:
            for x, y in coords:
                im = slide.read_region((int(x), int(y)), level, (size, size)).convert("RGB")
                if size != tile_size:
                    im = im.resize((tile_size, tile_size), Image.Resampling.BILINEAR)
                tiles.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    module = PatientEncoder.from_checkpoint(checkpoint).eval()
    px = int(module.data_state["bag_spec"]["tile_px"])
    x = torch.stack(tiles).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=px, mode="bilinear", antialias=True)
    with torch.no_grad():
        z = module.projections["wsi"](module.encoders["wsi"].embed(x))
        pooled, _ = module.pools["wsi"](z[None], torch.ones((1, len(z)), dtype=torch.bool))
    np.testing.assert_allclose(full.obsm["X_wsi"][0], pooled[0].numpy(), rtol=0, atol=1e-5)


def test_demo_slides_scans_and_dna_use_every_instance(pretrained: tuple[Path, Path], embedded: Path,
                                                      demo_cohort: Path) -> None:
    """The demo's real pyramidal .svs: every tile the tiler kept; DNA: every window; scans: every grid patch."""
    from biossl.data.sequence import encode, patient_sequences, windows
    from biossl.data.tiles import SlideTiles
    from biossl.data.tiling import slide_key

    _, work = pretrained
    adata = ad.read_h5ad(embedded)
    manifest = pd.read_csv(demo_cohort / "manifest.csv")
    slides = manifest[manifest["modality"] == "wsi"]
    assert len(slides) >= 2
    for p, rel in zip(slides["patient_id"], slides["path"]):
        path = demo_cohort / rel
        n = len(SlideTiles(work / "tiles" / f"{slide_key(path)}.h5", slide_path=path))
        assert adata.obs.loc[p, "n_instances_wsi"] == n == adata.obs.loc[p, "n_available_wsi"], p
    assert adata.obs.loc[adata.obs["has_wsi"], "n_instances_wsi"].max() > 2  # more than the bag of 2 tiles
    dna = manifest[manifest["modality"] == "sequence"].iloc[0]
    n_windows = sum(len(windows(encode(r.sequence), 32, 32))
                    for r in patient_sequences(demo_cohort / dna["path"], dna["patient_id"]))
    assert adata.obs.loc[dna["patient_id"], "n_instances_sequence"] == n_windows > 2
    scans = adata.obs.loc[adata.obs["has_volume"], "n_instances_volume"]
    assert len(scans) and (scans > 1).all()  # every grid patch, not the bag's 1
    for m in ("wsi", "volume", "sequence", "expression"):
        absent = ~adata.obs[f"has_{m}"].to_numpy()
        assert (adata.obs[f"n_instances_{m}"].to_numpy()[absent] == 0).all()
        assert np.isnan(adata.obsm[f"X_{m}"][absent]).all()


def test_finetune_and_audit_embed_every_tile_as_embed_does(pretrained: tuple[Path, Path], embedded: Path,
                                                           demo_cohort: Path, tmp_path: Path) -> None:
    from biossl.data.bags import InstancePolicy
    from biossl.downstream.finetuning import CohortBags

    checkpoint, work = pretrained
    adata = ad.read_h5ad(embedded)
    bags = CohortBags(checkpoint, demo_cohort / "manifest.csv", work_dir=work)
    for key in ("X_wsi", "X_fused"):
        frame = bags.embeddings(key)
        np.testing.assert_allclose(frame.to_numpy(), adata[list(frame.index)].obsm[key], rtol=0, atol=1e-5)
    sampled = CohortBags(checkpoint, demo_cohort / "manifest.csv", work_dir=work, policy=InstancePolicy(2))
    assert np.abs(sampled.embeddings("X_wsi").to_numpy() - bags.embeddings("X_wsi").to_numpy()).max() > 1e-4

    out = tmp_path / "audit"
    code = main(["audit", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--work-dir", str(work), "--columns", "site", "--keys", "X_wsi", "--permutations", "49",
                 "--folds", "2", "--k", "2", "--max-tiles", "3", "--out", str(out)])
    assert code in (0, 1, 3)  # 3: incomplete (8 slide patients are too few for the demo's sites)
    provenance = json.loads((out / "audit.json").read_text())["input"]["provenance"]
    assert provenance["instances"]["policy"] == "sampled 3"

    probe = tmp_path / "probe.json"
    assert main(["finetune", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--work-dir", str(work), "--labels", str(demo_cohort / "labels.csv"), "--task", "subtype",
                 "--label-column", "subtype", "--embedding", "X_wsi", "--folds", "2", "--out", str(probe)]) == 0
    assert json.loads(probe.read_text())["inputs"]["embeddings"]["instances"]["policy"] == "all"


@pytest.mark.parametrize("flag, value, said", [
    ("--max-tiles", "0", "--max-tiles (--max-instances) must be at least 1; got 0"),
    ("--max-instances", "-3", "must be at least 1; got -3"),
    ("--chunk-size", "0", "--chunk-size must be at least 1; got 0"),
])
def test_bad_instance_options_exit_2_before_any_work(pretrained: tuple[Path, Path], demo_cohort: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     flag: str, value: str, said: str) -> None:
    checkpoint, work = pretrained
    out = tmp_path / "e.h5ad"
    assert main(["embed", "--checkpoint", str(tmp_path / "missing.ckpt"), "--manifest",
                 str(demo_cohort / "manifest.csv"), "--work-dir", str(work), "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err
    assert said in err and "missing.ckpt" not in err  # refused before the checkpoint is read
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_audit_refuses_max_tiles_on_finished_embeddings(embedded: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--embeddings", str(embedded), "--columns", "site", "--max-tiles", "4",
                 "--out", str(tmp_path / "a")]) == 2
    assert "--max-tiles applies to embeddings computed from --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()

"""``biossl cache-features`` through its add_arguments/run on real tiles of the fixture slides."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from biossl import keys
from biossl.commands import cache_features
from biossl.data.features import SlideFeatures
from biossl.data.tiles import SlideTiles
from biossl.data.tiling import tile_slide
from biossl.encoders.base import ModalityModel
from biossl.errors import InputError
from biossl.modules.pretrain import PretrainModule

VIT = {"encoder": "image/vit_tiny", "spatial_dims": 2, "in_channels": 3, "img_size": 64, "patch_size": 8}


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cache_features.add_arguments(parser)
    return cache_features.run(parser.parse_args([*argv, "--num-workers", "0", "--no-progress"]))


@pytest.fixture(scope="module")
def coords(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two slides tiled at 256 px: he_small (4 tiles) and the same pixels without MPP, tiled coarser (1 tile)."""
    out = tmp_path_factory.mktemp("coords")
    tile_slide(fixtures / "wsi" / "he_small.svs", out)
    tile_slide(fixtures / "wsi" / "he_small_nompp.svs", out, slide_mpp=0.25)
    return out


def _named(folder: Path, stem: str) -> Path:
    """The one ``<stem>.<slide fingerprint>.h5`` file of a slide in ``folder``."""
    (found,) = folder.glob(f"{stem}.*.h5")
    return found


def _pixels(h5: Path, px: int) -> torch.Tensor:
    st = SlideTiles(h5)
    x = torch.from_numpy(np.stack([st.read(i) for i in range(len(st))])).permute(0, 3, 1, 2).float() / 255
    return torch.nn.functional.interpolate(x, size=px, mode="bilinear", antialias=True)


def _checkpoint(path: Path, modalities: dict[str, dict[str, object]], tile_px: int = 64) -> PretrainModule:
    module = PretrainModule(modalities, embed_dim=16, seed=3)
    module.configure_model()
    module.data_state["bag_spec"] = {"tiles": 8, "tile_px": tile_px}
    ckpt: dict[str, object] = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return module


def test_checkpoint_encoder_features(coords: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = _checkpoint(tmp_path / "m.ckpt", {keys.WSI: VIT})
    assert _run([str(coords), "--out", str(tmp_path / "f"), "--checkpoint", str(tmp_path / "m.ckpt")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"he_small\.[0-9a-f]{10}: 4 tiles x 96", out)
    assert re.search(r"he_small_nompp\.[0-9a-f]{10}: 1 tiles x 96", out)
    assert "total: 5 tiles from 2 slides" in out and "tiles at 64 px" in out
    enc = cast(ModalityModel, module.encoders[keys.WSI]).eval()
    for stem in ("he_small", "he_small_nompp"):
        feats = SlideFeatures(tmp_path / "f" / _named(coords, stem).name)
        assert feats.attrs["encoder"] == "image/vit_tiny" and feats.attrs["tile_px"] == 64
        assert feats.attrs["encoder_checkpoint"] == str((tmp_path / "m.ckpt").resolve())
        with torch.no_grad():
            ref = enc.embed(_pixels(_named(coords, stem), 64)).numpy()
        np.testing.assert_allclose(feats.read(range(len(feats))), ref, rtol=2e-3, atol=2e-3)


def test_random_encoder_rerun_and_shard(coords: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(coords), "--out", str(tmp_path), "--encoder", "image/vit_tiny", "--encoder-arg", "img_size=32",
            "--encoder-arg", "patch_size=8", "--batch-size", "3"]
    assert _run([*args, "--shard", "1/2"]) == 0
    assert [p.name for p in tmp_path.glob("*.h5")] == [_named(coords, "he_small_nompp").name]
    assert _run(args) == 0
    first = SlideFeatures(_named(tmp_path, "he_small"))
    assert first.embed_dim == 96 and first.attrs["tile_px"] == 32 and len(first) == 4
    assert first.attrs["encoder_kwargs"] == "{img_size: 32, patch_size: 8}"
    stamp = _named(tmp_path, "he_small").stat().st_mtime_ns
    assert _run(args) == 0  # same seed-0 weights: everything is reused
    assert _named(tmp_path, "he_small").stat().st_mtime_ns == stamp
    assert "total: 5 tiles from 2 slides" in capsys.readouterr().out


def test_bad_inputs_say_what_to_fix(coords: Path, tmp_path: Path) -> None:
    no_wsi = tmp_path / "expr.ckpt"
    _checkpoint(no_wsi, {keys.EXPRESSION: {"encoder": "expression/mlp", "n_genes": 8}})
    cases = [
        ([str(coords), "--out", str(tmp_path / "o"), "--checkpoint", str(no_wsi)], r"no slide encoder.*expression"),
        ([str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--encoder", "image/vit_tiny"], "not found"),
        ([str(coords), "--out", str(coords), "--encoder", "image/vit_tiny"], "coordinates folder"),
        ([str(coords), "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "x.ckpt")], "x.ckpt not found"),
        ([str(coords), "--out", str(tmp_path / "o"), "--checkpoint", str(_named(coords, "he_small"))],
         "not a readable"),
        ([str(coords), "--out", str(tmp_path / "o"), "--encoder", "image/vit_tinny"], "Did you mean image/vit_tiny"),
        ([str(coords), "--out", str(tmp_path / "o"), "--encoder", "image/vit_tiny", "--tile-px", "48"],
         r"img_size=\(64, 64\).*--tile-px"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append(([str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--encoder", "x"], "no .h5 coordinates"))
    for argv, message in cases:
        with pytest.raises(InputError, match=message) as err:
            _run(argv)
        assert err.value.exit_code == 2
    assert not any((tmp_path / "o").glob("*"))  # no feature file and no temporary left behind
    with pytest.raises(SystemExit):
        _run([str(coords), "--out", str(tmp_path / "o"), "--encoder-arg", "img_size"])

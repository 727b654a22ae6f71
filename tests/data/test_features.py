"""Tile-feature cache on the real H&E fixture slide: values, layout, skip, atomicity, reader."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import biossl
from biossl import keys
from biossl.data.bags import BagSpec, PatientBagDataset
from biossl.data.cohort import Cohort
from biossl.data.features import (
    SlideFeatures,
    common_embed_dim,
    encoder_fingerprint,
    feature_files_for,
    write_tile_features,
)
from biossl.data.tiles import SlideTiles
from biossl.data.tiling import slide_key, tile_slide
from biossl.encoders import ENCODERS
from biossl.encoders.base import ModalityModel
from biossl.errors import InputError, SlideError


def _vit(seed: int = 0) -> ModalityModel:
    torch.manual_seed(seed)
    return ENCODERS.build("image/vit_tiny", img_size=64, patch_size=8).eval()


@pytest.fixture(scope="module")
def coords64(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """he_small.svs tiled at 64 px: 64 real tiles (the H&E region is 512 x 512 px)."""
    return tile_slide(fixtures / "wsi" / "he_small.svs", tmp_path_factory.mktemp("c64"), tile_size=64).h5_path


def _tiles(h5: Path) -> torch.Tensor:
    st = SlideTiles(h5)
    return torch.from_numpy(np.stack([st.read(i) for i in range(len(st))])).permute(0, 3, 1, 2).float() / 255


def test_features_equal_embed_of_the_same_tiles(coords64: Path, tmp_path: Path) -> None:
    enc = _vit()
    out = write_tile_features(coords64, enc, tmp_path, batch_size=24, encoder_name="image/vit_tiny", progress=False)
    assert out == tmp_path / coords64.name  # the coordinates file's name: <stem>.<slide fingerprint>.h5
    with h5py.File(out, "r") as f, h5py.File(coords64, "r") as c:
        assert f["features"].dtype == np.float16 and f["features"].shape == (64, 96)
        assert f["coords"].dtype == np.int64
        np.testing.assert_array_equal(f["coords"][:], c["coords"][:])
        attrs = dict(f.attrs)
    assert attrs["encoder"] == "image/vit_tiny" and attrs["embed_dim"] == 96 and attrs["tile_px"] == 64
    assert attrs["source_coords"] == str(coords64.resolve()) and attrs["biossl_version"] == biossl.__version__
    assert attrs["weights_sha1"] == encoder_fingerprint(enc) and attrs["n_tiles"] == 64
    assert attrs["slide_fingerprint"] == SlideTiles(coords64).slide_fingerprint
    with torch.no_grad():
        ref = enc.embed(_tiles(coords64)).numpy()
    feats = SlideFeatures(out)
    assert len(feats) == 64 and feats.embed_dim == 96
    got = feats.read(np.arange(64))
    assert got.dtype == np.float32 and got.shape == (64, 96)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
    # Real tiles differ: the cache must not be one row repeated.
    assert np.abs(ref - ref.mean(0)).max() > 10 * 2e-3
    # Any order, repeats, few or many rows (two read paths).
    np.testing.assert_array_equal(feats.read([5, 2, 5]), got[[5, 2, 5]])
    np.testing.assert_array_equal(feats.read(np.arange(63, -1, -1)), got[::-1])
    assert feats.read([]).shape == (0, 96)
    with pytest.raises(IndexError, match="64"):
        feats.read([64])
    np.testing.assert_array_equal(feats.coords, SlideTiles(coords64).coords)


def test_resized_tiles_match_what_the_bag_dataset_feeds(fixtures: Path, tmp_path: Path) -> None:
    slide = fixtures / "wsi" / "he_small.svs"
    coords = tile_slide(slide, tmp_path / "c256").h5_path  # 4 tiles of 256 px
    (tmp_path / "m.csv").write_text(f"patient_id,modality,path\nP1,wsi,{slide}\n")
    cohort = Cohort.from_manifest(tmp_path / "m.csv")
    bags = PatientBagDataset(cohort, spec=BagSpec(tiles=4, tile_px=64), coords_dir=coords.parent, train=False)
    pixels = bags[0][keys.WSI][keys.X]
    assert pixels.shape == (4, 3, 64, 64)
    enc = _vit()
    out = write_tile_features(coords, enc, tmp_path / "f", num_workers=2, progress=False)  # tile_px: img_size
    with torch.no_grad():
        ref = enc.embed(pixels).numpy()
    np.testing.assert_allclose(SlideFeatures(out).read(range(4)), ref, rtol=2e-3, atol=2e-3)
    assert SlideFeatures(out).attrs["tile_px"] == 64


class _Counting(torch.nn.Module):
    """Wraps an encoder; counts embed calls and can fail on a given call."""

    def __init__(self, inner: ModalityModel, fail_on: int | None = None) -> None:
        super().__init__()
        self.inner, self.embed_dim, self.fail_on, self.calls = inner, inner.embed_dim, fail_on, 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("simulated failure (CUDA out of memory)")
        return self.inner.embed(x)


def test_rerun_skips_and_other_weights_are_refused(coords64: Path, tmp_path: Path) -> None:
    enc = _Counting(_vit())
    out = write_tile_features(coords64, enc, tmp_path, batch_size=32, progress=False)
    assert enc.calls == 2
    before = (out.stat().st_mtime_ns, out.read_bytes())
    assert write_tile_features(coords64, enc, tmp_path, batch_size=32, progress=False) == out
    assert enc.calls == 2 and (out.stat().st_mtime_ns, out.read_bytes()) == before
    other = _Counting(_vit(seed=1))
    with pytest.raises(InputError, match="weights_sha1.*--overwrite"):
        write_tile_features(coords64, other, tmp_path, progress=False)
    with pytest.raises(InputError, match="tile_px"):
        write_tile_features(coords64, enc, tmp_path, tile_px=32, progress=False)
    write_tile_features(coords64, other, tmp_path, overwrite=True, progress=False)
    assert other.calls == 1 and SlideFeatures(out).attrs["weights_sha1"] == encoder_fingerprint(other)


def test_failure_mid_slide_leaves_no_file(coords64: Path, tmp_path: Path) -> None:
    enc = _Counting(_vit(), fail_on=2)
    with pytest.raises(RuntimeError, match="simulated"):
        write_tile_features(coords64, enc, tmp_path / "out", batch_size=16, progress=False)
    assert enc.calls == 2
    out = tmp_path / "out"  # built in memory: the folder is made only when the finished file is written
    assert not out.exists() or list(out.iterdir()) == []  # neither the final file nor a temporary one


def test_truncated_file_is_recomputed(coords64: Path, tmp_path: Path) -> None:
    out = tmp_path / coords64.name
    out.write_bytes(b"not hdf5")
    write_tile_features(coords64, _vit(), tmp_path, progress=False)
    assert len(SlideFeatures(out)) == 64


def test_bad_inputs(coords64: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="coordinates folder"):
        write_tile_features(coords64, _vit(), coords64.parent, progress=False)
    with pytest.raises(SlideError, match="not a tile-coordinates file"):
        write_tile_features(tmp_path / "missing.h5", _vit(), tmp_path / "o", progress=False)
    with pytest.raises(TypeError, match="embed"):
        write_tile_features(coords64, torch.nn.Linear(2, 2), tmp_path, progress=False)
    with pytest.raises(InputError, match="not a tile-features file"):
        SlideFeatures(coords64)


def test_feature_files_for_names_the_missing_slide(coords64: Path, fixtures: Path, tmp_path: Path) -> None:
    written = write_tile_features(coords64, _vit(), tmp_path, progress=False)
    he = fixtures / "wsi" / "he_small.svs"
    other = tmp_path / "TCGA-XX-0001.svs"
    other.symlink_to(fixtures / "wsi" / "glass.svs")
    assert feature_files_for([he], tmp_path) == [written]
    with pytest.raises(InputError, match=rf"patient P7: .*TCGA-XX-0001\.[0-9a-f]{{10}}\.h5 for slide {other}"):
        feature_files_for([he, other], tmp_path, patient="P7")
    assert common_embed_dim([written]) == 96
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((3, 32), np.float16))
    with pytest.raises(InputError, match="differ in width.*D=32: .*other.h5"):
        common_embed_dim([written, tmp_path / "other.h5"])


def test_a_slide_without_tissue_gets_a_features_file_without_rows(fixtures: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """``biossl tile --keep-empty`` marks a glass slide with an ``.h5`` listing no tiles; caching features of
    it writes a file without rows (not an error), and a features-mode bag gives its patient no tiles from it."""
    import logging

    import pandas as pd

    coords = tmp_path / "coords"
    for name in ("glass.svs", "he_small.svs"):
        tile_slide(fixtures / "wsi" / name, coords, tile_size=64, keep_empty=True)
    glass_h5, he_h5 = (coords / f"{slide_key(fixtures / 'wsi' / n)}.h5" for n in ("glass.svs", "he_small.svs"))
    assert len(SlideTiles(glass_h5)) == 0
    enc = _vit()
    with caplog.at_level(logging.WARNING, logger="biossl.data.features"):
        empty = write_tile_features(glass_h5, enc, tmp_path / "f", progress=False)
    assert "lists no tiles (no tissue)" in caplog.text
    with h5py.File(empty, "r") as f:
        assert f["features"].shape == (0, enc.embed_dim) and int(f.attrs["n_tiles"]) == 0
    write_tile_features(he_h5, enc, tmp_path / "f", progress=False)
    assert write_tile_features(glass_h5, enc, tmp_path / "f", progress=False) == empty  # reused
    for name in ("glass.svs", "he_small.svs"):
        (tmp_path / name).symlink_to(fixtures / "wsi" / name)
    table = pd.DataFrame({"patient_id": ["P1", "P2", "P2"], "modality": "wsi",
                          "path": [str(tmp_path / "glass.svs"), str(tmp_path / "glass.svs"),
                                   str(tmp_path / "he_small.svs")]})
    table.to_csv(tmp_path / "m.csv", index=False)
    bags = PatientBagDataset(Cohort.from_manifest(tmp_path / "m.csv"), spec=BagSpec(tiles=4, tile_px=64),
                             features_dir=tmp_path / "f", train=False)
    by_patient = {bags.patients[i]: bags[(i, 0)] for i in range(len(bags.patients))}
    assert keys.WSI not in by_patient["P1"]  # glass only: the modality is missing, not an error
    assert by_patient["P2"][keys.WSI]["x"].shape == (4, enc.embed_dim)  # its tiles come from the H&E slide only

"""Privacy: no output carries a slide's label or macro image; ``biossl embed --pseudonymize``.

The demo cohort's ``CMU-1-Small-Region.svs`` (a real Aperio slide, patient DEMO-19) holds ``label``,
``macro`` and ``thumbnail`` associated images and scanner metadata (user, date, scanner ID). Slide
labels carry names and barcodes, so biossl must never read them: tiling, thumbnails and embedding run
here with OpenSlide's associated-image API made to fail, and the thumbnail must be the pyramid's own
pixels.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import openslide
import pandas as pd
import pytest
from PIL import Image

from biossl.cli import main

REPO = Path(__file__).resolve().parents[2]
SALT = "a-secret-salt-of-32-characters!!"
OUTLINE = (0, 160, 0)  # the colour tiling outlines kept tiles with


@pytest.fixture
def no_associated_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read of a slide's label, macro or stored thumbnail fail the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("biossl read a slide's associated image (label / macro / thumbnail)")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(refuse))
    for name in ("read_associated_image", "get_associated_image_names", "get_associated_image_dimensions"):
        monkeypatch.setattr(openslide.lowlevel, name, refuse)


def test_no_code_reads_associated_images() -> None:
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "biossl").rglob("*.py")
                 if "associated_image" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_thumbnail_is_the_pyramid_not_the_label_or_macro(
    demo_cohort: Path, tmp_path: Path, no_associated_images: None
) -> None:
    from biossl.data.tissue import low_resolution_rgb
    from biossl.data.wsi import Slide

    slide = demo_cohort / "slides" / "CMU-1-Small-Region.svs"
    assert main(["tile", str(slide), "--out", str(tmp_path), "--no-progress"]) == 0
    (thumbnail,) = tmp_path.glob("CMU-1-Small-Region.*_thumbnail.png")  # <stem>.<fingerprint>_thumbnail.png
    with Image.open(thumbnail) as im:
        thumb = np.asarray(im.convert("RGB"))
    with Slide(slide) as s:
        pyramid, _ = low_resolution_rgb(s)
    assert thumb.shape == pyramid.shape
    drawn = np.all(thumb == OUTLINE, axis=-1)
    assert 0 < drawn.mean() < 0.2  # the tile outlines, nothing else, differ from the pyramid
    np.testing.assert_array_equal(thumb[~drawn], pyramid[~drawn])


def test_the_demo_slide_has_a_label_and_a_macro(demo_cohort: Path) -> None:
    """What the guarded tests protect: the real slide does hold a label and a macro image."""
    with openslide.OpenSlide(str(demo_cohort / "slides" / "CMU-1-Small-Region.svs")) as slide:
        assert {"label", "macro"} <= set(slide.associated_images)


def test_outputs_carry_neither_associated_images_nor_scanner_metadata(
    pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path, no_associated_images: None
) -> None:
    """Tile (fresh work dir: every slide is tiled), read tiles and embed the demo cohort under the guard."""
    checkpoint, _ = pretrained
    out = tmp_path / "emb.h5ad"
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--work-dir", str(tmp_path / "work"), "--out", str(out)]) == 0
    (tiles,) = (tmp_path / "work" / "tiles").glob("CMU-1-Small-Region.*.h5")  # <stem>.<fingerprint>.h5
    with openslide.OpenSlide(str(demo_cohort / "slides" / "CMU-1-Small-Region.svs")) as slide:
        props = dict(slide.properties)
    secrets = [props[k] for k in ("aperio.User", "aperio.ImageID", "aperio.ScanScope ID", "aperio.Date")]
    for path in [out, *sorted((tmp_path / "work" / "tiles").glob("*.h5"))]:
        data = path.read_bytes()
        for value in secrets:
            assert value.encode() not in data, (path.name, value)
    with h5py.File(tiles, "r") as f:
        assert set(f) == {"coords", "tissue"}


# -- --pseudonymize ----------------------------------------------------------------------------------
def _hmac(patient: str, salt: str = SALT) -> str:
    return "psn-" + hmac.new(salt.encode(), patient.encode(), hashlib.sha256).hexdigest()[:24]


def _embed(pretrained: tuple[Path, Path], demo_cohort: Path, out: Path, *extra: str) -> int:
    checkpoint, work = pretrained
    return main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--labels", str(demo_cohort / "labels.csv"), "--work-dir", str(work), "--out", str(out), *extra])


def test_pseudonymize_replaces_ids_and_drops_identifying_columns(
    pretrained: tuple[Path, Path], embedded: Path, demo_cohort: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BIOSSL_SALT", SALT)
    out = tmp_path / "export" / "pseudo.h5ad"
    assert _embed(pretrained, demo_cohort, out, "--pseudonymize") == 0
    assert "pseudonymised" in capsys.readouterr().out
    plain, pseudo = ad.read_h5ad(embedded), ad.read_h5ad(out)
    # Same rows in the same order, IDs replaced by HMAC-SHA256(salt, ID).
    assert list(pseudo.obs_names) == [_hmac(p) for p in plain.obs_names]
    # The same numbers up to float32 rounding: the two embed runs may split their reductions over a different
    # number of threads (the in-process run follows earlier tests' torch thread settings).
    np.testing.assert_allclose(pseudo.X, plain.X, rtol=1e-5, atol=1e-6)
    for key in plain.obsm:
        np.testing.assert_allclose(pseudo.obsm[key], plain.obsm[key], rtol=1e-5, atol=1e-6)
    # Kept: modality flags, labels, site / intensity; dropped: the TCGA case barcode.
    assert "tcga_case" in plain.obs.columns and "tcga_case" not in pseudo.obs.columns
    assert {"site", "intensity", "subtype", "has_wsi", "has_expression"} <= set(pseudo.obs.columns)
    pd.testing.assert_series_equal(pseudo.obs["subtype"].reset_index(drop=True),
                                   plain.obs["subtype"].reset_index(drop=True))
    said = pseudo.uns["biossl"]["pseudonymized"]
    assert "tcga_case" in list(said["dropped_columns"]) and "HMAC-SHA256" in said["method"]
    # Nothing in the file (obs, uns, any string) maps back: no patient ID and no case barcode.
    data = out.read_bytes()
    manifest = pd.read_csv(demo_cohort / "manifest.csv")
    for identifier in [*plain.obs_names, *manifest["tcga_case"].dropna().unique()]:
        assert identifier.encode() not in data, identifier
    assert SALT.encode() not in data
    assert sorted(p.name for p in out.parent.iterdir()) == ["pseudo.h5ad"]  # no key file beside it

    # Stable with the same salt (from a file, which wins over the variable); another salt, other names.
    (tmp_path / "salt.txt").write_text(SALT + "\n")
    again = tmp_path / "again.h5ad"
    monkeypatch.setenv("BIOSSL_SALT", "another-salt-entirely-1234567890")
    assert _embed(pretrained, demo_cohort, again, "--pseudonymize", "--salt-file", str(tmp_path / "salt.txt")) == 0
    assert list(ad.read_h5ad(again).obs_names) == list(pseudo.obs_names)
    other = tmp_path / "other.h5ad"
    assert _embed(pretrained, demo_cohort, other, "--pseudonymize") == 0
    assert not set(ad.read_h5ad(other).obs_names) & set(pseudo.obs_names)

    # --keep-obs keeps a column on request, but never one holding patient identifiers (a TCGA case barcode is one).
    kept = tmp_path / "kept.h5ad"
    assert _embed(pretrained, demo_cohort, kept, "--pseudonymize", "--keep-obs", "intensity") == 0
    assert "intensity" in ad.read_h5ad(kept).obs.columns
    assert _embed(pretrained, demo_cohort, kept, "--pseudonymize", "--keep-obs", "tcga_case") == 2


@pytest.mark.parametrize(("salt", "extra", "phrase"), [
    (None, (), "needs a secret salt"),
    ("short", (), "at least 16"),
    (None, ("--salt-file", "missing.txt"), "cannot be read"),
])
def test_pseudonymize_refuses_without_a_usable_salt(
    salt: str | None, extra: tuple[str, ...], phrase: str, pretrained: tuple[Path, Path], demo_cohort: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BIOSSL_SALT", raising=False)
    if salt is not None:
        monkeypatch.setenv("BIOSSL_SALT", salt)
    extra = tuple(str(tmp_path / e) if e.endswith(".txt") else e for e in extra)
    out = tmp_path / "pseudo.h5ad"
    assert _embed(pretrained, demo_cohort, out, "--pseudonymize", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err and "BIOSSL_SALT" in err and "--salt-file" in err
    assert not out.exists()


def test_salt_options_need_pseudonymize(
    pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _embed(pretrained, demo_cohort, tmp_path / "x.h5ad", "--keep-obs", "site") == 2
    assert "only apply with --pseudonymize" in capsys.readouterr().err


def test_pseudonyms_drop_columns_that_hold_patient_ids(embedded: Path) -> None:
    from biossl.errors import InputError
    from biossl.privacy import pseudonymize_obs

    adata = ad.read_h5ad(embedded)
    adata.obs["site"] = [f"{p};x" for p in adata.obs_names]  # a "site" column that is really an ID
    out = pseudonymize_obs(adata, SALT.encode())
    assert "site" not in out.obs.columns and "site" in out.uns["biossl"]["pseudonymized"]["dropped_columns"]
    adata.obs["note"] = list(adata.obs_names)
    with pytest.raises(InputError, match="holds patient identifiers"):
        pseudonymize_obs(adata, SALT.encode(), keep=["note"])

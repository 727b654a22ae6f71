"""Synthetic artifacts on real tiles, MRI patches, expression tables and DNA windows."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from biossl.data.expression import read_expression
from biossl.data.sequence import encode, pad_batch, read_sequences
from biossl.errors import InputError
from biossl.keys import PAD_TOKEN
from biossl.transforms.artifacts import (
    ARTIFACTS,
    N_TOKEN,
    apply_artifact,
    batch_shift,
    blur,
    describe,
    dropout,
    fold,
    get_artifact,
    ghosting,
    jpeg,
    jpeg_quality,
    library_size,
    n_runs,
    noise,
    pen,
    stain,
    substitution,
)
from biossl.transforms.stain import rgb_to_hed

STRENGTHS = (0.25, 0.5, 1.0)


def _chw(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


@pytest.fixture(scope="module")
def tiles(fixtures: Path, demo_cohort: Path) -> torch.Tensor:
    """Real H&E: the 128 px fixture tile and three 128 px regions of the demo's Aperio slide, as a bag [1, 4, ...]."""
    import openslide

    from biossl.data.tiles import read_rgb

    slide = openslide.OpenSlide(str(demo_cohort / "slides" / "CMU-1-Small-Region.svs"))
    regions = [read_rgb(slide, (x, y), 0, (128, 128), channels_first=True) for x, y in ((600, 900), (1200, 1500),
                                                                                       (900, 2000))]
    slide.close()
    out = [_chw(fixtures / "transforms" / "he_tile_128.png")] + [torch.from_numpy(r).float() / 255 for r in regions]
    return torch.stack(out)[None]


@pytest.fixture(scope="module")
def patches(fixtures: Path) -> torch.Tensor:
    """Four real 32^3 patches of the T1 MRI fixture (33x41x25, zero-padded in depth) in [0, 1]: [2, 2, 1, ...]."""
    img = nib.load(fixtures / "volume" / "anatomical.nii")
    vol = np.asarray(img.get_fdata(), dtype=np.float32)  # type: ignore[attr-defined]
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    vol = np.pad(vol, ((0, 0), (0, 0), (0, 8)))
    cubes = [vol[a : a + 32, b : b + 32, 0:32] for a in (0, 1) for b in (0, 9)]
    return torch.from_numpy(np.stack(cubes)).view(2, 2, 1, 32, 32, 32)


@pytest.fixture(scope="module")
def zscores(demo_cohort: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo expression table (21 patients x 256 z-scored genes) as bags [21, 1, G], with 40 genes unobserved."""
    x = torch.from_numpy(np.asarray(read_expression(demo_cohort / "expression.csv").X, dtype=np.float32))[:, None]
    gm = torch.ones_like(x, dtype=torch.bool)
    gm[..., :40] = False
    return x.masked_fill(~gm, 0.0), gm


@pytest.fixture(scope="module")
def counts(fixtures: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """150 PBMC cells of raw UMI counts normalised by biossl (normalize_total + log1p), as [150, G]."""
    adata = read_expression(fixtures / "expression" / "pbmc68k_counts.h5ad")
    assert adata.uns["biossl"]["transform"].endswith("log1p")
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return t, torch.ones_like(t, dtype=torch.bool)


@pytest.fixture(scope="module")
def tokens(demo_cohort: Path) -> torch.Tensor:
    """Real promoters of the demo FASTA files, cut to lengths 40..70 and padded to 80: bags [4, 8, 80]."""
    files = sorted((demo_cohort / "sequences").glob("*.fasta"))[:4]
    rows = [encode(r.sequence)[: 40 + 4 * i] for f in files for i, r in enumerate(read_sequences(f))]
    return torch.from_numpy(pad_batch(rows, 80)).view(4, 8, 80)


def _data(name: str, request: pytest.FixtureRequest) -> tuple[str, torch.Tensor, dict[str, torch.Tensor]]:
    modality = next(m for m, names in ARTIFACTS.items() if name in names)
    if modality == "wsi":
        return modality, request.getfixturevalue("tiles"), {}
    if modality == "volume":
        return modality, request.getfixturevalue("patches"), {}
    if modality == "expression":
        x, gm = request.getfixturevalue("zscores")
        return modality, x, {"gene_mask": gm}
    return modality, request.getfixturevalue("tokens"), {}


ALL = [name for kind in ("slide", "volume", "table", "sequence") for name in ARTIFACTS[kind]]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_covers_the_issue_list() -> None:
    assert set(ARTIFACTS) == {"slide", "volume", "table", "sequence", "wsi", "expression"}  # kinds + legacy names
    assert set(ARTIFACTS["wsi"]) == {"blur", "jpeg", "stain", "pen", "fold"}
    assert set(ARTIFACTS["volume"]) == {"noise", "bias_field", "ghosting", "resolution"}
    assert set(ARTIFACTS["expression"]) == {"library_size", "dropout", "batch_shift"}
    assert set(ARTIFACTS["sequence"]) == {"substitution", "n_runs"}
    assert len(ALL) == len(set(ALL))  # names are unique across modalities
    with pytest.raises(InputError, match="Did you mean 'blur'"):
        get_artifact("wsi", "blurr")
    with pytest.raises(InputError, match="known: wsi"):
        get_artifact("rna", "blur")
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        blur(torch.zeros(1, 3, 8, 8), 1.5)
    assert describe("wsi", "blur", 0.5) == "sigma 1.5 px" and describe("wsi", "jpeg", 0) == "none"


@pytest.mark.parametrize("name", ALL)
def test_strength_zero_is_identity_and_change_grows_with_strength(name: str, request: pytest.FixtureRequest) -> None:
    modality, x, extra = _data(name, request)
    zero = apply_artifact(modality, name, x, 0.0, _gen(0), **extra)
    assert torch.equal(zero, x) and zero is not x
    change = []
    for s in STRENGTHS:
        out = apply_artifact(modality, name, x, s, _gen(0), **extra)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.isfinite(out.float()).all()
        change.append(float((out.float() - x.float()).abs().mean()))
    assert 0 < change[0] < change[1] < change[2], change
    if modality == "wsi":
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", ALL)
def test_padded_instances_untouched_and_same_seed_same_output(name: str, request: pytest.FixtureRequest) -> None:
    modality, x, extra = _data(name, request)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[0, -1] = False
    mask[-1, 0] = False
    a = apply_artifact(modality, name, x, 1.0, _gen(3), mask=mask, **extra)
    b = apply_artifact(modality, name, x, 1.0, _gen(3), mask=mask, **extra)
    assert torch.equal(a, b)
    assert torch.equal(a[~mask], x[~mask])  # padding (mask False) exactly as it was
    assert not torch.equal(a[mask], x[mask])
    assert torch.equal(apply_artifact(modality, name, x, 1.0, 3, mask=mask, **extra), a)  # an int seed is the same


def test_blur_is_a_gaussian_filter(tiles: torch.Tensor) -> None:
    for s in (0.5, 1.0):
        ours = blur(tiles, s)[0].numpy()
        ref = ndimage.gaussian_filter(tiles[0].numpy(), sigma=(0, 0, 3.0 * s, 3.0 * s), mode="mirror", truncate=3.0)
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def _high_frequency_energy(x: torch.Tensor) -> float:
    """Energy of the luminance's 8x8 block DCT (JPEG's blocks, 0-255 units) in coefficients with u + v >= 6."""
    from scipy.fft import dctn

    luma = (x[..., 0, :, :] * 0.299 + x[..., 1, :, :] * 0.587 + x[..., 2, :, :] * 0.114).reshape(-1, *x.shape[-2:])
    n, h, w = luma.shape
    blocks = 255 * luma.numpy().reshape(n, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4)
    power = dctn(blocks, axes=(-2, -1), norm="ortho") ** 2
    u = np.add.outer(np.arange(8), np.arange(8))
    return float(power[..., u >= 6].sum())


def test_jpeg_is_a_real_reencode_that_loses_high_frequencies(tiles: torch.Tensor) -> None:
    import io

    out = jpeg(tiles, 1.0)
    # Exactly what Pillow's decoder returns for the tile encoded at quality 5.
    buf = io.BytesIO()
    Image.fromarray((tiles[0, 0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
        buf, format="JPEG", quality=jpeg_quality(1.0), subsampling=2)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(out[0, 0].permute(1, 2, 0).numpy(), ref, atol=1e-6)
    # The PNG tile (never JPEG-compressed) loses high frequencies at every strength; the slide's regions were
    # JPEG-compressed by the scanner already, so re-encoding at quality >= 48 changes them little, but quality 5
    # removes >90% of the high-frequency energy of every tile.
    png = tiles[:, :1]
    clean = _high_frequency_energy(png)
    energy = [_high_frequency_energy(jpeg(png, s)) for s in STRENGTHS]
    assert clean > energy[0] > energy[1] > energy[2], (clean, energy)
    for i in range(tiles.shape[1]):
        assert _high_frequency_energy(out[:, i]) < 0.1 * _high_frequency_energy(tiles[:, i])
    assert [jpeg_quality(s) for s in STRENGTHS] == [69, 48, 5]


def test_stain_is_a_site_signature_in_hed_space(tiles: torch.Tensor) -> None:
    # The cast depends on signature_seed only: every tile and every generator get the same one.
    a = stain(tiles, 1.0, _gen(1), signature_seed=7)
    assert torch.equal(a, stain(tiles, 1.0, _gen(2), signature_seed=7))
    assert not torch.equal(a, stain(tiles, 1.0, signature_seed=8))
    hed_in = rgb_to_hed(tiles[0], clamp=False)
    hed_out = rgb_to_hed(a[0], clamp=False)
    inside = ((a[0] > 0.01) & (a[0] < 0.99) & (tiles[0] > 0.01)).all(1, keepdim=True).expand_as(hed_in)  # unclipped
    d = torch.randn(3, generator=_gen(7), dtype=torch.float64)
    d = (d / d.norm()).float().view(3, 1, 1).expand_as(hed_in)
    expected = hed_in * torch.exp(0.4 * d) + 0.01 * d
    assert float(inside.float().mean()) > 0.9
    assert float((hed_out - expected)[inside].abs().max()) < 1e-4


def test_pen_marks_are_dark_strokes_covering_more_with_strength(tiles: torch.Tensor) -> None:
    covered = []
    for s in STRENGTHS:
        out = pen(tiles, s, _gen(0))
        assert bool((out <= tiles + 1e-6).all())  # ink only absorbs light
        changed = ((tiles - out).abs().amax(2) > 0.02).float().mean((-2, -1))  # per tile
        covered.append(float(changed.mean()))
        assert bool((changed > 0).all())  # every tile has a stroke
    assert 0.01 < covered[0] < covered[1] < covered[2] < 0.6, covered


def test_fold_doubles_optical_density_in_a_band(tiles: torch.Tensor) -> None:
    out = fold(tiles, 1.0, _gen(0))
    assert bool((out <= tiles + 1e-6).all())
    ratio = torch.log(out.clamp_min(1e-6)) / torch.log(tiles.clamp(1e-6, 1 - 1e-3))
    assert 1.95 < float(ratio.amax()) <= 2.0 + 1e-4  # inside the band: OD x 2 (two layers of tissue)
    band = (tiles - out).amax(2) > 0.01
    assert 0.1 < float(band.float().mean()) < 0.7

    def saturation(x: torch.Tensor) -> torch.Tensor:
        return (x.amax(2) - x.amin(2)) / x.amax(2).clamp_min(1e-6)

    assert float(saturation(out)[band].mean()) > float(saturation(tiles)[band].mean())  # darker and more saturated


def test_volume_noise_has_the_stated_sd(patches: torch.Tensor) -> None:
    for s in STRENGTHS:
        sd = float((noise(patches, s, _gen(0)) - patches).std())
        assert abs(sd - 0.2 * s) < 0.01 * s, (s, sd)


def test_ghosting_subtracts_the_quarter_fov_periodisation(patches: torch.Tensor) -> None:
    # Scaling every 4th k-space line along H (not the centre) by 1 - s adds -s * (P(x) - mean_H(x)), where
    # P(x) = mean of x shifted by 0, 1/4, 1/2, 3/4 of the field of view along H: the ghosts.
    s = 0.6
    out = ghosting(patches, s)
    periodised = torch.stack([torch.roll(patches, 8 * j, dims=-2) for j in range(4)]).mean(0)
    expected = patches - s * (periodised - patches.mean(-2, keepdim=True))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.mean((-3, -2, -1)), patches.mean((-3, -2, -1)), atol=1e-5, rtol=0)


def test_library_size_on_counts_scales_depth_exactly(counts: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, gm = counts
    out = library_size(x, 1.0, space="log1p", gene_mask=gm)
    torch.testing.assert_close(torch.expm1(out), 0.25 * torch.expm1(x), atol=1e-3, rtol=1e-4)
    assert torch.equal(out[x == 0], x[x == 0])  # zeros stay zero
    with pytest.raises(InputError, match="unknown expression value space"):
        library_size(x, 1.0, space="counts")


def test_zscore_library_size_and_batch_shift_touch_only_observed_genes(
        zscores: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, gm = zscores
    lib = library_size(x, 0.5, gene_mask=gm)
    torch.testing.assert_close((lib - x)[gm], torch.full_like(x[gm], -1.0))  # log2 of half the depth
    assert torch.equal(lib[~gm], x[~gm])
    shift = batch_shift(x, 1.0, _gen(0), gene_mask=gm, signature_seed=5)
    delta = (shift - x)[:, 0, 40:]
    assert torch.allclose(delta, delta[:1].expand_as(delta), atol=1e-5)  # one direction for every patient
    assert 0.8 < float(delta[0].std()) < 1.2  # per-gene sd 1 at strength 1
    assert torch.equal(shift[~gm], x[~gm])
    assert torch.equal(shift, batch_shift(x, 1.0, _gen(9), gene_mask=gm, signature_seed=5))
    assert not torch.equal(shift, batch_shift(x, 1.0, gene_mask=gm, signature_seed=6))


def test_dropout_zeroes_the_stated_share_of_observed_values(counts: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, gm = counts
    gm = gm.clone()
    gm[:, :100] = False
    nonzero = (x != 0) & gm
    zeroed = {}
    for s in STRENGTHS:
        out = dropout(x, s, _gen(0), gene_mask=gm, space="log1p")
        zeroed[s] = (out == 0) & nonzero
        assert abs(float(zeroed[s].sum() / nonzero.sum()) - 0.5 * s) < 0.02
        assert torch.equal(out[~gm], x[~gm])
        assert torch.equal(out[~zeroed[s]], x[~zeroed[s]])
    assert bool((zeroed[0.25] <= zeroed[1.0]).all())  # the same seed drops a superset at a larger strength


def test_substitutions_change_only_bases_at_the_stated_rate(tokens: torch.Tensor) -> None:
    out = substitution(tokens, 1.0, _gen(0))
    base = (tokens >= 1) & (tokens <= 4)
    hit = out != tokens
    assert bool((hit <= base).all())  # PAD (and N) never change
    assert bool(((out[hit] >= 1) & (out[hit] <= 4)).all())
    assert abs(float(hit.sum() / base.sum()) - 0.1) < 0.02


def test_n_runs_write_runs_of_n_and_keep_padding(tokens: torch.Tensor) -> None:
    out = n_runs(tokens, 1.0, _gen(0))
    pad = tokens == PAD_TOKEN
    assert torch.equal(out[pad], tokens[pad])
    hit = out != tokens
    assert bool((out[hit] == N_TOKEN).all())
    assert abs(float(hit.sum() / (~pad).sum()) - 0.5) < 0.08
    runs = []
    for row, real in zip(hit.view(-1, 80), (~pad).view(-1, 80)):
        edges = np.flatnonzero(np.diff(np.r_[0, row.int().numpy(), 0]))
        for start, stop in zip(edges[::2], edges[1::2]):
            if start > 0 and stop < 80 and real[stop]:  # not cut by either end of the real part
                runs.append(stop - start)
    assert runs and all(r % 8 == 0 for r in runs)  # whole blocks of 8 (adjacent blocks merge)

"""Controlled synthetic artifacts per modality, with a strength in [0, 1], for artifact audits.

Unlike the random views of :mod:`biossl.transforms`, an artifact is a *known* corruption: its size is
set by ``strength`` (0 is the identity, exactly; 1 the strongest setting, listed below), and its
random parts (where a pen stroke lies, which bases are miscalled) come from ``generator``: a
``torch.Generator``, an int seed, or ``None`` (seed 0). The same input, strength and generator state
give the same output. Random draws do not depend on the strength, so for one generator seed a larger
strength corrupts a superset (dropout, substitutions, runs of N) or scales the same change up.

Every function has the form ``fn(x, strength, generator=None, *, mask=None, ...) -> Tensor`` on the
batch tensors of :func:`biossl.data.bags.collate_bags` (``[B, K, *instance]``, or any leading dims):
it returns a new tensor of the same shape, dtype and device and never changes an instance where
``mask`` (shaped like the leading dims) is False. Expression functions also take ``gene_mask`` (only
observed genes change) and ``space``; ``stain`` and ``batch_shift`` take ``signature_seed``: they model
a site signature, one direction for every call with that seed.

========== ============== ===================================================================================
modality   name           what strength 1 does (strength ``s`` scales it)
========== ============== ===================================================================================
wsi        blur           Gaussian blur, sigma ``3 s`` px (separable, reflect padding)
wsi        jpeg           real JPEG re-encode (Pillow, 4:2:0 chroma subsampling), quality ``round(90 - 85 s)``
wsi        stain          HED colour cast (Ruifrok & Johnston): concentrations ``c * exp(0.4 s d) + 0.01 s d``,
                          ``d`` a unit direction in HED space fixed by ``signature_seed``
wsi        pen            a pen stroke (quadratic Bezier across each tile, ink blue/green/black/red, opacity
                          0.9, multiplicative), width ``0.25 s`` of the tile side
wsi        fold           a tissue fold: a straight band of width ``0.4 s`` of the tile side where the tissue
                          lies twice, so optical density doubles (``I -> I**2``): darker, more saturated
volume     noise          MONAI ``RandGaussianNoise(prob=1, std=0.2 s, sample_std=False)``, seeded per patch
volume     bias_field     MONAI ``RandBiasField(degree=3, coeff_range=(-0.15 s, 0.15 s), prob=1)``, per patch
volume     ghosting       MR ghosting: every 4th k-space plane along H (not the centre) scaled by ``1 - s``
volume     resolution     area down-sampling by ``1 + 3 s`` per axis, trilinear back to the patch size
expression library_size   depth scaled by ``c = 2**(-2 s)`` (a quarter at 1); module doc for each ``space``
expression dropout        a share ``0.5 s`` of the observed non-zero values set to 0 (they stay observed)
expression batch_shift    a per-gene shift ``s * d_g``, ``d ~ N(0, I)`` over genes fixed by ``signature_seed``
sequence   substitution   each A/C/G/T miscalled as another base with probability ``0.1 s``
sequence   n_runs         blocks of 8 positions (random phase per row) turned to N with probability ``0.5 s``
========== ============== ===================================================================================

Value ranges are those of the readers: tiles ``float [.., 3, H, W]`` in [0, 1] (outputs clipped to
[0, 1]); 3D patches ``float [.., 1, D, H, W]`` scaled to about [0, 1] (not clipped, as in MONAI);
expression ``float [.., G]``; DNA token ids ``int64 [.., L]`` (PAD=0 A=1 C=2 G=3 T=4 N=5 MASK=6),
PAD never changes and nothing becomes PAD.

**Expression spaces** (as :mod:`biossl.transforms.expression_views`): ``"log1p"`` (biossl's
normalisation of raw counts), ``"log2p"`` (``log2(1 + x)`` tables) or ``"zscore"`` (per-gene
z-scores of log expression, e.g. the TCGA tables and the demo cohort; any other values). In log-count
spaces depth ``c`` maps ``y -> log(1 + c (e^y - 1))`` (zeros stay zero) and the batch shift is a
per-gene fold ``e^(s d_g)`` on counts, ``y -> log(1 + e^(s d_g) (e^y - 1))``. z-scores keep no
per-gene sd, so depth ``c`` is modelled as ``log2 c`` added to every observed gene (a per-gene sd of
one log2 unit assumed) and the batch shift as ``+ s d_g`` z-units. Dropout writes 0, which in z-score
space is the gene's cohort mean rather than "not detected".
"""

from __future__ import annotations

import difflib
import inspect
import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from biossl.data.sequence import N_TOKEN
from biossl.errors import InputError
from biossl.keys import PAD_TOKEN
from biossl.transforms.expression_views import SPACES, scale_counts
from biossl.transforms.stain import hed_to_rgb, rgb_to_hed
from biossl.transforms.tile_views import gaussian_blur

Seed = torch.Generator | int | None
ArtifactFn = Callable[..., torch.Tensor]

BLUR_SIGMA = 3.0
JPEG_QUALITY = (90, 5)  # at strength 0+ and 1
STAIN_SCALE, STAIN_SHIFT = 0.4, 0.01
PEN_WIDTH, PEN_OPACITY = 0.25, 0.9
#: Ink transmittance per RGB channel: blue, green, black, red marker.
PEN_INKS = ((0.15, 0.35, 0.8), (0.15, 0.55, 0.3), (0.12, 0.12, 0.12), (0.85, 0.15, 0.2))
FOLD_WIDTH = 0.4
NOISE_STD = 0.2
BIAS_COEFF = 0.15
GHOST_EVERY = 4
RESOLUTION_FACTOR = 3.0
LIBRARY_LOG2_FOLD = 2.0
DROPOUT_RATE = 0.5
SUBSTITUTION_RATE = 0.1
N_RUN_LENGTH, N_RUN_FRACTION = 8, 0.5


# -- shared helpers -----------------------------------------------------------------------------
def check_strength(strength: float) -> float:
    """Return ``strength`` as a float; raise ``InputError`` unless it is in [0, 1]."""
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise InputError(f"artifact strength must be in [0, 1] (0 = no artifact); got {strength}")
    return s


def as_generator(generator: Seed) -> torch.Generator:
    """A CPU ``torch.Generator``: the one given, or a new one seeded with the int (``None``: 0)."""
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


def _rand(shape: tuple[int, ...], g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=g.device).to(like.device)


def _apply(x: torch.Tensor, mask: torch.Tensor | None, event_dims: int, fn: Callable[..., torch.Tensor],
           *extras: torch.Tensor) -> torch.Tensor:
    """Run ``fn(real_rows, *extra_rows)`` on the instances where ``mask`` is True; copy the others."""
    lead = x.shape[: x.ndim - event_dims]
    if mask is not None and tuple(mask.shape) != tuple(lead):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the instance dims {tuple(lead)}")
    flat = x.reshape(-1, *x.shape[x.ndim - event_dims :])
    out = flat.clone()
    rows = torch.arange(flat.shape[0], device=x.device) if mask is None else mask.reshape(-1).nonzero().flatten()
    if rows.numel():
        picked = [e.reshape(-1, *e.shape[e.ndim - event_dims :])[rows] for e in extras]
        out[rows] = fn(flat[rows], *picked).to(x.dtype)
    return out.reshape(x.shape)


def _direction(n: int, signature_seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(int(signature_seed)), dtype=torch.float64)


def _tiles(x: torch.Tensor) -> None:
    if x.ndim < 4 or x.shape[-3] != 3 or not x.is_floating_point():
        raise ValueError(f"tile artifacts need float RGB tiles [..., 3, H, W]; got {x.dtype} {tuple(x.shape)}")


def _volumes(x: torch.Tensor) -> None:
    if x.ndim < 5 or not x.is_floating_point():
        raise ValueError(f"volume artifacts need float patches [..., C, D, H, W]; got {x.dtype} {tuple(x.shape)}")


def _strength_of(x: torch.Tensor, strength: float, check_shape: Callable[[torch.Tensor], None]) -> float:
    """The checked strength, after checking the batch's shape (``_tiles`` / ``_volumes``)."""
    s = check_strength(strength)
    check_shape(x)
    return s


def _pixel_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = (torch.arange(h, device=device, dtype=torch.float32) + 0.5)[:, None].expand(h, w)
    cols = (torch.arange(w, device=device, dtype=torch.float32) + 0.5)[None, :].expand(h, w)
    return rows, cols


# -- tiles ----------------------------------------------------------------------------------------
def gaussian_kernel_blur(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``[N, C, H, W]`` with a separable Gaussian of ``sigma`` px (radius ``3 sigma``, reflect padding)."""
    radius = min(math.ceil(3 * sigma), min(t.shape[-2:]) - 1)
    if radius < 1:
        return t.clone()
    return gaussian_blur(t, sigma, radius)


def blur(x: torch.Tensor, strength: float, generator: Seed = None, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Out-of-focus scan: Gaussian blur of sigma ``3 * strength`` px."""
    s = _strength_of(x, strength, _tiles)
    if s == 0:
        return x.clone()
    return _apply(x, mask, 3, lambda t: gaussian_kernel_blur(t, BLUR_SIGMA * s).clamp(0, 1))


def jpeg_quality(strength: float) -> int:
    """JPEG quality of ``jpeg`` at ``strength`` > 0: 90 at 0+, 5 at 1."""
    return round(JPEG_QUALITY[0] - (JPEG_QUALITY[0] - JPEG_QUALITY[1]) * check_strength(strength))


def jpeg(x: torch.Tensor, strength: float, generator: Seed = None, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Compression: each tile re-encoded as JPEG (Pillow, 4:2:0) at quality ``round(90 - 85 * strength)``."""
    from PIL import Image

    s = _strength_of(x, strength, _tiles)
    if s == 0:
        return x.clone()
    quality = jpeg_quality(s)

    def run(t: torch.Tensor) -> torch.Tensor:
        out = []
        for tile in (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy():
            tile = np.ascontiguousarray(tile)
            buf = io.BytesIO()
            Image.fromarray(tile).save(buf, format="JPEG", quality=quality, subsampling=2)
            buf.seek(0)
            out.append(np.asarray(Image.open(buf).convert("RGB")))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255.0).to(t.device)

    return _apply(x, mask, 3, run)


def stain(x: torch.Tensor, strength: float, generator: Seed = None, *, mask: torch.Tensor | None = None,
          signature_seed: int = 0) -> torch.Tensor:
    """Stain / colour cast of one site: HED concentrations scaled and shifted along a fixed direction."""
    s = _strength_of(x, strength, _tiles)
    if s == 0:
        return x.clone()
    d = _direction(3, signature_seed)
    d = (d / d.norm()).float().to(x.device).view(3, 1, 1)

    def run(t: torch.Tensor) -> torch.Tensor:
        hed = rgb_to_hed(t.float(), clamp=False)
        return hed_to_rgb(hed * torch.exp(STAIN_SCALE * s * d) + STAIN_SHIFT * s * d)

    return _apply(x, mask, 3, run)


def pen(x: torch.Tensor, strength: float, generator: Seed = None, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pen marks: one marker stroke across each tile, width ``0.25 * strength`` of the tile side."""
    s = check_strength(strength)
    _tiles(x)
    g = as_generator(generator)
    if s == 0:
        return x.clone()
    inks = torch.tensor(PEN_INKS, dtype=torch.float32)

    def run(t: torch.Tensor) -> torch.Tensor:
        n, _, h, w = t.shape
        u = _rand((n, 5), g, t).cpu()  # y of the entry point, control point (x, y), y of the exit point, orientation
        colour = torch.randint(0, len(PEN_INKS), (n,), generator=g, device=g.device).cpu()
        rows, cols = _pixel_grid(h, w, t.device)
        steps = torch.linspace(0, 1, 48, device=t.device)[:, None]
        width = PEN_WIDTH * s * min(h, w)
        out = t.float().clone()
        for i in range(n):
            p = torch.tensor([[0.0, u[i, 0]], [0.2 + 0.6 * u[i, 1], u[i, 2]], [1.0, u[i, 3]]], device=t.device)
            if u[i, 4] < 0.5:  # vertical stroke
                p = p.flip(1)
            curve = (1 - steps) ** 2 * p[0] + 2 * (1 - steps) * steps * p[1] + steps**2 * p[2]  # [S, 2] (x, y)
            dist = torch.hypot(cols[..., None] - curve[:, 0] * w, rows[..., None] - curve[:, 1] * h).amin(-1)
            cover = (width / 2 - dist + 0.5).clamp(0, 1)
            absorb = PEN_OPACITY * cover[None] * (1 - inks[colour[i]].to(t.device).view(3, 1, 1))
            out[i] = out[i] * (1 - absorb)
        return out

    return _apply(x, mask, 3, run)


def fold(x: torch.Tensor, strength: float, generator: Seed = None, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Tissue fold: a band of width ``0.4 * strength`` of the tile side where optical density doubles."""
    s = check_strength(strength)
    _tiles(x)
    g = as_generator(generator)
    if s == 0:
        return x.clone()

    def run(t: torch.Tensor) -> torch.Tensor:
        n, _, h, w = t.shape
        u = _rand((n, 2), g, t)
        angle, offset = u[:, 0] * math.pi, (u[:, 1] - 0.5) * 0.5 * min(h, w)
        rows, cols = _pixel_grid(h, w, t.device)
        signed = ((cols - w / 2)[None] * torch.cos(angle).view(n, 1, 1)
                  + (rows - h / 2)[None] * torch.sin(angle).view(n, 1, 1) - offset.view(n, 1, 1))  # fmt: skip
        cover = (FOLD_WIDTH * s * min(h, w) / 2 - signed.abs() + 0.5).clamp(0, 1)[:, None]
        return t.float().clamp(1e-6, 1.0) ** (1.0 + cover)

    return _apply(x, mask, 3, run)


# -- volumes --------------------------------------------------------------------------------------
def _per_patch_monai(x: torch.Tensor, mask: torch.Tensor | None, generator: Seed,
                     make: Callable[[], Any]) -> torch.Tensor:
    """Apply a MONAI randomizable transform to each patch, seeded from ``generator`` per patch."""
    g = as_generator(generator)

    def run(t: torch.Tensor) -> torch.Tensor:
        seeds = torch.randint(0, 2**31 - 1, (t.shape[0],), generator=g, device=g.device).tolist()
        out = []
        for patch, seed in zip(t.detach().float().cpu(), seeds):
            transform = make()
            transform.set_random_state(seed=int(seed))
            res = transform(patch)
            out.append(res.as_tensor() if hasattr(res, "as_tensor") else torch.as_tensor(res))
        return torch.stack(out).float().to(t.device)

    return _apply(x, mask, 4, run)


def noise(x: torch.Tensor, strength: float, generator: Seed = None, *,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scanner noise: Gaussian noise of sd ``0.2 * strength`` (MONAI ``RandGaussianNoise``)."""
    from monai.transforms import RandGaussianNoise

    s = _strength_of(x, strength, _volumes)
    if s == 0:
        return x.clone()
    return _per_patch_monai(x, mask, generator, lambda: RandGaussianNoise(prob=1.0, std=NOISE_STD * s,
                                                                         sample_std=False))


def bias_field(x: torch.Tensor, strength: float, generator: Seed = None, *,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """MR intensity inhomogeneity: a smooth multiplicative field (MONAI ``RandBiasField``, degree 3)."""
    from monai.transforms import RandBiasField

    s = _strength_of(x, strength, _volumes)
    if s == 0:
        return x.clone()
    c = BIAS_COEFF * s
    return _per_patch_monai(x, mask, generator, lambda: RandBiasField(degree=3, coeff_range=(-c, c), prob=1.0))


def ghosting(x: torch.Tensor, strength: float, generator: Seed = None, *,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Motion ghosting: every 4th k-space plane along H (the phase-encoding axis) scaled by ``1 - strength``.

    The k-space centre plane is kept, so mean intensity is kept; ghosts appear at 1/4 field-of-view shifts.
    """
    s = _strength_of(x, strength, _volumes)
    if s == 0:
        return x.clone()

    def run(t: torch.Tensor) -> torch.Tensor:
        k = torch.fft.fftshift(torch.fft.fftn(t.float(), dim=(-3, -2, -1)), dim=-2)
        h = t.shape[-2]
        planes = torch.arange(h, device=t.device)
        hit = (planes % GHOST_EVERY == 0) & (planes != h // 2)
        k[..., hit, :] = k[..., hit, :] * (1.0 - s)
        return torch.fft.ifftn(torch.fft.ifftshift(k, dim=-2), dim=(-3, -2, -1)).real

    return _apply(x, mask, 4, run)


def resolution(x: torch.Tensor, strength: float, generator: Seed = None, *,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Resolution loss: area down-sampling by ``1 + 3 * strength`` per axis, trilinear back to the size."""
    s = _strength_of(x, strength, _volumes)
    if s == 0:
        return x.clone()

    def run(t: torch.Tensor) -> torch.Tensor:
        size = tuple(t.shape[-3:])
        small = tuple(max(1, round(n / (1 + RESOLUTION_FACTOR * s))) for n in size)
        low = F.interpolate(t.float(), size=small, mode="area")
        return F.interpolate(low, size=size, mode="trilinear", align_corners=False)

    return _apply(x, mask, 4, run)


# -- expression -----------------------------------------------------------------------------------
def _expression(x: torch.Tensor, gene_mask: torch.Tensor | None, space: str) -> torch.Tensor:
    if not x.is_floating_point() or x.ndim < 1:
        raise ValueError(f"expression artifacts need float profiles [..., G]; got {x.dtype} {tuple(x.shape)}")
    if space not in SPACES:
        raise InputError(f"unknown expression value space {space!r}; known: {', '.join(SPACES)}")
    if gene_mask is None:
        return torch.ones_like(x, dtype=torch.bool)
    if gene_mask.shape != x.shape:
        raise ValueError(f"gene_mask {tuple(gene_mask.shape)} must have the shape of x {tuple(x.shape)}")
    return gene_mask.bool()


def library_size(x: torch.Tensor, strength: float, generator: Seed = None, *, mask: torch.Tensor | None = None,
                 gene_mask: torch.Tensor | None = None, space: str = "zscore") -> torch.Tensor:
    """Shallower sequencing: depth times ``2 ** (-2 * strength)`` (see the module doc per ``space``)."""
    s = check_strength(strength)
    gm = _expression(x, gene_mask, space)
    if s == 0:
        return x.clone()
    log2_fold = -LIBRARY_LOG2_FOLD * s

    def run(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if space == "zscore":
            new = t.float() + log2_fold
        else:
            new = scale_counts(t.float(), torch.exp(torch.tensor(log2_fold * math.log(2), device=t.device)), space)
        return torch.where(m, new, t.float())

    return _apply(x, mask, 1, run, gm)


def dropout(x: torch.Tensor, strength: float, generator: Seed = None, *, mask: torch.Tensor | None = None,
            gene_mask: torch.Tensor | None = None, space: str = "zscore") -> torch.Tensor:
    """Technical dropout: each observed non-zero value set to 0 with probability ``0.5 * strength``."""
    s = check_strength(strength)
    gm = _expression(x, gene_mask, space)
    g = as_generator(generator)
    if s == 0:
        return x.clone()

    def run(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        drop = (_rand(tuple(t.shape), g, t) < DROPOUT_RATE * s) & m & (t != 0)
        return t.masked_fill(drop, 0.0)

    return _apply(x, mask, 1, run, gm)


def batch_shift(x: torch.Tensor, strength: float, generator: Seed = None, *, mask: torch.Tensor | None = None,
                gene_mask: torch.Tensor | None = None, space: str = "zscore", signature_seed: int = 0) -> torch.Tensor:
    """Batch effect: a fixed per-gene shift ``strength * d`` (``d ~ N(0, I)`` from ``signature_seed``)."""
    s = check_strength(strength)
    gm = _expression(x, gene_mask, space)
    if s == 0:
        return x.clone()
    d = (s * _direction(x.shape[-1], signature_seed)).float().to(x.device)

    def run(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        new = t.float() + d if space == "zscore" else scale_counts(t.float(), torch.exp(d), space)
        return torch.where(m, new, t.float())

    return _apply(x, mask, 1, run, gm)


# -- sequences ------------------------------------------------------------------------------------
def _tokens(x: torch.Tensor) -> None:
    if x.dtype != torch.int64:
        raise ValueError(f"sequence artifacts need int64 token ids [..., L]; got {x.dtype}")


def substitution(x: torch.Tensor, strength: float, generator: Seed = None, *,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sequencing errors: each A/C/G/T becomes another base with probability ``0.1 * strength``."""
    s = check_strength(strength)
    _tokens(x)
    g = as_generator(generator)
    if s == 0:
        return x.clone()

    def run(t: torch.Tensor) -> torch.Tensor:
        hit = (_rand(tuple(t.shape), g, t) < SUBSTITUTION_RATE * s) & (t >= 1) & (t <= 4)
        step = torch.randint(1, 4, tuple(t.shape), generator=g, device=g.device).to(t.device)
        return torch.where(hit, (t - 1 + step) % 4 + 1, t)

    return _apply(x, mask, 1, run)


def n_runs(x: torch.Tensor, strength: float, generator: Seed = None, *,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unreadable stretches: blocks of 8 positions become N with probability ``0.5 * strength`` (PAD kept)."""
    s = check_strength(strength)
    _tokens(x)
    g = as_generator(generator)
    if s == 0:
        return x.clone()

    def run(t: torch.Tensor) -> torch.Tensor:
        n, length = t.shape
        phase = torch.randint(0, N_RUN_LENGTH, (n, 1), generator=g, device=g.device).to(t.device)
        n_blocks = length // N_RUN_LENGTH + 2
        chosen = _rand((n, n_blocks), g, t) < N_RUN_FRACTION * s
        block = (torch.arange(length, device=t.device)[None] + phase) // N_RUN_LENGTH
        hit = torch.gather(chosen, 1, block) & (t != PAD_TOKEN)
        return t.masked_fill(hit, N_TOKEN)

    return _apply(x, mask, 1, run)


#: The artifacts of each modality, by name.
ARTIFACTS: dict[str, dict[str, ArtifactFn]] = {
    "wsi": {"blur": blur, "jpeg": jpeg, "stain": stain, "pen": pen, "fold": fold},
    "volume": {"noise": noise, "bias_field": bias_field, "ghosting": ghosting, "resolution": resolution},
    "expression": {"library_size": library_size, "dropout": dropout, "batch_shift": batch_shift},
    "sequence": {"substitution": substitution, "n_runs": n_runs},
}
# The same artifacts by kind (a named modality's kind, :mod:`biossl.kinds`).
ARTIFACTS["slide"] = ARTIFACTS["wsi"]
ARTIFACTS["table"] = ARTIFACTS["expression"]

_PARAMETERS: dict[str, Callable[[float], str]] = {
    "blur": lambda s: f"sigma {BLUR_SIGMA * s:.2g} px",
    "jpeg": lambda s: f"quality {jpeg_quality(s)}" if s > 0 else "no re-encode",
    "stain": lambda s: f"HED scale exp({STAIN_SCALE * s:.2g} d), shift {STAIN_SHIFT * s:.2g} d",
    "pen": lambda s: f"stroke width {PEN_WIDTH * s:.2g} of the tile",
    "fold": lambda s: f"double-layer band {FOLD_WIDTH * s:.2g} of the tile",
    "noise": lambda s: f"noise sd {NOISE_STD * s:.2g}",
    "bias_field": lambda s: f"Legendre coefficients within +-{BIAS_COEFF * s:.2g}",
    "ghosting": lambda s: f"every {GHOST_EVERY}th k-space plane x {1 - s:.2g}",
    "resolution": lambda s: f"{1 + RESOLUTION_FACTOR * s:.2g}x coarser",
    "library_size": lambda s: f"depth x {2 ** (-LIBRARY_LOG2_FOLD * s):.2g}",
    "dropout": lambda s: f"{DROPOUT_RATE * s:.0%} of non-zero values zeroed",
    "batch_shift": lambda s: f"per-gene shift sd {s:.2g}",
    "substitution": lambda s: f"{SUBSTITUTION_RATE * s:.1%} substitutions",
    "n_runs": lambda s: f"{N_RUN_FRACTION * s:.0%} of positions in runs of {N_RUN_LENGTH} N",
}


def get_artifact(modality: str, name: str) -> ArtifactFn:
    """The artifact ``name`` of ``modality``.

    Raises:
        InputError: unknown modality or name (the known ones are listed).
    """
    if modality not in ARTIFACTS:
        raise InputError(f"no artifacts for modality {modality!r}; known: {', '.join(ARTIFACTS)}")
    known = ARTIFACTS[modality]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown {modality} artifact {name!r}.{hint} Known: {', '.join(known)}")
    return known[name]


def describe(modality: str, name: str, strength: float) -> str:
    """The physical setting of an artifact at ``strength``, e.g. ``"sigma 1.5 px"``."""
    get_artifact(modality, name)
    s = check_strength(strength)
    return "none" if s == 0 else _PARAMETERS[name](s)


def apply_artifact(modality: str, name: str, x: torch.Tensor, strength: float, generator: Seed = None, *,
                   mask: torch.Tensor | None = None, **context: Any) -> torch.Tensor:
    """Apply artifact ``name``; of ``context`` (``gene_mask``, ``space``, ``signature_seed``) only what it takes."""
    fn = get_artifact(modality, name)
    accepted = inspect.signature(fn).parameters
    return fn(x, strength, generator, mask=mask, **{k: v for k, v in context.items() if k in accepted})


__all__ = ["ARTIFACTS", "apply_artifact", "as_generator", "check_strength", "describe", "get_artifact"]

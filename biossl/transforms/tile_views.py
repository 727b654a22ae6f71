"""Batched views of histopathology tiles ``float [..., 3, H, W]`` in [0, 1].

Geometry: random resized crop (back to ``H x W``), flips, 90-degree rotations (tissue has no
canonical orientation). Colour: HED stain jitter (:mod:`biossl.transforms.stain`), colour jitter and
Gaussian blur, as in SimCLR (Chen et al. 2020) adapted to H&E: hue and saturation jitter are kept
lighter than for natural images and stain variation is modelled in HED space instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from biossl.errors import InputError
from biossl.transforms import Compose, View, check_probability, coin, randint, uniform
from biossl.transforms.stain import HEDJitter

# Luma weights (ITU-R BT.601) and the RGB <-> YIQ matrices used for the hue rotation.
_LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


class RandomResizedCrop(View):
    """Crop a random box of relative area ``scale`` and aspect ``ratio``, resized back (bilinear).

    Like torchvision's ``RandomResizedCrop`` but batched; a box that would not fit is shrunk to fit
    (torchvision retries, then falls back to a centre crop).
    """

    event_dims = 3

    def __init__(
        self, *, scale: tuple[float, float] = (0.3, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), p: float = 1.0
    ) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise InputError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]; got {scale}, {ratio}")
        check_probability("crop p", p)
        self.scale, self.ratio, self.p = scale, ratio, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Crop and resize ``[N, C, H, W]``."""
        n, _, h, w = x.shape
        area = uniform(n, *self.scale, like=x, generator=generator)
        log_r = uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), like=x, generator=generator)
        aspect = torch.exp(log_r)  # width / height in pixels
        fw = torch.sqrt(area * aspect * h / w).clamp(max=1.0)
        fh = torch.sqrt(area / aspect * w / h).clamp(max=1.0)
        cx = (1 - fw) * uniform(n, -1, 1, like=x, generator=generator)
        cy = (1 - fh) * uniform(n, -1, 1, like=x, generator=generator)
        on = coin(n, self.p, like=x, generator=generator)
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=torch.float32)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = fw, cx, fh, cy
        grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return torch.where(on.view(n, 1, 1, 1), out.to(x.dtype), x)


class RandomFlip(View):
    """Flip each instance along ``dim`` (-1: horizontal, -2: vertical) with probability ``p``."""

    event_dims = 3

    def __init__(self, *, dim: int = -1, p: float = 0.5) -> None:
        super().__init__()
        check_probability("flip p", p)
        self.dim, self.p = dim, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flip ``[N, C, H, W]``."""
        on = coin(x.shape[0], self.p, like=x, generator=generator).view(-1, 1, 1, 1)
        return torch.where(on, x.flip(self.dim), x)


class RandomRot90(View):
    """Rotate by ``k * 90`` degrees, ``k`` uniform in 0..3 (0 or 2 only for non-square tiles)."""

    event_dims = 3

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Rotate ``[N, C, H, W]``."""
        square = x.shape[-1] == x.shape[-2]
        k = randint((x.shape[0],), 0, 4 if square else 2, like=x, generator=generator)
        if not square:
            k = k * 2
        out = x
        for turns in (1, 2, 3) if square else (2,):
            out = torch.where((k == turns).view(-1, 1, 1, 1), torch.rot90(x, turns, dims=(-2, -1)), out)
        return out


class ColorJitter(View):
    """Brightness, contrast, saturation and hue jitter (torchvision semantics, hue as a YIQ rotation).

    Factors are drawn per instance: brightness/contrast/saturation ``U[1 - v, 1 + v]``, hue a chroma
    rotation by ``U[-hue, hue]`` turns. Applied in that order, clipped to [0, 1] after each step.
    """

    event_dims = 3

    def __init__(
        self,
        *,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.1,
        hue: float = 0.02,
        p: float = 0.8,
    ) -> None:
        super().__init__()
        if min(brightness, contrast, saturation, hue) < 0:
            raise InputError("ColorJitter strengths must be >= 0")
        check_probability("colour jitter p", p)
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Jitter ``[N, 3, H, W]``."""
        n = x.shape[0]
        img = x.float()
        luma = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)

        def factor(v: float) -> torch.Tensor:
            return uniform(n, 1 - v, 1 + v, like=x, generator=generator).view(n, 1, 1, 1)

        img = (img * factor(self.brightness)).clamp(0, 1)
        mean = (img * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        img = ((img - mean) * factor(self.contrast) + mean).clamp(0, 1)
        gray = (img * luma).sum(1, keepdim=True)
        img = ((img - gray) * factor(self.saturation) + gray).clamp(0, 1)
        angle = uniform(n, -self.hue, self.hue, like=x, generator=generator) * 2 * math.pi
        to_yiq = torch.tensor(_RGB2YIQ, device=x.device)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(n, 3, 3, device=x.device)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 2, 2], rot[:, 1, 2], rot[:, 2, 1] = 1, cos, cos, -sin, sin
        full = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # [N, 3, 3] acting on RGB column vectors
        img = torch.bmm(full, img.flatten(2)).view_as(img).clamp(0, 1)
        on = coin(n, self.p, like=x, generator=generator).view(n, 1, 1, 1)
        return torch.where(on, img.to(x.dtype), x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float, radius: int) -> torch.Tensor:
    """Blur ``[N, C, H, W]`` with a separable Gaussian truncated at ``radius`` px (reflect padding), in float32.

    Args:
        x: Images ``[N, C, H, W]``.
        sigma: Standard deviation in px: one per instance (``[N]``), or one for all.
        radius: Kernel half-width, at least 1 and below ``min(H, W)`` (reflect padding needs it).
    """
    n, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    if isinstance(sigma, torch.Tensor):
        kernel = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x.device)[:, None] ** 2))
    else:
        kernel = torch.exp(-(t**2) / (2 * sigma**2))[None].expand(n, -1)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [N*C, K]
    img = F.pad(x.float().reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    img = F.conv2d(img, kernel[:, None, None, :], groups=n * c)
    return F.conv2d(img, kernel[:, None, :, None], groups=n * c).reshape(n, c, h, w)


class GaussianBlur(View):
    """Blur with a Gaussian of standard deviation ``U[sigma]`` pixels (separable, reflect padding)."""

    event_dims = 3

    def __init__(self, *, sigma: tuple[float, float] = (0.1, 1.5), p: float = 0.5) -> None:
        super().__init__()
        if not 0 < sigma[0] <= sigma[1]:
            raise InputError(f"GaussianBlur sigma must satisfy 0 < low <= high; got {sigma}")
        check_probability("blur p", p)
        self.sigma, self.p = sigma, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Blur ``[N, C, H, W]``."""
        n, _, h, w = x.shape
        radius = min(math.ceil(3 * self.sigma[1]), min(h, w) - 1)
        sig = uniform(n, *self.sigma, like=x, generator=generator)
        on = coin(n, self.p, like=x, generator=generator).view(n, 1, 1, 1)
        if radius < 1:
            return x
        return torch.where(on, gaussian_blur(x, sig, radius).to(x.dtype), x)


#: Strength presets: parameters of :func:`build_views` ("default" holds every key).
PRESETS: dict[str, dict[str, Any]] = {
    "none": {"crop_p": 0.0, "flip_p": 0.0, "rot90": False, "hed_p": 0.0, "color_p": 0.0, "blur_p": 0.0},
    "light": {"crop_scale": (0.6, 1.0), "hed_sigma": 0.02, "hed_bias": 0.002, "brightness": 0.1, "contrast": 0.1,
              "saturation": 0.05, "hue": 0.01, "blur_p": 0.2},  # fmt: skip
    "default": {"crop_scale": (0.3, 1.0), "crop_p": 1.0, "flip_p": 0.5, "rot90": True, "hed_sigma": 0.05,
                "hed_bias": 0.005, "hed_p": 1.0, "brightness": 0.2, "contrast": 0.2, "saturation": 0.1,
                "hue": 0.02, "color_p": 0.8, "blur_sigma": (0.1, 1.5), "blur_p": 0.5},  # fmt: skip
    "strong": {"crop_scale": (0.08, 1.0), "hed_sigma": 0.1, "hed_bias": 0.01, "brightness": 0.4, "contrast": 0.4,
               "saturation": 0.2, "hue": 0.05, "blur_sigma": (0.1, 2.0)},  # fmt: skip
}


def build_views(
    *,
    crop_scale: tuple[float, float],
    crop_p: float,
    flip_p: float,
    rot90: bool,
    hed_sigma: float,
    hed_bias: float,
    hed_p: float,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    color_p: float,
    blur_sigma: tuple[float, float],
    blur_p: float,
) -> Compose:
    """Compose the tile views in order crop, flips, rot90, HED, colour, blur (inactive ones left out)."""
    views: list[View] = []
    if crop_p > 0:
        views.append(RandomResizedCrop(scale=tuple(crop_scale), p=crop_p))  # type: ignore[arg-type]
    if flip_p > 0:
        views += [RandomFlip(dim=-1, p=flip_p), RandomFlip(dim=-2, p=flip_p)]
    if rot90:
        views.append(RandomRot90())
    if hed_p > 0 and (hed_sigma > 0 or hed_bias > 0):
        views.append(HEDJitter(sigma=hed_sigma, bias=hed_bias, p=hed_p))
    if color_p > 0 and max(brightness, contrast, saturation, hue) > 0:
        views.append(ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=color_p))
    if blur_p > 0:
        views.append(GaussianBlur(sigma=tuple(blur_sigma), p=blur_p))  # type: ignore[arg-type]
    return Compose(views, event_dims=3)

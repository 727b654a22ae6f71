"""Batched views of 3D patches ``float [..., 1, D, H, W]`` (intensities scaled to [0, 1] by the reader).

MONAI's random array transforms act on one channel-first sample and draw from a NumPy RandomState,
so they cannot take a batch on the GPU or a ``torch.Generator``. These are batched torch equivalents
with the semantics of the MONAI transform each names (MONAI 1.x, ``monai.transforms``), one random
draw per instance:

- :class:`RandSpatialCropResize` = ``RandSpatialCrop(roi_size, max_roi_size, random_size=True)``
  followed by ``Resize`` back to the input size (trilinear). The ROI side is drawn per axis as a
  continuous fraction of the side, not a whole number of voxels.
- :class:`RandFlip` = ``RandFlip(prob, spatial_axis)``: one axis, flipped with probability ``p``.
- :class:`RandRotate90` = ``RandRotate90(prob, max_k, spatial_axes)``: with probability ``p`` rotate
  ``k ~ 1..max_k`` quarter turns in the plane of ``spatial_axes`` (``torch.rot90``, as MONAI). Where
  the two sides differ, odd ``k`` would change the shape, so odd ``k`` is replaced by 2.
- :class:`RandScaleIntensity` = ``RandScaleIntensity(factors, prob)``: ``x * (1 + U[-f, f])``.
- :class:`RandShiftIntensity` = ``RandShiftIntensity(offsets, prob)``: ``x + U[-o, o]``.
- :class:`RandGaussianNoise` = ``RandGaussianNoise(prob, mean, std, sample_std=True)``: noise
  ``N(mean, s)`` with ``s ~ U[0, std]`` per instance.

As in MONAI, intensities are not clipped afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from biossl.errors import InputError
from biossl.transforms import Compose, View, check_probability, coin, randint, randn, uniform


def _where(on: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(on.view(-1, *([1] * (old.ndim - 1))), new.to(old.dtype), old)


class RandSpatialCropResize(View):
    """Crop a random box whose sides are ``U[scale]`` of each side, resized back (trilinear)."""

    event_dims = 4

    def __init__(self, *, scale: tuple[float, float] = (0.6, 1.0), p: float = 1.0) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1] <= 1:
            raise InputError(f"volume crop scale needs 0 < low <= high <= 1; got {scale}")
        check_probability("volume crop p", p)
        self.scale, self.p = scale, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Crop and resize ``[N, C, D, H, W]``."""
        n = x.shape[0]
        frac = uniform(n * 3, *self.scale, like=x, generator=generator).view(n, 3)  # x(W), y(H), z(D) order
        centre = (1 - frac) * uniform(n * 3, -1, 1, like=x, generator=generator).view(n, 3)
        on = coin(n, self.p, like=x, generator=generator)
        theta = torch.zeros(n, 3, 4, device=x.device)
        for i in range(3):
            theta[:, i, i], theta[:, i, 3] = frac[:, i], centre[:, i]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return _where(on, out, x)


class RandFlip(View):
    """Flip spatial axis ``spatial_axis`` (0 = D, 1 = H, 2 = W) with probability ``p``."""

    event_dims = 4

    def __init__(self, *, spatial_axis: int, p: float = 0.5) -> None:
        super().__init__()
        if spatial_axis not in (0, 1, 2):
            raise InputError(f"volume flip spatial_axis must be 0, 1 or 2; got {spatial_axis}")
        check_probability("volume flip p", p)
        self.spatial_axis, self.p = spatial_axis, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flip ``[N, C, D, H, W]``."""
        on = coin(x.shape[0], self.p, like=x, generator=generator)
        return _where(on, x.flip(self.spatial_axis + 2), x)


class RandRotate90(View):
    """Rotate ``k ~ 1..max_k`` quarter turns in the plane ``spatial_axes`` with probability ``p``."""

    event_dims = 4

    def __init__(self, *, spatial_axes: tuple[int, int] = (1, 2), max_k: int = 3, p: float = 0.5) -> None:
        super().__init__()
        if len(set(spatial_axes)) != 2 or not set(spatial_axes) <= {0, 1, 2} or max_k < 1:
            raise InputError(
                f"volume rot90 needs two different axes in 0..2 and max_k >= 1; got {spatial_axes}, {max_k}"
            )
        check_probability("volume rot90 p", p)
        self.spatial_axes, self.max_k, self.p = tuple(spatial_axes), max_k, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Rotate ``[N, C, D, H, W]``."""
        dims = (self.spatial_axes[0] + 2, self.spatial_axes[1] + 2)
        k = randint((x.shape[0],), 1, self.max_k + 1, like=x, generator=generator)
        on = coin(x.shape[0], self.p, like=x, generator=generator)
        square = x.shape[dims[0]] == x.shape[dims[1]]
        if not square:
            k = torch.where(k % 2 == 1, torch.full_like(k, 2), k)  # odd turns would swap unequal sides
        k = k % 4
        out = x
        for turns in (1, 2, 3) if square else (2,):
            out = _where(on & (k == turns), torch.rot90(x, turns, dims), out)
        return out


class RandScaleIntensity(View):
    """Multiply each instance by ``1 + U[-factors, factors]`` with probability ``p``."""

    event_dims = 4

    def __init__(self, *, factors: float = 0.1, p: float = 0.5) -> None:
        super().__init__()
        check_probability("scale-intensity p", p)
        self.factors, self.p = abs(factors), p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Scale ``[N, C, D, H, W]``."""
        n = x.shape[0]
        f = uniform(n, -self.factors, self.factors, like=x, generator=generator).view(n, 1, 1, 1, 1)
        return _where(coin(n, self.p, like=x, generator=generator), x * (1 + f), x)


class RandShiftIntensity(View):
    """Add ``U[-offsets, offsets]`` to each instance with probability ``p``."""

    event_dims = 4

    def __init__(self, *, offsets: float = 0.1, p: float = 0.5) -> None:
        super().__init__()
        check_probability("shift-intensity p", p)
        self.offsets, self.p = abs(offsets), p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Shift ``[N, C, D, H, W]``."""
        n = x.shape[0]
        o = uniform(n, -self.offsets, self.offsets, like=x, generator=generator).view(n, 1, 1, 1, 1)
        return _where(coin(n, self.p, like=x, generator=generator), x + o, x)


class RandGaussianNoise(View):
    """Add ``N(mean, s)`` noise, ``s ~ U[0, std]`` per instance, with probability ``p``."""

    event_dims = 4

    def __init__(self, *, std: float = 0.05, mean: float = 0.0, p: float = 0.5) -> None:
        super().__init__()
        if std < 0:
            raise InputError(f"volume noise std must be >= 0; got {std}")
        check_probability("noise p", p)
        self.std, self.mean, self.p = std, mean, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Add noise to ``[N, C, D, H, W]``."""
        n = x.shape[0]
        s = uniform(n, 0.0, self.std, like=x, generator=generator).view(n, 1, 1, 1, 1)
        noise = randn(tuple(x.shape), like=x, generator=generator) * s + self.mean
        return _where(coin(n, self.p, like=x, generator=generator), x + noise, x)


#: Strength presets: parameters of :func:`build_views` ("default" holds every key).
PRESETS: dict[str, dict[str, Any]] = {
    "none": {"crop_p": 0.0, "flip_p": 0.0, "rot90_p": 0.0, "scale_p": 0.0, "shift_p": 0.0, "noise_p": 0.0},
    "light": {"crop_scale": (0.8, 1.0), "scale": 0.05, "shift": 0.05, "noise_std": 0.02},
    "default": {"crop_scale": (0.6, 1.0), "crop_p": 1.0, "flip_p": 0.5, "rot90_p": 0.5, "rot90_axes": (1, 2),
                "scale": 0.1, "scale_p": 0.5, "shift": 0.1, "shift_p": 0.5, "noise_std": 0.05,
                "noise_p": 0.5},  # fmt: skip
    "strong": {"crop_scale": (0.4, 1.0), "scale": 0.2, "shift": 0.2, "noise_std": 0.1, "noise_p": 0.8},
}


def build_views(
    *,
    crop_scale: tuple[float, float],
    crop_p: float,
    flip_p: float,
    rot90_p: float,
    rot90_axes: tuple[int, int],
    scale: float,
    scale_p: float,
    shift: float,
    shift_p: float,
    noise_std: float,
    noise_p: float,
) -> Compose:
    """Compose crop, flips on each axis, rot90, intensity scale/shift and noise (inactive ones left out)."""
    views: list[View] = []
    if crop_p > 0:
        views.append(RandSpatialCropResize(scale=tuple(crop_scale), p=crop_p))  # type: ignore[arg-type]
    if flip_p > 0:
        views += [RandFlip(spatial_axis=axis, p=flip_p) for axis in (0, 1, 2)]
    if rot90_p > 0:
        views.append(RandRotate90(spatial_axes=tuple(rot90_axes), p=rot90_p))  # type: ignore[arg-type]
    if scale_p > 0 and scale > 0:
        views.append(RandScaleIntensity(factors=scale, p=scale_p))
    if shift_p > 0 and shift > 0:
        views.append(RandShiftIntensity(offsets=shift, p=shift_p))
    if noise_p > 0 and noise_std > 0:
        views.append(RandGaussianNoise(std=noise_std, p=noise_p))
    return Compose(views, event_dims=4)

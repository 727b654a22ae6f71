"""Patch sampling from channel-first 3D volumes ``[C, D, H, W]``: random crops and a regular grid.

Both return ``[k, C, d, h, w]`` arrays. A volume smaller than the patch is padded with ``pad_value``
(centred for random patches, at the far end for the grid so origins stay in volume coordinates).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from biossl.errors import InputError


def _as_size(size: int | Sequence[int], name: str = "patch size") -> tuple[int, int, int]:
    sizes = (size,) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sizes) != 3 or min(sizes) < 1:
        raise InputError(f"{name} {size!r} is invalid: give one positive int or three (d, h, w)")
    return sizes[0], sizes[1], sizes[2]


def _check_volume(volume: np.ndarray) -> None:
    if volume.ndim != 4 or min(volume.shape) == 0:
        raise InputError(f"expected a non-empty volume [C, D, H, W], got shape {tuple(volume.shape)}")


def pad_to(
    volume: np.ndarray, size: Sequence[int], *, centre: bool = True, pad_value: float = 0.0
) -> np.ndarray:
    """Pad the spatial axes of ``[C, D, H, W]`` up to at least ``size`` (never crops)."""
    widths = [(0, 0)]
    for n, s in zip(volume.shape[1:], size):
        extra = max(0, s - n)
        before = extra // 2 if centre else 0
        widths.append((before, extra - before))
    if all(w == (0, 0) for w in widths):
        return volume
    return np.pad(volume, widths, mode="constant", constant_values=pad_value)


def random_patch_origins(
    shape: Sequence[int], size: int | Sequence[int], k: int, *, rng: np.random.Generator
) -> np.ndarray:
    """``k`` uniformly drawn corner indices ``[k, 3]`` of ``size`` patches inside a spatial ``shape``."""
    sizes = _as_size(size)
    if k < 1:
        raise InputError(f"number of patches k={k} is invalid: give k >= 1")
    if len(shape) != 3 or any(n < s for n, s in zip(shape, sizes)):
        raise InputError(f"patch size {sizes} does not fit in spatial shape {tuple(shape)}; pad first")
    highs = np.array([n - s + 1 for n, s in zip(shape, sizes)])
    return rng.integers(0, highs, size=(k, 3))


def random_patches(
    volume: np.ndarray,
    size: int | Sequence[int],
    k: int,
    *,
    rng: np.random.Generator,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Crop ``k`` random patches of ``size`` from ``[C, D, H, W]``; returns ``[k, C, d, h, w]``.

    Patches may overlap. Axes shorter than the patch are padded (centred) with ``pad_value`` first.
    The same ``rng`` state gives the same patches.
    """
    _check_volume(volume)
    sizes = _as_size(size)
    padded = pad_to(volume, sizes, pad_value=pad_value)
    origins = random_patch_origins(padded.shape[1:], sizes, k, rng=rng)
    d, h, w = sizes
    return np.stack([padded[:, z : z + d, y : y + h, x : x + w] for z, y, x in origins])


def grid_origins(
    shape: Sequence[int], size: int | Sequence[int], stride: int | Sequence[int] | None = None
) -> np.ndarray:
    """Corners ``[n, 3]`` of a grid of ``size`` patches every ``stride`` voxels covering ``shape``.

    Patches start at 0 and step on until one reaches the end of the axis, so with ``stride <= size``
    every voxel lies in at least one patch; the last one may run past the end (:func:`grid_patches`
    pads there).
    """
    sizes = _as_size(size)
    steps = sizes if stride is None else _as_size(stride, "stride")
    axes = []
    for n, s, step in zip(shape, sizes, steps):
        starts = [0]
        while starts[-1] + s < n and starts[-1] + step < n:
            starts.append(starts[-1] + step)
        axes.append(starts)
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


def grid_patches(
    volume: np.ndarray,
    size: int | Sequence[int],
    *,
    stride: int | Sequence[int] | None = None,
    pad_value: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """All grid patches of ``[C, D, H, W]``: ``([n, C, d, h, w], origins [n, 3])``.

    With ``stride=None`` (= ``size``) the patches tile the volume without overlap; a smaller stride
    gives overlapping patches. The volume is padded at the far end with ``pad_value`` where the grid
    runs past it; origins index the unpadded volume.
    """
    _check_volume(volume)
    sizes = _as_size(size)
    origins = grid_origins(volume.shape[1:], sizes, stride)
    need = [int(origins[:, i].max()) + sizes[i] for i in range(3)]
    padded = pad_to(volume, need, centre=False, pad_value=pad_value)
    d, h, w = sizes
    patches = np.stack([padded[:, z : z + d, y : y + h, x : x + w] for z, y, x in origins])
    return patches, origins

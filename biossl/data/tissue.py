"""Tissue detection on a low-resolution copy of a slide.

The mask is computed on the slide's smallest pyramid level, read in chunks and box-reduced to at most
``max_side`` pixels, so memory stays bounded whatever the slide's size. Tissue is where the HSV
saturation, smoothed over ~16 µm, is above Otsu's threshold (and above a floor, so a blank slide
yields no tissue), followed by removal of specks and filling of small holes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from biossl.data.wsi import Slide
from biossl.io import atomic_path

logger = logging.getLogger(__name__)

_CHUNK = 512  # output pixels per chunk side


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the whole slide.

    Attributes:
        mask: ``bool [h, w]``, True on tissue.
        downsample: (x, y) level-0 pixels per mask pixel.
        rgb: ``uint8 [h, w, 3]`` low-resolution image the mask was computed on.
        threshold: Saturation threshold used (0-1).
    """

    mask: np.ndarray
    downsample: tuple[float, float]
    rgb: np.ndarray
    threshold: float

    @property
    def fraction(self) -> float:
        """Fraction of the slide area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def low_resolution_rgb(slide: Slide, *, max_side: int = 2048) -> tuple[np.ndarray, tuple[float, float]]:
    """Read the smallest level in chunks, box-reduced so its longer side is at most ``max_side``.

    Returns:
        The ``uint8 [h, w, 3]`` image and its (x, y) downsample relative to level 0.
    """
    level = slide.level_count - 1
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    factor = max(1, math.ceil(max(lw, lh) / max_side))
    out = np.empty((math.ceil(lh / factor), math.ceil(lw / factor), 3), np.uint8)
    step = _CHUNK * factor
    for y in range(0, lh, step):
        for x in range(0, lw, step):
            w, h = min(step, lw - x), min(step, lh - y)
            chunk = slide.read_region((round(x * ds), round(y * ds)), level, (w, h))
            if factor > 1:
                chunk = np.asarray(Image.fromarray(chunk).reduce(factor))
            oy, ox = y // factor, x // factor
            out[oy : oy + chunk.shape[0], ox : ox + chunk.shape[1]] = chunk
    w0, h0 = slide.level_dimensions[0]
    return out, (w0 / out.shape[1], h0 / out.shape[0])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an ``uint8 [..., 3]`` image."""
    arr = rgb.astype(np.float32)
    hi = arr.max(axis=-1)
    lo = arr.min(axis=-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0).astype(np.float32)


def detect_tissue(
    slide: Slide,
    *,
    max_side: int = 2048,
    min_saturation: float = 0.07,
    min_object_um: float = 64.0,
    blur_um: float = 16.0,
) -> TissueMask:
    """Detect tissue on a low-resolution copy of ``slide``.

    Args:
        slide: An open slide (with µm/px, used to size the speck filter).
        max_side: Longest side of the mask in pixels.
        min_saturation: Floor for the Otsu threshold; glass and white background stay below it.
        min_object_um: Tissue islands and holes smaller than this side length (µm) are removed/filled.
        blur_um: Gaussian smoothing (sigma, µm) of the saturation before thresholding.

    Returns:
        The mask, its downsample, the low-resolution image and the threshold.
    """
    rgb, downsample = low_resolution_rgb(slide, max_side=max_side)
    mask_mpp = (slide.mpp or 1.0) * downsample[0]
    sat = saturation(rgb)
    if blur_um / mask_mpp > 0.5:  # smooth over nuclei and lumen gaps before thresholding
        sat = ndimage.gaussian_filter(sat, sigma=blur_um / mask_mpp)
    otsu = float(threshold_otsu(sat)) if sat.size and np.ptp(sat) > 0 else 1.0
    threshold = max(otsu, min_saturation)
    mask = sat > threshold
    min_px = max(4, int((min_object_um / mask_mpp) ** 2))
    if mask.any():
        mask = ndimage.binary_closing(mask, iterations=1, border_value=0) | mask
        mask = remove_small_objects(mask, max_size=min_px)
        mask = remove_small_holes(mask, max_size=min_px)
    result = TissueMask(mask=mask, downsample=downsample, rgb=rgb, threshold=threshold)
    logger.debug("%s: tissue threshold %.3f (otsu %.3f), fraction %.3f", slide.path, threshold, otsu, result.fraction)
    return result


def thumbnail(tissue: TissueMask, coords: np.ndarray, extent: float) -> Image.Image:
    """The low-resolution image with tiles (level-0 ``coords``, side ``extent``) outlined."""
    image = Image.fromarray(tissue.rgb)
    draw = ImageDraw.Draw(image)
    dsx, dsy = tissue.downsample
    for x, y in coords:
        draw.rectangle([x / dsx, y / dsy, (x + extent) / dsx - 1, (y + extent) / dsy - 1], outline=(0, 160, 0))
    return image


def write_thumbnail(target: Path, tissue: TissueMask, coords: np.ndarray, extent: float) -> None:
    """Write :func:`thumbnail` as PNG, atomically."""
    with atomic_path(target) as tmp:
        thumbnail(tissue, coords, extent).save(tmp, format="PNG")

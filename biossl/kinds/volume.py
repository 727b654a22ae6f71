"""3D scans (NIfTI, DICOM series): a bag is ``k`` random 3D patches at a target voxel spacing.

Scans are read lazily through a preprocessing cache (resampled and intensity-normalised once); a
manifest column ``intensity`` (``mri``, ``ct``, ``none``) sets a file's normalisation. The default
encoder is a MONAI ViT (``spatial_dims=3``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biossl.kinds.base import Kind, Pick, SourceContext
from biossl.registry import KINDS


@KINDS.register("volume")
class Volume(Kind):
    """A scan modality (``ct``, ``mri``, ``t1``, ``t2``, the legacy ``volume``)."""

    name = "volume"
    default_encoder = "image/vit_tiny"
    default_objective = "mae"
    instances = "patches"
    artifacts = ("noise", "bias_field", "ghosting", "resolution")
    view_module = "volume"
    extensions = (".nii", ".nii.gz", "DICOM folder")

    def probe(self, path: Path, *, thorough: bool = False, options: Mapping[str, Any] | None = None) -> None:
        from biossl.data import volume

        (volume.check if thorough else volume.probe)(path)

    def open(self, modality: str, cohort: Any, patients: list[str], ctx: SourceContext) -> PatchSource:
        files = {p: cohort.files(p, modality) for p in patients}
        intensity = {p: cohort.file_column(p, modality, "intensity") for p in patients}
        return PatchSource(ctx.spec, files, intensity, ctx.volume_cache_dir)

    def encoder_options(self, state: Mapping[str, Any], spec: Any) -> dict[str, Any]:
        return {"spatial_dims": 3, "in_channels": 1}


class PatchSource:
    """Random 3D patches of a patient's scans (spread evenly over its files).

    Asked for every instance (``pick.whole``, a whole-patient embedding): every patch of each scan's
    non-overlapping grid (:func:`biossl.data.patches.grid_patches`, far edges zero-padded), of all its scans.
    """

    def __init__(self, spec: Any, files: dict[str, list[Path]], intensity: dict[str, list[str | None]],
                 cache_dir: Path | None) -> None:
        self.spec, self._files, self._intensity, self._cache_dir = spec, files, intensity, cache_dir
        self._cache: Any = None

    def state(self) -> dict[str, Any]:
        return {}

    def draw(self, patient: str, pick: Pick) -> dict[str, torch.Tensor] | None:
        from biossl.data.patches import grid_patches, random_patches
        from biossl.data.volume import VolumeSpec
        from biossl.data.volume_cache import VolumeCache

        files = self._files.get(patient)
        if not files:
            return None
        if self._cache is None:
            self._cache = VolumeCache(cache_dir=self._cache_dir)
        spec = self.spec
        per_file = max(1, spec.patches // len(files))
        out = []
        for path, kind in zip(files, self._intensity[patient]):
            vspec = VolumeSpec(spacing=spec.volume_spacing, kind=kind or spec.intensity)  # type: ignore[arg-type]
            vol = self._cache.load(path, vspec)
            if pick.whole:  # every patch of the scan's grid (stride = patch size, far edges padded)
                out.append(grid_patches(vol, spec.patch_size)[0])
            else:
                out.append(random_patches(vol, spec.patch_size, per_file, rng=pick.rng))
        if pick.whole:
            every = np.concatenate(out)
            return {"x": torch.from_numpy(every[pick(len(every), spec.patches)]).float()}
        return {"x": torch.from_numpy(np.concatenate(out)[: spec.patches]).float()}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

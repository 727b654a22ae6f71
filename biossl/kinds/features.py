"""Precomputed instance features (``.h5`` with a ``features`` dataset ``[N, D]``: biossl, TRIDENT, CLAM; ``.pt``).

A manifest row points at one features file of the patient (for example a slide's tile features from
TRIDENT); a bag is ``k`` of the patient's feature vectors. The default encoder is an MLP
(``features/mlp``) with masked feature modelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biossl.errors import InputError
from biossl.kinds.base import Kind, Pick, SourceContext
from biossl.kinds.slide import read_feature_rows
from biossl.registry import KINDS


@KINDS.register("features")
class Features(Kind):
    """A modality of precomputed feature vectors (``uni_features``, ``conch``, ...)."""

    name = "features"
    default_encoder = "features/mlp"
    default_objective = "mae"
    instances = "tiles"
    artifacts = ()
    view_module = None
    extensions = (".h5", ".pt")

    def probe(self, path: Path, *, thorough: bool = False, options: Mapping[str, Any] | None = None) -> None:
        from biossl.data.features import SlideFeatures

        SlideFeatures(path)

    def open(self, modality: str, cohort: Any, patients: list[str], ctx: SourceContext) -> FeatureSource:
        from biossl.data.features import SlideFeatures, common_embed_dim

        files: dict[str, list[tuple[Path, int]]] = {}
        every: list[Path] = []
        for p in patients:
            paths = cohort.files(p, modality)
            files[p] = [(h5, n) for h5 in paths if (n := len(SlideFeatures(h5))) > 0]
            every += paths
        if not every:
            raise InputError(f"modality {modality!r}: no features file")
        dim = common_embed_dim(every, want=ctx.state.get("feature_dim"), modality=modality)
        return FeatureSource(int(ctx.spec.tiles), files, dim)

    def encoder_options(self, state: Mapping[str, Any], spec: Any) -> dict[str, Any]:
        return {"in_dim": int(state["feature_dim"])} if state.get("feature_dim") else {}


class FeatureSource:
    """Feature vectors per patient, read on demand."""

    def __init__(self, k: int, files: dict[str, list[tuple[Path, int]]], dim: int) -> None:
        self.k, self._files, self.feature_dim = k, files, dim
        self._readers: dict[Path, Any] = {}

    def state(self) -> dict[str, Any]:
        return {"feature_dim": self.feature_dim}

    def draw(self, patient: str, pick: Pick) -> dict[str, torch.Tensor] | None:
        files = self._files.get(patient)
        if not files:
            return None
        offsets = np.cumsum([0] + [n for _, n in files])
        chosen = pick(int(offsets[-1]), self.k)
        return {"x": read_feature_rows(self._readers, files, offsets, chosen, self.feature_dim)}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": {}}

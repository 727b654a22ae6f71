"""Whole-slide images (OpenSlide: .svs .ndpi .mrxs .tiff ...): a bag is ``k`` tiles at the tiler's µm/px.

Tiles are read lazily (inside DataLoader workers) from the manifest's slide files at the coordinates
``biossl tile`` wrote (``<stem>.<fingerprint>.h5``); with a features folder (``biossl cache-features``),
a bag is ``k`` cached tile features instead. The default encoder is a MONAI ViT (``spatial_dims=2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biossl.errors import InputError
from biossl.kinds.base import Kind, Pick, SourceContext
from biossl.registry import KINDS


@KINDS.register("slide")
class Slide(Kind):
    """A slide modality (``he``, ``ihc``, the legacy ``wsi``)."""

    name = "slide"
    default_encoder = "image/vit_tiny"
    default_objective = "mae"
    instances = "tiles"
    artifacts = ("blur", "jpeg", "stain", "pen", "fold")
    view_module = "wsi"
    extensions = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".bif", ".vms", ".vmu", ".svslide")

    def probe(self, path: Path, *, thorough: bool = False, options: Mapping[str, Any] | None = None) -> None:
        from biossl.data.wsi import probe

        probe(Path(path))

    def open(self, modality: str, cohort: Any, patients: list[str], ctx: SourceContext) -> TileSource:
        if ctx.features_dir is not None:
            return TileSource.of_features(modality, cohort, patients, ctx)
        return TileSource.of_tiles(modality, cohort, patients, ctx)

    def encoder_options(self, state: Mapping[str, Any], spec: Any) -> dict[str, Any]:
        if state.get("feature_dim"):
            return {"in_dim": int(state["feature_dim"])}
        return {"img_size": int(spec.tile_px)}  # the tile edge the encoder receives


class TileSource:
    """A patient's tiles across all of its slides (pixels, or cached feature vectors)."""

    def __init__(self, k: int, tile_px: int, tiles: dict[str, list[tuple[Path, int]]],
                 slide_of: dict[Path, Path], feature_dim: int | None = None) -> None:
        self.k, self.tile_px = k, tile_px
        self._tiles, self._slide_of = tiles, slide_of
        self.feature_dim = feature_dim
        self._readers: dict[Path, Any] = {}

    @classmethod
    def of_tiles(cls, modality: str, cohort: Any, patients: list[str], ctx: SourceContext) -> TileSource:
        from biossl.data.tiles import SlideTiles
        from biossl.data.tiling import slide_key

        if ctx.coords_dir is None:
            raise InputError(f"modality {modality!r} has slides: pass the folder of tile coordinates written by "
                             "`biossl tile`")
        tiles: dict[str, list[tuple[Path, int]]] = {}
        slide_of: dict[Path, Path] = {}
        for p in patients:
            entries = []
            for path in cohort.files(p, modality):
                h5 = Path(ctx.coords_dir) / f"{slide_key(path)}.h5"
                if not h5.is_file():
                    raise InputError(
                        f"patient {p}: no tile coordinates {h5} for slide {path}; run `biossl tile` on it first"
                    )
                slide_of[h5] = Path(path)
                entries.append((h5, len(SlideTiles(h5, slide_path=path))))
            tiles[p] = [(h5, n) for h5, n in entries if n > 0]
        return cls(int(ctx.spec.tiles), int(ctx.spec.tile_px), tiles, slide_of)

    @classmethod
    def of_features(cls, modality: str, cohort: Any, patients: list[str], ctx: SourceContext) -> TileSource:
        from biossl.data.features import SlideFeatures, common_embed_dim, feature_files_for

        assert ctx.features_dir is not None
        files: list[Path] = []
        claimed: dict[Path, tuple[Path, str | None]] = {}  # two slides never read one <stem>.h5 features file
        tiles: dict[str, list[tuple[Path, int]]] = {}
        for p in patients:
            h5s = feature_files_for(cohort.files(p, modality), ctx.features_dir, patient=p, claimed=claimed)
            tiles[p] = [(h5, n) for h5 in h5s if (n := len(SlideFeatures(h5))) > 0]
            files += h5s
        dim = common_embed_dim(files, want=ctx.state.get("feature_dim"), modality=modality) if files else None
        return cls(int(ctx.spec.tiles), int(ctx.spec.tile_px), tiles, {}, feature_dim=dim)

    def state(self) -> dict[str, Any]:
        return {"feature_dim": self.feature_dim} if self.feature_dim else {}

    def count(self, patient: str) -> int:
        """The patient's tiles (or cached feature rows) across all of its slides."""
        return sum(n for _, n in self._tiles.get(patient, []))

    def draw(self, patient: str, pick: Pick) -> dict[str, torch.Tensor] | None:
        slides = self._tiles.get(patient)
        if not slides:
            return None
        return self.read(patient, pick(self.count(patient), self.k))

    def read(self, patient: str, indices: np.ndarray) -> dict[str, torch.Tensor] | None:
        """Tiles ``indices`` (into the concatenation of the patient's slides, in manifest order): ``{"x": [n, ...]}``.

        Pixels come as float ``[n, 3, tile_px, tile_px]`` in [0, 1], cached features as ``[n, D]``.
        """
        slides = self._tiles.get(patient)
        if not slides:
            return None
        offsets = np.cumsum([0] + [n for _, n in slides])
        chosen = np.asarray(indices, dtype=np.int64)
        if self.feature_dim is not None:
            return {"x": read_feature_rows(self._readers, slides, offsets, chosen, self.feature_dim)}
        from biossl.data.tiles import SlideTiles

        out = []
        for flat in chosen:
            s = int(np.searchsorted(offsets, flat, side="right") - 1)
            h5 = slides[s][0]
            reader = self._readers.get(h5)
            if reader is None:
                reader = self._readers[h5] = SlideTiles(h5, slide_path=self._slide_of[h5])
            out.append(torch.from_numpy(reader.read(int(flat - offsets[s]), channels_first=True)))
        x = torch.stack(out).float().div_(255.0)
        if x.shape[-1] != self.tile_px:
            x = torch.nn.functional.interpolate(x, size=self.tile_px, mode="bilinear", antialias=True)
        return {"x": x}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = {}  # open files stay in their process
        return state


def read_feature_rows(readers: dict[Path, Any], files: list[tuple[Path, int]], offsets: np.ndarray,
                      chosen: np.ndarray, dim: int) -> torch.Tensor:
    """Rows ``chosen`` (indices into the concatenation of ``files``) of cached feature files, ``[k, dim]``."""
    from biossl.data.features import SlideFeatures

    which = np.searchsorted(offsets, chosen, side="right") - 1
    rows = np.zeros((len(chosen), dim), dtype=np.float32)
    for s in np.unique(which):
        h5 = files[int(s)][0]
        reader = readers.get(h5)
        if reader is None:
            reader = readers[h5] = SlideFeatures(h5)
        where = np.flatnonzero(which == s)
        rows[where] = reader.read(chosen[where] - offsets[s])
    return torch.from_numpy(rows)

"""Pretext-task objectives: rotation prediction and jigsaw puzzles, in 2D (tiles) and 3D (patches).

* ``rotation`` -- Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting
  Image Rotations", ICLR 2018 (arXiv:1803.07728). 2D: the 4 rotations by 0/90/180/270 degrees.
  3D: the identity and rotations by 90/180/270 degrees about each of the D, H and W axes -- 4 angles
  x 3 axes with the three zero-angle copies merged into one, 10 distinct rotations (the full cube
  group has 24; the other 14 need two axes).
* ``jigsaw`` -- Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving
  Jigsaw Puzzles", ECCV 2016 (arXiv:1603.09246). The image is cut into a ``g x g`` (or ``g x g x g``)
  grid, the pieces are shuffled by one of a fixed set of permutations chosen greedily for maximal
  minimum Hamming distance, and the permutation index is predicted from the embedding of the whole
  shuffled image. Pixels beyond the last full grid cell (when the size is not a multiple of ``g``)
  stay in place; ``gap`` blanks a border of each piece to hide edge continuity (the paper's gaps).

Both objectives own the transformation of the input and a linear classifier head; the caller passes
the raw instances and the encoder's ``embed`` callable.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biossl.errors import InputError
from biossl.objectives import IMAGE_KINDS, OBJECTIVES, ObjectiveInfo
from biossl.objectives._heads import global_batch_mean

if TYPE_CHECKING:
    from biossl.encoders.base import ModalityModel

Embed = Callable[[torch.Tensor], torch.Tensor]


def rotation_set(spatial_dims: int) -> list[tuple[int, tuple[int, int]]]:
    """Return the rotations as ``(k, plane)``: ``torch.rot90(x, k, dims=plane)`` on ``[N, C, *spatial]``.

    Index 0 is the identity. 2D: 4 entries. 3D: 10 entries (identity, then 90/180/270 degrees about
    the D axis (plane H-W), the H axis (plane D-W) and the W axis (plane D-H)).

    Raises:
        ValueError: ``spatial_dims`` is not 2 or 3.
    """
    if spatial_dims == 2:
        return [(k, (2, 3)) for k in range(4)]
    if spatial_dims == 3:
        return [(0, (2, 3))] + [(k, plane) for plane in ((3, 4), (2, 4), (2, 3)) for k in (1, 2, 3)]
    raise ValueError(f"rotations are defined for 2 or 3 spatial dims; got {spatial_dims}")


def rotate(x: torch.Tensor, index: int, spatial_dims: int) -> torch.Tensor:
    """Apply rotation ``index`` of :func:`rotation_set` to ``x`` ``[N, C, *spatial]`` (square/cubic)."""
    k, plane = rotation_set(spatial_dims)[index]
    return torch.rot90(x, k, dims=plane) if k else x


def _check_input(name: str, x: torch.Tensor, spatial_dims: int) -> None:
    if x.ndim != spatial_dims + 2:
        layout = "[N, C, D, H, W]" if spatial_dims == 3 else "[N, C, H, W]"
        raise ValueError(f"{name} expects {layout} inputs; got {tuple(x.shape)}")


@OBJECTIVES.register("rotation")
class RotationPrediction(nn.Module):
    """Cross-entropy of a linear head predicting which rotation was applied.

    Call contract::

        loss = rotation(x, model.embed)   # x: tiles [N, 3, H, W] (H == W) or patches [N, 1, S, S, S]

    With ``all_rotations`` (the paper's best setting) every instance is fed in every rotation
    (batch x4 in 2D, x10 in 3D); otherwise each instance gets one rotation drawn uniformly.

    Args:
        dim: Width of the embeddings returned by ``embed``.
        spatial_dims: 2 for tiles, 3 for volume patches.
        all_rotations: Feed every rotation of every instance (True) or one random rotation (False).

    Attributes:
        n_classes: 4 (2D) or 10 (3D).
        diagnostics: Detached ``"rotation/acc"``, the head's accuracy on the last call.

    Raises:
        InputError: ``dim`` is not positive or ``spatial_dims`` is not 2 or 3.
    """

    info = ObjectiveInfo(
        "embed_fn", kinds=IMAGE_KINDS, paper="Gidaris et al. 2018, RotNet (3D: Taleb et al. 2020)", dim_option="dim"
    )

    @classmethod
    def options_from_encoder(cls, encoder: ModalityModel, *, modality: str, kind: str) -> dict[str, Any]:
        """``spatial_dims`` of the encoder's instances (2: tiles, 3: volume patches)."""
        return {"spatial_dims": getattr(encoder, "spatial_dims", 2)}

    def __init__(self, dim: int, *, spatial_dims: int = 2, all_rotations: bool = True) -> None:
        super().__init__()
        if dim < 1 or spatial_dims not in (2, 3):
            raise InputError(
                f"rotation needs dim >= 1 and spatial_dims 2 or 3; got dim={dim}, spatial_dims={spatial_dims}"
            )
        self.spatial_dims, self.all_rotations = spatial_dims, all_rotations
        self.n_classes = len(rotation_set(spatial_dims))
        self.head = nn.Linear(dim, self.n_classes)
        self.diagnostics: dict[str, torch.Tensor] = {}

    def make_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the rotated instances ``[M, C, *spatial]`` and their rotation labels ``[M]``.

        Raises:
            ValueError: ``x`` has the wrong rank or is not square (2D) / cubic (3D).
        """
        _check_input("rotation", x, self.spatial_dims)
        if len(set(x.shape[2:])) != 1:
            raise ValueError(f"rotation needs square tiles / cubic patches; got spatial size {tuple(x.shape[2:])}")
        n = x.shape[0]
        if self.all_rotations:
            views = [rotate(x, i, self.spatial_dims) for i in range(self.n_classes)]
            labels = torch.arange(self.n_classes, device=x.device).repeat_interleave(n)
            return torch.cat(views), labels
        labels = torch.randint(self.n_classes, (n,), device=x.device)
        out = x.clone()
        for i in range(1, self.n_classes):
            rows = (labels == i).nonzero().flatten()
            if rows.numel():
                out[rows] = rotate(x[rows], i, self.spatial_dims)
        return out, labels

    def forward(self, x: torch.Tensor, embed: Embed) -> torch.Tensor:
        """Return the rotation-classification loss (a scalar, global-batch mean).

        Args:
            x: ``[N, C, H, W]`` tiles or ``[N, C, D, H, W]`` patches, unrotated.
            embed: Maps instances to ``[M, dim]`` embeddings (the encoder's ``embed``).
        """
        inputs, labels = self.make_inputs(x)
        logits = self.head(embed(inputs))
        with torch.no_grad():
            self.diagnostics = {"rotation/acc": (logits.argmax(1) == labels).float().mean()}
        return global_batch_mean(F.cross_entropy(logits, labels, reduction="none"))


@functools.lru_cache(maxsize=8)
def _all_permutations(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``n!`` permutations ``[n!, n]`` (lexicographic) and masks ``[n, n, n!]``: ``[i, v] = (perm[i] == v)``."""
    every = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(n))), dtype=np.uint8)
    every = every.reshape(-1, n)
    masks = np.stack([[every[:, i] == v for v in range(n)] for i in range(n)]).view(np.uint8)
    return every, masks


def hamming_permutations(n_pieces: int, n_perms: int, *, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Return ``n_perms`` permutations of ``n_pieces`` with greedily maximised minimum Hamming distance.

    Noroozi & Favaro's algorithm: start from one permutation drawn with ``seed``; repeatedly add
    the permutation whose minimum Hamming distance to the chosen ones is largest (ties: the first
    in lexicographic order). Deterministic for a given ``seed``.

    Returns:
        ``(perms [n_perms, n_pieces] int64, min_distance)`` where ``min_distance`` is the smallest
        Hamming distance between two chosen permutations (``n_pieces`` if ``n_perms == 1``).

    Raises:
        ValueError: ``n_pieces`` is not in ``[2, 9]`` or ``n_perms`` not in ``[1, n_pieces!]``.
    """
    if not 2 <= n_pieces <= 9 or not 1 <= n_perms <= math.factorial(n_pieces):
        raise ValueError(f"need 2 <= n_pieces <= 9 and 1 <= n_perms <= n_pieces!; got {n_pieces}, {n_perms}")
    every, masks = _all_permutations(n_pieces)

    def matches(index: int) -> np.ndarray:  # positions where every permutation agrees with one of them
        out = masks[0, every[index, 0]].copy()
        for i in range(1, n_pieces):
            out += masks[i, every[index, i]]
        return out

    first = int(torch.randint(every.shape[0], (1,), generator=torch.Generator().manual_seed(seed)))
    chosen, min_distance = [first], n_pieces
    most_matches = matches(first)  # n_pieces - (minimum Hamming distance to the chosen set)
    for _ in range(1, n_perms):
        nxt = int(most_matches.argmin())  # first index among ties
        chosen.append(nxt)  # its distance to the closest earlier one is the minimum over its pairs
        min_distance = min(min_distance, n_pieces - int(most_matches[nxt]))
        np.maximum(most_matches, matches(nxt), out=most_matches)
    return torch.from_numpy(every[chosen].astype(np.int64)), min_distance


def _to_pieces(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``[N, C, *S]`` (each ``S_i`` a multiple of ``grid``) -> ``[N, grid**s, C, *piece]`` in row-major cell order."""
    n, c, *size = x.shape
    s = len(size)
    interleaved = [v for p in size for v in (grid, p // grid)]
    order = [0, *(2 + 2 * i for i in range(s)), 1, *(3 + 2 * i for i in range(s))]
    return x.reshape(n, c, *interleaved).permute(order).reshape(n, grid**s, c, *(p // grid for p in size))


def _from_pieces(pieces: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of :func:`_to_pieces`."""
    n, _, c, *piece = pieces.shape
    s = len(piece)
    order = [0, s + 1] + [v for i in range(s) for v in (1 + i, s + 2 + i)]
    return pieces.reshape(n, *([grid] * s), c, *piece).permute(order).reshape(n, c, *(grid * p for p in piece))


def _core(x: torch.Tensor, grid: int) -> torch.Tensor:
    """View of ``x`` cropped to whole grid cells (a view: writing into it writes into ``x``)."""
    for axis, size in enumerate(x.shape[2:]):
        x = x.narrow(2 + axis, 0, (size // grid) * grid)
    return x


def shuffle_pieces(x: torch.Tensor, perms: torch.Tensor, grid: int, *, inverse: bool = False) -> torch.Tensor:
    """Put piece ``perms[n, j]`` of instance ``n`` at grid cell ``j`` (``inverse``: undo that).

    Args:
        x: ``[N, C, *S]`` instances; pixels past the last full grid cell stay where they are.
        perms: ``[N, grid**s]`` one permutation per instance.
        grid: Cells per side.
        inverse: Apply the inverse permutations (``shuffle(shuffle(x, p), p, inverse=True) == x``).
    """
    pieces = _to_pieces(_core(x, grid), grid)
    index = perms.argsort(dim=1) if inverse else perms
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    out = x.clone()
    _core(out, grid).copy_(_from_pieces(pieces[rows, index.to(x.device)], grid))
    return out


@OBJECTIVES.register("jigsaw")
class JigsawPuzzle(nn.Module):
    """Cross-entropy of a linear head predicting which permutation shuffled the grid of pieces.

    Call contract::

        loss = jigsaw(x, model.embed)   # x: tiles [N, 3, H, W] or patches [N, 1, D, H, W]

    Args:
        dim: Width of the embeddings returned by ``embed``.
        spatial_dims: 2 for tiles (grid 2 or 3), 3 for volume patches (grid 2).
        grid: Cells per side; every side must be at least ``grid * (gap + 1)`` pixels.
        n_perms: Size of the permutation set (default: 24 for 2x2, 100 otherwise; paper: 1000).
        gap: Pixels zeroed at the far edge of each piece along every axis (0: none).
        seed: Seed of the permutation set (see :func:`hamming_permutations`).

    Attributes:
        perms: ``[n_perms, grid**spatial_dims]`` buffer of the permutations (class ``i`` = row ``i``).
        min_hamming: Minimum Hamming distance between two permutations of the set.
        diagnostics: Detached ``"jigsaw/acc"``, the head's accuracy on the last call.

    Raises:
        InputError: Bad ``dim``, ``spatial_dims``/``grid`` pair, ``n_perms`` or ``gap``.
    """

    info = ObjectiveInfo(
        "embed_fn", kinds=IMAGE_KINDS, paper="Noroozi and Favaro 2016, jigsaw puzzles", dim_option="dim"
    )

    @classmethod
    def options_from_encoder(cls, encoder: ModalityModel, *, modality: str, kind: str) -> dict[str, Any]:
        """``spatial_dims`` of the encoder's instances and its grid: 3x3 tiles, 2x2x2 volume patches."""
        spatial_dims = getattr(encoder, "spatial_dims", 2)
        return {"spatial_dims": spatial_dims, "grid": 3 if spatial_dims == 2 else 2}

    perms: torch.Tensor

    def __init__(
        self, dim: int, *, spatial_dims: int = 2, grid: int = 3, n_perms: int | None = None, gap: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        allowed = {2: (2, 3), 3: (2,)}
        if dim < 1 or grid not in allowed.get(spatial_dims, ()) or gap < 0:
            raise InputError(
                f"jigsaw needs dim >= 1, gap >= 0 and a grid of 2 or 3 (2D) or 2 (3D); got dim={dim}, "
                f"spatial_dims={spatial_dims}, grid={grid}, gap={gap}"
            )
        n_pieces = grid**spatial_dims
        n_perms = n_perms if n_perms is not None else (24 if n_pieces == 4 else 100)
        if not 2 <= n_perms <= math.factorial(n_pieces):
            raise InputError(
                f"jigsaw n_perms must be in [2, {math.factorial(n_pieces)}] for {n_pieces} pieces; got {n_perms}"
            )
        self.spatial_dims, self.grid, self.gap = spatial_dims, grid, gap
        perms, self.min_hamming = hamming_permutations(n_pieces, n_perms, seed=seed)
        self.register_buffer("perms", perms)
        self.head = nn.Linear(dim, n_perms)
        self.diagnostics: dict[str, torch.Tensor] = {}

    def make_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return shuffled instances (same shape as ``x``) and their permutation indices ``[N]``.

        Raises:
            ValueError: ``x`` has the wrong rank or a side too small for the grid and gap.
        """
        _check_input("jigsaw", x, self.spatial_dims)
        if min(x.shape[2:]) < self.grid * (self.gap + 1):
            raise ValueError(f"jigsaw grid {self.grid} with gap {self.gap} needs larger inputs; got {tuple(x.shape)}")
        labels = torch.randint(self.perms.shape[0], (x.shape[0],), device=x.device)
        out = shuffle_pieces(x, self.perms[labels], self.grid)
        if self.gap:
            for axis, size in enumerate(x.shape[2:]):
                piece = size // self.grid
                for cell in range(self.grid):
                    out.narrow(2 + axis, cell * piece + piece - self.gap, self.gap).zero_()
        return out, labels

    def forward(self, x: torch.Tensor, embed: Embed) -> torch.Tensor:
        """Return the permutation-classification loss (a scalar, global-batch mean).

        Args:
            x: ``[N, C, H, W]`` tiles or ``[N, C, D, H, W]`` patches, unshuffled.
            embed: Maps instances to ``[N, dim]`` embeddings (the encoder's ``embed``).
        """
        inputs, labels = self.make_inputs(x)
        logits = self.head(embed(inputs))
        with torch.no_grad():
            self.diagnostics = {"jigsaw/acc": (logits.argmax(1) == labels).float().mean()}
        return global_batch_mean(F.cross_entropy(logits, labels, reduction="none"))

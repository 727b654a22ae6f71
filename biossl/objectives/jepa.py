"""I-JEPA: predict the latent embeddings of masked blocks from a visible context block.

Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture",
CVPR 2023 (arXiv:2301.08243). A *context* encoder (trained) sees only the tokens of a large context
block; a *target* encoder (an exponential moving average of the context encoder, no gradient) sees the
whole input. A narrow transformer predictor, given the context tokens plus mask tokens carrying the
positional embeddings of one target block, predicts the target encoder's (layer-normalised) embeddings
of that block. The loss is a smooth-L1 (or MSE) distance in latent space on the target positions only.

Tokens are numbered in row-major order of their grid: ``(L,)`` for nucleotide tokens, ``(H, W)`` for
2D tile patches, ``(D, H, W)`` for 3D volume patches (MONAI's patch-embedding order).

Engine contract, one step::

    ctx_mask, tgt_masks = sample_block_masks(n, grid)          # [N, P], [N, M, P]
    ctx = encoder(keep_tokens(patch_tokens, ctx_mask))        # [N, K, D], context tokens only
    with torch.no_grad():
        tgt = target_encoder(patch_tokens)                     # [N, P, D], the full input
    loss = jepa(ctx, tgt, ctx_mask, tgt_masks)
    ...; optimiser.step(); ema_update(encoder, target_encoder, momentum)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from biossl import keys
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, ObjectiveInfo

if TYPE_CHECKING:
    from biossl.encoders.base import ModalityModel

__all__ = ["JEPA", "ema_update", "keep_tokens", "sample_block_masks", "sincos_positions"]


def sincos_positions(grid: Sequence[int], dim: int) -> torch.Tensor:
    """Fixed sin-cos position embeddings ``[prod(grid), dim]``; ``dim / len(grid)`` features per axis."""
    per_axis = dim // len(grid)
    omega = 1.0 / 10000.0 ** (torch.arange(per_axis // 2, dtype=torch.float32) / max(per_axis // 2, 1))
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float32) for g in grid], indexing="ij")
    parts: list[torch.Tensor] = []
    for c in coords:
        angle = c.reshape(-1, 1) * omega
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, dim=1)


def keep_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gather the tokens at ``mask`` (grid order kept): ``[N, P, D]`` -> ``[N, K, D]``; ``K`` equal per row."""
    counts = mask.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise ValueError("keep_tokens needs the same number of True per row (sample_block_masks ensures it)")
    idx = mask.nonzero()[:, 1].reshape(mask.shape[0], -1)
    return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _uniform(lo: float, hi: float, gen: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _block(grid: tuple[int, ...], scale: float, aspect: float, gen: torch.Generator | None) -> torch.Tensor:
    """A bool grid with one axis-aligned block of about ``scale * prod(grid)`` tokens set."""
    volume = scale * math.prod(grid)
    if len(grid) == 1:
        sizes = [round(volume)]
    else:
        depth = [round(volume ** (1 / 3))] if len(grid) == 3 else []
        plane = volume / depth[0] if depth else volume
        sizes = [*depth, round(math.sqrt(plane * aspect)), round(math.sqrt(plane / aspect))]
    out = torch.zeros(grid, dtype=torch.bool)
    box = []
    for size, g in zip(sizes, grid):
        size = min(max(size, 1), g)
        start = int(torch.randint(0, g - size + 1, (), generator=gen))
        box.append(slice(start, start + size))
    out[tuple(box)] = True
    return out


def sample_block_masks(
    n: int,
    grid: Sequence[int],
    *,
    n_targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
    lengths: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """I-JEPA multi-block masks for 1D token sequences and 2D/3D patch grids.

    Each row gets ``n_targets`` target blocks (about ``target_scale`` of the tokens each, aspect ratio
    in ``target_aspect`` for 2D/3D) and one context block (``context_scale``) from which every target
    position is removed. Context counts are then cut to the batch minimum at random, so that
    :func:`keep_tokens` can gather them (the paper's collator does the same).

    Args:
        n: Rows.
        grid: Token grid, ``(L,)``, ``(H, W)`` or ``(D, H, W)``.
        n_targets: Target blocks per row (paper: 4).
        target_scale: Range of the fraction of tokens per target block (paper: 0.15-0.2).
        target_aspect: Range of the height/width ratio of 2D/3D target blocks (paper: 0.75-1.5).
        context_scale: Range of the fraction of tokens in the context block (paper: 0.85-1.0).
        lengths: For 1D grids, each row's number of real (non-PAD) tokens; blocks stay inside them.
        generator: Random generator, for reproducible masks.

    Returns:
        ``ctx_mask [n, P]`` and ``tgt_masks [n, n_targets, P]`` bool, ``P = prod(grid)``, disjoint.

    Raises:
        ValueError: Bad sizes, or a row whose targets leave no context (lower ``target_scale``).
    """
    grid = tuple(int(g) for g in grid)
    p = math.prod(grid)
    scales_ok = 0 < target_scale[0] <= target_scale[1] < 1 and 0 < context_scale[0] <= context_scale[1] <= 1
    if n_targets < 1 or not scales_ok:
        raise ValueError(f"need n_targets >= 1 and scales in (0, 1]; got {n_targets}, {target_scale}, {context_scale}")
    if lengths is not None and (len(grid) != 1 or len(lengths) != n or min(lengths, default=1) < 2):
        raise ValueError("lengths apply to 1D grids only: one length >= 2 per row, at most the grid size")
    ctx = torch.zeros(n, p, dtype=torch.bool)
    tgt = torch.zeros(n, n_targets, p, dtype=torch.bool)
    log_ar = (math.log(target_aspect[0]), math.log(target_aspect[1]))
    for i in range(n):
        row_grid = (min(int(lengths[i]), grid[0]),) if lengths is not None else grid
        for _ in range(20):
            blocks = [
                _block(row_grid, _uniform(*target_scale, generator), math.exp(_uniform(*log_ar, generator)), generator)
                for _ in range(n_targets)
            ]
            context = _block(row_grid, _uniform(*context_scale, generator), 1.0, generator)
            for b in blocks:
                context &= ~b
            if bool(context.any()):
                break
        else:
            raise ValueError(f"targets of scale {target_scale} leave no context in grid {row_grid}; lower target_scale")
        k = math.prod(row_grid)
        ctx[i, :k] = context.reshape(-1)
        tgt[i, :, :k] = torch.stack([b.reshape(-1) for b in blocks])
    keep = int(ctx.sum(dim=1).min())
    scores = torch.rand(n, p, generator=generator).masked_fill(~ctx, 2.0)
    ctx &= scores.argsort(dim=1).argsort(dim=1) < keep
    return ctx, tgt


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """Set ``target = momentum * target + (1 - momentum) * online`` parameter-wise; copy buffers.

    I-JEPA raises ``momentum`` linearly from 0.996 to 1.0 over training; call after each optimiser step.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    for p_t, p_o in zip(target.parameters(), online.parameters(), strict=True):
        p_t.mul_(momentum).add_(p_o.detach(), alpha=1.0 - momentum)
    for b_t, b_o in zip(target.buffers(), online.buffers(), strict=True):
        b_t.copy_(b_o)


@OBJECTIVES.register("jepa")
class JEPA(nn.Module):
    """I-JEPA predictor and latent loss (Assran et al. 2023) over a fixed token grid.

    Args:
        grid: Token grid ``(L,)``, ``(H, W)`` or ``(D, H, W)``. For 1D grids shorter inputs
            (``P <= L``) are accepted and use the first ``P`` positions.
        embed_dim: Width ``D`` of the encoder tokens.
        predictor_dim: Width of the predictor (paper: 384 for ViT-H); divisible by ``2 * len(grid)``
            and by ``predictor_heads``.
        predictor_depth: Transformer blocks in the predictor (paper: 12; small here).
        predictor_heads: Attention heads in the predictor.
        loss: ``"smooth_l1"`` (the paper's code) or ``"mse"``.
        normalize_targets: Layer-normalise target embeddings over the feature axis (paper: yes).

    Raises:
        InputError: A size or option is invalid.
    """

    info = ObjectiveInfo(
        "jepa", kinds=(keys.SLIDE, keys.VOLUME, keys.SEQUENCE), paper="Assran et al. 2023, I-JEPA",
        dim_option="embed_dim",
    )

    @classmethod
    def options_from_encoder(cls, encoder: ModalityModel, *, modality: str, kind: str) -> dict[str, Any]:
        """The encoder's token ``grid``.

        Raises:
            InputError: The encoder has no fixed token grid.
        """
        if encoder.token_grid is None:
            raise InputError(
                f"jepa on {modality} needs an encoder with a fixed token grid (a ViT, or the sequence "
                f"transformer); {type(encoder).__name__} has none"
            )
        return {"grid": encoder.token_grid}

    def __init__(
        self,
        *,
        grid: Sequence[int],
        embed_dim: int,
        predictor_dim: int = 192,
        predictor_depth: int = 2,
        predictor_heads: int = 4,
        loss: str = "smooth_l1",
        normalize_targets: bool = True,
    ) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        if not 1 <= len(self.grid) <= 3 or min(self.grid) < 1:
            raise InputError(f"jepa grid must be 1 to 3 positive sizes, got {tuple(grid)}")
        if min(embed_dim, predictor_dim, predictor_depth, predictor_heads) < 1:
            raise InputError("jepa embed_dim, predictor_dim, predictor_depth and predictor_heads must be >= 1")
        if predictor_dim % (2 * len(self.grid)) or predictor_dim % predictor_heads:
            raise InputError(
                f"jepa predictor_dim={predictor_dim} must be divisible by {2 * len(self.grid)} (sin-cos "
                f"positions over {len(self.grid)} axes) and by predictor_heads={predictor_heads}"
            )
        if loss not in ("smooth_l1", "mse"):
            raise InputError(f"jepa loss must be 'smooth_l1' or 'mse', got {loss!r}")
        self.num_tokens = math.prod(self.grid)
        self.loss = loss
        self.normalize_targets = normalize_targets
        self.embed = nn.Linear(embed_dim, predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.positions: torch.Tensor
        self.register_buffer("positions", sincos_positions(self.grid, predictor_dim), persistent=False)
        layer = nn.TransformerEncoderLayer(
            predictor_dim, predictor_heads, 4 * predictor_dim, 0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, predictor_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(predictor_dim)
        self.out = nn.Linear(predictor_dim, embed_dim)

    def _check(self, ctx_mask: torch.Tensor, tgt_masks: torch.Tensor) -> tuple[int, int]:
        n, p = ctx_mask.shape
        if p > self.num_tokens or (len(self.grid) > 1 and p != self.num_tokens):
            raise ValueError(f"masks cover {p} tokens but the jepa grid {self.grid} has {self.num_tokens}")
        if tgt_masks.shape[0] != n or tgt_masks.shape[-1] != p:
            raise ValueError(f"target masks {tuple(tgt_masks.shape)} do not match context mask {(n, p)}")
        if bool((ctx_mask.unsqueeze(1) & tgt_masks).any()):
            raise ValueError("a target position is also in the context: the predictor would see its answer")
        return n, p

    def predict(self, context: torch.Tensor, ctx_mask: torch.Tensor, tgt_masks: torch.Tensor) -> torch.Tensor:
        """Predict target-encoder embeddings for every position of every target block.

        Args:
            context: Context-encoder outputs, either gathered ``[N, K, D]`` (``K`` = context tokens
                per row, in grid order, as from :func:`keep_tokens`) or laid out on the grid ``[N, P, D]``
                (entries outside ``ctx_mask`` are ignored).
            ctx_mask: Bool ``[N, P]``, True at context positions.
            tgt_masks: Bool ``[N, M, P]`` (``M`` target blocks) or ``[N, P]`` (one block).

        Returns:
            ``[N, M, P, D]`` predictions; only entries inside ``tgt_masks`` are meaningful.
        """
        tgt_masks = tgt_masks.unsqueeze(1) if tgt_masks.ndim == 2 else tgt_masks
        n, p = self._check(ctx_mask, tgt_masks)
        m = tgt_masks.shape[1]
        h = self.embed(context)
        if h.shape[1] != p:  # gathered context tokens: scatter them onto the grid
            full = h.new_zeros(n, p, h.shape[-1])
            idx = ctx_mask.nonzero()
            if idx.shape[0] != h.shape[0] * h.shape[1]:
                raise ValueError(
                    f"context has {h.shape[1]} tokens per row but ctx_mask holds {idx.shape[0]} in all; "
                    "pass gathered tokens (same count per row) or tokens on the full grid"
                )
            full[idx[:, 0], idx[:, 1]] = h.reshape(-1, h.shape[-1])
            h = full
        pos = self.positions[:p].to(h.dtype)
        h = torch.where(ctx_mask.unsqueeze(-1), h + pos, h.new_zeros(()))
        seq = h.unsqueeze(1).expand(n, m, p, -1)
        queries = (self.mask_token.to(h.dtype) + pos).expand(n, m, p, -1)
        seq = torch.where(tgt_masks.unsqueeze(-1), queries, seq).reshape(n * m, p, -1)
        attend = (ctx_mask.unsqueeze(1) | tgt_masks).reshape(n * m, p)
        out = self.out(self.norm(self.blocks(seq, src_key_padding_mask=~attend)))
        result: torch.Tensor = out.reshape(n, m, p, -1)
        return result

    def forward(
        self, context: torch.Tensor, target: torch.Tensor, ctx_mask: torch.Tensor, tgt_masks: torch.Tensor
    ) -> torch.Tensor:
        """I-JEPA loss: mean distance between predicted and target embeddings over target positions.

        Args:
            context: Context-encoder outputs, see :meth:`predict`.
            target: ``[N, P, D]`` target-encoder (EMA) outputs on the full input; no gradient flows into it.
            ctx_mask: Bool ``[N, P]``, True at context positions.
            tgt_masks: Bool ``[N, M, P]`` or ``[N, P]``, True at positions to predict.

        Returns:
            Scalar: the per-element loss averaged over every (block, position, feature) inside a target block.
        """
        tgt_masks = tgt_masks.unsqueeze(1) if tgt_masks.ndim == 2 else tgt_masks
        if target.ndim != 3 or target.shape[:2] != ctx_mask.shape:
            raise ValueError(f"target must be [N, P, D] matching ctx_mask {tuple(ctx_mask.shape)}, got {target.shape}")
        pred = self.predict(context, ctx_mask, tgt_masks).float()
        tgt = target.detach().float()
        if self.normalize_targets:
            tgt = F.layer_norm(tgt, (tgt.shape[-1],))
        tgt = tgt.unsqueeze(1).expand_as(pred)
        sel = tgt_masks.to(pred.device)
        if not bool(sel.any()):
            return pred.sum() * 0.0
        if self.loss == "mse":
            return F.mse_loss(pred[sel], tgt[sel])
        return F.smooth_l1_loss(pred[sel], tgt[sel])


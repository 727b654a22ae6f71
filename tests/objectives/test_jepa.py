"""I-JEPA block masks, predictor and latent loss against hand-written references on real pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torch import nn

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.jepa import JEPA, ema_update, keep_tokens, sample_block_masks
from biossl.objectives.mae import patchify


def _tokens(n: int = 3, dim: int = 16) -> torch.Tensor:
    """Real IHC tiles 64x64 cut into an 8x8 grid of 8x8 patches, linearly embedded: ``[n, 64, dim]``."""
    img = skdata.immunohistochemistry()[: 64 * n, :64].astype(np.float32) / 255.0
    tiles = torch.from_numpy(img.reshape(n, 64, 64, 3)).permute(0, 3, 1, 2)
    proj = torch.Generator().manual_seed(1)
    return patchify(tiles, (8, 8)) @ torch.randn(192, dim, generator=proj) / 8.0


def _is_box(mask: torch.Tensor) -> bool:
    idx = mask.nonzero()
    lo, hi = idx.min(0).values, idx.max(0).values
    return int(mask.sum()) == int(torch.prod(hi - lo + 1))


@pytest.mark.parametrize("grid", [(8, 8), (4, 6, 6)])
def test_block_masks_are_disjoint_boxes(grid: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    ctx, tgt = sample_block_masks(16, grid, generator=gen)
    p = int(np.prod(grid))
    assert ctx.shape == (16, p) and tgt.shape == (16, 4, p)
    assert not (ctx.unsqueeze(1) & tgt).any()
    assert (ctx.sum(1) == ctx.sum(1)[0]).all() and ctx.sum(1)[0] > 0
    for n in range(16):
        for m in range(4):
            assert _is_box(tgt[n, m].reshape(grid))
            assert 0.05 * p <= tgt[n, m].sum() <= 0.35 * p
    again = sample_block_masks(16, grid, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], ctx) and torch.equal(again[1], tgt)


def test_block_masks_1d_stay_inside_real_tokens() -> None:
    lengths = [70, 40, 12, 70]
    ctx, tgt = sample_block_masks(4, (70,), lengths=lengths, generator=torch.Generator().manual_seed(0))
    for n, length in enumerate(lengths):
        assert not ctx[n, length:].any() and not tgt[n, :, length:].any()
        for m in range(4):
            idx = tgt[n, m].nonzero()[:, 0]
            assert idx.numel() >= 1 and int(idx.max() - idx.min() + 1) == idx.numel()  # contiguous run
    with pytest.raises(ValueError, match="lengths"):
        sample_block_masks(2, (8, 8), lengths=[8, 8])
    with pytest.raises(ValueError, match="no context"):
        sample_block_masks(2, (4,), n_targets=4, target_scale=(0.9, 0.95))


def _reference(
    jepa: JEPA, ctx_tokens: torch.Tensor, target: torch.Tensor, ctx: torch.Tensor, tgt: torch.Tensor
) -> float:
    pred = jepa.predict(ctx_tokens, ctx, tgt)
    total, count = 0.0, 0
    for n in range(tgt.shape[0]):
        for m in range(tgt.shape[1]):
            for p in range(tgt.shape[2]):
                if not tgt[n, m, p]:
                    continue
                t = target[n, p]
                t = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-5)
                diff = (pred[n, m, p] - t).abs()
                total += float(torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum())
                count += t.numel()
    return total / count


def test_loss_matches_reference_on_target_positions_only() -> None:
    torch.manual_seed(0)
    tokens = _tokens()
    target = tokens.flip(-1) * 2.0  # stands in for the EMA encoder's output on the full input
    ctx, tgt = sample_block_masks(3, (8, 8), generator=torch.Generator().manual_seed(3))
    jepa = JEPA(grid=(8, 8), embed_dim=16, predictor_dim=32, predictor_depth=1, predictor_heads=2)
    with torch.no_grad():
        got = jepa(keep_tokens(tokens, ctx), target, ctx, tgt).item()
        assert got == pytest.approx(_reference(jepa, keep_tokens(tokens, ctx), target, ctx, tgt), rel=1e-5)
        outside = ~tgt.any(1)
        changed = target.clone()
        changed[outside] += 10.0
        assert jepa(keep_tokens(tokens, ctx), changed, ctx, tgt).item() == pytest.approx(got, rel=1e-6)
        changed[~outside] += 10.0
        assert abs(jepa(keep_tokens(tokens, ctx), changed.roll(1, dims=-1), ctx, tgt).item() - got) > 1e-3
        # tokens on the full grid: entries outside the context are never read
        full = tokens.masked_fill(~ctx.unsqueeze(-1), 1e3)
        assert jepa(full, target, ctx, tgt).item() == pytest.approx(got, rel=1e-5)
    mse = JEPA(grid=(8, 8), embed_dim=16, predictor_dim=32, predictor_depth=1, predictor_heads=2, loss="mse")
    mse.load_state_dict(jepa.state_dict())
    pred = mse.predict(keep_tokens(tokens, ctx), ctx, tgt)
    norm = F.layer_norm(target, (16,)).unsqueeze(1).expand_as(pred)
    assert mse(keep_tokens(tokens, ctx), target, ctx, tgt).item() == pytest.approx(
        F.mse_loss(pred[tgt], norm[tgt]).item(), rel=1e-5
    )


def test_no_gradient_into_targets_and_no_leak_from_them() -> None:
    tokens = _tokens(2)
    ctx, tgt = sample_block_masks(2, (8, 8), generator=torch.Generator().manual_seed(5))
    jepa = JEPA(grid=(8, 8), embed_dim=16, predictor_dim=24, predictor_depth=1, predictor_heads=2)
    context = keep_tokens(tokens, ctx).requires_grad_(True)
    target = tokens.clone().requires_grad_(True)
    jepa(context, target, ctx, tgt).backward()
    assert target.grad is None and context.grad is not None and context.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="also in the context"):
        jepa(context, target, ctx | tgt[:, 0], tgt)


def test_sequence_grid_and_single_block() -> None:
    tokens = _tokens(2).reshape(2, 64, 16)[:, :50]  # a 1D grid used up to 50 of 70 positions
    ctx, tgt = sample_block_masks(2, (50,), generator=torch.Generator().manual_seed(0))
    jepa = JEPA(grid=(70,), embed_dim=16, predictor_dim=16, predictor_depth=1, predictor_heads=2)
    assert jepa.predict(keep_tokens(tokens, ctx), ctx, tgt[:, 0]).shape == (2, 1, 50, 16)
    assert torch.isfinite(jepa(keep_tokens(tokens, ctx), tokens, ctx, tgt[:, 0]))


def test_constructor_errors_registry_and_ema() -> None:
    for bad in ({"grid": (8, 8, 8, 8)}, {"predictor_dim": 30}, {"loss": "cosine"}, {"predictor_heads": 0}):
        with pytest.raises(InputError):
            JEPA(**{"grid": (8, 8), "embed_dim": 16, "predictor_dim": 32, **bad})  # type: ignore[arg-type]
    assert isinstance(OBJECTIVES.build("jepa", grid=(4, 4), embed_dim=8, predictor_dim=16), JEPA)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = target.weight.detach().clone()
    ema_update(online, target, 0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight.detach())
    with pytest.raises(ValueError):
        ema_update(online, target, 1.5)

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from biossl.data.sequence import decode, encode, pad_batch, read_sequences, reverse_complement
from biossl.errors import InputError
from biossl.keys import MASK_TOKEN, PAD_TOKEN
from biossl.transforms import make_views
from biossl.transforms.sequence_views import N_TOKEN, PointMutation, ReverseComplement, Shift, TokenMask, real_length

L = 80


@pytest.fixture(scope="module")
def tokens(fixtures: Path) -> torch.Tensor:
    """40 real 70 bp promoters cut to lengths 30..70 and padded to 80, plus one all-PAD row."""
    records = read_sequences(fixtures / "sequence" / "gue_prom_core_all_dev40.csv")
    seqs = [encode(r.sequence)[: 30 + i] for i, r in enumerate(records)]
    return torch.from_numpy(pad_batch([*seqs, np.zeros(0, dtype=np.int64)], L))


def _seed(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(s)


ALL_VIEWS = [PointMutation(), TokenMask(), ReverseComplement(), Shift(), Shift(fill="pad")]


@pytest.mark.parametrize("view", ALL_VIEWS, ids=lambda v: f"{type(v).__name__}{getattr(v, 'fill', '')}")
def test_view_keeps_shape_layout_and_changes_input(view: torch.nn.Module, tokens: torch.Tensor) -> None:
    out = view(tokens, _seed(0))
    assert out.shape == tokens.shape and out.dtype == torch.int64
    pad = tokens == PAD_TOKEN
    assert bool((out[pad] == PAD_TOKEN).all())  # PAD is never altered
    if not (isinstance(view, Shift) and view.fill == "pad"):
        assert bool((out[~pad] != PAD_TOKEN).all())  # and nothing becomes PAD
    assert bool((real_length(out) <= real_length(tokens)).all())
    assert not torch.equal(out, tokens)
    assert torch.equal(out, view(tokens, _seed(0)))
    assert not torch.equal(out, view(tokens, _seed(1)))
    assert view(tokens[:40].view(4, 10, L), _seed(0)).shape == (4, 10, L)


def test_reverse_complement_matches_numpy_and_twice_is_identity(tokens: torch.Tensor) -> None:
    rc = ReverseComplement(p=1.0)
    out = rc(tokens)
    np.testing.assert_array_equal(out.numpy(), reverse_complement(tokens.numpy()))
    assert torch.equal(rc(out), tokens)
    letters = decode(tokens[3].numpy())  # independent check on the letters of a real promoter
    assert decode(out[3].numpy()) == letters[::-1].translate(str.maketrans("ACGT", "TGCA"))
    half = ReverseComplement(p=0.5)(tokens, _seed(4))
    flipped = [not torch.equal(a, b) for a, b in zip(half[:40], tokens[:40])]
    assert 5 < sum(flipped) < 35


def test_point_mutation_substitutes_bases_only(tokens: torch.Tensor) -> None:
    with_special = tokens.clone()
    with_special[:, 5] = N_TOKEN
    with_special[:, 6] = MASK_TOKEN
    with_special[-1] = PAD_TOKEN
    out = PointMutation(rate=0.1)(with_special, _seed(2))
    changed = out != with_special
    assert bool(((with_special[changed] >= 1) & (with_special[changed] <= 4)).all())
    assert bool(((out[changed] >= 1) & (out[changed] <= 4)).all())
    bases = (with_special >= 1) & (with_special <= 4)
    assert 0.07 < float(changed.sum() / bases.sum()) < 0.13


def test_mask_rate(tokens: torch.Tensor) -> None:
    out = TokenMask(rate=0.2)(tokens, _seed(3))
    real = tokens != PAD_TOKEN
    masked = out == MASK_TOKEN
    assert bool((masked <= real).all()) and 0.15 < float(masked.sum() / real.sum()) < 0.25
    assert torch.equal(out[~masked], tokens[~masked])


def test_shift_moves_real_part_and_fills_with_n(tokens: torch.Tensor) -> None:
    out = Shift(max_shift=3)(tokens, _seed(5))
    shifts = set()
    for x, y in zip(tokens[:40], out[:40]):
        n = int(real_length(x[None]))
        for d in range(-3, 4):
            moved = torch.full((n,), N_TOKEN)
            lo, hi = max(d, 0), n + min(d, 0)
            moved[lo:hi] = x[lo - d : hi - d]
            if torch.equal(y[:n], moved):
                shifts.add(d)
                break
        else:
            raise AssertionError("row is not a shift of its input")
    assert len(shifts) > 3
    cropped = Shift(max_shift=3, fill="pad", p=1.0)(tokens, _seed(5))
    for x, y in zip(tokens[:40], cropped[:40]):
        n, m = int(real_length(x[None])), int(real_length(y[None]))
        assert n - 3 <= m <= n and torch.equal(y[:m], x[n - m : n])
        assert bool((y[m:] == PAD_TOKEN).all())


def test_make_views_sequence(tokens: torch.Tensor) -> None:
    views = make_views("sequence")
    a, b = views(tokens, _seed(6)), views(tokens, _seed(6))
    assert torch.equal(a, b) and not torch.equal(views(tokens), views(tokens))
    assert bool((a[tokens == PAD_TOKEN] == PAD_TOKEN).all())
    assert torch.equal(make_views("sequence", "none")(tokens), tokens)
    with pytest.raises(InputError, match="fill"):
        make_views("sequence", shift_fill="zero")

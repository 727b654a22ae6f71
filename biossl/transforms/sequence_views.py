"""Batched views of DNA token ids ``int64 [..., L]`` (PAD=0 A=1 C=2 G=3 T=4 N=5 MASK=6).

Sequences are left-aligned: real tokens, then trailing PAD. Every view keeps that layout, and no
view changes a PAD position or turns a real token into PAD (:class:`Shift` with ``fill="pad"`` is
the one documented exception: it drops leading bases, so the real part gets shorter).

- :class:`PointMutation`: each A/C/G/T becomes one of the three other bases with probability
  ``rate`` (N and MASK are left alone).
- :class:`TokenMask`: each real token becomes MASK with probability ``rate``.
- :class:`ReverseComplement`: with probability ``p`` the real part is reverse-complemented
  (A<->T, C<->G; N and MASK keep their ids) in place, with :func:`biossl.tokens.reverse_complement_tokens`.
- :class:`Shift`: the real part moves by ``d ~ U{-max_shift..max_shift}`` positions *within its own
  length* (a shift, not a circular roll: bases pushed past either end are lost). With ``fill="n"``
  (default) the vacated positions become N, "unknown base", so the length and the padding mask are
  unchanged. With ``fill="pad"`` only left shifts are used (``d ~ U{0..max_shift}``, the first ``d``
  bases dropped) and the freed positions at the end become PAD, so the sequence is a cropped window.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from biossl.errors import InputError
from biossl.keys import MASK_TOKEN, PAD_TOKEN
from biossl.tokens import N_TOKEN, real_length, reverse_complement_tokens
from biossl.transforms import Compose, View, check_probability, coin, randint


def _check_tokens(x: torch.Tensor) -> None:
    if x.dtype != torch.int64:
        raise ValueError(f"sequence views need int64 token ids, got {x.dtype}")


class PointMutation(View):
    """Substitute each A/C/G/T by a different base with probability ``rate``."""

    def __init__(self, *, rate: float = 0.02) -> None:
        super().__init__()
        check_probability("point mutation rate", rate)
        self.rate = rate

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Mutate ``[N, L]`` tokens."""
        _check_tokens(x)
        base = (x >= 1) & (x <= 4)
        hit = coin(x.numel(), self.rate, like=x, generator=generator).view(x.shape) & base
        step = randint(tuple(x.shape), 1, 4, like=x, generator=generator)
        return torch.where(hit, (x - 1 + step) % 4 + 1, x)


class TokenMask(View):
    """Replace each real (non-PAD) token by MASK with probability ``rate``."""

    def __init__(self, *, rate: float = 0.05) -> None:
        super().__init__()
        check_probability("token mask rate", rate)
        self.rate = rate

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Mask ``[N, L]`` tokens."""
        _check_tokens(x)
        hit = coin(x.numel(), self.rate, like=x, generator=generator).view(x.shape) & (x != PAD_TOKEN)
        return x.masked_fill(hit, MASK_TOKEN)


class ReverseComplement(View):
    """Reverse-complement the real part of each row with probability ``p``; PAD stays at the end."""

    def __init__(self, *, p: float = 0.5) -> None:
        super().__init__()
        check_probability("reverse-complement p", p)
        self.p = p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Reverse-complement rows of ``[N, L]`` tokens."""
        _check_tokens(x)
        on = coin(x.shape[0], self.p, like=x, generator=generator)
        return torch.where(on[:, None], reverse_complement_tokens(x), x)


class Shift(View):
    """Shift the real part by up to ``max_shift`` positions, filling with N (or PAD; module doc)."""

    def __init__(self, *, max_shift: int = 3, fill: Literal["n", "pad"] = "n", p: float = 1.0) -> None:
        super().__init__()
        if max_shift < 0 or fill not in ("n", "pad"):
            raise InputError(f"sequence shift needs max_shift >= 0 and fill 'n' or 'pad'; got {max_shift}, {fill!r}")
        check_probability("shift p", p)
        self.max_shift, self.fill, self.p = max_shift, fill, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Shift rows of ``[N, L]`` tokens."""
        _check_tokens(x)
        n, length = x.shape[0], real_length(x)[:, None]
        low = 0 if self.fill == "pad" else -self.max_shift
        d = randint((n,), low, self.max_shift + 1, like=x, generator=generator)
        d = torch.where(coin(n, self.p, like=x, generator=generator), d, torch.zeros_like(d))[:, None]
        j = torch.arange(x.shape[1], device=x.device)[None, :]
        inside = j < length
        if self.fill == "pad":
            d = torch.minimum(d, (length - 1).clamp_min(0))  # keep at least one base
            src = j + d  # drop the first d bases, PAD after the shortened real part
            fill = PAD_TOKEN
        else:
            src = j - d
            fill = N_TOKEN
        valid = inside & (src >= 0) & (src < length)
        moved = torch.gather(x, 1, src.clamp(0, x.shape[1] - 1))
        return torch.where(valid, moved, torch.where(inside, torch.full_like(x, fill), x))


#: Strength presets: parameters of :func:`build_views` ("default" holds every key).
PRESETS: dict[str, dict[str, Any]] = {
    "none": {"mutation_rate": 0.0, "mask_rate": 0.0, "rc_p": 0.0, "shift_p": 0.0},
    "light": {"mutation_rate": 0.01, "mask_rate": 0.02, "max_shift": 2},
    "default": {"mutation_rate": 0.02, "mask_rate": 0.05, "rc_p": 0.5, "max_shift": 3, "shift_fill": "n",
                "shift_p": 1.0},  # fmt: skip
    "strong": {"mutation_rate": 0.05, "mask_rate": 0.1, "max_shift": 8},
}


def build_views(
    *,
    mutation_rate: float,
    mask_rate: float,
    rc_p: float,
    max_shift: int,
    shift_fill: Literal["n", "pad"],
    shift_p: float,
) -> Compose:
    """Compose reverse complement, shift, point mutation and masking (inactive ones left out)."""
    views: list[View] = []
    if rc_p > 0:
        views.append(ReverseComplement(p=rc_p))
    if shift_p > 0 and max_shift > 0:
        views.append(Shift(max_shift=max_shift, fill=shift_fill, p=shift_p))
    if mutation_rate > 0:
        views.append(PointMutation(rate=mutation_rate))
    if mask_rate > 0:
        views.append(TokenMask(rate=mask_rate))
    return Compose(views, event_dims=1)

"""Batched random augmentation "views" per modality, for two-view self-supervised objectives.

Every view is an ``nn.Module`` that takes a batch of instances and returns a tensor of the same
shape, dtype and device, drawing one independent random choice per instance. Views run on CPU or
GPU; they are seeded by passing a ``torch.Generator`` to ``forward`` (random parameters are drawn on
the generator's device, then moved to the data) or else use the global RNG of the data's device.
On a GPU, pass a generator on that GPU: per-voxel/per-token noise drawn on a CPU generator is copied.
Each view computes its transform for the whole batch and keeps it where its per-instance coin says so.

:func:`make_views` composes the views of one modality from a named strength preset; calling the
result twice on the same batch gives the two views a contrastive objective needs::

    views = make_views("wsi", "default")
    v1, v2 = views(tiles), views(tiles)

Expression views also carry the gene mask: ``views(x, gene_mask) -> (x, gene_mask)``.
The modules are :mod:`~biossl.transforms.tile_views`, :mod:`~biossl.transforms.stain`,
:mod:`~biossl.transforms.volume_views`, :mod:`~biossl.transforms.expression_views` and
:mod:`~biossl.transforms.sequence_views`; each holds a ``PRESETS`` dict of strength → parameters.
"""

from __future__ import annotations

import difflib
from typing import Any, cast

import torch
from torch import nn

from biossl.errors import InputError

#: Strength presets every modality offers ("none" is the identity, e.g. for masked autoencoders).
STRENGTHS: tuple[str, ...] = ("none", "light", "default", "strong")


class View(nn.Module):
    """Base of batched views on tensors whose last ``event_dims`` dimensions are one instance.

    Leading dimensions (``[N]``, or ``[B, K]`` for bags) are flattened, :meth:`transform` runs on
    ``[N, *event]`` and the result is reshaped back. Subclasses implement :meth:`transform`.
    """

    event_dims: int = 1

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return one random view of every instance of ``x`` (same shape, dtype and device)."""
        if x.ndim < self.event_dims + 1:
            raise ValueError(
                f"{type(self).__name__} expects [N, ...] with {self.event_dims} instance dims, got {tuple(x.shape)}"
            )
        lead = x.shape[: x.ndim - self.event_dims]
        flat = x.reshape(-1, *x.shape[x.ndim - self.event_dims :])
        if flat.shape[0] == 0:
            return x.clone()
        return self.transform(flat, generator).reshape(*lead, *flat.shape[1:])

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:  # pragma: no cover
        """Transform a flat batch ``[N, *event]``."""
        raise NotImplementedError


class Compose(View):
    """Apply views one after the other with the same generator."""

    def __init__(self, views: list[View], *, event_dims: int) -> None:
        super().__init__()
        self.views = nn.ModuleList(views)
        self.event_dims = event_dims

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Run every view in order."""
        for view in self.views:
            x = cast(View, view).transform(x, generator)
        return x


def uniform(
    n: int, low: float, high: float, *, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``n`` float32 values uniformly from ``[low, high)`` on ``like``'s device."""
    device = generator.device if generator is not None else like.device
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float32)
    return (low + (high - low) * u).to(like.device)


def coin(n: int, p: float, *, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` booleans that are True with probability ``p`` (``p=1``: all True)."""
    return uniform(n, 0.0, 1.0, like=like, generator=generator) < p


def randint(
    shape: tuple[int, ...], low: int, high: int, *, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw int64 values from ``[low, high)`` on ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.randint(low, high, shape, generator=generator, device=device).to(like.device)


def randn(
    shape: tuple[int, ...], *, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw standard normal values of ``like``'s dtype (float32 if not floating) on its device."""
    device = generator.device if generator is not None else like.device
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return torch.randn(shape, generator=generator, device=device, dtype=dtype).to(like.device)


def check_probability(name: str, p: float) -> None:
    """Raise ``InputError`` unless ``0 <= p <= 1``."""
    if not 0.0 <= p <= 1.0:
        raise InputError(f"augmentation {name} must be a probability in [0, 1]; got {p}")


def make_views(modality: str, strength: str = "default", **options: Any) -> nn.Module:
    """Compose the random views of ``modality`` at a named strength.

    Args:
        modality: A kind: ``"slide"`` (tiles ``[..., 3, H, W]``), ``"volume"`` (``[..., 1, D, H, W]``),
            ``"table"`` (``[..., G]`` with a feature mask) or ``"sequence"`` (tokens ``[..., L]``); the
            legacy names ``"wsi"`` and ``"expression"`` are accepted.
        strength: One of :data:`STRENGTHS`.
        **options: Override single parameters of the preset (see the modality module's
            ``PRESETS``), e.g. ``make_views("wsi", blur_p=0.0)`` or
            ``make_views("expression", space="log1p")``.

    Raises:
        InputError: Unknown modality, strength or option name.
    """
    from biossl.transforms import expression_views, sequence_views, tile_views, volume_views

    modules = {"slide": tile_views, "volume": volume_views, "table": expression_views, "sequence": sequence_views,
               "wsi": tile_views, "expression": expression_views}  # kinds, and the legacy names
    if modality not in modules:
        raise InputError(f"no augmentation views for modality {modality!r}; known: {', '.join(modules)}")
    module = modules[modality]
    presets: dict[str, dict[str, Any]] = module.PRESETS
    if strength not in presets:
        close = difflib.get_close_matches(strength, presets, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        known = ", ".join(presets)
        raise InputError(f"unknown augmentation strength {strength!r} for {modality}.{hint} Known: {known}")
    params = dict(presets["default"])
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise InputError(f"unknown {modality} augmentation option(s) {unknown}; known: {', '.join(sorted(params))}")
    params.update(presets[strength])
    params.update(options)
    built: nn.Module = module.build_views(**params)
    return built


__all__ = ["STRENGTHS", "Compose", "View", "make_views"]

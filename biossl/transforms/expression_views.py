"""Batched views of expression profiles ``x float [..., G]`` with ``gene_mask bool [..., G]``.

Views take and return ``(x, gene_mask)``. Unobserved genes (``gene_mask`` False; their values may be
NaN) are never altered, and no view turns an unobserved gene into an observed one.

**Library-size scaling depends on what the values are** (``space``):

- ``"log1p"``: ``y = log(1 + x)`` of depth-normalised counts (biossl's own normalisation of raw
  counts, ``adata.uns["biossl"]["transform"] == "normalize_total(1e4)+log1p"``). Sequencing ``c``
  times deeper multiplies every count by ``c``, so ``y' = log(1 + c * expm1(y))`` exactly. That is
  close to ``y + log c`` for highly expressed genes, but zeros stay zero and low counts move less;
  simply adding ``log c`` would turn every zero into ``log c``, which no real library does.
- ``"log2p"``: ``y = log2(1 + x)`` (e.g. UCSC Xena RNA tables): ``y' = log2(1 + c * (2**y - 1))``.
- ``"zscore"`` (the default, safe for any values): per-gene z-scores of log expression, as in the
  TCGA tables. A depth change by ``c`` would shift gene ``g`` by ``log(c) / sd_g``, and ``sd_g`` is
  not stored; besides, those tables were depth-normalised *before* z-scoring, so depth is not a
  nuisance left in them. No library-size scaling is applied in this space; noise and dropout are.

Use :func:`space_for_transform` to pick ``space`` from ``adata.uns["biossl"]["transform"]``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import torch
from torch import nn

from biossl.errors import InputError
from biossl.transforms import check_probability, coin, randn, uniform

Space = Literal["log1p", "log2p", "zscore"]
SPACES: tuple[str, ...] = ("log1p", "log2p", "zscore")


def space_for_transform(transform: str) -> Space:
    """Map ``adata.uns["biossl"]["transform"]`` to a value space (anything not counts -> ``"zscore"``)."""
    return "log1p" if transform.endswith("log1p") else "zscore"


def scale_counts(y: torch.Tensor, scale: torch.Tensor, space: str) -> torch.Tensor:
    """Multiply the counts behind log values ``y`` by ``scale`` (broadcast against ``y``), in ``y``'s dtype.

    ``"log1p"``: ``log(1 + c * expm1(y))``; ``"log2p"``: ``log2(1 + c * (2**y - 1))`` (module doc). Zeros
    stay zero; counts below 0 from rounding are taken as 0.

    Raises:
        ValueError: ``space`` is not a log-count space.
    """
    if space == "log1p":
        return torch.log1p(scale * torch.expm1(y).clamp_min(0.0))
    if space == "log2p":
        return torch.log2(1.0 + scale * (torch.exp2(y) - 1.0).clamp_min(0.0))
    raise ValueError(f"counts can be scaled in the log-count spaces 'log1p' and 'log2p' only; got {space!r}")


class ExpressionView(nn.Module):
    """Base: ``forward(x, gene_mask, generator) -> (x, gene_mask)``; leading dims are flattened."""

    def forward(
        self, x: torch.Tensor, gene_mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return one random view of every profile of ``x`` and its gene mask."""
        if x.ndim < 2 or gene_mask.shape != x.shape:
            raise ValueError(f"expression views need x [N, G] and gene_mask of the same shape; got "
                             f"{tuple(x.shape)} and {tuple(gene_mask.shape)}")  # fmt: skip
        if x.numel() == 0:
            return x.clone(), gene_mask.clone()
        out, mask = self.transform(x.reshape(-1, x.shape[-1]), gene_mask.reshape(-1, x.shape[-1]).bool(), generator)
        return out.reshape(x.shape), mask.reshape(x.shape)

    def transform(
        self, x: torch.Tensor, gene_mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """Transform flat ``[N, G]`` profiles."""
        raise NotImplementedError


class GeneDropout(ExpressionView):
    """Zero a fraction ``rate`` of each profile's observed genes.

    Args:
        rate: Probability that an observed gene is dropped.
        mark: Also set the dropped genes' ``gene_mask`` to False, so the encoder sees them as
            unmeasured (default). With False they stay "observed zeros", like technical dropout.
        p: Probability that a profile is augmented at all.
    """

    def __init__(self, *, rate: float = 0.2, mark: bool = True, p: float = 1.0) -> None:
        super().__init__()
        check_probability("gene dropout rate", rate)
        check_probability("gene dropout p", p)
        self.rate, self.mark, self.p = rate, mark, p

    def transform(
        self, x: torch.Tensor, gene_mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop genes of ``[N, G]``."""
        n, g = x.shape
        on = coin(n, self.p, like=x, generator=generator)[:, None]
        drop = coin(n * g, self.rate, like=x, generator=generator).view(n, g) & gene_mask & on
        out = x.masked_fill(drop, 0.0)
        return out, (gene_mask & ~drop) if self.mark else gene_mask


class GaussianNoise(ExpressionView):
    """Add ``N(0, std)`` to every observed gene of a profile, with probability ``p`` per profile."""

    def __init__(self, *, std: float = 0.1, p: float = 0.5) -> None:
        super().__init__()
        if std < 0:
            raise InputError(f"expression noise std must be >= 0; got {std}")
        check_probability("expression noise p", p)
        self.std, self.p = std, p

    def transform(
        self, x: torch.Tensor, gene_mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add noise to ``[N, G]``."""
        on = coin(x.shape[0], self.p, like=x, generator=generator)[:, None] & gene_mask
        noise = randn(tuple(x.shape), like=x, generator=generator) * self.std
        return torch.where(on, x + noise, x), gene_mask


class LibrarySizeScale(ExpressionView):
    """Rescale sequencing depth by ``c`` with ``log c ~ U[-log max_fold, log max_fold]`` (see module doc).

    Raises:
        InputError: ``space`` is not ``"log1p"`` or ``"log2p"`` (z-scores have no depth to rescale).
    """

    def __init__(self, *, max_fold: float = 1.5, space: Space = "log1p", p: float = 0.5) -> None:
        super().__init__()
        if space not in ("log1p", "log2p"):
            raise InputError(f"library-size scaling needs log counts (space 'log1p' or 'log2p'), got {space!r}; "
                             "z-scored tables were depth-normalised before z-scoring, so leave it out")  # fmt: skip
        if max_fold < 1:
            raise InputError(f"library-size max_fold must be >= 1; got {max_fold}")
        check_probability("library-size p", p)
        self.max_fold, self.space, self.p = max_fold, space, p

    def transform(
        self, x: torch.Tensor, gene_mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rescale ``[N, G]`` log counts."""
        n = x.shape[0]
        bound = math.log(self.max_fold)
        scale = torch.exp(uniform(n, -bound, bound, like=x, generator=generator))[:, None]
        on = coin(n, self.p, like=x, generator=generator)[:, None] & gene_mask
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        scaled = scale_counts(work, scale, self.space)
        return torch.where(on, scaled.to(x.dtype), x), gene_mask


class ComposeExpression(ExpressionView):
    """Apply expression views in order with the same generator."""

    def __init__(self, views: list[ExpressionView]) -> None:
        super().__init__()
        self.views = nn.ModuleList(views)

    def transform(
        self, x: torch.Tensor, gene_mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run every view in order."""
        for view in self.views:
            x, gene_mask = cast(ExpressionView, view).transform(x, gene_mask, generator)
        return x, gene_mask


#: Strength presets: parameters of :func:`build_views` ("default" holds every key).
PRESETS: dict[str, dict[str, Any]] = {
    "none": {"dropout_p": 0.0, "noise_p": 0.0, "library_p": 0.0},
    "light": {"dropout_rate": 0.1, "noise_std": 0.05, "library_fold": 1.25},
    "default": {"space": "zscore", "dropout_rate": 0.2, "dropout_mark": True, "dropout_p": 1.0, "noise_std": 0.1,
                "noise_p": 0.5, "library_fold": 1.5, "library_p": 0.5},  # fmt: skip
    "strong": {"dropout_rate": 0.4, "noise_std": 0.2, "noise_p": 0.8, "library_fold": 2.0, "library_p": 0.8},
}


def build_views(
    *,
    space: Space,
    dropout_rate: float,
    dropout_mark: bool,
    dropout_p: float,
    noise_std: float,
    noise_p: float,
    library_fold: float,
    library_p: float,
) -> ComposeExpression:
    """Compose library-size scaling (log-count spaces only), gene dropout and noise."""
    if space not in SPACES:
        raise InputError(f"unknown expression value space {space!r}; known: {', '.join(SPACES)}")
    views: list[ExpressionView] = []
    if space != "zscore" and library_p > 0 and library_fold > 1:
        views.append(LibrarySizeScale(max_fold=library_fold, space=space, p=library_p))
    if dropout_p > 0 and dropout_rate > 0:
        views.append(GeneDropout(rate=dropout_rate, mark=dropout_mark, p=dropout_p))
    if noise_p > 0 and noise_std > 0:
        views.append(GaussianNoise(std=noise_std, p=noise_p))
    return ComposeExpression(views)

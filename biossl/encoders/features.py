"""``features/mlp``: an instance model over precomputed tile embeddings (feature-cache mode).

Input is ``x [N, in_dim]`` float: one row per tile, written once by a frozen tile encoder
(:func:`biossl.data.features.write_tile_features`). Each feature dimension is first standardised
across tiles, like a batch norm without learned scale: with the batch's statistics in training and
with their running averages in eval mode (and for a batch of one tile). Frozen encoders' features
share a large tile-independent component; standardising removes it, so the objective is about what
differs between tiles.

``embed`` is an MLP ``in_dim -> hidden_dim -> embed_dim`` on the clean row.

``masked_loss`` is masked feature modelling, a denoising autoencoder on the embedding vectors: a
random ``mask_ratio`` of each row's dimensions are zeroed, Gaussian noise of ``noise_std`` (in units
of each dimension's standard deviation) is added to all of them, the MLP embeds the corrupted row, and a
linear decoder reconstructs the clean standardised row; the loss is the MSE on the zeroed
dimensions plus ``visible_weight`` times the MSE on the others. On the zeroed dimensions, predicting
the average tile scores about 1.0; lower means the visible dimensions are being used.

What this objective can and cannot do: the tile encoder is frozen, so no pixel-level
representation is learnt here. The objective only trains the MLP to keep the information of the
frozen features through its bottleneck and to exploit correlations between feature dimensions. It
gives the slide branch a within-modality training signal; what is learnt about patients comes from
the cross-modal contrastive loss and the attention-MIL pooling. Features are only as good as the
frozen encoder that wrote them, and the loss values are not comparable with MAE losses on pixels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import batch_norm, mse_loss

from biossl.encoders import ENCODERS
from biossl.encoders.base import ModalityModel


class FeatureMLP(ModalityModel):
    """MLP over precomputed instance features with a masked-feature-modelling loss (see the module doc)."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(
        self,
        *,
        in_dim: int,
        embed_dim: int = 128,
        hidden_dim: int | None = None,
        mask_ratio: float = 0.5,
        noise_std: float = 0.1,
        visible_weight: float = 0.1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_dim < 2 or embed_dim < 1:
            raise ValueError(f"features/mlp needs in_dim >= 2 and embed_dim >= 1, got {in_dim} and {embed_dim}")
        if not 0.0 < mask_ratio < 1.0 or noise_std < 0 or visible_weight < 0:
            raise ValueError(
                f"features/mlp needs 0 < mask_ratio < 1, noise_std >= 0, visible_weight >= 0; got "
                f"{mask_ratio}, {noise_std}, {visible_weight}"
            )
        self.in_dim, self.embed_dim = in_dim, embed_dim
        self.mask_ratio, self.noise_std, self.visible_weight = mask_ratio, noise_std, visible_weight
        hidden = hidden_dim or max(embed_dim, in_dim)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, embed_dim),
            nn.LayerNorm(embed_dim),
        )
        self.decoder = nn.Linear(embed_dim, in_dim)
        self.register_buffer("running_mean", torch.zeros(in_dim))
        self.register_buffer("running_var", torch.ones(in_dim))
        self.momentum = 0.1

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"features/mlp was built for in_dim={self.in_dim} and expects [N, {self.in_dim}], got "
                f"{tuple(x.shape)}; set in_dim to the width of the cached tile features"
            )
        batch_stats = self.training and x.shape[0] > 1
        out: torch.Tensor = batch_norm(
            x.float(), self.running_mean, self.running_var, training=batch_stats, momentum=self.momentum, eps=1e-5
        )
        return out

    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """MLP of the standardised, uncorrupted features: ``[N, embed_dim]``."""
        out: torch.Tensor = self.mlp(self._standardise(x))
        return out

    def random_mask(self, n: int, device: torch.device) -> torch.Tensor:
        """Bool ``[n, in_dim]``, True on exactly ``round(mask_ratio * in_dim)`` random dimensions per row."""
        k = min(self.in_dim - 1, max(1, round(self.mask_ratio * self.in_dim)))
        ranks = torch.rand(n, self.in_dim, device=device).argsort(dim=1).argsort(dim=1)
        return ranks < k

    def masked_loss(
        self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Masked feature modelling loss; ``mask`` ([N, in_dim] bool, True = zeroed) fixes the masking."""
        clean = self._standardise(x)
        if mask is None:
            mask = self.random_mask(x.shape[0], x.device)
        elif mask.shape != clean.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from features shape {tuple(clean.shape)}")
        corrupted = clean + self.noise_std * torch.randn_like(clean) if self.noise_std > 0 else clean
        corrupted = corrupted.masked_fill(mask, 0.0)
        recon = self.decoder(self.mlp(corrupted))
        loss = mse_loss(recon[mask], clean[mask])
        if self.visible_weight > 0 and bool((~mask).any()):
            loss = loss + self.visible_weight * mse_loss(recon[~mask], clean[~mask])
        return loss


@ENCODERS.register("features/mlp")
def features_mlp(
    *,
    in_dim: int,
    embed_dim: int = 128,
    hidden_dim: int | None = None,
    mask_ratio: float = 0.5,
    noise_std: float = 0.1,
    visible_weight: float = 0.1,
    dropout: float = 0.0,
) -> FeatureMLP:
    """MLP over cached tile features (``in_dim`` = their width) with masked feature modelling."""
    return FeatureMLP(
        in_dim=in_dim,
        embed_dim=embed_dim,
        hidden_dim=hidden_dim,
        mask_ratio=mask_ratio,
        noise_std=noise_std,
        visible_weight=visible_weight,
        dropout=dropout,
    )

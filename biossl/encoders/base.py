"""The contract between a modality's instance model and the pretraining engine."""

from __future__ import annotations

import abc

import torch
from torch import nn


class ModalityModel(nn.Module, abc.ABC):
    """An instance encoder together with its within-modality masked objective.

    The pretraining engine sees every modality through this interface only:

    * ``embed(x)`` maps a batch of instances to embeddings ``[N, embed_dim]`` (no masking; used for
      pooling, the cross-modal loss, and downstream embedding);
    * ``masked_loss(x, gene_mask=None)`` returns the scalar masked-modelling loss on the same
      instances (MAE for tiles and volume patches, masked gene or nucleotide modelling for
      expression and sequences). ``gene_mask`` ([N, G] bool, True = observed) is passed for
      expression only, so that unobserved genes are neither inputs nor targets.

    Instance shapes: tiles ``[N, 3, H, W]`` float, volume patches ``[N, 1, D, H, W]`` float,
    expression ``[N, G]`` float, sequences ``[N, L]`` int64 tokens (see :mod:`biossl.keys`).
    """

    embed_dim: int
    #: Shape of the grid of per-position outputs of :meth:`tokens` (patch grid, sequence length);
    #: ``None`` where the model has none.
    token_grid: tuple[int, ...] | None = None

    @abc.abstractmethod
    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return instance embeddings ``[N, embed_dim]``."""

    @abc.abstractmethod
    def masked_loss(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return the scalar masked-modelling loss on the instances ``x``."""

    def tokens(self, x: torch.Tensor, *, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Per-position outputs for latent-prediction objectives (JEPA, CPC).

        Args:
            x: Instances.
            keep: Optional bool ``[N, P]`` over :attr:`token_grid` positions (flattened), True where
                the encoder may look; the other positions are not seen at all.

        Returns:
            ``[N, P, D]`` on the full grid (positions outside ``keep`` hold no information), or, for
            models that drop unseen tokens (ViT), the kept tokens in grid order ``[N, K, D]``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no per-position outputs; latent-prediction objectives (jepa, cpc) "
            "need a ViT image encoder or a sequence encoder"
        )

    def forward(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Alias of :meth:`embed`."""
        return self.embed(x, gene_mask=gene_mask)

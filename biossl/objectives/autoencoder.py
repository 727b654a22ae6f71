"""Generative objectives on feature vectors: a denoising autoencoder and a (beta-)VAE.

* :class:`DenoisingAutoencoder` -- Vincent, Larochelle, Bengio and Manzagol, "Extracting and
  Composing Robust Features with Denoising Autoencoders", ICML 2008. Corrupt the input (masking noise:
  a random fraction of entries set to 0, or additive Gaussian noise), encode, decode, and reconstruct
  the **clean** input (squared error).
* :class:`VariationalAutoencoder` -- Kingma and Welling, "Auto-Encoding Variational Bayes", ICLR 2014;
  the ``beta`` weight is Higgins et al., ICLR 2017. A Gaussian encoder gives ``(mu, logvar)``, a sample
  ``z = mu + exp(logvar / 2) * eps`` is decoded, and the loss is the negative ELBO with a unit-variance
  Gaussian likelihood: ``0.5 * sum (x - x_hat)^2 + beta * KL(N(mu, sigma^2) || N(0, I))`` per sample,
  averaged over the batch (the likelihood's constant is dropped).

Both take ``x [N, D]`` of any modality (expression profiles, pooled embeddings, cached features) and
an optional ``observed [N, D]`` bool mask (``gene_mask`` of :mod:`biossl.keys`): unobserved entries
are zeroed on input and are never reconstruction targets. Engine contract: ``loss = obj(x, observed=m)``;
``obj.embed(x, observed=m)`` gives the ``[N, latent_dim]`` representation (the VAE's posterior mean).

To train a modality encoder with these objectives, build them with ``backbone_dim`` = the encoder's
width and pass ``backbone=lambda v: encoder.embed(v, gene_mask=m)``: the (corrupted) input then goes
through the backbone, and the objective's own encoder is one linear layer on the backbone's output
(the VAE's Gaussian head; the DAE's code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from biossl import keys
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, ObjectiveInfo

if TYPE_CHECKING:
    from biossl.encoders.base import ModalityModel

#: An external encoder: prepared features ``[N, D]`` -> embeddings ``[N, backbone_dim]``.
Backbone = Callable[[torch.Tensor], torch.Tensor]


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.LayerNorm(b), nn.GELU()]
    return nn.Sequential(*layers)


def _check_sizes(name: str, in_dim: int, hidden_dims: Sequence[int], latent_dim: int) -> None:
    if min(in_dim, latent_dim, *hidden_dims) < 1:
        raise InputError(
            f"{name} needs positive sizes; got in_dim={in_dim}, hidden_dims={list(hidden_dims)}, "
            f"latent_dim={latent_dim}"
        )


def _prepare(x: torch.Tensor, observed: torch.Tensor | None, in_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes; return ``x`` with unobserved entries zeroed and the float observed weight."""
    if x.ndim != 2 or x.shape[1] != in_dim:
        raise ValueError(f"expected features [N, {in_dim}], got shape {tuple(x.shape)}")
    if observed is None:
        return x, torch.ones_like(x)
    if observed.shape != x.shape:
        raise ValueError(f"observed mask {tuple(observed.shape)} must match features {tuple(x.shape)}")
    weight = observed.to(device=x.device, dtype=x.dtype)
    return x * weight, weight


def backbone_options(name: str, encoder: ModalityModel) -> dict[str, Any]:
    """``in_dim`` (the profile width) and ``backbone_dim`` of an encoder used as the autoencoder's backbone.

    Raises:
        InputError: The encoder does not read fixed-width profiles.
    """
    in_dim = getattr(encoder, "n_genes", None) or getattr(encoder, "in_dim", None)
    if not in_dim:
        raise InputError(f"{name} needs an encoder of fixed-width profiles; {type(encoder).__name__} is not")
    return {"in_dim": int(in_dim), "backbone_dim": encoder.embed_dim}


@OBJECTIVES.register("denoising_ae")
class DenoisingAutoencoder(nn.Module):
    """Denoising autoencoder (Vincent et al. 2008) on ``[N, in_dim]`` features.

    Args:
        in_dim: Feature width ``D``.
        hidden_dims: Widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: Width of the code.
        corruption: ``"mask"`` (masking noise, the paper's) or ``"gaussian"`` (additive noise).
        noise_level: Fraction of observed entries zeroed (``"mask"``, in (0, 1)) or noise std (``"gaussian"``).
        loss_on: ``"all"`` observed entries (the paper) or only the ``"corrupted"`` ones
            (``"mask"`` only; Vincent et al. 2010's emphasised denoising, like masked modelling).
        backbone_dim: Width of an external backbone (see the module notes); the encoder is then one
            linear layer from it to ``latent_dim``.

    Raises:
        InputError: A bad size or option.
    """

    info = ObjectiveInfo(
        "autoencoder", kinds=(keys.TABLE,), paper="Vincent et al. 2008, denoising AE", dim_option="latent_dim"
    )

    @classmethod
    def options_from_encoder(cls, encoder: ModalityModel, *, modality: str, kind: str) -> dict[str, Any]:
        """The profile width and the encoder as backbone (see :func:`backbone_options`)."""
        return backbone_options("denoising_ae", encoder)

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dims: Sequence[int] = (256,),
        latent_dim: int = 64,
        corruption: str = "mask",
        noise_level: float = 0.3,
        loss_on: str = "all",
        backbone_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_sizes("denoising_ae", in_dim, hidden_dims, latent_dim)
        if corruption not in ("mask", "gaussian"):
            raise InputError(f"denoising_ae corruption must be 'mask' or 'gaussian', got {corruption!r}")
        if (corruption == "mask" and not 0 < noise_level < 1) or not noise_level > 0:
            raise InputError(
                f"denoising_ae noise_level must be in (0, 1) for masking, > 0 for gaussian; got {noise_level}"
            )
        if loss_on not in ("all", "corrupted") or (loss_on == "corrupted" and corruption != "mask"):
            raise InputError(
                f"denoising_ae loss_on must be 'all', or 'corrupted' with corruption='mask'; got {loss_on!r}"
            )
        self.in_dim = in_dim
        self.corruption = corruption
        self.noise_level = noise_level
        self.loss_on = loss_on
        self.encoder = _mlp([backbone_dim, latent_dim] if backbone_dim else [in_dim, *hidden_dims, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), in_dim])

    def corrupt(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the corrupted input and the float mask of entries that were corrupted (observed only)."""
        if self.corruption == "gaussian":
            return (x + self.noise_level * torch.randn_like(x)) * weight, weight
        hit = (torch.rand_like(x) < self.noise_level).to(x.dtype) * weight
        return x * (1.0 - hit), hit

    def embed(
        self, x: torch.Tensor, *, observed: torch.Tensor | None = None, backbone: Backbone | None = None
    ) -> torch.Tensor:
        """Code of the clean input: ``[N, latent_dim]``."""
        x, _ = _prepare(x, observed, self.in_dim)
        out: torch.Tensor = self.encoder(x if backbone is None else backbone(x))
        return out

    def forward(
        self, x: torch.Tensor, *, observed: torch.Tensor | None = None, backbone: Backbone | None = None
    ) -> torch.Tensor:
        """Mean squared error of the reconstruction of the clean ``x`` over the scored entries.

        Args:
            x: ``[N, D]`` features.
            observed: Optional ``[N, D]`` bool, True where an entry is measured.
            backbone: Optional external encoder (needs ``backbone_dim``), applied to the corrupted input.
        """
        x, weight = _prepare(x, observed, self.in_dim)
        noisy, hit = self.corrupt(x, weight)
        recon = self.decoder(self.encoder(noisy if backbone is None else backbone(noisy)))
        scored = hit if self.loss_on == "corrupted" else weight
        err = (recon.float() - x.float()).pow(2) * scored.float()
        return err.sum() / scored.float().sum().clamp_min(1.0)


class VAELoss(NamedTuple):
    """The terms of the VAE loss (scalars, means over the batch)."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form ``KL(N(mu, exp(logvar)) || N(0, I))`` per row: ``[N, K] -> [N]``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


@OBJECTIVES.register("vae")
class VariationalAutoencoder(nn.Module):
    """Gaussian VAE (Kingma and Welling 2014) with a ``beta``-weighted KL term on ``[N, in_dim]`` features.

    Args:
        in_dim: Feature width ``D``.
        hidden_dims: Widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: Width ``K`` of the latent Gaussian.
        beta: Weight of the KL term (1 = the ELBO; > 1 = beta-VAE).
        backbone_dim: Width of an external backbone (see the module notes); the encoder is then the
            linear Gaussian head from it to ``(mu, logvar)``.

    Raises:
        InputError: A bad size or a negative ``beta``.
    """

    info = ObjectiveInfo(
        "autoencoder", kinds=(keys.TABLE,), paper="Kingma and Welling 2014, VAE", dim_option="latent_dim"
    )

    @classmethod
    def options_from_encoder(cls, encoder: ModalityModel, *, modality: str, kind: str) -> dict[str, Any]:
        """The profile width and the encoder as backbone (see :func:`backbone_options`)."""
        return backbone_options("vae", encoder)

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dims: Sequence[int] = (256,),
        latent_dim: int = 32,
        beta: float = 1.0,
        backbone_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_sizes("vae", in_dim, hidden_dims, latent_dim)
        if not beta >= 0:
            raise InputError(f"vae beta must be >= 0, got {beta}")
        self.in_dim = in_dim
        self.beta = beta
        self.encoder = _mlp([backbone_dim, 2 * latent_dim] if backbone_dim else [in_dim, *hidden_dims, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), in_dim])

    def posterior(
        self, x: torch.Tensor, *, observed: torch.Tensor | None = None, backbone: Backbone | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``[N, latent_dim]``; ``logvar`` clamped to [-30, 20] for stability."""
        x, _ = _prepare(x, observed, self.in_dim)
        mu, logvar = self.encoder(x if backbone is None else backbone(x)).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)``: a sample differentiable in ``mu, logvar``."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def embed(
        self, x: torch.Tensor, *, observed: torch.Tensor | None = None, backbone: Backbone | None = None
    ) -> torch.Tensor:
        """Posterior mean ``mu``: ``[N, latent_dim]``."""
        return self.posterior(x, observed=observed, backbone=backbone)[0]

    def terms(
        self, x: torch.Tensor, *, observed: torch.Tensor | None = None, backbone: Backbone | None = None
    ) -> VAELoss:
        """The loss and its two terms, each averaged over the batch.

        Args:
            x: ``[N, D]`` features.
            observed: Optional ``[N, D]`` bool, True where an entry is measured.
            backbone: Optional external encoder (needs ``backbone_dim``).
        """
        clean, weight = _prepare(x, observed, self.in_dim)
        mu, logvar = self.posterior(clean, backbone=backbone)
        recon = self.decoder(self.reparameterise(mu, logvar))
        nll = 0.5 * ((recon.float() - clean.float()).pow(2) * weight.float()).sum(dim=-1).mean()
        kl = gaussian_kl(mu.float(), logvar.float()).mean()
        return VAELoss(nll + self.beta * kl, nll, kl)

    def forward(
        self, x: torch.Tensor, *, observed: torch.Tensor | None = None, backbone: Backbone | None = None
    ) -> torch.Tensor:
        """Negative (beta-)ELBO: reconstruction + ``beta`` * KL, averaged over the batch."""
        return self.terms(x, observed=observed, backbone=backbone).loss

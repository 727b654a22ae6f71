"""Image instance models for 2D tiles and 3D volume patches (one implementation, ``spatial_dims`` 2 or 3).

* ``image/vit_*`` — MONAI :class:`~monai.networks.nets.ViT` (sin-cos positions, no CLS token) trained
  with MAE (:class:`biossl.objectives.mae.MaskedAutoencoder`). ``embed`` runs the same ViT on all
  patches and averages its output tokens, so the weights ``embed`` uses are exactly the ones
  ``masked_loss`` trains.
* ``image/resnet18``, ``image/resnet50`` — MONAI ResNets; ``image/swin_tiny`` — MONAI's Swin
  transformer (the SwinUNETR encoder). All three are trained with masked-patch inpainting
  (:class:`biossl.objectives.mae.MaskedInpainting`); ``embed`` is the global average of the last
  feature map.

Inputs are ``[N, C, H, W]`` (tiles) or ``[N, C, D, H, W]`` (volume patches), already intensity
normalised by the data layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from monai.networks.nets import ViT, resnet18, resnet50
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from biossl.encoders import ENCODERS
from biossl.encoders.base import ModalityModel
from biossl.objectives.mae import MaskedAutoencoder, MaskedInpainting, as_tuple, patch_grid

Size = int | Sequence[int]


def _check_images(x: torch.Tensor, *, spatial_dims: int, in_channels: int, model: str) -> None:
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        want = "[N, C, H, W]" if spatial_dims == 2 else "[N, C, D, H, W]"
        raise ValueError(
            f"{model} expects images {want} with C={in_channels}, got shape {tuple(x.shape)}; "
            "check spatial_dims / in_channels against the data"
        )


class ViTMAEModel(ModalityModel):
    """MONAI ViT encoder + MAE objective. Sizes are the ViT's; the decoder is the MAE's light one."""

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        img_size: Size,
        patch_size: Size,
        hidden_size: int,
        depth: int,
        heads: int,
        mask_ratio: float = 0.75,
        decoder_dim: int = 384,
        decoder_depth: int = 2,
        decoder_heads: int = 8,
        norm_pix_loss: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_size = as_tuple(img_size, spatial_dims, name="img_size")
        self.patch_size = as_tuple(patch_size, spatial_dims, name="patch_size")
        patch_grid(self.img_size, self.patch_size)
        if hidden_size % heads or hidden_size % (2 * spatial_dims):
            raise ValueError(
                f"hidden_size={hidden_size} must be divisible by heads={heads} and by {2 * spatial_dims} "
                f"(sin-cos positions in {spatial_dims}D)"
            )
        self.spatial_dims, self.in_channels, self.embed_dim = spatial_dims, in_channels, hidden_size
        self.token_grid = patch_grid(self.img_size, self.patch_size)
        self.encoder = ViT(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=self.patch_size,
            hidden_size=hidden_size,
            mlp_dim=4 * hidden_size,
            num_layers=depth,
            num_heads=heads,
            pos_embed_type="sincos",
            dropout_rate=dropout,
            spatial_dims=spatial_dims,
            qkv_bias=True,
        )
        for block in self.encoder.blocks:  # use F.scaled_dot_product_attention (no attention maps kept)
            block.attn.use_flash_attention = True  # type: ignore[union-attr]
            block.norm_cross_attn = nn.Identity()  # unused without cross-attention; DDP rejects unused params
        decoder = {"decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads}
        self.objective = MaskedAutoencoder(
            **{"spatial_dims": spatial_dims, "in_channels": in_channels, "encoder_dim": hidden_size},
            img_size=self.img_size,
            patch_size=self.patch_size,
            mask_ratio=mask_ratio,
            norm_pix_loss=norm_pix_loss,
            **decoder,
        )

    def _check(self, x: torch.Tensor) -> None:
        _check_images(x, spatial_dims=self.spatial_dims, in_channels=self.in_channels, model="ViT")
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"ViT was built for img_size={self.img_size} but got images of size {tuple(x.shape[2:])}; "
                "build it with the tile/patch size the data loader produces"
            )

    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the ViT's output patch tokens, no masking: ``[N, hidden_size]``."""
        self._check(x)
        tokens, _ = self.encoder(x)
        out: torch.Tensor = tokens.mean(dim=1)
        return out

    def tokens(self, x: torch.Tensor, *, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised patch tokens ``[N, P, D]``.

        With ``keep`` ([N, P] bool, the same count per row) only the kept patches enter the encoder and
        ``[N, K, D]`` comes back in patch order.
        """
        self._check(x)
        tokens = self.encoder.patch_embedding(x)
        if keep is not None:
            tokens = self.objective.keep_visible(tokens, ~keep)
        for block in self.encoder.blocks:
            tokens = block(tokens)
        out: torch.Tensor = self.encoder.norm(tokens)
        return out

    def masked_loss(
        self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MAE loss; ``mask`` ([N, P] bool, True = hidden) fixes the masked patches, else random."""
        self._check(x)
        if mask is None:
            mask = self.objective.random_mask(x.shape[0], x.device)
        loss: torch.Tensor = self.objective(self.tokens(x, keep=~mask), x, mask)
        return loss


class ResNetFeatures(nn.Module):
    """A MONAI ResNet up to its last stage; ``forward`` returns the feature map.

    With MONAI's defaults (stride-1 first conv, max-pool, three stride-2 stages) the map has stride 16.
    """

    def __init__(self, arch: str, *, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        build = {"resnet18": resnet18, "resnet50": resnet50}[arch]
        self.net = build(spatial_dims=spatial_dims, n_input_channels=in_channels, feed_forward=False)
        self.out_channels = 512 if arch == "resnet18" else 2048
        first = self.net.conv1.stride
        self.stride = (
            int(first[0] if isinstance(first, tuple) else first) * (1 if self.net.no_max_pool else 2) * 8
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``[N, out_channels, *spatial / stride]``."""
        n = self.net
        h = n.maxpool(n.act(n.bn1(n.conv1(x)))) if not n.no_max_pool else n.act(n.bn1(n.conv1(x)))
        out: torch.Tensor = n.layer4(n.layer3(n.layer2(n.layer1(h))))
        return out


class SwinFeatures(nn.Module):
    """MONAI's Swin transformer (the SwinUNETR encoder); ``forward`` returns its last, stride-32 map."""

    stride = 32

    def __init__(
        self, *, spatial_dims: int, in_channels: int, feature_size: int = 48, window_size: int = 7
    ) -> None:
        super().__init__()
        self.net = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(window_size,) * spatial_dims,
            patch_size=(2,) * spatial_dims,
            depths=(2, 2, 2, 2),
            num_heads=(3, 6, 12, 24),
            spatial_dims=spatial_dims,
            use_flash_attention=True,
        )
        self.out_channels = 16 * feature_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Layer-normalised feature map ``[N, 16 * feature_size, *spatial / 32]``."""
        out: torch.Tensor = self.net(x, normalize=True)[-1]
        return out


class InpaintingImageModel(ModalityModel):
    """A feature-map encoder (ResNet or Swin) + masked-patch inpainting; embed = global average pool."""

    def __init__(
        self,
        features: ResNetFeatures | SwinFeatures,
        *,
        spatial_dims: int,
        in_channels: int,
        patch_size: Size,
        mask_ratio: float,
        decoder_channels: int = 128,
    ) -> None:
        super().__init__()
        self.encoder = features
        self.spatial_dims, self.in_channels, self.embed_dim = spatial_dims, in_channels, features.out_channels
        self.objective = MaskedInpainting(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            feature_channels=features.out_channels,
            feature_stride=features.stride,
            patch_size=patch_size,
            mask_ratio=mask_ratio,
            decoder_channels=decoder_channels,
        )

    def _check(self, x: torch.Tensor) -> None:
        _check_images(x, spatial_dims=self.spatial_dims, in_channels=self.in_channels, model="CNN/Swin")
        if any(s % self.encoder.stride for s in x.shape[2:]):
            raise ValueError(
                f"image size {tuple(x.shape[2:])} must be a multiple of {self.encoder.stride} "
                "for this encoder"
            )

    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Global average of the last feature map: ``[N, embed_dim]``."""
        self._check(x)
        return self.encoder(x).flatten(2).mean(dim=2)

    def masked_loss(
        self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inpainting loss; ``mask`` ([N, P] bool over the patch grid) fixes the zeroed patches."""
        self._check(x)
        corrupted, pixel_mask = self.objective.corrupt(x, mask)
        loss: torch.Tensor = self.objective(self.encoder(corrupted), x, pixel_mask)
        return loss


_FactoryFn = Callable[..., ModalityModel]


def _vit_factory(sizes: dict[str, Any], doc: str) -> _FactoryFn:
    def factory(
        *,
        spatial_dims: int = 2,
        in_channels: int = 3,
        img_size: Size = 64,
        patch_size: Size = 16,
        mask_ratio: float = 0.75,
        **overrides: Any,
    ) -> ViTMAEModel:
        return ViTMAEModel(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            img_size=img_size,
            patch_size=patch_size,
            mask_ratio=mask_ratio,
            **{**sizes, **overrides},
        )

    factory.__doc__ = doc
    return factory


def _inpainting_factory(make_features: Callable[..., ResNetFeatures | SwinFeatures], doc: str) -> _FactoryFn:
    def factory(
        *,
        spatial_dims: int = 2,
        in_channels: int = 3,
        img_size: Size = 64,
        patch_size: Size = 16,
        mask_ratio: float = 0.75,
        **overrides: Any,
    ) -> InpaintingImageModel:
        feature_kwargs = {k: overrides.pop(k) for k in ("feature_size", "window_size") if k in overrides}
        features = make_features(spatial_dims=spatial_dims, in_channels=in_channels, **feature_kwargs)
        size = as_tuple(img_size, spatial_dims, name="img_size")
        n_patches = math.prod(patch_grid(size, as_tuple(patch_size, spatial_dims, name="patch_size")))
        if any(s % features.stride for s in size):
            raise ValueError(f"img_size={img_size} must be a multiple of {features.stride} for this encoder")
        if not 0 < round(n_patches * mask_ratio) < n_patches:
            raise ValueError(f"mask_ratio={mask_ratio} leaves no masked or no visible patch of {n_patches}")
        return InpaintingImageModel(
            features,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            patch_size=patch_size,
            mask_ratio=mask_ratio,
            **overrides,
        )

    factory.__doc__ = doc
    return factory


_TINY = {"hidden_size": 96, "depth": 3, "heads": 3, "decoder_dim": 96, "decoder_depth": 1, "decoder_heads": 4}
_SMALL = {
    "hidden_size": 384,
    "depth": 12,
    "heads": 6,
    "decoder_dim": 384,
    "decoder_depth": 4,
    "decoder_heads": 8,
}
_BASE = {
    "hidden_size": 768,
    "depth": 12,
    "heads": 12,
    "decoder_dim": 576,
    "decoder_depth": 4,
    "decoder_heads": 12,
}

vit_tiny = ENCODERS.register("image/vit_tiny")(
    _vit_factory(_TINY, "CPU-demo ViT: width 96, 3 layers, 3 heads; MAE decoder width 96, 1 layer.")
)
vit_small = ENCODERS.register("image/vit_small")(
    _vit_factory(_SMALL, "ViT-S/16 sizes: width 384, 12 layers, 6 heads; MAE decoder 384 wide, 4 layers.")
)
vit_base = ENCODERS.register("image/vit_base")(
    _vit_factory(_BASE, "ViT-B/16 sizes: width 768, 12 layers, 12 heads; MAE decoder 576 wide, 4 layers.")
)
resnet18_inpainting = ENCODERS.register("image/resnet18")(
    _inpainting_factory(
        partial(ResNetFeatures, "resnet18"),
        "MONAI ResNet-18 (embed 512) + masked-patch inpainting; img_size a multiple of 16.",
    )
)
resnet50_inpainting = ENCODERS.register("image/resnet50")(
    _inpainting_factory(
        partial(ResNetFeatures, "resnet50"),
        "MONAI ResNet-50 (embed 2048) + masked-patch inpainting; img_size a multiple of 16.",
    )
)
swin_tiny = ENCODERS.register("image/swin_tiny")(
    _inpainting_factory(
        SwinFeatures,
        "SwinUNETR's Swin encoder (feature_size 48, depths 2-2-2-2, embed 768) + masked-patch inpainting; "
        "img_size a multiple of 32. Overrides: feature_size, window_size, decoder_channels.",
    )
)

"""Masked image modelling: the MAE objective for ViTs and masked-patch inpainting for CNN/Swin encoders.

* :class:`MaskedAutoencoder` — He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022
  (arXiv:2111.06377). A random ``mask_ratio`` of the patches is dropped, the encoder sees only the
  visible patches, a light transformer decoder fills in mask tokens and predicts the pixels of every
  patch, and the mean squared error is taken over the **masked patches only** (optionally against
  per-patch normalised pixels, the paper's "norm_pix_loss").
* :class:`MaskedInpainting` — for convolutional and Swin encoders, which cannot drop tokens: random
  patches of the *input* are set to zero, the encoder sees the whole corrupted image, a light
  upsampling decoder reconstructs the image from the encoder's last feature map, and the MSE is taken
  over the pixels of the masked patches only. This is SimMIM (Xie et al., CVPR 2022) with zero fill
  instead of a learned mask token and a small conv decoder instead of a linear one.

Both work for 2D tiles (``[N, C, H, W]``) and 3D patches (``[N, C, D, H, W]``) via ``spatial_dims``.
Patches are numbered in row-major order of the patch grid (the order of MONAI's patch embedding);
inside a patch the pixel vector is laid out as ``(p_0, ..., p_{d-1}, c)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.networks.blocks.transformerblock import TransformerBlock
from torch import nn

from biossl import keys
from biossl.objectives import IMAGE_KINDS, OBJECTIVES, ObjectiveInfo

_PATTERNS = {
    2: "n c (h p1) (w p2) -> n (h w) (p1 p2 c)",
    3: "n c (d p0) (h p1) (w p2) -> n (d h w) (p0 p1 p2 c)",
}


def as_tuple(value: int | Sequence[int], spatial_dims: int, *, name: str) -> tuple[int, ...]:
    """Repeat an int ``spatial_dims`` times, or check a sequence has ``spatial_dims`` entries."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (tiles) or 3 (volume patches), got {spatial_dims}")
    out = (int(value),) * spatial_dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != spatial_dims or min(out) < 1:
        raise ValueError(f"{name}={value!r} must be a positive int or {spatial_dims} positive ints")
    return out


def patch_grid(img_size: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """Number of patches along each axis; ``ValueError`` if a size is not divisible by the patch."""
    if any(s % p for s, p in zip(img_size, patch_size)):
        raise ValueError(
            f"image size {tuple(img_size)} is not divisible by patch size {tuple(patch_size)}; "
            "choose an img_size that is a multiple of patch_size"
        )
    return tuple(s // p for s, p in zip(img_size, patch_size))


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Split images ``[N, C, *spatial]`` into patch pixel vectors ``[N, P, prod(patch_size) * C]``."""
    dims = x.ndim - 2
    sizes = {f"p{i + (3 - dims)}": p for i, p in enumerate(patch_size)}
    return rearrange(x, _PATTERNS[dims], **sizes)


def random_patch_mask(
    n: int, num_patches: int, ratio: float, *, device: torch.device | None = None
) -> torch.Tensor:
    """Bool mask ``[n, num_patches]`` with exactly ``round(num_patches * ratio)`` True (masked) per row."""
    n_masked = round(num_patches * ratio)
    if not 0 < n_masked < num_patches:
        raise ValueError(
            f"mask_ratio={ratio} masks {n_masked} of {num_patches} patches; it must mask at least one "
            "and leave at least one visible (use a ratio in (0, 1) or smaller patches)"
        )
    order = torch.rand(n, num_patches, device=device).argsort(dim=1)
    mask = torch.zeros(n, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :n_masked], True)
    return mask


def masked_patch_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, norm_pix: bool = False, eps: float = 1e-6
) -> torch.Tensor:
    """Mean over masked patches of the per-patch MSE between ``pred`` and ``target`` (``[N, P, D]``).

    With ``norm_pix`` each target patch is standardised by its own mean and variance first (MAE §A.1).
    Computed in float32 whatever the autocast dtype.
    """
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        target = (target - mean) / torch.sqrt(var + eps)
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


def upsample_patch_mask(mask: torch.Tensor, grid: Sequence[int], patch_size: Sequence[int]) -> torch.Tensor:
    """Turn a patch mask ``[N, P]`` into a pixel mask ``[N, 1, *spatial]``."""
    out = mask.reshape(mask.shape[0], 1, *grid)
    for axis, p in enumerate(patch_size):
        out = out.repeat_interleave(p, dim=axis + 2)
    return out


@OBJECTIVES.register("mae")
class MaskedAutoencoder(nn.Module):
    """MAE masking, decoder and loss (He et al. 2022) for a ViT encoder with ``encoder_dim`` tokens.

    Use: ``mask = mae.random_mask(n, device)``; ``visible = mae.keep_visible(tokens, mask)``; run the
    encoder blocks on ``visible``; ``loss = mae(encoded_visible, images, mask)``.

    Args:
        spatial_dims: 2 for tiles, 3 for volume patches.
        in_channels: Image channels.
        img_size: Image size (int or one per axis).
        patch_size: Patch size (int or one per axis).
        encoder_dim: Width of the encoder's tokens.
        decoder_dim: Width of the decoder.
        decoder_depth: Number of decoder transformer blocks.
        decoder_heads: Attention heads in the decoder.
        mask_ratio: Fraction of patches masked (paper default 0.75).
        norm_pix_loss: Regress per-patch normalised pixels (the paper's better-performing target).
    """

    info = ObjectiveInfo(
        "masked", kinds=(*IMAGE_KINDS, keys.FEATURES),
        paper="He et al. 2022, Masked Autoencoders Are Scalable Vision Learners",
    )

    def __init__(
        self,
        *,
        spatial_dims: int = 2,
        in_channels: int = 3,
        img_size: int | Sequence[int] = 64,
        patch_size: int | Sequence[int] = 16,
        encoder_dim: int = 768,
        decoder_dim: int = 384,
        decoder_depth: int = 2,
        decoder_heads: int = 8,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = as_tuple(patch_size, spatial_dims, name="patch_size")
        self.grid = patch_grid(as_tuple(img_size, spatial_dims, name="img_size"), self.patch_size)
        self.num_patches = math.prod(self.grid)
        random_patch_mask(1, self.num_patches, mask_ratio)  # validates the ratio early
        if decoder_dim % (2 * spatial_dims) or decoder_dim % decoder_heads:
            raise ValueError(
                f"decoder_dim={decoder_dim} must be divisible by {2 * spatial_dims} (sin-cos positions in "
                f"{spatial_dims}D) and by decoder_heads={decoder_heads}"
            )
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.decoder_embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        pos = build_sincos_position_embedding(list(self.grid), decoder_dim, spatial_dims)
        self.decoder_pos: torch.Tensor
        self.register_buffer("decoder_pos", pos.detach().clone(), persistent=False)
        blocks = [
            TransformerBlock(decoder_dim, 4 * decoder_dim, decoder_heads, use_flash_attention=True)
            for _ in range(decoder_depth)
        ]
        for block in blocks:
            block.norm_cross_attn = nn.Identity()  # type: ignore[assignment]  # unused; DDP rejects unused params
        self.decoder = nn.Sequential(*blocks, nn.LayerNorm(decoder_dim))
        self.pred = nn.Linear(decoder_dim, math.prod(self.patch_size) * in_channels)

    def random_mask(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """A fresh random patch mask ``[n, P]`` (True = masked)."""
        return random_patch_mask(n, self.num_patches, self.mask_ratio, device=device)

    @staticmethod
    def keep_visible(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Gather the visible tokens ``[N, P_visible, H]`` (patch order kept) from ``[N, P, H]``."""
        n_visible = (~mask).sum(dim=1)
        if bool((n_visible != n_visible[0]).any()):
            raise ValueError("every row of an MAE mask must hide the same number of patches")
        idx = (~mask).nonzero()[:, 1].reshape(mask.shape[0], -1)
        return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))

    def decode(self, encoded_visible: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predict the pixels of every patch ``[N, P, prod(patch) * C]`` from the encoded visible tokens."""
        vis = self.decoder_embed(encoded_visible)
        full = self.mask_token.to(vis.dtype).expand(mask.shape[0], self.num_patches, -1).clone()
        idx = (~mask).nonzero()[:, 1].reshape(mask.shape[0], -1)
        full = full.scatter(1, idx.unsqueeze(-1).expand(-1, -1, vis.shape[-1]), vis)
        out: torch.Tensor = self.pred(self.decoder(full + self.decoder_pos.to(full.dtype)))
        return out

    def forward(
        self, encoded_visible: torch.Tensor, images: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """MAE loss: MSE between decoded and true pixels on the masked patches only."""
        pred = self.decode(encoded_visible, mask)
        return masked_patch_mse(pred, patchify(images, self.patch_size), mask, norm_pix=self.norm_pix_loss)


class MaskedInpainting(nn.Module):
    """Masked-patch inpainting for encoders that see the whole image (CNNs, Swin); see the module doc.

    Use: ``corrupted, pixel_mask = obj.corrupt(x)``; ``feats = encoder_features(corrupted)``;
    ``loss = obj(feats, x, pixel_mask)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Image channels to reconstruct.
        feature_channels: Channels of the encoder's last feature map.
        feature_stride: Down-sampling factor of that map (a power of two).
        patch_size: Side of the square/cubic patches that are masked.
        mask_ratio: Fraction of patches masked.
        decoder_channels: Width of the first decoder stage (halved per stage, at least 8).
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        feature_channels: int,
        feature_stride: int = 32,
        patch_size: int | Sequence[int] = 16,
        mask_ratio: float = 0.6,
        decoder_channels: int = 128,
    ) -> None:
        super().__init__()
        if feature_stride < 1 or feature_stride & (feature_stride - 1):
            raise ValueError(f"feature_stride must be a power of two, got {feature_stride}")
        self.patch_size = as_tuple(patch_size, spatial_dims, name="patch_size")
        self.mask_ratio = mask_ratio
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        layers: list[nn.Module] = [conv(feature_channels, decoder_channels, 1)]
        ch = decoder_channels
        for _ in range(int(math.log2(feature_stride))):
            nxt = max(ch // 2, 8)
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), conv(ch, nxt, 3, padding=1), nn.GELU()]
            ch = nxt
        layers.append(conv(ch, in_channels, 1))
        self.decoder = nn.Sequential(*layers)

    def corrupt(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero random patches of ``x``; return the corrupted images and the pixel mask ``[N, 1, *sp]``."""
        grid = patch_grid(x.shape[2:], self.patch_size)
        if mask is None:
            mask = random_patch_mask(x.shape[0], math.prod(grid), self.mask_ratio, device=x.device)
        pixel_mask = upsample_patch_mask(mask, grid, self.patch_size)
        return x.masked_fill(pixel_mask, 0.0), pixel_mask

    def forward(self, features: torch.Tensor, images: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        """MSE between the reconstruction and ``images`` over the masked pixels only."""
        recon = self.decoder(features)
        if recon.shape[2:] != images.shape[2:]:
            raise ValueError(
                f"decoder output {tuple(recon.shape[2:])} does not match image {tuple(images.shape[2:])}: "
                "the image size must be a multiple of the encoder's stride"
            )
        err = (recon.float() - images.float()).pow(2).mean(dim=1, keepdim=True)
        weight = pixel_mask.to(err.dtype)
        return (err * weight).sum() / weight.sum().clamp_min(1.0)

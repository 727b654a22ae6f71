"""DNA sequence instance models: a nucleotide transformer and a residual dilated 1D CNN.

Input is ``x [N, L]`` int64 tokens as in :mod:`biossl.keys` (PAD=0, A/C/G/T/N=1..5, MASK=6).
PAD never influences the embedding (excluded from attention and pooling in the transformer, zeroed
after every layer in the CNN) and is never a target. Both are trained with BERT-style masked
nucleotide modelling (:class:`biossl.objectives.masked_tokens.MaskedTokens`, 80/10/10, cross-entropy
on the selected non-PAD positions). ``embed`` is the mean over non-PAD positions (zeros for an
all-PAD row, such as a padded bag slot).
"""

from __future__ import annotations

import torch
from torch import nn

from biossl.encoders import ENCODERS
from biossl.encoders.base import ModalityModel
from biossl.keys import MASK_TOKEN, NUCLEOTIDES, PAD_TOKEN, VOCAB_SIZE
from biossl.objectives.masked_tokens import MaskedTokens


def _check_tokens(x: torch.Tensor, max_len: int | None) -> None:
    if x.ndim != 2 or x.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"sequence models expect int64 tokens [N, L], got {x.dtype} {tuple(x.shape)}")
    if max_len is not None and x.shape[1] > max_len:
        raise ValueError(
            f"sequences of length {x.shape[1]} exceed max_len={max_len}; crop them or raise max_len"
        )
    if x.numel() and bool(((x < 0) | (x >= VOCAB_SIZE)).any()):
        raise ValueError(f"token ids must be in [0, {VOCAB_SIZE}) as defined in biossl.keys")


class _MaskedNucleotideModel(ModalityModel):
    """Shared embed / masked_loss on top of a per-position encoder ``_encode(tokens, valid)``."""

    max_len: int | None

    def __init__(self, embed_dim: int, mask_ratio: float) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.token_embedding = nn.Embedding(VOCAB_SIZE, embed_dim, padding_idx=PAD_TOKEN)
        self.lm_head = nn.Linear(embed_dim, VOCAB_SIZE)
        self.objective = MaskedTokens(mask_ratio=mask_ratio)

    def _encode(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the per-position outputs over non-PAD tokens: ``[N, embed_dim]``."""
        _check_tokens(x, self.max_len)
        valid = x != PAD_TOKEN
        h = self._encode(x, valid)
        w = valid.to(h.dtype).unsqueeze(-1)
        return (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def tokens(self, x: torch.Tensor, *, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Per-position outputs ``[N, L, D]``; positions outside ``keep`` (and PAD) are treated as padding."""
        _check_tokens(x, self.max_len)
        valid = x != PAD_TOKEN
        if keep is not None:
            valid = valid & keep[:, : x.shape[1]]
        return self._encode(x, valid)

    def masked_loss(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """BERT masked nucleotide modelling: cross-entropy on the selected non-PAD positions."""
        _check_tokens(x, self.max_len)
        valid = x != PAD_TOKEN
        selected = self.objective.select(valid)
        corrupted = self.objective.corrupt_tokens(
            x, selected, mask_token=MASK_TOKEN, random_low=1, random_high=len(NUCLEOTIDES) + 1
        )
        logits = self.lm_head(self._encode(corrupted, valid))
        return self.objective.classification_loss(logits, x, selected)


class SequenceTransformer(_MaskedNucleotideModel):
    """Pre-norm transformer over nucleotides with learned positions up to ``max_len``."""

    def __init__(
        self,
        *,
        max_len: int = 512,
        embed_dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mask_ratio: float = 0.15,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(embed_dim, mask_ratio)
        if embed_dim % heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by heads={heads}")
        self.max_len = max_len
        self.token_grid = (max_len,)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_len, embed_dim))
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim, heads, 4 * embed_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, depth, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False
        )

    def _encode(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.token_embedding(tokens) + self.position_embedding[:, : tokens.shape[1]]
        padding = ~valid
        padding[:, 0] &= valid.any(dim=1)  # an all-PAD row attends to its first slot instead of nothing (NaN)
        out: torch.Tensor = self.encoder(h, src_key_padding_mask=padding)
        return out


class _DilatedBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2))
        self.act = nn.GELU()
        self.proj = nn.Conv1d(dim, dim, 1)

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        y = (self.norm(h) * keep).transpose(1, 2)
        y = self.proj(self.act(self.conv(y))).transpose(1, 2)
        return (h + y) * keep


class SequenceDilatedCNN(_MaskedNucleotideModel):
    """Residual stack of dilated 1D convolutions (dilation 1, 2, 4, ... cycling every 6 blocks).

    ``max_len`` is accepted for a signature shared with the transformer; a CNN has no length limit.
    """

    def __init__(
        self,
        *,
        max_len: int | None = None,
        embed_dim: int = 64,
        depth: int = 6,
        kernel_size: int = 5,
        mask_ratio: float = 0.15,
    ) -> None:
        super().__init__(embed_dim, mask_ratio)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.max_len = None
        self.blocks = nn.ModuleList(_DilatedBlock(embed_dim, kernel_size, 2 ** (i % 6)) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    def _encode(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        keep = valid.unsqueeze(-1).to(self.token_embedding.weight.dtype)
        h = self.token_embedding(tokens) * keep
        for block in self.blocks:
            h = block(h, keep.to(h.dtype))
        out: torch.Tensor = self.norm(h) * keep.to(h.dtype)
        return out


@ENCODERS.register("sequence/transformer")
def sequence_transformer(
    *,
    max_len: int = 512,
    embed_dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mask_ratio: float = 0.15,
    dropout: float = 0.0,
) -> SequenceTransformer:
    """Nucleotide transformer (CPU size by default; GPU: embed_dim=256, depth=6, heads=8)."""
    return SequenceTransformer(
        max_len=max_len, embed_dim=embed_dim, depth=depth, heads=heads, mask_ratio=mask_ratio, dropout=dropout
    )


@ENCODERS.register("sequence/dilated_cnn")
def sequence_dilated_cnn(
    *,
    max_len: int | None = None,
    embed_dim: int = 64,
    depth: int = 6,
    kernel_size: int = 5,
    mask_ratio: float = 0.15,
) -> SequenceDilatedCNN:
    """Residual dilated 1D CNN with a per-position nucleotide classifier."""
    return SequenceDilatedCNN(
        max_len=max_len, embed_dim=embed_dim, depth=depth, kernel_size=kernel_size, mask_ratio=mask_ratio
    )

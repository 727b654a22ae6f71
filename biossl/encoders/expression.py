"""Table instance models: a transformer over feature tokens and an MLP, both with masked features.

Registered as ``table/transformer`` and ``table/mlp`` (and, for configs written before kinds, as
``expression/transformer`` and ``expression/mlp``). The masked loss fits the table's value type
(``value_type``): MSE for ``counts`` and ``continuous``, binary cross-entropy for ``binary``,
cross-entropy over ``n_categories`` codes for ``categorical`` (:mod:`biossl.kinds.table`).

Input is ``x [N, G]`` float (one row per cell / sample, columns in a fixed gene order) and
``gene_mask [N, G]`` bool (True = the gene was measured). Unobserved genes are neither inputs nor
targets: their values are ignored (they may be NaN), they are excluded from attention and pooling,
and they are never selected for the masked objective (:mod:`biossl.objectives.masked_tokens`).

Sizes: the factory defaults (``embed_dim=64, depth=2, heads=4``) run on a CPU; on a GPU with a few
thousand genes per row ``embed_dim=256, depth=6, heads=8`` is a reasonable starting point.
"""

from __future__ import annotations

import torch
from torch import nn

from biossl.encoders import ENCODERS
from biossl.encoders.base import ModalityModel
from biossl.objectives.masked_tokens import MaskedTokens


def _prepare(
    x: torch.Tensor, gene_mask: torch.Tensor | None, n_genes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes; return values with unobserved genes zeroed, and the bool gene mask."""
    if x.ndim != 2 or x.shape[1] != n_genes:
        raise ValueError(
            f"expression model was built for n_genes={n_genes} and expects [N, {n_genes}], got "
            f"{tuple(x.shape)}; build it with the gene count of the expression table"
        )
    if gene_mask is None:
        gene_mask = torch.ones(x.shape, dtype=torch.bool, device=x.device)
    elif gene_mask.shape != x.shape:
        raise ValueError(f"gene_mask shape {tuple(gene_mask.shape)} differs from x shape {tuple(x.shape)}")
    gene_mask = gene_mask.bool()
    return x.masked_fill(~gene_mask, 0.0), gene_mask


class ExpressionTransformer(ModalityModel):
    """Gene-token transformer; token = gene-id embedding + MLP(value), plus one CLS token.

    ``embed`` averages the outputs of the CLS token and of the observed genes (the CLS keeps the
    embedding defined for a row with no observed gene). ``masked_loss`` is masked gene modelling:
    ``mask_ratio`` of each row's observed genes get a learned mask embedding instead of their value
    embedding and their value is regressed (MSE on those genes only).
    """

    def __init__(
        self,
        *,
        n_genes: int,
        embed_dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mask_ratio: float = 0.15,
        dropout: float = 0.0,
        value_type: str = "continuous",
        n_categories: int = 0,
    ) -> None:
        super().__init__()
        self.value_type, outputs = _value_head_width(value_type, n_categories)
        if n_genes < 1 or embed_dim % heads:
            raise ValueError(
                f"need n_genes >= 1 and embed_dim divisible by heads, got {n_genes}, {embed_dim}, {heads}"
            )
        self.n_genes, self.embed_dim = n_genes, embed_dim
        self.gene_embedding = nn.Embedding(n_genes, embed_dim)
        self.value_embedding = nn.Sequential(
            nn.Linear(1, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim)
        )
        self.mask_embedding = nn.Parameter(torch.zeros(embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim, heads, 4 * embed_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, depth, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False
        )
        self.value_head = nn.Linear(embed_dim, outputs)
        self.objective = MaskedTokens(mask_ratio=mask_ratio)

    def _encode(
        self, values: torch.Tensor, observed: torch.Tensor, hidden: torch.Tensor | None
    ) -> torch.Tensor:
        v = self.value_embedding(values.unsqueeze(-1))
        if hidden is not None:
            v = torch.where(hidden.unsqueeze(-1), self.mask_embedding.to(v.dtype), v)
        tokens = self.gene_embedding.weight.to(v.dtype).unsqueeze(0) + v
        tokens = torch.cat([self.cls_token.to(v.dtype).expand(values.shape[0], -1, -1), tokens], dim=1)
        padding = torch.cat([torch.zeros_like(observed[:, :1]), ~observed], dim=1)
        out: torch.Tensor = self.encoder(tokens, src_key_padding_mask=padding)
        return out

    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the CLS and observed-gene outputs: ``[N, embed_dim]``."""
        values, observed = _prepare(x, gene_mask, self.n_genes)
        h = self._encode(values, observed, None)
        weight = torch.cat([torch.ones_like(observed[:, :1]), observed], dim=1).to(h.dtype).unsqueeze(-1)
        return (h * weight).sum(dim=1) / weight.sum(dim=1)

    def masked_loss(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked gene modelling: MSE of predicted vs true values on masked observed genes only."""
        values, observed = _prepare(x, gene_mask, self.n_genes)
        selected = self.objective.select(observed)
        h = self._encode(values, observed, selected)
        out = self.value_head(h[:, 1:])
        out = out if self.value_type == "categorical" else out.squeeze(-1)
        return self.objective.value_loss(out, values, selected, self.value_type)


class ExpressionMLP(ModalityModel):
    """MLP over ``[values, observed indicator]``; masked objective = denoising of dropped genes.

    ``masked_loss`` drops ``mask_ratio`` of each row's observed genes (value and indicator set to 0,
    so they look unobserved), and a linear-MLP decoder reconstructs all genes from the embedding; the
    MSE is taken on the dropped genes only.
    """

    def __init__(
        self, *, n_genes: int, embed_dim: int = 64, depth: int = 2, mask_ratio: float = 0.15,
        dropout: float = 0.0, value_type: str = "continuous", n_categories: int = 0,
    ) -> None:
        super().__init__()
        self.value_type, outputs = _value_head_width(value_type, n_categories)
        self.n_outputs = outputs
        self.input_dropout = nn.Dropout(dropout)  # no parameters: state-dict names are those of older versions
        if n_genes < 1 or depth < 1:
            raise ValueError(f"need n_genes >= 1 and depth >= 1, got {n_genes}, {depth}")
        self.n_genes, self.embed_dim = n_genes, embed_dim
        hidden = 4 * embed_dim
        layers: list[nn.Module] = []
        width = 2 * n_genes
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, embed_dim))
        self.encoder = nn.Sequential(*layers)
        self.decoder = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, n_genes * outputs))
        self.objective = MaskedTokens(mask_ratio=mask_ratio)

    def _encode(self, values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        obs = observed.to(values.dtype)
        inputs = self.input_dropout(torch.cat([values * obs, obs], dim=1))
        out: torch.Tensor = self.encoder(inputs)
        return out

    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """MLP embedding of the observed values: ``[N, embed_dim]``."""
        values, observed = _prepare(x, gene_mask, self.n_genes)
        return self._encode(values, observed)

    def masked_loss(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Denoising loss: MSE of reconstructed vs true values on the dropped observed genes only."""
        values, observed = _prepare(x, gene_mask, self.n_genes)
        selected = self.objective.select(observed)
        out = self.decoder(self._encode(values, observed & ~selected))
        if self.value_type == "categorical":
            out = out.view(out.shape[0], self.n_genes, self.n_outputs)
        return self.objective.value_loss(out, values, selected, self.value_type)


def _value_head_width(value_type: str, n_categories: int) -> tuple[str, int]:
    """``(value_type, outputs per feature)``; checks the pair."""
    if value_type in ("counts", "continuous", "binary"):
        return value_type, 1
    if value_type == "categorical":
        if n_categories < 2:
            raise ValueError(f"a categorical table model needs n_categories >= 2, got {n_categories}")
        return value_type, int(n_categories)
    raise ValueError(f"unknown value_type {value_type!r}; one of counts, continuous, binary, categorical")


@ENCODERS.register("table/transformer")
@ENCODERS.register("expression/transformer")
def table_transformer(
    *, n_genes: int, embed_dim: int = 64, depth: int = 2, heads: int = 4, mask_ratio: float = 0.15,
    dropout: float = 0.0, value_type: str = "continuous", n_categories: int = 0,
) -> ExpressionTransformer:
    """Feature-token transformer with masked feature modelling fitted to the value type (CPU size by default)."""
    return ExpressionTransformer(n_genes=n_genes, embed_dim=embed_dim, depth=depth, heads=heads,
                                 mask_ratio=mask_ratio, dropout=dropout, value_type=value_type,
                                 n_categories=n_categories)


@ENCODERS.register("table/mlp")
@ENCODERS.register("expression/mlp")
def table_mlp(
    *, n_genes: int, embed_dim: int = 64, depth: int = 2, mask_ratio: float = 0.15, dropout: float = 0.0,
    value_type: str = "continuous", n_categories: int = 0,
) -> ExpressionMLP:
    """MLP encoder with a denoising (dropped-feature reconstruction) objective fitted to the value type."""
    return ExpressionMLP(n_genes=n_genes, embed_dim=embed_dim, depth=depth, mask_ratio=mask_ratio, dropout=dropout,
                         value_type=value_type, n_categories=n_categories)

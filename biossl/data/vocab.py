"""The gene vocabulary fixed at pretraining, and alignment of any expression table onto it.

An expression encoder sees a fixed list of ``G`` genes in a fixed order. A table read later (another
cohort, another platform) rarely has exactly those genes: :meth:`GeneVocabulary.align` puts its
columns in vocabulary order, fills genes the table lacks with zeros and marks them ``False`` in
``gene_mask``, and drops genes the vocabulary does not know. Both lists are logged and returned.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from biossl.errors import ExpressionError
from biossl.io import write_text_atomic
from biossl.keys import PATIENT_ID

log = logging.getLogger(__name__)

_FORMAT = "biossl.gene_vocabulary"
_VERSION = 1


@dataclass(frozen=True)
class AlignedExpression:
    """An expression matrix in vocabulary order.

    Attributes:
        x: ``float32 [n, G]``; columns of missing genes are zero.
        gene_mask: ``bool [G]``; True where the gene was observed in the table.
        missing: Vocabulary genes absent from the table (in vocabulary order).
        extra: Table genes not in the vocabulary, dropped (in table order).
        patient_ids: ``obs["patient_id"]`` of the rows (the obs names when that column is absent).
    """

    x: np.ndarray
    gene_mask: np.ndarray
    missing: list[str]
    extra: list[str]
    patient_ids: list[str] = field(default_factory=list)


class GeneVocabulary:
    """An ordered, duplicate-free list of gene names.

    Args:
        genes: Gene names in model input order.

    Raises:
        ExpressionError: ``genes`` is empty, has duplicates or non-string/blank names.
    """

    def __init__(self, genes: Iterable[str]) -> None:
        self.genes: tuple[str, ...] = tuple(genes)
        if not self.genes:
            raise ExpressionError("gene vocabulary is empty; build it from a table with at least one gene")
        bad = [g for g in self.genes if not isinstance(g, str) or not g.strip()]
        if bad:
            raise ExpressionError(f"gene vocabulary has blank or non-text gene names: {bad[:5]}")
        dup = sorted(g for g, n in Counter(self.genes).items() if n > 1)
        if dup:
            raise ExpressionError(f"gene vocabulary has duplicate genes: {dup[:10]}")
        self._index = {g: i for i, g in enumerate(self.genes)}

    def __len__(self) -> int:
        return len(self.genes)

    def __contains__(self, gene: object) -> bool:
        return gene in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeneVocabulary) and self.genes == other.genes

    def __hash__(self) -> int:
        return hash(self.genes)

    def __repr__(self) -> str:
        head = ", ".join(self.genes[:3])
        return f"GeneVocabulary({len(self)} genes: {head}{', ...' if len(self) > 3 else ''})"

    def index(self, gene: str) -> int:
        """Column of ``gene`` in the model input; ``KeyError`` if it is not in the vocabulary."""
        return self._index[gene]

    @classmethod
    def from_adata(cls, adata: ad.AnnData, n_top_genes: int | None = None) -> GeneVocabulary:
        """Build a vocabulary from ``adata.var_names``.

        Args:
            adata: Normalised expression (see :func:`biossl.data.expression.read_expression`).
            n_top_genes: Keep only the genes with the highest variance across rows (ties broken by
                table order); the kept genes stay in table order. ``None`` keeps all genes.
        """
        genes = [str(g) for g in adata.var_names]
        if n_top_genes is None or n_top_genes >= len(genes):
            return cls(genes)
        if n_top_genes <= 0:
            raise ExpressionError(f"n_top_genes must be positive, got {n_top_genes}")
        x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
        top = np.sort(np.argsort(-x.astype(np.float64).var(axis=0), kind="stable")[:n_top_genes])
        return cls(genes[i] for i in top)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON, atomically."""
        payload = {"format": _FORMAT, "version": _VERSION, "genes": list(self.genes)}
        write_text_atomic(path, json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GeneVocabulary:
        """Read a vocabulary written by :meth:`save`.

        Raises:
            ExpressionError: the file is missing, not JSON, or not a biossl gene vocabulary.
        """
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ExpressionError(f"{path}: gene vocabulary file not found") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExpressionError(f"{path}: cannot read gene vocabulary JSON ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ExpressionError(f"{path}: not a biossl gene vocabulary (no 'format': '{_FORMAT}')")
        if payload.get("version") != _VERSION:
            raise ExpressionError(
                f"{path}: gene vocabulary version {payload.get('version')!r}; this biossl reads {_VERSION}"
            )
        genes = payload.get("genes")
        if not isinstance(genes, list):
            raise ExpressionError(f"{path}: gene vocabulary has no 'genes' list")
        return cls(genes)

    def align(self, adata: ad.AnnData) -> AlignedExpression:
        """Reorder ``adata``'s genes to the vocabulary; mask missing genes, drop extra ones.

        Raises:
            ExpressionError: ``adata`` has duplicate gene names.
        """
        table = [str(g) for g in adata.var_names]
        if len(set(table)) != len(table):
            raise ExpressionError("expression table has duplicate gene names; they cannot be aligned")
        position = {g: i for i, g in enumerate(table)}
        src = np.array([position.get(g, -1) for g in self.genes], dtype=np.int64)
        gene_mask = src >= 0
        x_in = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
        x = np.zeros((adata.n_obs, len(self)), dtype=np.float32)
        x[:, gene_mask] = x_in[:, src[gene_mask]]
        missing = [g for g, ok in zip(self.genes, gene_mask) if not ok]
        extra = [g for g in table if g not in self._index]
        if missing:
            log.warning("%d of %d vocabulary genes missing from the table (masked), e.g. %s",
                        len(missing), len(self), missing[:5])  # fmt: skip
        if extra:
            log.info("%d table genes not in the vocabulary dropped, e.g. %s", len(extra), extra[:5])
        if not gene_mask.any():
            log.warning("no vocabulary gene is in the table: every row is fully masked")
        obs = adata.obs
        ids = obs[PATIENT_ID] if PATIENT_ID in obs.columns else obs.index
        return AlignedExpression(x, gene_mask, missing, extra, [str(p) for p in ids])

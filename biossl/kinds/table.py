"""Tables (``.h5ad``, CSV/TSV, Parquet): a bag is ``k`` rows (a bulk profile, or cells) of the patient.

One table may hold many patients (a ``patient_id`` column, or the first text column); the manifest
names it once per patient. Each table modality has a **value type** (manifest column ``value_type``,
or ``data.value_types`` in the config):

============== =================================================== =========================== ==========
value type     what the values are                                 on reading                  masked loss
============== =================================================== =========================== ==========
``counts``     raw counts (RNA-seq, scRNA-seq)                     normalise_total(1e4)+log1p  MSE
``continuous`` z-scores, log-ratios, methylation β, normalised      as they are                 MSE
``binary``     0/1 calls (mutations)                               checked to be 0/1           BCE
``categorical`` a few discrete codes (GISTIC CNV -2..2, grades)    codes 0..C-1                cross-entropy
(none)         detect: whole non-negative numbers are counts       as ``counts`` or as is      MSE
============== =================================================== =========================== ==========

Each modality has its own **feature vocabulary**: the union of its tables' features. A feature that a
table lacks is masked for that table's rows (``gene_mask`` False): never an input, never a target,
never zero-filled as if measured.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biossl import keys
from biossl.errors import InputError
from biossl.kinds.base import Kind, Pick, SourceContext
from biossl.registry import KINDS

#: Most distinct values a ``categorical`` table may hold (more looks continuous).
MAX_CATEGORIES = 32


class ValueTypeError(InputError):
    """A table's values do not match its declared value type (the file itself reads fine)."""

    file_reads = True


@KINDS.register("table")
class Table(Kind):
    """A table modality (``rna``, ``cnv``, ``mut``, ``methylation``, ``clinical``, the legacy ``expression``)."""

    name = "table"
    default_encoder = "table/transformer"
    default_objective = "masked_tokens"
    instances = "profiles"
    artifacts = ("library_size", "dropout", "batch_shift")
    view_module = "expression"
    multi_patient = True
    extensions = (".h5ad", ".csv", ".tsv", ".parquet")
    option_names = (keys.VALUE_TYPE,)

    def check_options(self, modality: str, options: Mapping[str, Any]) -> None:
        super().check_options(modality, options)
        vt = options.get(keys.VALUE_TYPE)
        if vt is not None and vt not in keys.VALUE_TYPES:
            raise InputError(f"modality {modality!r}: unknown value_type {vt!r}; one of {', '.join(keys.VALUE_TYPES)}")

    def probe(self, path: Path, *, thorough: bool = False, options: Mapping[str, Any] | None = None) -> None:
        read_table_values(Path(path), (options or {}).get(keys.VALUE_TYPE))

    def patients_in(self, path: Path, options: Mapping[str, Any] | None = None) -> Collection[str] | None:
        adata, _ = read_table_values(Path(path), (options or {}).get(keys.VALUE_TYPE))
        return set(adata.obs[keys.PATIENT_ID])

    def open(self, modality: str, cohort: Any, patients: list[str], ctx: SourceContext) -> ProfileSource:
        from biossl.data.vocab import GeneVocabulary

        value_type = ctx.options.get(keys.VALUE_TYPE) or ctx.state.get("value_type")
        paths = sorted({path for p in patients for path in cohort.files(p, modality)})
        tables = {path: read_table_values(path, value_type, modality=modality) for path in paths}
        transforms = {str(path): str(t.uns.get("biossl", {}).get("transform", "none"))
                      for path, (t, _) in tables.items()}
        if ctx.state.get("vocabulary"):
            vocab = GeneVocabulary(ctx.state["vocabulary"])
        else:
            genes: dict[str, None] = {}
            for t, _ in tables.values():
                genes.update(dict.fromkeys(map(str, t.var_names)))
            vocab = GeneVocabulary(genes)
        categories = list(ctx.state.get("categories") or [])
        if value_type == keys.CATEGORICAL and not categories:
            found = set()
            for t, _ in tables.values():
                found |= set(np.unique(np.asarray(t.X)).tolist())
            categories = sorted(found)
            _check_categories(categories, modality, paths)
        aligned = {path: vocab.align(t) for path, (t, _) in tables.items()}
        rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for p in patients:
            xs, masks = [], []
            for path in cohort.files(p, modality):
                a, (t, _) = aligned[path], tables[path]
                sel = np.flatnonzero(t.obs[keys.PATIENT_ID].astype(str).to_numpy() == p)
                if sel.size == 0:
                    raise InputError(f"patient {p}: not found in {modality} table {path}")
                xs.append(a.x[sel])
                masks.append(np.broadcast_to(a.gene_mask, a.x[sel].shape))
            if xs:
                x = np.concatenate(xs).astype(np.float32)
                m = np.concatenate(masks)
                if value_type == keys.CATEGORICAL:
                    x = _codes(x, m, categories, modality, p)
                rows[p] = (x, m)
        return ProfileSource(int(ctx.spec.profiles), rows, list(vocab.genes), value_type, categories, transforms)

    def encoder_options(self, state: Mapping[str, Any], spec: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if state.get("vocabulary"):
            out["n_genes"] = len(state["vocabulary"])
            out["genes"] = list(state["vocabulary"])  # for encoders that read feature names (hf gene tokens)
        vt = state.get("value_type")
        if vt in (keys.BINARY, keys.CATEGORICAL):
            out["value_type"] = vt
        if vt == keys.CATEGORICAL:
            out["n_categories"] = len(state.get("categories") or [])
        return out


class ProfileSource:
    """A modality's rows per patient, aligned to its feature vocabulary, with their feature masks."""

    def __init__(self, k: int, rows: dict[str, tuple[np.ndarray, np.ndarray]], genes: list[str],
                 value_type: str | None, categories: list[float], transforms: dict[str, str]) -> None:
        self.k, self.rows, self.genes = k, rows, genes
        self.value_type, self.categories = value_type, categories
        #: How each table's values were transformed on reading, by table path.
        self.transforms = transforms

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"vocabulary": list(self.genes), "value_type": self.value_type}
        if self.categories:
            out["categories"] = [float(c) for c in self.categories]
        return out

    def draw(self, patient: str, pick: Pick) -> dict[str, torch.Tensor] | None:
        if patient not in self.rows:
            return None
        x, gm = self.rows[patient]
        idx = pick(len(x), self.k)
        return {"x": torch.from_numpy(x[idx]), keys.GENE_MASK: torch.from_numpy(np.ascontiguousarray(gm[idx]))}


def read_table_values(path: Path, value_type: str | None, *, modality: str | None = None) -> tuple[Any, str | None]:
    """Read a table and check its values against ``value_type``; returns ``(AnnData, value_type)``.

    Raises:
        ValueTypeError: values that do not fit the declared type (negative or fractional ``counts``,
            ``binary`` values other than 0/1, too many ``categorical`` values), naming the file, the
            feature and the row.
        biossl.data.expression.ExpressionError: an unreadable table.
    """
    from biossl.data.expression import read_expression

    normalized = None if value_type is None else value_type != keys.COUNTS
    what = f"{modality} table" if modality else "table"
    if value_type == keys.COUNTS:
        raw = read_expression(path, normalized=True)  # the values as written, to check them
        _check_whole(raw, path, what)
    adata = read_expression(path, normalized=normalized)
    if value_type == keys.BINARY:
        _check_binary(adata, path, what)
    elif value_type == keys.CATEGORICAL:
        values = np.unique(np.asarray(adata.X))
        if len(values) > MAX_CATEGORIES:
            raise ValueTypeError(f"{path}: declared categorical but holds {len(values)} distinct values "
                                 f"(at most {MAX_CATEGORIES}); declare value_type continuous")
    return adata, value_type


def _dense(adata: Any) -> np.ndarray:
    import scipy.sparse as sp

    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def _first_bad(adata: Any, bad: np.ndarray) -> str:
    row, col = (int(v[0]) for v in np.nonzero(bad))
    return f"feature {adata.var_names[col]!r}, row of patient {adata.obs[keys.PATIENT_ID].iloc[row]!r}"


def _check_whole(adata: Any, path: Path, what: str) -> None:
    x = _dense(adata)
    if (x < 0).any():
        raise ValueTypeError(f"{path}: declared counts but has {int((x < 0).sum())} negative values (first: "
                             f"{_first_bad(adata, x < 0)}); declare value_type continuous for z-scores or log-ratios")
    frac = x != np.round(x)
    if frac.any():
        raise ValueTypeError(f"{path}: declared counts but has {int(frac.sum())} fractional values (first: "
                             f"{_first_bad(adata, frac)}); declare value_type continuous for normalised values")


def _check_binary(adata: Any, path: Path, what: str) -> None:
    x = _dense(adata)
    bad = (x != 0) & (x != 1)
    if bad.any():
        first = x[bad][0]
        raise ValueTypeError(f"{path}: declared binary but has {int(bad.sum())} values other than 0/1 (first: "
                             f"{first:g} at {_first_bad(adata, bad)}); declare value_type categorical or continuous")


def _check_categories(categories: list[float], modality: str, paths: list[Path]) -> None:
    if len(categories) < 2:
        raise ValueTypeError(f"modality {modality!r} ({', '.join(map(str, paths[:3]))}): declared categorical but "
                             f"holds {len(categories)} distinct value(s); nothing to learn")


def _codes(x: np.ndarray, mask: np.ndarray, categories: list[float], modality: str, patient: str) -> np.ndarray:
    """Values -> category codes 0..C-1 (masked entries 0); a value outside the checkpoint's categories is an error."""
    cats = np.asarray(categories, dtype=np.float32)
    idx = np.searchsorted(cats, x)
    idx = np.clip(idx, 0, len(cats) - 1)
    ok = (cats[idx] == x) | ~mask
    if not ok.all():
        bad = x[~ok][0]
        raise ValueTypeError(f"modality {modality!r}, patient {patient}: value {bad:g} is not one of its categories "
                             f"{[float(c) for c in categories]} (the checkpoint's); check the table")
    return np.where(mask, idx, 0).astype(np.float32)

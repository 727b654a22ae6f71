"""Expression tables and AnnData files read into one validated, normalised-once AnnData.

Accepted inputs: ``.h5ad`` (AnnData), CSV/TSV (optionally ``.zip``/``.gz``/``.bz2``/``.xz``
compressed; a zip must hold one member, whatever its name) and Parquet. Rows are patients (TCGA
tables: one row per slide, so a patient can have several rows) or cells with a patient column.
``obs["patient_id"]`` always holds the patient id as text, read as text from the start: ``0012`` and ``12``
are two patients, and ``NA``, ``nan`` or ``1e5`` are ids like any other (only an empty cell is missing); a
number id (Parquet, ``.h5ad`` obs) becomes its text, ``12.0`` as ``"12"``. Gene columns are, in order of
precedence: ``gene_columns=``; the ``*_rnaseq`` columns of TCGA-style tables (suffix stripped); every
numeric column that is not declared metadata. All other columns go to ``obs`` unchanged.

Normalisation happens once: raw counts (non-negative, integer-valued) go through
``scanpy.pp.normalize_total`` then ``log1p``; anything else (z-scores, log values) is left alone.
Whole numbers with a few (< 1 %) negative entries look like counts with bad entries: an error (one,
naming the file, the first bad row and gene) from :func:`read_expression` and so from :func:`probe` (the
cohort check), unless the caller declares the values normalised (``normalized=True``); with more
negative entries they are normalised integer data (copy-number calls).
The outcome is recorded in ``adata.uns["biossl"]``, which later calls read back instead of guessing.
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biossl.data.labels import id_text
from biossl.errors import ExpressionError
from biossl.keys import PATIENT_ID

log = logging.getLogger(__name__)

#: Column names tried, in order, as the patient id when ``patient_column`` is not given.
PATIENT_CANDIDATES: tuple[str, ...] = (PATIENT_ID, "case_id", "patient", "submitter_id")
#: Numeric columns that are never genes unless named in ``gene_columns``.
DEFAULT_METADATA: frozenset[str] = frozenset(
    {"age", "survival_months", "censorship", "event", "is_female", "train", "label", "time", "fold"}
)
TCGA_GENE_SUFFIX = "_rnaseq"
#: Whole-number values with fewer negative entries than this fraction are read as raw counts with bad
#: entries (an error); more, as normalised integer data such as copy-number calls (-2..2).
NEGATIVE_COUNTS_MAX = 0.01
_COMPRESSION = (".zip", ".gz", ".bz2", ".xz", ".zst")
_UNNAMED = re.compile(r"^Unnamed: \d+$")
_PANDAS_COPY = re.compile(r"^(.+)\.\d+$")
_CACHE: OrderedDict[tuple[Hashable, ...], ad.AnnData] = OrderedDict()
_CACHE_SIZE = 16
#: Cells read as missing in the columns that are not the patient column (pandas' defaults).
_NA_TEXT = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
            "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
Aggregate = Literal["first", "mean"]
Genes = Sequence[str] | str | None


def read_expression(
    path: str | Path,
    *,
    patient_column: str | None = None,
    normalized: bool | None = None,
    gene_columns: Genes = None,
    metadata_columns: Sequence[str] = (),
    aggregate: Aggregate | None = None,
    n_top_genes: int | None = None,
) -> ad.AnnData:
    """Read, validate and (if raw counts) normalise an expression file.

    Args:
        path: ``.h5ad``, CSV/TSV (compressed or not) or Parquet file.
        patient_column: Column (``obs`` column for ``.h5ad``) holding patient ids. Default: the first
            of :data:`PATIENT_CANDIDATES` present, else a leading text column, else (``.h5ad``) the
            obs names.
        normalized: ``True``: values are already normalised, never transform them. ``False``: they
            are raw counts, normalise them (negative values are then an error). ``None``: detect
            (whole numbers with under 1 % negative entries are then an error: counts with bad entries).
        gene_columns: Explicit gene columns (list), a literal suffix such as ``"_cnv"`` (stripped
            from the gene names) or a regular expression searched in the column names.
        metadata_columns: Extra numeric columns that are metadata, not genes.
        aggregate: ``"first"`` keeps each patient's first row, ``"mean"`` averages a patient's rows
            (after normalisation); ``None`` keeps all rows.
        n_top_genes: Keep this many highly variable genes (scanpy ``seurat`` flavour on raw counts,
            highest variance on already-normalised data).

    Returns:
        A fresh AnnData (a copy of a cache keyed by path, modification time and the options).

    Raises:
        ExpressionError: the file is missing, unreadable, empty, or has NaN/inf values, duplicate
            genes, a missing patient column, or negative values declared as (or looking like) raw counts.
    """
    path = Path(path)
    if not path.is_file():
        raise ExpressionError(f"{path}: expression file not found; check the path in the manifest")
    stat = path.stat()
    genes_key = gene_columns if isinstance(gene_columns, str) or gene_columns is None else tuple(gene_columns)
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, patient_column, normalized, genes_key,
           tuple(metadata_columns), aggregate, n_top_genes)  # fmt: skip
    cached = _CACHE.get(key)
    if cached is None:
        adata = _load(path, patient_column, gene_columns, set(metadata_columns))
        _check_values(adata, path)
        normalize_expression(adata, normalized=normalized, n_top_genes=n_top_genes, source=path)
        if aggregate is not None:
            adata = aggregate_patients(adata, how=aggregate)
        _CACHE[key] = cached = adata
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return cached.copy()


def table_patients(path: str | Path, *, patient_column: str | None = None) -> set[str]:
    """Return the set of patient ids in an expression file (validating it on the way)."""
    return set(read_expression(path, patient_column=patient_column).obs[PATIENT_ID])


def probe(path: str | Path) -> None:
    """Check that ``path`` reads as a valid expression file; raise :class:`ExpressionError` if not.

    The whole table is read and validated (:func:`read_expression`, cached for the readers after it).
    """
    read_expression(path)


def negative_counts(adata: ad.AnnData, source: str | Path = "<AnnData>") -> str | None:
    """Say where, if ``adata.X`` looks like raw counts with bad entries: whole numbers, < 1 % of them negative.

    Whole numbers with more negative entries are normalised integer data (copy-number calls, -2..2);
    ``None`` then, and for anything that is not whole numbers with a negative entry.
    """
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    negative = values < 0
    if not negative.any() or negative.mean() >= NEGATIVE_COUNTS_MAX or not np.all(np.mod(values, 1) == 0):
        return None
    row, col = _first(adata.X, lambda v: v < 0)
    return (f"{source}: looks like raw counts (whole numbers) but {int(negative.sum())} value(s) are negative "
            f"(first: gene {adata.var_names[col]!r}, row {adata.obs_names[row]!r})")


def normalize_expression(
    adata: ad.AnnData,
    *,
    normalized: bool | None = None,
    n_top_genes: int | None = None,
    source: str | Path = "<AnnData>",
) -> ad.AnnData:
    """Normalise raw counts in place (once) and record the state in ``adata.uns["biossl"]``.

    A second call on the same object sees ``uns["biossl"]["normalized"]`` and does nothing.
    Raw counts are kept in ``adata.layers["counts"]``. See :func:`read_expression` for the args.
    """
    import scanpy as sc  # slow to import; only needed here

    state = adata.uns.get("biossl")
    if isinstance(state, dict) and state.get("normalized"):
        log.debug("%s: already normalised by biossl (%s); left as is", source, state.get("transform"))
        return adata
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    negative = values.size > 0 and float(values.min()) < 0
    integer = not negative and bool(np.all(np.mod(values, 1) == 0))
    if normalized is None and negative and (problem := negative_counts(adata, source)):
        raise ExpressionError(f"{problem}; counts cannot be negative: fix or drop these entries")
    if normalized is None:
        reasons = {"negative values": negative, "non-integer values": not negative and not integer,
                   "scanpy log1p marker": "log1p" in adata.uns}  # fmt: skip
        found = [r for r, hit in reasons.items() if hit]
        normalized = bool(found)
        detected = f"already normalised ({', '.join(found)})" if found else "raw counts"
    else:
        detected = "declared by user"
    if not normalized and negative:
        row, col = _first(adata.X, lambda v: v < 0)
        raise ExpressionError(
            f"{source}: declared as raw counts but has negative values (first: gene "
            f"{adata.var_names[col]!r}, row {adata.obs_names[row]!r}); pass normalized=True if the "
            "values are z-scores or log ratios"
        )
    transform = "none"
    if not normalized:
        if not integer:
            log.warning("%s: raw counts declared but values are not integers; normalising anyway", source)
        adata.layers["counts"] = adata.X.copy()
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        transform = "normalize_total(1e4)+log1p"
    if n_top_genes is not None and 0 < n_top_genes < adata.n_vars:
        if transform != "none":
            sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat")
            keep = adata.var["highly_variable"].to_numpy()
        else:
            keep = np.zeros(adata.n_vars, dtype=bool)
            keep[np.argsort(-_column_var(adata.X), kind="stable")[:n_top_genes]] = True
        adata._inplace_subset_var(keep)
    adata.uns["biossl"] = {"normalized": True, "transform": transform, "detected": detected,
                           "n_top_genes": int(n_top_genes or 0)}  # fmt: skip
    log.info("%s: %s; transform %s; %d x %d", source, detected, transform, adata.n_obs, adata.n_vars)
    return adata


def aggregate_patients(adata: ad.AnnData, *, how: Aggregate) -> ad.AnnData:
    """Collapse rows to one per patient: ``"first"`` row or ``"mean"`` of rows; adds ``obs["n_rows"]``."""
    if how not in ("first", "mean"):
        raise ExpressionError(f"aggregate must be 'first' or 'mean', not {how!r}")
    codes, uniques = pd.factorize(adata.obs[PATIENT_ID].to_numpy())
    first = np.unique(codes, return_index=True)[1]
    out = adata[first].copy()
    counts = np.bincount(codes, minlength=len(uniques))
    if how == "mean":
        onehot = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))))
        summed = onehot @ adata.X
        out.X = np.asarray(summed.toarray() if sp.issparse(summed) else summed) / counts[:, None]
        out.X = out.X.astype(np.float32)
        out.layers.clear()
    out.obs["n_rows"] = counts
    out.obs_names = [str(u) for u in uniques]
    out.uns["biossl"] = {**dict(adata.uns.get("biossl", {})), "aggregate": how}
    return out


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _column_var(x: np.ndarray | sp.spmatrix) -> np.ndarray:
    if sp.issparse(x):
        xs = sp.csr_matrix(x, dtype=np.float64)
        mean = np.asarray(xs.mean(axis=0)).ravel()
        return np.asarray(xs.multiply(xs).mean(axis=0)).ravel() - mean**2
    return np.asarray(x, dtype=np.float64).var(axis=0)


def _first(x: np.ndarray | sp.spmatrix, test: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int]:
    """Row and column of the first entry (row-major) where ``test`` holds; stored entries if sparse."""
    if sp.issparse(x):
        coo = sp.coo_matrix(x)
        hit = np.flatnonzero(test(coo.data))
        best = hit[np.lexsort((coo.col[hit], coo.row[hit]))[0]]
        return int(coo.row[best]), int(coo.col[best])
    row, col = np.argwhere(test(np.asarray(x)))[0]
    return int(row), int(col)


def _check_values(adata: ad.AnnData, path: Path) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ExpressionError(f"{path}: empty expression table ({adata.n_obs} rows x {adata.n_vars} genes)")
    dup = adata.var_names[adata.var_names.duplicated()]
    if len(dup):
        raise ExpressionError(f"{path}: duplicate gene names {list(dup[:5])}; make the gene columns unique")
    n_bad = int((~np.isfinite(adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X))).sum())
    if n_bad:
        row, col = _first(adata.X, lambda v: ~np.isfinite(v))
        raise ExpressionError(
            f"{path}: {n_bad} NaN/inf expression values (first: gene {adata.var_names[col]!r}, "
            f"row {adata.obs_names[row]!r}); impute or drop them before using the table"
        )


def _load(path: Path, patient_column: str | None, genes: Genes, meta: set[str]) -> ad.AnnData:
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return _load_h5ad(path, patient_column, genes)
    for ext in _COMPRESSION:
        name = name.removesuffix(ext)
    try:
        if name.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
            if not isinstance(df.index, pd.RangeIndex):
                df = df.reset_index()
        elif name.endswith((".csv", ".tsv", ".tab", ".txt")):
            df = _read_text_table(path, "," if name.endswith(".csv") else "\t", patient_column)
        else:
            raise ExpressionError(
                f"{path}: unknown expression format; use .h5ad, .csv/.tsv (optionally .gz/.zip) or .parquet"
            )
    except (OSError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, pd.errors.ParserError) as exc:
        if isinstance(exc, ExpressionError):
            raise
        if isinstance(exc, pd.errors.EmptyDataError):
            raise ExpressionError(f"{path}: empty expression table") from exc
        raise ExpressionError(f"{path}: cannot read expression table ({exc})") from exc
    return _table_to_adata(df, path, patient_column, genes, meta)


def _read_text_table(path: Path, sep: str, patient_column: str | None) -> pd.DataFrame:
    """A CSV/TSV whose patient column (named, a known name, else the first column) is read as text.

    ``0012`` stays ``"0012"`` (not the number 12, which would merge it with patient ``12``), and ``NA``,
    ``nan`` or ``TRUE`` stay the patients they name; only an empty cell is missing there. A first
    column holding nothing but numbers is converted back: a gene, not patient ids.
    """
    header = [str(c) for c in pd.read_csv(path, sep=sep, nrows=0).columns]
    id_column = patient_column or next((c for c in PATIENT_CANDIDATES if c in header), None)
    first_is_guess = id_column is None
    id_column = id_column if id_column is not None else (header[0] if header else None)
    if id_column not in header:
        return pd.read_csv(path, sep=sep, low_memory=False)
    df = pd.read_csv(path, sep=sep, low_memory=False, dtype={id_column: str}, keep_default_na=False,
                     na_values={c: [""] if c == id_column else _NA_TEXT for c in header})
    if first_is_guess:
        cells = df[id_column].where(~df[id_column].isin(_NA_TEXT))
        numbers = pd.to_numeric(cells, errors="coerce")
        if numbers.notna().any() and numbers.notna().equals(cells.notna()):
            df[id_column] = numbers
    return df


def _id_text(values: pd.Series) -> pd.Series:
    """Patient ids as stripped text; a whole number stored as a float (Parquet, h5ad ``12.0``) as ``"12"``."""
    return values.astype(object).map(id_text)


def _load_h5ad(path: Path, patient_column: str | None, genes: Genes) -> ad.AnnData:
    try:
        with warnings.catch_warnings():  # duplicate gene names are an error below, with the file named
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise ExpressionError(f"{path}: cannot read AnnData file ({exc})") from exc
    obs = adata.obs
    column = patient_column or next((c for c in PATIENT_CANDIDATES if c in obs.columns), None)
    if column is not None and column not in obs.columns:
        raise ExpressionError(
            f"{path}: patient column {column!r} not in obs; obs columns are {list(obs.columns)}"
        )
    ids = _id_text(obs[column] if column else pd.Series(obs.index, index=obs.index))
    empty = np.flatnonzero(ids.isna().to_numpy() | (ids == "").to_numpy())
    if len(empty):
        where = f"obs column {column!r}" if column else "obs_names"
        raise ExpressionError(f"{path}: {where} has no patient id for {len(empty)} cell(s)/row(s) (first: obs row "
                              f"{int(empty[0])}); give every row its patient")
    obs[PATIENT_ID] = ids.to_numpy(dtype=object)
    if not np.issubdtype(adata.X.dtype, np.floating):
        adata.X = adata.X.astype(np.float32)
    if genes is not None:
        chosen, names = _match_genes(list(adata.var_names), genes, path)
        adata = adata[:, chosen].copy()
        adata.var_names = names
    return adata


def _match_genes(columns: list[str], genes: Sequence[str] | str, path: Path) -> tuple[list[str], list[str]]:
    if not isinstance(genes, str):
        missing = [g for g in genes if g not in columns]
        if missing:
            raise ExpressionError(f"{path}: gene columns not found: {missing[:10]} ({len(missing)} in all)")
        return list(genes), list(genes)
    if re.escape(genes) == genes:  # a literal suffix such as "_rnaseq"
        chosen = [c for c in columns if c.endswith(genes) and c != genes]
        names = [c[: -len(genes)] for c in chosen]
    else:
        chosen = [c for c in columns if re.search(genes, c)]
        names = chosen
    if not chosen:
        raise ExpressionError(f"{path}: no column matches gene_columns={genes!r}; columns: {columns[:20]}")
    return chosen, names


def _table_to_adata(
    df: pd.DataFrame, path: Path, patient_column: str | None, genes: Genes, meta: set[str]
) -> ad.AnnData:
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ExpressionError(f"{path}: empty expression table ({df.shape[0]} rows, {df.shape[1]} columns)")
    df.columns = [str(c) for c in df.columns]
    columns = list(df.columns)
    copies = [c for c in columns if (m := _PANDAS_COPY.match(c)) and m.group(1) in columns]
    if copies:
        raise ExpressionError(f"{path}: duplicate column names (pandas renamed the copies to {copies[:5]}); "
                              "make every gene and column name unique")
    if patient_column is not None and patient_column not in columns:
        raise ExpressionError(
            f"{path}: patient column {patient_column!r} not found; columns are {columns[:30]}"
        )
    pcol = patient_column or next((c for c in PATIENT_CANDIDATES if c in columns), None)
    if pcol is None and not pd.api.types.is_numeric_dtype(df[columns[0]]):
        pcol = columns[0]
    if pcol is None:
        raise ExpressionError(
            f"{path}: cannot tell which column holds patient ids; pass patient_column= "
            f"(columns: {columns[:30]})"
        )
    if df[pcol].isna().any():
        row = int(np.flatnonzero(df[pcol].isna().to_numpy())[0])
        raise ExpressionError(f"{path}: patient column {pcol!r} is empty in row {row + 2} (header = row 1); "
                              "give every row its patient id, or delete the row")
    if genes is None and any(c.endswith(TCGA_GENE_SUFFIX) for c in columns):
        genes = TCGA_GENE_SUFFIX
    if genes is not None:
        chosen, names = _match_genes(columns, genes, path)
    else:
        skip = meta | DEFAULT_METADATA | {pcol}
        chosen = [c for c in columns if c not in skip and not _UNNAMED.match(c) and _numeric(df[c])]
        names = chosen
    for c in chosen:
        if not pd.api.types.is_numeric_dtype(df[c]):
            bad = df[c][pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()].head(1)
            where = f" (line {bad.index[0] + 2}: {bad.iloc[0]!r})" if len(bad) else ""
            raise ExpressionError(f"{path}: gene column {c!r} is not numeric{where}; fix it or leave it out")
    if not chosen:
        raise ExpressionError(
            f"{path}: no numeric gene columns found; pass gene_columns= (columns: {columns[:30]})"
        )
    obs = df.drop(columns=chosen)
    patients = _id_text(obs[pcol])
    if (patients == "").any():
        row = int(np.flatnonzero((patients == "").to_numpy())[0])
        raise ExpressionError(f"{path}: patient column {pcol!r} is empty in row {row + 2} (header = row 1); "
                              "give every row its patient id, or delete the row")
    obs[PATIENT_ID] = patients.to_numpy()
    index = patients + "#" + patients.groupby(patients).cumcount().astype(str)
    obs.index = pd.Index(np.where(patients.duplicated(keep=False), index, patients), dtype=str)
    var = pd.DataFrame(index=pd.Index(names, dtype=str))
    return ad.AnnData(X=df[chosen].to_numpy(dtype=np.float32), obs=obs, var=var)

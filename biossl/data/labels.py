"""User tables: reading CSV/TSV/Parquet, and the per-patient labels table.

Row numbers in messages count as in a spreadsheet: the header is row 1, the first record row 2.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from biossl.data.keys import PATIENT_ID
from biossl.errors import InputError, ManifestError

if TYPE_CHECKING:
    from biossl.data.cohort import Cohort

logger = logging.getLogger(__name__)

_COMPRESSION = (".gz", ".zip", ".bz2", ".xz", ".zst")
_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
_PARQUET = (".parquet", ".pq")
#: How many offending names an error message lists.
MAX_NAMED = 10


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for comp in _COMPRESSION:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    return Path(name).suffix


def read_table(
    path: str | Path,
    *,
    what: str,
    text_columns: Collection[str] = (),
    error: type[InputError] = ManifestError,
) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table; ``text_columns`` stay text, others are typed as pandas infers.

    Column names are stripped of surrounding whitespace. Blank lines are dropped but keep their place,
    so ``index + 2`` is the record's row number as a spreadsheet shows it (header = row 1). Compressed
    text (``.csv.gz``, ``.csv.zip``, ...) is read transparently.

    Args:
        path: The table.
        what: What the table is, for messages (for example ``"manifest"``).
        text_columns: Columns (matched case-insensitively) kept as stripped text, such as IDs; only
            empty cells are missing values (a patient called ``NA`` stays ``"NA"``).
        error: The :class:`InputError` subclass to raise.

    Raises:
        InputError: (``error``) when the file is missing, empty, of an unknown format or unparsable.
    """
    path = Path(path)
    text = {c.lower() for c in text_columns}
    if not path.is_file():
        raise error(f"{what} {path} not found: check the path (relative paths start at the current folder)")
    fmt = _format_of(path)
    try:
        if fmt in _PARQUET:
            df = pd.read_parquet(path)
        elif fmt in _SEPARATORS:
            header = pd.read_csv(path, sep=_SEPARATORS[fmt], nrows=0).columns
            as_text = {c: str for c in header if str(c).strip().lower() in text}
            df = pd.read_csv(path, sep=_SEPARATORS[fmt], dtype=as_text, keep_default_na=False, na_values=[""],
                             skip_blank_lines=False)
        else:
            raise error(f"{what} {path}: unknown table format {fmt!r}; use .csv, .tsv or .parquet")
    except pd.errors.EmptyDataError as exc:
        raise error(f"{what} {path} is empty: it needs a header row and one row per record") from exc
    except (ValueError, OSError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        raise error(f"{what} {path} cannot be read as a {fmt or 'text'} table ({exc}); "
                    "save it as UTF-8 CSV, TSV or Parquet") from exc
    df.columns = [str(c).strip() for c in df.columns]
    dup = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dup:
        raise error(f"{what} {path}: column(s) {dup} appear more than once; rename or delete the copies")
    df = df.dropna(how="all")
    for col in df.columns:
        if col.lower() in text:
            df[col] = df[col].map(lambda v: v if pd.isna(v) else str(v).strip())
    return df


def read_labels(
    path: str | Path,
    *,
    cohort: Cohort | None = None,
    patients: Collection[str] | None = None,
    patients_from: str = "the given patients",
    unknown: Literal["error", "drop"] = "error",
    id_column: str = PATIENT_ID,
) -> pd.DataFrame:
    """Read a per-patient labels table (``patient_id`` plus columns such as ``subtype``, ``time``, ``event``).

    Rows that repeat a patient with identical values are collapsed; repeats that disagree are an error.
    An ``event`` column must hold 0/1 and a ``time`` column non-negative numbers.

    Args:
        path: CSV, TSV or Parquet file.
        cohort: When given, labels for patients not in it are an error (``unknown="error"``) or are
            dropped with a warning (``unknown="drop"``). Cohort patients without labels are logged.
        patients: The known patients, instead of a cohort (for example the patients of an embeddings
            file); checked like ``cohort``.
        patients_from: Where ``patients`` come from, for messages (``"the embeddings emb.h5ad"``).
        unknown: What to do with labelled patients that the cohort (or ``patients``) lacks.
        id_column: The patient column (for example ``"case_id"`` for TCGA tables).

    Returns:
        DataFrame indexed by ``patient_id`` (sorted), one column per label.

    Raises:
        ManifestError: naming the file, the rows and the patients at fault.
    """
    path = Path(path)
    df = read_table(path, what="labels table", text_columns=[id_column])
    if id_column not in df.columns:
        raise ManifestError(f"labels table {path} has no {id_column!r} column (found {list(df.columns)}); "
                            "rename the patient column or pass id_column=")
    df = df.rename(columns={id_column: PATIENT_ID})
    empty = df.index[df[PATIENT_ID].isna() | (df[PATIENT_ID] == "")]
    if len(empty):
        raise ManifestError(f"labels table {path}: empty {id_column} on row(s) {_rows(empty)}; "
                            "fill them in or delete them")
    df = df.drop_duplicates()
    dup = df[PATIENT_ID][df[PATIENT_ID].duplicated(keep=False)]
    if len(dup):
        names = sorted(set(dup))
        raise ManifestError(f"labels table {path}: {len(names)} patient(s) have several rows with different "
                            f"values, e.g. {names[:MAX_NAMED]} on rows {_rows(dup.index)}; keep one row per "
                            "patient (tables with one row per slide must be deduplicated by patient)")
    out = df.set_index(PATIENT_ID).sort_index()
    check_survival_columns(out, path)
    if cohort is not None and patients is not None:
        raise ValueError("pass cohort= or patients=, not both")
    if cohort is not None:
        out = _match_known(out, cohort.patients, path, unknown=unknown, where="the cohort")
    elif patients is not None:
        out = _match_known(out, patients, path, unknown=unknown, where=patients_from)
    return out


def _rows(index: pd.Index) -> str:
    rows = [int(i) + 2 for i in index]
    more = f" and {len(rows) - MAX_NAMED} more" if len(rows) > MAX_NAMED else ""
    return ", ".join(map(str, rows[:MAX_NAMED])) + more


def check_survival_columns(
    df: pd.DataFrame, path: str | Path, *, time: str = "time", event: str = "event", positive: bool = False
) -> None:
    """Check survival columns where present: ``event`` holds 0/1, ``time`` non-negative numbers.

    Empty cells pass (they are missing labels). With ``positive=True`` a time of 0 is also refused.

    Raises:
        ManifestError: naming the file, the column and the patients at fault.
    """
    if event in df.columns:
        bad = df.index[~df[event].isin([0, 1, True, False]) & df[event].notna()]
        if len(bad):
            raise ManifestError(f"labels table {path}: column {event!r} must be 0 (censored) or 1 (event); "
                                f"patients {list(bad[:MAX_NAMED])} have other values")
    if time in df.columns:
        values = pd.to_numeric(df[time], errors="coerce")
        low = (values <= 0) if positive else (values < 0)
        bad = df.index[(values.isna() & df[time].notna()) | low]
        if len(bad):
            kind = "positive" if positive else "non-negative"
            raise ManifestError(f"labels table {path}: column {time!r} must be a {kind} number; "
                                f"patients {list(bad[:MAX_NAMED])} are not (values {list(df.loc[bad[:3], time])})")


def _match_known(df: pd.DataFrame, patients: Collection[str], path: Path, *, unknown: str,
                 where: str) -> pd.DataFrame:
    if unknown not in ("error", "drop"):
        raise ValueError(f"unknown must be 'error' or 'drop', not {unknown!r}")
    known = set(patients)
    extra = sorted(set(df.index) - known)
    if extra:
        msg = (f"labels table {path} has {len(extra)} patient(s) not in {where}, "
               f"e.g. {extra[:MAX_NAMED]}; check the patient IDs match the manifest's patient_id")
        if unknown == "error":
            raise ManifestError(msg + " or drop them (unknown='drop'; on the command line --unknown-labels drop)")
        logger.warning("%s; dropping them", msg)
        df = df.drop(index=extra)
    unlabelled = len(known - set(df.index))
    if unlabelled:
        logger.info("%d of %d known patients have no row in %s", unlabelled, len(known), path)
    return df

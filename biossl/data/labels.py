"""User tables: reading CSV/TSV/Parquet, and the per-patient labels table.

Row numbers in messages count as in a spreadsheet: the header is row 1, the first record row 2.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from biossl.errors import InputError, ManifestError
from biossl.ids import id_key
from biossl.keys import PATIENT_ID

if TYPE_CHECKING:
    from biossl.data.cohort import Cohort

logger = logging.getLogger(__name__)

_COMPRESSION = (".gz", ".zip", ".bz2", ".xz", ".zst")
_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
_PARQUET = (".parquet", ".pq")
#: How many offending names an error message lists.
MAX_NAMED = 10
#: ``DataFrame.attrs`` key of :func:`read_labels`' output: patient -> its row in the file (header = row 1).
ROWS = "biossl_rows"


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for comp in _COMPRESSION:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    return Path(name).suffix


def column_name(name: object) -> str:
    """A header cell as biossl matches it: text, without a byte-order mark or surrounding whitespace."""
    return str(name).replace("\ufeff", "").strip()


def id_text(value: object) -> object:
    """An ID cell as text: stripped; a whole number stored as a float (Parquet ``12.0``) as ``"12"``.

    Missing values (``None``, NaN, ``pd.NA`` of a Parquet string or integer column) stay missing. Text is
    never re-read as a number, so ``"0012"`` stays ``"0012"``.
    """
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, (float, np.floating))
                                                              and np.isnan(value)):
        return value
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def look_alikes(ids: Collection[str], others: Collection[str]) -> list[tuple[str, str]]:
    """Pairs ``(i, o)`` of ``ids`` and ``others`` that differ as text but share :func:`id_key` (``0012``, ``12``)."""
    keyed: dict[str, list[str]] = {}
    for o in others:
        keyed.setdefault(id_key(o), []).append(str(o))
    return [(str(i), o) for i in sorted(map(str, ids)) for o in sorted(keyed.get(id_key(i), [])) if o != str(i)]


def look_alike_note(pairs: Sequence[tuple[str, str]], first: str, second: str) -> str:
    """``"; '12' of the labels table looks like '0012' of the cohort: ..."`` for messages; empty without pairs."""
    if not pairs:
        return ""
    named = ", ".join(f"{a!r} of {first} looks like {b!r} of {second}" for a, b in pairs[:MAX_NAMED])
    more = f" and {len(pairs) - MAX_NAMED} more" if len(pairs) > MAX_NAMED else ""
    return (f"; {named}{more}: the same number written differently (a spreadsheet that reads IDs as numbers drops "
            "leading zeros and rewrites 1e3 or 12.0); write the IDs as text, exactly as the manifest does")


def check_column_names(names: Sequence[object], path: Path, *, what: str,
                       error: type[InputError] = ManifestError) -> list[str]:
    """The header's names (:func:`column_name`), refusing names that clash once case, spaces and BOM are folded.

    ``Path`` beside ``path``, ``" site"`` beside ``"site"`` or a name written twice would otherwise be
    read as one column or as two, depending on the reader.

    Raises:
        InputError: (``error``) naming the file and the clashing columns as written.
    """
    seen: dict[str, list[str]] = {}
    for raw in names:
        seen.setdefault(column_name(raw).casefold(), []).append(str(raw))
    clashes = [spelled for spelled in seen.values() if len(spelled) > 1]
    if clashes:
        listed = "; ".join(" and ".join(repr(n) for n in spelled) for spelled in clashes[:MAX_NAMED])
        raise error(f"{what} {path}: columns {listed} are the same column once case and surrounding spaces are "
                    "ignored; rename or delete the copies so that each name appears once")
    return [column_name(n) for n in names]


def read_table(
    path: str | Path,
    *,
    what: str,
    text_columns: Collection[str] = (),
    error: type[InputError] = ManifestError,
) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table; ``text_columns`` stay text, others are typed as pandas infers.

    Column names are stripped of surrounding whitespace (and a byte-order mark); names that clash once
    case is folded (``Path`` beside ``path``) or repeat are an error. Blank lines are dropped but keep
    their place, so ``index + 2`` is the record's row number as a spreadsheet shows it (header = row 1).
    Compressed text (``.csv.gz``, ``.csv.zip``, ...) is read transparently.

    Args:
        path: The table.
        what: What the table is, for messages (for example ``"manifest"``).
        text_columns: Columns (matched case-insensitively) kept as stripped text, such as IDs; only
            empty cells are missing values (a patient called ``NA`` stays ``"NA"``, ``0012`` stays
            ``"0012"``). A Parquet number column becomes its text (``12`` -> ``"12"``).
        error: The :class:`InputError` subclass to raise.

    Raises:
        InputError: (``error``) when the file is missing, empty, of an unknown format or unparsable, or its
            column names clash.
    """
    path = Path(path)
    text = {c.lower() for c in text_columns}
    if not path.is_file():
        raise error(f"{what} {path} not found: check the path (relative paths start at the current folder)")
    fmt = _format_of(path)
    try:
        if fmt in _PARQUET:
            df = pd.read_parquet(path)
            check_column_names(list(df.columns), path, what=what, error=error)
        elif fmt in _SEPARATORS:
            # The header as written (pandas would rename a repeated name to "name.1").
            header = pd.read_csv(path, sep=_SEPARATORS[fmt], header=None, nrows=1, dtype=str,
                                 keep_default_na=False).iloc[0].tolist()
            names = check_column_names(header, path, what=what, error=error)
            as_text = {i: str for i, c in enumerate(names) if c.lower() in text}
            df = pd.read_csv(path, sep=_SEPARATORS[fmt], dtype=as_text, keep_default_na=False, na_values=[""],
                             skip_blank_lines=False)
            df.columns = names
        else:
            raise error(f"{what} {path}: unknown table format {fmt!r}; use .csv, .tsv or .parquet")
    except pd.errors.EmptyDataError as exc:
        raise error(f"{what} {path} is empty: it needs a header row and one row per record") from exc
    except (ValueError, OSError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        raise error(f"{what} {path} cannot be read as a {fmt or 'text'} table ({exc}); "
                    "save it as UTF-8 CSV, TSV or Parquet") from exc
    df.columns = [column_name(c) for c in df.columns]
    df = df.dropna(how="all")
    for col in df.columns:
        if col.lower() in text:
            df[col] = df[col].map(id_text).astype(object)
    return df


#: ``obs`` column names that anndata reserves for itself when writing ``.h5ad``.
_RESERVED_OBS = ("_index",)


def check_obs_columns(columns: Collection[object], source: str, *, error: type[InputError] = ManifestError) -> None:
    """Refuse column names that ``.h5ad`` cannot store, before any work: they would fail at the final write.

    ``_index`` (reserved by anndata), an empty name, a name with ``/`` (an HDF5 path separator) or a
    name that is not text.

    Raises:
        InputError: (``error``) naming ``source`` (``"labels table x.csv"``) and the column.
    """
    for name in columns:
        why = None
        if not isinstance(name, str):
            why = f"is not text ({type(name).__name__})"
        elif name.strip() in _RESERVED_OBS:
            why = "is reserved by anndata (.h5ad)"
        elif not name.strip():
            why = "is empty"
        elif "/" in name:
            why = "holds '/', which .h5ad files cannot store in a column name"
        if why is not None:
            raise error(f"{source}: column {name!r} {why}; rename the column (its values become an obs column of "
                        "the embeddings)")


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
    if id_column != PATIENT_ID and PATIENT_ID in df.columns:
        raise ManifestError(f"labels table {path} has a {PATIENT_ID!r} column beside its patient column {id_column!r}; "
                            f"rename or delete the {PATIENT_ID!r} column (the patients are read from {id_column!r})")
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
    out.attrs[ROWS] = {str(p): int(i) + 2 for p, i in zip(df[PATIENT_ID], df.index)}
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
    """Check survival columns where present: ``event`` holds 0/1, ``time`` finite non-negative numbers.

    Empty cells pass (they are missing labels). With ``positive=True`` a time of 0 is also refused.
    Every wrong cell is named (up to :data:`MAX_NAMED`): its row in the file (when ``df`` comes from
    :func:`read_labels`), its patient and its value.

    Raises:
        ManifestError: naming the file, the column and the rows at fault.
    """
    if event in df.columns:
        values = pd.to_numeric(df[event], errors="coerce")
        bad = df[event].notna() & ~values.isin([0, 1])
        if bad.any():
            raise ManifestError(f"labels table {path}: column {event!r} must be 0 (censored) or 1 (event), or empty "
                                f"when unknown; {_cells(df, bad, event)}")
    if time in df.columns:
        values = pd.to_numeric(df[time], errors="coerce")
        low = (values <= 0) if positive else (values < 0)
        bad = df[time].notna() & (~np.isfinite(values.astype(float)) | low)
        if bad.any():
            kind = "positive" if positive else "non-negative"
            raise ManifestError(f"labels table {path}: column {time!r} must be a {kind} number, or empty when "
                                f"unknown; {_cells(df, bad, time)}")


def _cells(df: pd.DataFrame, bad: pd.Series, column: str) -> str:
    """``"2 row(s) are not: row 7 (patient 'P3') 'NaN', ..."``: the wrong cells of ``column``, rows from ``attrs``."""
    rows: dict[str, int] = df.attrs.get(ROWS, {})
    named = []
    for patient, value in df.loc[bad.to_numpy(), column].items():
        row = rows.get(str(patient))
        named.append(f"{f'row {row} ' if row is not None else ''}(patient {str(patient)!r}) {value!r}")
    more = f" and {len(named) - MAX_NAMED} more" if len(named) > MAX_NAMED else ""
    return f"{len(named)} row(s) are not: " + ", ".join(named[:MAX_NAMED]) + more


def _match_known(df: pd.DataFrame, patients: Collection[str], path: Path, *, unknown: str,
                 where: str) -> pd.DataFrame:
    if unknown not in ("error", "drop"):
        raise ValueError(f"unknown must be 'error' or 'drop', not {unknown!r}")
    known = {str(p) for p in patients}
    extra = sorted(set(df.index) - known)
    if extra:
        note = look_alike_note(look_alikes(extra, known - set(df.index)), "the labels table", where)
        msg = (f"labels table {path} has {len(extra)} patient(s) not in {where}, "
               f"e.g. {extra[:MAX_NAMED]}; check the patient IDs match the manifest's patient_id{note}")
        if unknown == "error":
            raise ManifestError(msg + " or drop them (unknown='drop'; on the command line --unknown-labels drop)")
        logger.warning("%s; dropping them", msg)
        df = df.drop(index=extra)
    unlabelled = sorted(known - set(df.index))
    if unlabelled:
        logger.info("%d of %d known patients have no row in %s, e.g. %s", len(unlabelled), len(known), path,
                    unlabelled[:MAX_NAMED])
        warn_look_alikes(unlabelled, list(df.index), f"{where} without a row in {path}", "labelled patient")
    return df


def warn_look_alikes(left_out: Collection[str], matched: Collection[str], left_where: str, matched_what: str) -> None:
    """Warn, naming them, when patients left out look like matched ones (``0012`` left out, ``12`` matched).

    The rows of ``12`` may then be those of ``0012`` with its leading zeros dropped by a spreadsheet.
    """
    alike: dict[str, list[str]] = {}
    for a, b in look_alikes(left_out, matched):
        alike.setdefault(a, []).append(repr(b))
    if alike:
        named = ", ".join(f"{a!r} (looks like the {matched_what} {' or '.join(b)})"
                          for a, b in list(alike.items())[:MAX_NAMED])
        logger.warning("%d patient(s) of %s look like matched ones written differently: %s; if a spreadsheet dropped "
                       "leading zeros (or rewrote 1e3, 12.0), the rows matched to the latter may belong to the former: "
                       "write the IDs as text, exactly as the manifest does", len(alike), left_where, named)

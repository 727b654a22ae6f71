"""Pseudonymised exports: patient IDs replaced by keyed hashes, identifying columns dropped.

``biossl embed --pseudonymize`` passes its AnnData through :func:`pseudonymize_obs` before writing:

* every patient ID becomes ``psn-`` + the first 24 hex digits (96 bits) of
  HMAC-SHA256(salt, patient ID). The salt is a secret of at least 16 characters read from
  ``--salt-file`` or the ``BIOSSL_SALT`` environment variable (the file wins); there is no default,
  so an export is never hashed with a guessable key. The same salt gives the same pseudonyms on
  every run (exports of one cohort stay linkable with each other); without the salt a pseudonym
  cannot be tied back to a patient, and nothing that maps pseudonyms to IDs is written anywhere.
* ``obs`` keeps only columns that do not identify a patient: the ``has_<modality>`` flags, the
  labels table's columns, and the manifest metadata named in :data:`KEPT_METADATA` (acquisition
  site, scanner, batch, scan intensity). Every other manifest column (``tcga_case``, dates, a
  second ID ...) is dropped, as is any column whose values include a patient ID. ``keep`` names
  more columns to keep.
* ``uns["biossl"]["pseudonymized"]`` records the method and the names (never the values) of the
  kept and dropped columns.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from biossl.errors import InputError

logger = logging.getLogger(__name__)

SALT_ENV = "BIOSSL_SALT"
MIN_SALT = 16
PREFIX = "psn-"
DIGITS = 24
#: Manifest metadata kept by default: what audits of batch effects need, and not a person's identity.
KEPT_METADATA = ("site", "scanner", "batch", "intensity")


def read_salt(salt_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> bytes:
    """The secret salt: the contents of ``salt_file`` (surrounding whitespace stripped), else ``$BIOSSL_SALT``.

    Raises:
        InputError: No salt is given, the file cannot be read, or the salt is shorter than 16 characters.
    """
    environ = os.environ if environ is None else environ
    how = (f"pass --salt-file FILE (a secret of at least {MIN_SALT} characters, e.g. from "
           f"`openssl rand -hex 32`) or set {SALT_ENV}; keep it secret and reuse it so pseudonyms stay stable")
    if salt_file is not None:
        path = Path(salt_file)
        try:
            salt = path.read_bytes().strip()
        except OSError as exc:
            raise InputError(f"salt file {path} cannot be read ({exc.strerror or exc}); {how}") from None
        source = f"salt file {path}"
    elif environ.get(SALT_ENV):
        salt = environ[SALT_ENV].strip().encode()
        source = f"${SALT_ENV}"
    else:
        raise InputError(f"--pseudonymize needs a secret salt and none was given; {how}")
    if len(salt) < MIN_SALT:
        raise InputError(f"{source} holds {len(salt)} characters; a salt needs at least {MIN_SALT} (patient IDs are "
                         f"few and guessable, a short salt lets anyone recompute the pseudonyms); {how}")
    return salt


def pseudonym(patient_id: str, salt: bytes) -> str:
    """``psn-`` + the first 24 hex digits of HMAC-SHA256(``salt``, ``patient_id``)."""
    return PREFIX + hmac.new(salt, str(patient_id).encode(), hashlib.sha256).hexdigest()[:DIGITS]


def pseudonyms(patient_ids: Iterable[str], salt: bytes) -> list[str]:
    """:func:`pseudonym` of each ID, checked to be distinct."""
    ids = [str(p) for p in patient_ids]
    out = [pseudonym(p, salt) for p in ids]
    if len(set(out)) != len(set(ids)):  # 96 bits: never in practice, but an export must not merge patients
        raise InputError("two patient IDs got the same pseudonym; use another salt")
    return out


def pseudonymize_obs(adata: Any, salt: bytes, *, keep: Iterable[str] = ()) -> Any:
    """Return a copy of ``adata`` whose ``obs`` index is pseudonymised and identifying columns dropped.

    A column is dropped when it is not on the keep list (``has_<modality>``, the labels, :data:`KEPT_METADATA`,
    ``keep``) or when :class:`Identifiers` finds an identifier in it or in its name. Text in ``uns`` that holds
    one is removed. ``uns["biossl"]["pseudonymized"]`` lists what was dropped and why (names, never values).

    Args:
        adata: Embeddings from :func:`biossl.downstream.embed.embed_cohort` (``obs`` indexed by patient).
        salt: From :func:`read_salt`.
        keep: Further ``obs`` columns to keep (refused when they hold identifiers).

    Raises:
        InputError: ``keep`` names a column that ``obs`` lacks, or a kept column holds patient IDs.
    """
    out = adata.copy()
    ids = [str(p) for p in out.obs_names]
    info = dict(out.uns.get("biossl", {}))
    labels = {str(c) for c in info.get("label_columns", [])}
    extra = {str(c) for c in keep}
    unknown = sorted(extra - {str(c) for c in out.obs.columns})
    if unknown:
        have = ", ".join(map(str, out.obs.columns))
        raise InputError(f"--keep-obs {', '.join(unknown)}: no such column in the embeddings' obs ({have})")
    wanted = [c for c in out.obs.columns
              if str(c).startswith("has_") or str(c) in labels or str(c) in KEPT_METADATA or str(c) in extra]
    others = [c for c in out.obs.columns if c not in wanted]
    found = Identifiers(ids, more=_row_unique_text(out.obs[others]))
    reasons: dict[str, str] = {}
    for c in wanted:
        if found.in_text(str(c)):
            reasons[str(c)] = "its name holds a patient identifier"
        elif found.in_column(out.obs[c], ids):
            reasons[str(c)] = "its values hold patient identifiers"
    refused = sorted(set(reasons) & extra)
    if refused:
        raise InputError(f"--keep-obs {', '.join(refused)}: the column holds patient identifiers (a patient ID, a "
                         "TCGA barcode or a copy of an ID column, maybe inside a longer text or path) and cannot be "
                         "kept in a pseudonymised export; drop --keep-obs for it")
    kept = [c for c in wanted if str(c) not in reasons]
    for c in others:
        reasons[str(c)] = "not on the keep list (has_<modality>, labels, site/scanner/batch/intensity, --keep-obs)"
    named = {c: (_HIDDEN_NAME if found.in_text(c) else c) for c in reasons}
    dropped = [named[str(c)] for c in out.obs.columns if str(c) in reasons]
    obs = out.obs[kept].copy()
    obs.index = pd.Index(pseudonyms(ids, salt), name=out.obs.index.name or "patient_id")
    out.obs = obs
    if "biossl" in out.uns:  # the labels dropped above are not listed (a label named after a patient)
        out.uns["biossl"] = {**out.uns["biossl"], "label_columns": [
            str(c) for c in out.uns["biossl"].get("label_columns", []) if str(c) in {str(k) for k in kept}]}
    removed = _scrub_uns(out.uns, found)
    info = dict(out.uns.get("biossl", {}))
    out.uns["biossl"] = {**info, "pseudonymized": {
        "method": f"HMAC-SHA256(salt, patient_id), first {DIGITS} hex digits, prefix {PREFIX}",
        "kept_columns": [str(c) for c in kept], "dropped_columns": dropped,
        "dropped_because": {named[c]: why for c, why in reasons.items()},
        "removed_uns": removed}}
    if dropped:
        logger.info("pseudonymised %d patients; dropped obs columns %s", len(ids), ", ".join(dropped))
    held = [named[c] for c, why in reasons.items() if "identifier" in why]
    if held:
        logger.warning("pseudonymised export: dropped column(s) %s: they hold patient identifiers", ", ".join(held))
    if removed:
        logger.warning("pseudonymised export: removed uns entr(y/ies) %s: they hold patient identifiers",
                       ", ".join(removed))
    return out


def refuse_identifying_columns(adata: Any, columns: Iterable[str | None], *, flag: str, output: str) -> None:
    """Refuse ``obs`` columns whose values an export would write when they hold patient identifiers.

    For reports written with ``--pseudonymize`` that print a column's values (``biossl audit`` plots each
    patient's ``--columns`` / ``--label`` value). Patient IDs come from ``obs_names``; TCGA barcodes
    count whoever's they are.

    Raises:
        InputError: naming the column, the option that chose it and the output it would leak into.
    """
    found = Identifiers([str(p) for p in adata.obs_names if not str(p).startswith(PREFIX)])
    ids = [str(p) for p in adata.obs_names]
    for column in columns:
        if column is None or column not in adata.obs.columns:
            continue
        if found.in_text(str(column)) or found.in_column(adata.obs[column], ids):
            raise InputError(f"{flag} {column}: the column holds patient identifiers (a patient ID, a TCGA barcode, "
                             f"maybe inside a longer text or path) and {output} would print its values; with "
                             "--pseudonymize, audit columns that do not identify patients (site, scanner, batch)")


#: How a dropped column whose name holds an identifier is listed (its name would leak it).
_HIDDEN_NAME = "<a column whose name holds a patient identifier>"
#: Case barcodes of TCGA / TARGET (``TCGA-2Z-A9J6``, ``TARGET-20-PADZCG``), separators free, case ignored.
BARCODE = re.compile(r"(?<![0-9a-z])(tcga|target)[^0-9a-z]*([0-9a-z]{2})[^0-9a-z]*([0-9a-z]{4,6})(?![0-9a-z])",
                     re.IGNORECASE)
#: Identifiers at least this long (letters and digits, separators left out) are found inside any text.
_LONG = 8


def _tokens(text: str) -> list[str]:
    return re.findall(r"[0-9a-z]+", text.casefold())


def _numeric_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _number_text(value: Any) -> str | None:
    """A number (or text that reads as one) as an ID would be written: ``12.0`` -> ``"12"``; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        if not np.isfinite(value):
            return None
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str) and _numeric_text(value.strip()):
        return _number_text(float(value.strip())) if value.strip().lower() not in ("nan", "inf", "-inf") else None
    return None


class Identifiers:
    """Finds patient identifiers inside values: an ID standing alone or inside a longer text or path.

    Case and separators are ignored (``TCGA-2Z-A9J6`` is found in ``tcga_2z_a9j6`` and in
    ``slides/TCGA-2Z-A9J6-01Z-00-DX1.svs``). An ID of at least 8 letters and digits is found anywhere in a
    text (``TCGA2ZA9J6``); a shorter one only as whole words (``DEMO-01`` is not in ``DEMO-010``, ``12`` is
    in ``slides/12.svs`` but not in ``A12``; a digit-only ID is sought as a word in ``obs`` text only, not in
    the free notes of ``uns``). Any TCGA / TARGET case barcode (and the case part of an ID that
    is a longer barcode) counts, whoever's it is. Numbers are IDs only as whole values, and a number
    column only when it copies each row's own ID (a numeric ``event`` of patient ``1`` is not an ID).
    """

    def __init__(self, ids: Iterable[str], *, more: Iterable[str] = ()) -> None:
        self.exact = {str(i).strip() for i in ids if str(i).strip()}
        names = set(self.exact) | {str(m) for m in more}
        barcodes = [m.groups() for n in list(names) for m in BARCODE.finditer(n)]
        names |= {"-".join(groups) for groups in barcodes}
        self._long = sorted({"".join(t) for n in names if len("".join(t := _tokens(n))) >= _LONG
                             and not "".join(t).isdigit()})
        short = [t for n in names if (t := _tokens(n)) and (len("".join(t)) < _LONG or "".join(t).isdigit())]
        self._words = sorted({" " + " ".join(t) + " " for t in short if not "".join(t).isdigit()})
        #: Words searched in obs text only (``slides/0012.svs``, ``note: 3Z-A93Z``), not in the free notes of uns:
        #: digit-only IDs (``0012``) and the parts of a barcode without its project (tissue source site +
        #: participant ``3Z-A93Z``, participant ``A93Z``), which name the patient as well.
        parts = {" " + " ".join(_tokens(p)) + " " for _, tss, who in barcodes for p in (f"{tss}-{who}", who)}
        self._number_words = sorted({" " + " ".join(t) + " " for t in short if "".join(t).isdigit()} | parts)
        #: Participant codes that are digits (``3308`` of ``TCGA-A3-3308``): an ID when a text cell is just that.
        self._digit_parts = {who.casefold() for _, _, who in barcodes if who.isdigit()}

    def in_text(self, text: str) -> bool:
        """True if ``text`` holds an identifier (see the class docstring); digit-only IDs only as the whole text."""
        return self._in_texts([text], number_words=False)

    def _in_texts(self, texts: Iterable[str], *, number_words: bool) -> bool:
        texts = [t for t in texts if t]
        numbers = [n for t in texts if (n := _number_text(t)) is not None]
        if any(n in self.exact for n in numbers) or any(t.strip() in self.exact for t in texts):
            return True
        words = [t for t in texts if _number_text(t) is None]
        if any(BARCODE.search(t) for t in words):
            return True
        compact = "\n".join("".join(_tokens(t)) for t in words)
        spaced = "\n".join(" " + " ".join(_tokens(t)) + " " for t in words)
        words_sought = self._words + (self._number_words if number_words else [])
        return any(k in compact for k in self._long) or any(k in spaced for k in words_sought)

    def in_column(self, column: pd.Series, row_ids: Sequence[str]) -> bool:
        """True if a text value holds an identifier, or the column's numbers copy each row's own ID."""
        values = column.astype(object).tolist()
        texts = {str(v) for v in values if isinstance(v, str)}
        if self._in_texts((t for t in texts if _number_text(t) is None), number_words=True):
            return True
        if any(t.strip() in self._digit_parts for t in texts):
            return True
        return _copies_row_ids(values, row_ids)


def _copies_row_ids(values: Sequence[Any], row_ids: Sequence[str]) -> bool:
    """True if at least half of the filled values are their own row's ID, as text or as the same number.

    ``"0012"`` (text, a categorical, a number column ``12`` or ``12.0``) beside patient ``0012`` is a copy;
    an ``event`` 0/1 beside numeric patients ``0 .. 9`` copies two rows of ten and is a label.
    """
    from biossl.ids import id_key

    pairs = [(v, str(i)) for v, i in zip(values, row_ids) if str(i).strip() and not isinstance(v, (bool, np.bool_))
             and not (v is None or (isinstance(v, float) and np.isnan(v)))]
    copies = sum(str(v).strip() == i or (_number_text(v) is not None and id_key(v) == id_key(i)) for v, i in pairs)
    return copies > 0 and 2 * copies >= len(pairs)


def _row_unique_text(frame: pd.DataFrame) -> list[str]:
    """Text values of the columns that give every row (two or more) its own value: second IDs such as ``tcga_case``.

    Values of at least 4 letters and digits only: short codes would find themselves everywhere.
    """
    found: list[str] = []
    for c in frame.columns:
        values = [str(v) for v in frame[c].astype(object) if isinstance(v, str) and v.strip()]
        if len(values) >= 2 and len(set(values)) == len(values):
            found += [v for v in values if len("".join(_tokens(v))) >= 4 and _number_text(v) is None]
    return found


def _scrub_uns(uns: Any, found: Identifiers, where: str = "uns") -> list[str]:
    """Remove, in place, every ``uns`` entry whose key or text holds an identifier; return their paths."""
    removed: list[str] = []
    for key in list(uns.keys()):
        value = uns[key]
        key_holds = found.in_text(str(key))
        path = f"{where}/{_HIDDEN_NAME if key_holds else key}"
        if key_holds:
            del uns[key]
            removed.append(path)
        elif isinstance(value, Mapping) and hasattr(value, "keys"):
            removed += _scrub_uns(value, found, path)
        elif _holds_text(value, found):
            del uns[key]
            removed.append(path)
    return removed


def _holds_text(value: Any, found: Identifiers) -> bool:
    if isinstance(value, str):
        return found.in_text(value)
    if isinstance(value, (list, tuple)):
        return any(_holds_text(v, found) for v in value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return any(_holds_text(v.decode() if isinstance(v, bytes) else v, found) for v in value.ravel().tolist())
    if isinstance(value, pd.DataFrame):
        return found.in_text(" ".join(map(str, value.columns))) or any(
            found.in_column(value[c], [""] * len(value)) for c in value.columns if value[c].dtype == object)
    return False


#: What :func:`hide_identifiers` writes in place of a text holding a patient identifier.
HIDDEN_TEXT = "<hidden: held a patient identifier>"


def hide_identifiers(record: Any, patient_ids: Iterable[str]) -> tuple[Any, list[str]]:
    """A copy of a JSON-like ``record`` where every text (value or key) holding an identifier is :data:`HIDDEN_TEXT`.

    For the parts of a pseudonymised report that :func:`pseudonymize_record` does not rewrite: file names
    (``labels_TCGA-2Z-A9J6.csv``), notes, the source of an audit. Identifiers are found as in
    :class:`Identifiers` (an ID inside a longer text, any TCGA/TARGET barcode); texts that read as numbers
    are left alone (a class ``"1"`` beside a patient ``1``). Returns the copy and the paths (``inputs/labels``)
    of what was hidden.
    """
    found = Identifiers([str(p) for p in patient_ids if not str(p).startswith(PREFIX)])
    hidden: list[str] = []

    def holds(text: str) -> bool:
        return _number_text(text) is None and found.in_text(text)

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            if holds(value):
                hidden.append(path or "/")
                return HIDDEN_TEXT
            return value
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for i, (k, v) in enumerate(value.items()):
                key = k
                if isinstance(k, str) and holds(k):
                    key = f"{HIDDEN_TEXT} {i}"
                    hidden.append(f"{path}/{key}")
                out[key] = walk(v, f"{path}/{key}")
            return out
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        return value

    return walk(record, ""), hidden


def pseudonymize_record(record: Any, patient_ids: Iterable[str], salt: bytes) -> Any:
    """A copy of a JSON-like ``record`` (dicts, lists, strings, numbers) with every patient ID replaced.

    An ID is replaced wherever it stands alone or inside a text (a dict key such as a fold assignment's,
    a list of excluded patients, a note "e.g. ['DEMO-05']"), but not inside a longer name
    (``DEMO-1`` in ``DEMO-10``). For reports (``biossl finetune --pseudonymize``).

    IDs that are already pseudonyms (``psn-...``) stay as they are, so reports of pseudonymised
    embeddings keep the pseudonyms of the export. Inside a text, only IDs holding a non-digit are
    replaced (a numeric ID ``5`` would otherwise hit "5 folds"): give this function the parts of a
    report that hold patients, not the whole report, when IDs may be plain numbers.
    """
    ids = sorted({str(p) for p in patient_ids if not str(p).startswith(PREFIX)}, key=len, reverse=True)
    if not ids:
        return record
    mapping = dict(zip(ids, pseudonyms(ids, salt)))
    in_text = [i for i in ids if not i.isdigit()]
    pattern = (re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, in_text)) + r")(?![\w-])")
               if in_text else None)

    def text(value: str) -> str:
        if value in mapping:
            return mapping[value]
        return pattern.sub(lambda m: mapping[m.group(1)], value) if pattern is not None else value

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return text(value)
        if isinstance(value, dict):
            return {text(k) if isinstance(k, str) else k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return value

    return walk(record)

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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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

    Args:
        adata: Embeddings from :func:`biossl.downstream.embed.embed_cohort` (``obs`` indexed by patient).
        salt: From :func:`read_salt`.
        keep: Further ``obs`` columns to keep (they must not identify patients; that is on the caller).

    Raises:
        InputError: ``keep`` names a column that ``obs`` lacks, or a kept column holds patient IDs.
    """
    out = adata.copy()
    ids = [str(p) for p in out.obs_names]
    info = out.uns.get("biossl", {})
    labels = {str(c) for c in info.get("label_columns", [])}
    extra = {str(c) for c in keep}
    unknown = sorted(extra - {str(c) for c in out.obs.columns})
    if unknown:
        have = ", ".join(map(str, out.obs.columns))
        raise InputError(f"--keep-obs {', '.join(unknown)}: no such column in the embeddings' obs ({have})")
    wanted = [c for c in out.obs.columns
              if str(c).startswith("has_") or str(c) in labels or str(c) in KEPT_METADATA or str(c) in extra]
    id_set = set(ids)
    holds_ids = [c for c in wanted if _holds_any(out.obs[c], id_set)]
    if holds_ids and set(holds_ids) & extra:
        raise InputError(f"column(s) {', '.join(sorted(set(holds_ids) & extra))} hold patient IDs and cannot be "
                         "kept in a pseudonymised export")
    kept = [c for c in wanted if c not in holds_ids]
    dropped = [str(c) for c in out.obs.columns if c not in kept]
    obs = out.obs[kept].copy()
    obs.index = pd.Index(pseudonyms(ids, salt), name=out.obs.index.name or "patient_id")
    out.obs = obs
    out.uns["biossl"] = {**info, "pseudonymized": {
        "method": f"HMAC-SHA256(salt, patient_id), first {DIGITS} hex digits, prefix {PREFIX}",
        "kept_columns": [str(c) for c in kept], "dropped_columns": dropped}}
    if dropped:
        logger.info("pseudonymised %d patients; dropped obs columns %s", len(ids), ", ".join(dropped))
    return out


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


def _holds_any(column: pd.Series, ids: set[str]) -> bool:
    """True if some value is a patient ID or lists one (``"DEMO-01; DEMO-02"``)."""
    for value in column.astype("object"):
        if isinstance(value, str) and (value in ids or any(t in ids for t in re.split(r"[\s,;|]+", value))):
            return True
    return False

"""The cohort: a validated manifest listing each patient's files per modality.

A manifest is a CSV, TSV or Parquet table with one row per file: ``patient_id``, ``modality`` (one
a name you choose, case and surrounding spaces ignored; its kind comes from an optional ``kind`` column,
the config's ``data.kinds``, or, for the legacy names ``wsi``, ``volume``, ``expression``, ``sequence``,
their own kind), ``path`` (relative to
the manifest's folder unless absolute) and optional metadata columns (``site``, ``scanner``,
``batch``, ``slide_mpp``, ...). A patient may have several rows per modality; an expression row may
point to a table holding many patients, in which the patient is then looked up, and so may a sequence
row (a CSV/TSV table with a ``patient_id`` column). Each file is probed once, however many rows name it.

Two depths of file check: the reader's cheap ``probe`` (headers; the default, run whenever a cohort is
opened) and, with ``check_values=True``, its thorough ``check`` where it has one (the voxels of a
floating-point NIfTI, read in full). ``biossl cohort`` and the data module's ``prepare_data`` (once per
pretraining run) run the thorough one.

Row numbers in messages count as in a spreadsheet: the header is row 1, the first record row 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from biossl.data.labels import MAX_NAMED, read_table
from biossl.errors import ManifestError
from biossl.io import atomic_path
from biossl.keys import (
    KIND,
    KINDS,
    LEGACY_KINDS,
    MODALITY,
    PATH,
    PATIENT_ID,
    REQUIRED_COLUMNS,
    SLIDE,
    VALUE_TYPE,
)
from biossl.registry import KINDS as KIND_REGISTRY

logger = logging.getLogger(__name__)

ProbeFn = Callable[[Path], None]
TablePatientsFn = Callable[[Path], Collection[str]]


ROW = "manifest_row"
#: Manifest column: a wsi row's level-0 µm/px, used when the slide's file records none (it must agree,
#: within 2 %, with a value the file records: a silent rescale otherwise).
SLIDE_MPP = "slide_mpp"
#: Manifest column: a wsi row's level-0 µm/px replacing the one its file records (each use is logged).
OVERRIDE_SLIDE_MPP = "override_slide_mpp"
#: How many problems an error message lists.
MAX_LISTED = 20


@dataclass(frozen=True)
class Problem:
    """One bad manifest row (``row`` = spreadsheet row) or a patient left without files (``row`` None)."""

    row: int | None
    patient_id: str
    modality: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "patient"
        file = f"{self.modality or '-'} file {self.path or '-'}"
        return f"{where}: patient {self.patient_id!r}, {file}: {self.reason}"


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()


def _full_path(folder: Path, raw_path: str) -> str:
    """``raw_path`` made absolute (relative paths start at the manifest's ``folder``); empty stays empty."""
    return os.path.abspath(folder / Path(raw_path).expanduser()) if raw_path else ""


def _read_records(path: Path) -> pd.DataFrame:
    """The manifest's rows as read (blank rows dropped, index = row - 2), with lower-case required columns."""
    df = read_table(path, what="manifest", text_columns=REQUIRED_COLUMNS)
    df = df.rename(columns={c: c.lower() for c in df.columns if c.lower() in REQUIRED_COLUMNS})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest {path} lacks required column(s) {missing}; found columns "
                            f"{list(df.columns)}. A manifest has one row per file with columns "
                            "patient_id, modality, path, plus optional metadata (site, scanner, ...)")
    if df.empty:
        raise ManifestError(f"manifest {path} has a header but no rows; add one row per file")
    return df


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest's rows as every biossl command reads them, without checking them or their files.

    For tools that plan work from a manifest (the Snakemake workflow's one job per slide) and must agree
    with :meth:`Cohort.from_manifest` on what each row says; the rows it would reject are still here.

    Returns:
        One row per record (blank lines dropped): ``patient_id`` (stripped text, ``""`` when empty),
        ``modality`` (stripped, lower case), ``path`` (absolute: a relative path starts at the
        manifest's folder; ``""`` when empty), the metadata columns as read, and ``manifest_row``
        (the row as a spreadsheet shows it, header = row 1; the ``row`` of a problem report).

    Raises:
        ManifestError: the manifest is missing, unreadable, lacks a required column or has no rows.
    """
    path = Path(path)
    df = _read_records(path)
    folder = path.parent.absolute()
    out = df.copy()
    out[PATIENT_ID] = df[PATIENT_ID].map(_text)
    out[MODALITY] = df[MODALITY].map(lambda v: _text(v).lower())
    out[PATH] = df[PATH].map(lambda v: _full_path(folder, _text(v)))
    out[ROW] = [int(i) + 2 for i in df.index]
    return out.reset_index(drop=True)


class _Checker:
    """Row checks of a manifest, with readers' probes loaded lazily and cached per file."""

    def __init__(self, *, probe: bool, probes: Mapping[str, ProbeFn] | None,
                 table_patients: TablePatientsFn | None, check_values: bool = False,
                 require_slide_mpp: bool = False, slide_mpp: float | None = None,
                 kinds: Mapping[str, str] | None = None, value_types: Mapping[str, str] | None = None) -> None:
        self.kinds = {str(k).lower(): str(v).lower() for k, v in (kinds or {}).items()}
        self.value_types = {str(k).lower(): str(v).lower() for k, v in (value_types or {}).items()}
        self._kind_objects: dict[str, object] = {}
        self.probe = probe
        self.require_slide_mpp = require_slide_mpp
        self.slide_mpp = slide_mpp
        self._file_mpps: dict[str, float | str | None] = {}
        self.check_values = check_values
        self.probes: dict[str, ProbeFn | None] = dict(probes or {})
        self.table_patients = table_patients
        self._reasons: dict[tuple[str, str, tuple[tuple[str, str], ...]], str | None] = {}
        self._tables: dict[tuple[str, str], Collection[str] | str | None] = {}

    def _kind(self, kind: str) -> object:
        if kind not in self._kind_objects:
            self._kind_objects[kind] = KIND_REGISTRY.get(kind)()
        return self._kind_objects[kind]

    def _unreadable(self, modality: str, kind: str, path: str, options: Mapping[str, str]) -> str | None:
        key = (modality, path, tuple(sorted(options.items())))
        if key not in self._reasons:
            reason = None
            try:
                override = self.probes.get(modality) or self.probes.get(kind)
                if override is not None:
                    override(Path(path))
                else:
                    self._kind(kind).probe(Path(path), thorough=self.check_values, options=options)  # type: ignore[attr-defined]
            except (ValueError, OSError) as exc:  # InputError is a ValueError
                text = str(exc).removeprefix(f"{path}: ")
                # A kind's value check (a table declared binary holding 2s) reads the file fine: not "unreadable".
                reason = f"{modality} file: {text}" if getattr(exc, "file_reads", False) else \
                    f"unreadable {modality} file: {text}"
            self._reasons[key] = reason
        return self._reasons[key]

    def _absent_from_table(self, patient: str, path: str, modality: str, kind: str,
                           options: Mapping[str, str]) -> str | None:
        """Why ``patient`` cannot use the multi-patient file ``path`` (``None`` if it can); each file is read once.

        A file that is one patient's (FASTA, a sequence table without ``patient_id``) gives ``None``.
        """
        key = (modality, path)
        if key not in self._tables:
            try:
                if self.table_patients is not None and kind == "table":
                    found_now: Collection[str] | None = self.table_patients(Path(path))
                else:
                    found_now = self._kind(kind).patients_in(Path(path), options)  # type: ignore[attr-defined]
                self._tables[key] = None if found_now is None else frozenset(map(str, found_now))
            except (ValueError, OSError) as exc:
                self._tables[key] = f"unreadable {modality} table: {exc}"
        found = self._tables[key]
        if found is None:
            return None
        if isinstance(found, str):
            return found
        if patient in found:
            return None
        column = " (column patient_id)" if kind == "sequence" else ""
        from biossl.data.labels import look_alikes

        alike = [b for _, b in look_alikes([patient], found)][:3]
        hint = (f"; it holds {', '.join(map(repr, alike))}, the same number written differently (a spreadsheet "
                "drops leading zeros): write the IDs as text" if alike else "")
        return (f"patient not in this {modality} table{column} ({len(found)} patients, e.g. {sorted(found)[:3]})"
                f"{hint}; fix the patient_id or the path")

    def kind_of_row(self, modality: str, cell: str) -> tuple[str | None, str | None]:
        """``(kind, None)`` or ``(None, reason)``: the row's ``kind`` cell, else the config's, else the legacy one."""
        configured = self.kinds.get(modality)
        if cell and configured and cell.lower() != configured:
            return None, (f"the kind column says {cell.lower()!r} for modality {modality!r}, but it is a "
                          f"{configured!r} in the config's data.kinds (or in the checkpoint); make them agree")
        kind = cell.lower() or configured or LEGACY_KINDS.get(modality, "")
        if not kind:
            return None, (f"modality {modality!r} has no kind: fill the manifest's {KIND} column with one of "
                          f"{', '.join(known_kinds())}, or give it in the config (data.kinds: {{{modality}: ...}})")
        if kind not in KIND_REGISTRY:
            return None, f"unknown kind {kind!r} of modality {modality!r}; known kinds: {', '.join(known_kinds())}"
        return kind, None

    def _file_mpp(self, path: str) -> float | str | None:
        """The µm/px the slide file records (``None`` if none; the reason as text if it cannot be used)."""
        if path not in self._file_mpps:
            from biossl.data.wsi import Slide  # openslide only when a cohort has slides

            try:
                with Slide(path, require_mpp=False) as slide:
                    self._file_mpps[path] = slide.file_mpp
            except (ValueError, OSError) as exc:  # SlideError is a ValueError
                self._file_mpps[path] = f"unreadable wsi file: {exc}"
        return self._file_mpps[path]

    def _slide_mpp_problem(self, path: str, cells: Mapping[str, object]) -> str | None:
        """Why a wsi row's µm/px is wrong (``None`` if it is fine).

        The ``slide_mpp`` / ``override_slide_mpp`` cells must be plausible numbers (any check). With
        ``probe``: a ``slide_mpp`` cell must agree with the µm/px the file records, and with
        ``require_slide_mpp`` a slide must have µm/px from its file, its row or the ``slide_mpp`` default.
        """
        from biossl.data.wsi import disagreement, mpp_problem

        given: dict[str, float] = {}
        for column in (SLIDE_MPP, OVERRIDE_SLIDE_MPP):
            text = _text(cells.get(column))
            if text:
                problem = mpp_problem(text)
                if problem is not None:
                    return (f"{column} {problem}; write the scanner's level-0 µm/px or leave the cell empty "
                            "to use the slide's metadata")
                given[column] = float(text)
        if not self.probe or OVERRIDE_SLIDE_MPP in given:  # an override is explicit: the file's value is replaced
            return None
        recorded = self._file_mpp(path)
        if isinstance(recorded, str):
            return recorded
        cell = given.get(SLIDE_MPP)
        if recorded is not None and cell is not None and disagreement(cell, recorded):
            return (f"{SLIDE_MPP} {cell:g} disagrees with the {recorded:g} µm/px that the file records (tiling would "
                    f"rescale the slide); empty the cell to use the file's value, or, if the file is wrong, move the "
                    f"value to an {OVERRIDE_SLIDE_MPP} column, which replaces the file's value")
        if recorded is None and cell is None and self.slide_mpp is None and self.require_slide_mpp:
            return (f"the slide records no µm/px (MPP) and none is given; fill this row's {SLIDE_MPP} column with the "
                    "scanner's level-0 µm/px (0.25 at 40x, 0.5 at 20x), or pass biossl cohort --slide-mpp "
                    "(data.slide_mpp for pretraining) for every slide without it")
        return None

    def check_rows(self, df: pd.DataFrame, folder: Path) -> tuple[pd.DataFrame, list[Problem]]:
        """Return the good rows (with absolute paths and a ``manifest_row`` column) and the problems."""
        problems: list[Problem] = []
        good: list[int] = []
        paths: list[str] = []
        modalities: list[str] = []
        kinds: list[str] = []
        value_types: list[str] = []
        seen: dict[tuple[str, str, str], int] = {}
        rows_of: dict[str, list[int]] = {}
        first_kind: dict[str, tuple[str, int]] = {}  # modality -> (its kind, the row that first said so)
        first_vt: dict[str, tuple[str, int]] = {}
        kind_cells = df[KIND] if KIND in df.columns else pd.Series("", index=df.index)
        vt_cells = df[VALUE_TYPE] if VALUE_TYPE in df.columns else pd.Series("", index=df.index)
        for index, patient_v, modality_v, path_v in df[[PATIENT_ID, MODALITY, PATH]].itertuples():
            row = int(index) + 2
            patient, raw_modality, raw_path = _text(patient_v), _text(modality_v), _text(path_v)
            modality = raw_modality.lower()
            reason = None
            kind, why = self.kind_of_row(modality, _text(kind_cells[index])) if modality else (None, None)
            vt_cell, vt_config = _text(vt_cells[index]).lower(), self.value_types.get(modality, "")
            value_type = (vt_cell or vt_config) if kind else ""
            if kind and vt_cell and vt_config and vt_cell != vt_config:
                why = (f"the value_type column says {vt_cell!r} but the config's data.value_types says {vt_config!r} "
                       f"for modality {modality!r}; make them agree (or drop one of them)")
            if kind and modality in first_kind and first_kind[modality][0] != kind:
                other, at = first_kind[modality]
                why = (f"modality {modality!r} is of kind {other!r} in row {at} but {kind!r} here; one name has one "
                       "kind: rename one of them (e.g. ct and ct_features)")
            elif kind and value_type and kind != "table":
                why = (f"value_type {value_type!r} is for table modalities; {modality!r} is a {kind}: empty the cell "
                       "(or drop it from data.value_types)")
            elif kind and value_type:
                from biossl.keys import VALUE_TYPES

                if value_type not in VALUE_TYPES:
                    why = f"unknown value_type {value_type!r} of {modality!r}; one of {', '.join(VALUE_TYPES)}"
                elif modality in first_vt and first_vt[modality][0] != value_type:
                    vt0, at = first_vt[modality]
                    why = (f"modality {modality!r} has value_type {vt0!r} in row {at} but {value_type!r} here; one "
                           "modality has one value type")
            if patient:
                rows_of.setdefault(patient, []).append(row)
            full = _full_path(folder, raw_path)
            if not patient:
                reason = "empty patient_id; give every row the patient it belongs to"
            elif not modality:
                reason = "empty modality; name the row's modality (for example he, ct, rna)"
            elif why is not None:
                reason = why
            elif not raw_path:
                reason = "empty path; give the file's path (relative to the manifest's folder, or absolute)"
            elif (patient, modality, full) in seen:
                first = seen[patient, modality, full]
                reason = f"duplicate of row {first} (same patient, modality and file); delete one of them"
            elif not os.path.exists(full):
                reason = (f"file not found: {full} (relative paths are read from {folder}); "
                          "fix the path or drop the row")
            elif self.probe:
                assert kind is not None
                options = {VALUE_TYPE: value_type} if value_type else {}
                reason = self._unreadable(modality, kind, full, options)
                if reason is None and getattr(self._kind(kind), "multi_patient", False):
                    reason = self._absent_from_table(patient, full, modality, kind, options)
            if reason is None and kind == SLIDE:
                reason = self._slide_mpp_problem(full, df.loc[index])
            if kind is not None and why is None:
                first_kind.setdefault(modality, (kind, row))
                if value_type:
                    first_vt.setdefault(modality, (value_type, row))
            if patient and kind and full:
                seen.setdefault((patient, modality, full), row)
            if reason is not None:
                problems.append(Problem(row, patient, raw_modality, raw_path, reason))
                continue
            good.append(index)
            paths.append(full)
            modalities.append(modality)
            kinds.append(str(kind))
            value_types.append(value_type)
        kept = df.loc[good].copy()
        kept[PATIENT_ID] = kept[PATIENT_ID].map(_text)
        kept[MODALITY] = modalities
        kept[KIND] = kinds
        # A modality's value type is the one any of its rows (or the config) gives, on every row.
        vts = dict(zip(modalities, value_types))
        vts.update({m: v for m, v in zip(modalities, value_types) if v})
        kept[VALUE_TYPE] = [vts.get(m, "") for m in modalities]
        kept[PATH] = paths
        kept[ROW] = [int(i) + 2 for i in good]
        usable = set(kept[PATIENT_ID])
        for patient in sorted(set(rows_of) - usable):
            rows = rows_of[patient]
            problems.append(Problem(None, patient, "", "", f"no usable file: all its {len(rows)} row(s) "
                                    f"({', '.join(map(str, rows[:MAX_LISTED]))}) are bad"))
        return kept, problems


def _handle_problems(problems: list[Problem], *, manifest: Path, skip_bad: bool,
                     report_path: str | Path | None) -> None:
    if report_path is not None:
        _write_report(problems, Path(report_path))
    if not problems:
        return
    saved = f"; all are listed in {report_path}" if report_path is not None else ""
    if skip_bad:
        for problem in problems:
            logger.warning("manifest %s: skipping %s", manifest, problem)
        logger.warning("manifest %s: skipped %d problem(s)%s", manifest, len(problems), saved)
        return
    lines = _listed(problems[:MAX_LISTED])
    if len(problems) > MAX_LISTED:
        lines.append(f"... and {len(problems) - MAX_LISTED} more")
    raise ManifestError(
        f"manifest {manifest} has {len(problems)} problem(s) (rows as in a spreadsheet, header = row 1)"
        f"{saved}:\n  " + "\n  ".join(lines)
        + "\nFix them, or skip bad rows with skip_bad=True (biossl cohort --skip-bad --report FILE; "
        "biossl pretrain --data.skip_bad true)."
    )


def _listed(problems: list[Problem]) -> list[str]:
    """One line per problem; a file's problem repeated on later rows (a shared table) is said once."""
    first: dict[tuple[str, str], int] = {}
    lines = []
    for p in problems:
        seen = first.get((p.path, p.reason)) if p.row is not None else None
        if seen is None:
            lines.append(str(p))
            if p.row is not None:
                first[p.path, p.reason] = p.row
        else:
            lines.append(str(Problem(p.row, p.patient_id, p.modality, p.path, f"same problem as row {seen}")))
    return lines


def _write_report(problems: list[Problem], path: Path) -> None:
    records = pd.DataFrame([asdict(p) for p in problems], columns=[f.name for f in fields(Problem)])
    records = records.astype({"row": "Int64"})
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".json":
            tmp.write_text(json.dumps([asdict(p) for p in problems], indent=1) + "\n")
        else:
            records.to_csv(tmp, index=False)
    logger.info("wrote the manifest report (%d problem(s)) to %s", len(problems), path)


class Cohort:
    """Patients, their files per modality, and their per-patient metadata.

    Build one with :meth:`from_manifest`. ``table`` has one row per usable file with absolute paths,
    sorted by patient, modality (canonical order) and path, plus ``manifest_row`` (its spreadsheet row).
    """

    def __init__(self, table: pd.DataFrame, *, source: Path | None = None) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
        if missing:
            raise ManifestError(f"cohort table lacks column(s) {missing}; found {list(table.columns)}")
        table = table.copy()
        if KIND not in table.columns:
            table[KIND] = table[MODALITY].map(lambda m: LEGACY_KINDS.get(m, ""))
        if VALUE_TYPE not in table.columns:
            table[VALUE_TYPE] = ""
        table[VALUE_TYPE] = table[VALUE_TYPE].map(_text)
        unknown = sorted(set(table.loc[table[KIND] == "", MODALITY]))
        if unknown:
            raise ManifestError(f"cohort table: modalities {unknown} have no kind; add a {KIND} column")
        kinds = table.groupby(MODALITY)[KIND].unique()
        two = {m: sorted(k) for m, k in kinds.items() if len(k) > 1}
        if two:
            raise ManifestError(f"cohort table: one modality name with two kinds: {two}")
        #: Modality name -> kind, in canonical order (by kind, built-in kinds first, then by name).
        self.kinds: dict[str, str] = dict(sorted(((str(m), str(k[0])) for m, k in kinds.items()),
                                                 key=lambda mk: (_kind_rank(mk[1]), mk[0])))
        order = {m: i for i, m in enumerate(self.kinds)}
        table = table.assign(_m=table[MODALITY].map(order)).sort_values([PATIENT_ID, "_m", PATH])
        self._table = table.drop(columns="_m").reset_index(drop=True)
        vts = self._table.groupby(MODALITY)[VALUE_TYPE].agg(lambda v: next((x for x in v if x), ""))
        #: Modality name -> its options (``value_type`` of a table), as the manifest or the config gave them.
        self.options: dict[str, dict[str, str]] = {m: ({VALUE_TYPE: str(vts[m])} if vts.get(m) else {})
                                                    for m in self.kinds}
        self.source = source
        self._files: dict[tuple[str, str], list[Path]] = {}
        for patient, modality, path in self._table[[PATIENT_ID, MODALITY, PATH]].itertuples(index=False):
            self._files.setdefault((patient, modality), []).append(Path(path))
        self._patients = sorted(self._table[PATIENT_ID].unique())
        self._patient_set = set(self._patients)
        self._metadata, self.conflicts = _per_patient_metadata(self._table)
        if self.conflicts:
            logger.warning("metadata column(s) differ between one patient's files and are kept per file "
                           "(in .table, not .metadata): %s", _describe_conflicts(self.conflicts))

    @classmethod
    def from_manifest(
        cls,
        path: str | Path,
        *,
        skip_bad: bool = False,
        report_path: str | Path | None = None,
        probe: bool = True,
        check_values: bool = False,
        probes: Mapping[str, ProbeFn] | None = None,
        table_patients: TablePatientsFn | None = None,
        require_slide_mpp: bool = False,
        slide_mpp: float | None = None,
        kinds: Mapping[str, str] | None = None,
        value_types: Mapping[str, str] | None = None,
    ) -> Cohort:
        """Load and validate a manifest; every problem is collected before anything is raised.

        Checked: required columns, empty manifest, empty ``patient_id``, unknown modality, empty path,
        missing file, duplicate rows (same patient, modality and file), files that the modality's probe
        cannot read (each distinct file probed once), expression patients absent from their table,
        sequence patients absent from a sequence table's ``patient_id`` column, patients left with no
        usable file, wsi rows whose ``slide_mpp`` / ``override_slide_mpp`` cell is not a plausible µm/px,
        and (probing) whose ``slide_mpp`` disagrees by more than 2 % with the µm/px the slide file records.

        Args:
            path: The manifest (CSV, TSV or Parquet).
            skip_bad: Skip bad rows (each logged as a warning) and patients left with no usable file,
                instead of raising.
            report_path: Where to write the list of problems (``.json`` for JSON, else CSV with
                columns row, patient_id, modality, path, reason), written atomically whenever given,
                also when there are none or when raising. Nothing is written when it is ``None``;
                commands pass a file in their output folder.
            probe: Open each file with its modality's cheap reader probe (``biossl.data.<modality>.probe``:
                headers, no voxel data); ``False`` only checks existence.
            check_values: Run the thorough ``biossl.data.<modality>.check`` instead, where the modality
                has one: it also reads the voxels of floating-point NIfTI for NaN/inf, a full read of
                every such scan (``biossl cohort`` and ``BagDataModule.prepare_data`` do this).
            probes: ``modality -> probe(path)`` overriding the reader's probe (and check); a probe
                raises an :class:`~biossl.errors.InputError` for an unreadable file.
            table_patients: ``table_patients(path) -> patient IDs`` of an expression table, overriding
                ``biossl.data.expression.table_patients``.
            require_slide_mpp: A slide whose file records no µm/px needs it from its row's ``slide_mpp``
                cell or ``slide_mpp`` (``biossl cohort`` asks for this; tiling needs it). Needs ``probe``.
            slide_mpp: The level-0 µm/px of slides without it in their files and their row (``--slide-mpp``).
            kinds: ``modality -> kind`` for rows whose ``kind`` cell is empty (a config's ``data.kinds``);
                the legacy names default to their own kinds.
            value_types: ``modality -> value type`` of table modalities whose rows give none.

        Raises:
            ManifestError: listing up to 20 problems with their row, patient and file.
        """
        path = Path(path)
        df = _read_records(path)
        checker = _Checker(probe=probe, probes=probes, table_patients=table_patients, check_values=check_values,
                           require_slide_mpp=require_slide_mpp, slide_mpp=slide_mpp, kinds=kinds,
                           value_types=value_types)
        kept, problems = checker.check_rows(df, path.parent.absolute())
        _handle_problems(problems, manifest=path, skip_bad=skip_bad, report_path=report_path)
        if kept.empty:
            raise ManifestError(f"manifest {path}: no usable row is left after skipping bad ones")
        return cls(kept, source=path)

    @property
    def table(self) -> pd.DataFrame:
        """One row per file: ``patient_id``, ``modality``, absolute ``path``, metadata, ``manifest_row``."""
        return self._table.copy()

    @property
    def patients(self) -> list[str]:
        """Sorted patient IDs."""
        return list(self._patients)

    @property
    def metadata(self) -> pd.DataFrame:
        """Per-patient metadata indexed by ``patient_id``; a column differing within a patient is left out."""
        return self._metadata.copy()

    def __len__(self) -> int:
        return len(self._patients)

    def __repr__(self) -> str:
        return f"Cohort({len(self)} patients, {len(self._table)} files, source={self.source})"

    def _check_patient(self, patient: str) -> None:
        if patient not in self._patient_set:
            raise ManifestError(f"patient {patient!r} is not in the cohort ({self.source}); "
                                f"it has {len(self)} patients, e.g. {self._patients[:5]}")

    @property
    def modalities(self) -> list[str]:
        """The cohort's modality names in canonical order (by kind, then name)."""
        return list(self.kinds)

    def kind_of(self, modality: str) -> str:
        """The kind of a modality of this cohort (an unknown name is an error listing the cohort's)."""
        if modality not in self.kinds:
            raise ManifestError(f"modality {modality!r} is not in the cohort ({self.source}); its modalities: "
                                f"{', '.join(self.kinds) or 'none'}")
        return self.kinds[modality]

    def of_kind(self, kind: str) -> list[str]:
        """The cohort's modalities of one kind."""
        return [m for m, k in self.kinds.items() if k == kind]

    def modalities_of(self, patient: str) -> list[str]:
        """Modalities the patient has at least one file of, in canonical order."""
        self._check_patient(patient)
        return [m for m in self.kinds if (patient, m) in self._files]

    def files(self, patient: str, modality: str) -> list[Path]:
        """The patient's files of one modality (empty if it has none, or if the cohort lacks the modality)."""
        self._check_patient(patient)
        return list(self._files.get((patient, modality), []))

    def file_column(self, patient: str, modality: str, column: str) -> list[str | None]:
        """Per-file values of a manifest column for one patient and modality, in :meth:`files` order."""
        t = self._table
        rows = t[(t[PATIENT_ID] == patient) & (t[MODALITY] == modality)]
        if column not in rows:
            return [None] * len(rows)
        return [None if (text := _text(v)) == "" else text for v in rows[column]]

    def summary(self) -> pd.DataFrame:
        """File counts, patients x modalities, with a last row ``(patients with modality)``."""
        present = [m for m in self.kinds if m in set(self._table[MODALITY])]
        counts = pd.crosstab(self._table[PATIENT_ID], self._table[MODALITY]).reindex(columns=present)
        counts.columns.name = None
        counts.loc["(patients with modality)"] = (counts > 0).sum()
        return counts

    def subset(self, patients: Iterable[str]) -> Cohort:
        """A cohort of only these patients; unknown IDs are an error naming them."""
        wanted = set(patients)
        unknown = sorted(wanted - set(self._patients))
        if unknown:
            raise ManifestError(f"{len(unknown)} patient(s) are not in the cohort ({self.source}), "
                                f"e.g. {unknown[:MAX_NAMED]}")
        return Cohort(self._table[self._table[PATIENT_ID].isin(wanted)], source=self.source)

    def fingerprint(self) -> str:
        """A stable 16-hex-digit hash of the table (without row numbers) and each file's size and mtime.

        It changes when a file, a path, a patient or a metadata value changes, and does not depend
        on the order of the manifest's rows.
        """
        digest = hashlib.sha256()
        table = self._table.drop(columns=[ROW], errors="ignore")
        # Kinds and value types that a manifest written before them implies leave the hash as it was.
        if (table[KIND] == table[MODALITY].map(lambda m: LEGACY_KINDS.get(m, ""))).all():
            table = table.drop(columns=[KIND])
        if (table[VALUE_TYPE] == "").all():
            table = table.drop(columns=[VALUE_TYPE])
        digest.update(table.to_csv(index=False).encode())
        for path in sorted(set(self._table[PATH])):
            for name, stat in _stats(Path(path)):
                digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


def known_kinds() -> list[str]:
    """The registered kinds, built-in ones first."""
    return sorted(KIND_REGISTRY.names(), key=lambda k: (_kind_rank(k), k))


def _kind_rank(kind: str) -> int:
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def _stats(path: Path) -> Iterator[tuple[str, os.stat_result]]:
    try:
        if not path.is_dir():
            yield str(path), path.stat()
            return
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                yield full, os.stat(full)
    except FileNotFoundError as exc:
        raise ManifestError(f"{exc.filename} was removed since the manifest was loaded; reload it") from exc


def _per_patient_metadata(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    columns = [c for c in table.columns if c not in (*REQUIRED_COLUMNS, ROW, KIND, VALUE_TYPE)]
    grouped = table.groupby(PATIENT_ID, sort=True)
    meta = pd.DataFrame(index=pd.Index(sorted(table[PATIENT_ID].unique()), name=PATIENT_ID))
    conflicts: dict[str, list[str]] = {}
    for col in columns:
        n_values = grouped[col].nunique(dropna=True)
        clash = sorted(n_values.index[n_values > 1])
        if clash:
            conflicts[col] = clash
            continue
        meta[col] = grouped[col].first()  # first non-null value
    return meta, conflicts


def _describe_conflicts(conflicts: Mapping[str, list[str]]) -> str:
    return "; ".join(f"{col} (patients {pts[:MAX_NAMED]}{', ...' if len(pts) > MAX_NAMED else ''})"
                     for col, pts in conflicts.items())


__all__ = ["Cohort", "Problem", "ProbeFn", "TablePatientsFn", "read_manifest"]

"""The audit of an AnnData of embeddings (``biossl audit``): probes, batch metrics, verdict, JSON and HTML.

Input: an AnnData as ``biossl embed`` writes it (:mod:`biossl.downstream.embed`): rows = patients (or
instances of patients, with ``group_column`` naming the patient), ``obs`` = metadata and labels,
``obsm["X_fused"]`` and ``obsm["X_<modality>"]`` (NaN rows where a patient lacks the modality: those
rows are left out of that key's audit, and counted).

For every embedding key and every audited (nuisance) column, and for the biology ``label`` column:

- the two probes of :mod:`biossl.audit.probes` (balanced accuracy, chance, exact permutation p-value,
  the permutation null's mean and its critical value);
- for nuisance columns, the batch metrics of :mod:`biossl.audit.batch` (silhouette, iLISI-style mixing,
  and the robustness index against the label when one is given);
- the first two principal components of the embedding, for the report's scatter plots.

A progress bar (:func:`biossl.progress.progress`, on stderr; ``biossl -q`` hides it) counts the key x column
pairs probed.

**Verdict.** A probe *fails* when ``2 p < alpha`` (Bonferroni over the column's two probes) **and**
its balanced accuracy exceeds the **mean of its permutation null** by more than ``max_excess``: a
detectable *and* sizeable signal. The margin is over the null, not over ``1 / n_classes``: on few
patients a kNN probe's null sits far below ``1 / n_classes`` (see :mod:`biossl.audit.probes`); both
margins are in the JSON (``excess`` = ``excess_over_null``, and ``excess_over_chance``). A nuisance
column fails on a key when either probe fails. A **red flag** marks a nuisance column that is
predictable (``2 min(p) < alpha``, excess above 0) and whose larger excess (of its two probes) exceeds
the label's on the same key: the site is easier to read from the embedding than the biology. Red flags
are reported; they fail the audit only with ``fail_on_red_flag``.

The audit's verdict is

- ``fail`` (exit code 1) when any nuisance column fails on any key (or, with ``fail_on_red_flag``, a
  red flag is raised), whatever else could not be tested;
- ``incomplete`` (exit code 3) when nothing fails but some requested nuisance column could not be
  tested on some requested key (``not_tested`` lists each pair, the reason and what to do; with
  ``fail_on_red_flag``, a label that could not be tested on a key counts too, as no red flag can be
  checked there);
- ``pass`` (exit code 0) otherwise.

A column that cannot be probed on one key (too few patients of each site have that modality, a single
class left, no value on the rows of that key, no row with that embedding at all) is ``not tested`` on
that key with the reason. It must be testable on the input as a whole (every row that has a value),
else the audit stops with an :class:`InputError` (exit code 2), as do a column or key that is not in
the input at all (a typo).

**Power.** For every tested probe, ``min_detectable_excess`` is the smallest excess over its null mean
that could reach significance at this cohort size, these class sizes and ``alpha`` (the permutation
null's upper ``alpha / 2`` quantile minus its mean: :func:`biossl.audit.probes.critical_value`). A
column's is the smaller of its two probes' (the column fails when either probe does); a key's is the
largest over its tested nuisance columns. A column whose detectable excess exceeds ``max_excess`` is
**underpowered**: an effect the user means to catch (above ``max_excess``) can pass unnoticed, so a
``pass`` there means little. ``power`` in the result lists them; the verdict stays ``pass`` (exit 0),
and the table and report say so.

**Provenance** (``run``): the command line (``command=``, default :data:`sys.argv`), the UTC date, the
biossl version, and the checkpoint: the SHA-256 of the file given as ``checkpoint=`` (the CLI's
``--checkpoint``), else of the file ``uns["biossl"]["checkpoint"]`` names when it exists (as given, or
beside the embeddings file), else what the embeddings' provenance records (``checkpoint_sha256``, or
the name alone).

:func:`audit_embeddings` returns a JSON-safe dict; :func:`write_audit` writes ``audit.json`` and a
self-contained ``report.html`` (:mod:`biossl.audit.report`). An optional ``artifacts`` entry (the
synthetic artifact probes: records ``{modality, artifact, strength, drift, detectability, stability}``)
is rendered when present.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from biossl import __version__
from biossl.audit import batch as batch_metrics
from biossl.audit.probes import RIDGE, Column, ProbeCache, prepare_column, run_probe
from biossl.errors import InputError
from biossl.io import atomic_outputs, file_sha256, jsonable
from biossl.progress import progress

logger = logging.getLogger(__name__)

FAIL, PASS, LABEL, NOT_TESTED = "fail", "pass", "label", "not tested"
#: The audit's verdict when nothing fails but some requested key or column could not be tested.
INCOMPLETE = "incomplete"
#: Exit codes of the verdicts (2: bad input, raised as InputError).
EXIT_CODES = {PASS: 0, FAIL: 1, INCOMPLETE: 3}
#: Rows of the PCA scatter stored in the result (a seeded sample above this).
MAX_SCATTER = 5000
_PROBES = ("linear", "knn")


def default_keys(adata: ad.AnnData) -> list[str]:
    """``X_fused`` first, then every other ``X_<modality>`` of ``obsm`` (in ``uns["biossl"]["modalities"]`` order)."""
    present = [str(k) for k in adata.obsm if str(k).startswith("X_")]
    mods = adata.uns.get("biossl", {}).get("modalities", []) if isinstance(adata.uns.get("biossl"), dict) else []
    order = ["X_fused"] + [f"X_{m}" for m in mods]
    return [k for k in order if k in present] + sorted(k for k in present if k not in order)


def _check_settings(alpha: float, max_excess: float, n_permutations: int, n_folds: int, k: int) -> None:
    if not 0 < alpha < 1:
        raise InputError(f"--alpha must be in (0, 1); got {alpha}")
    if not 0 <= max_excess < 1:
        raise InputError(f"--max-excess must be in [0, 1); got {max_excess}")
    need = math.floor(2 / alpha)  # smallest p is 1/(B+1); Bonferroni doubles it: 2/(B+1) < alpha
    if n_permutations < need:
        raise InputError(f"--permutations {n_permutations} cannot reach --alpha {alpha} (the smallest p-value is "
                         f"1/(B+1), doubled for 2 probes); use at least {need}, e.g. 1000")
    if n_folds < 2:
        raise InputError(f"--folds must be at least 2; got {n_folds}")
    if k < 1:
        raise InputError(f"--k must be at least 1; got {k}")


def _check_columns(adata: ad.AnnData, columns: Sequence[str], label: str | None, group_column: str | None,
                   source: str) -> None:
    available = ", ".join(map(str, adata.obs.columns)) or "none"
    if not columns:
        raise InputError("name at least one column to audit with --columns (e.g. --columns site)")
    for col in [*columns, *([label] if label else []), *([group_column] if group_column else [])]:
        if col not in adata.obs.columns:
            raise InputError(f"column {col!r} is not in the obs of {source}; available columns: {available}")
    if len(set(columns)) < len(columns):
        raise InputError(f"--columns lists a column twice: {list(columns)}")
    if label is not None and label in columns:
        raise InputError(f"--label {label!r} is also in --columns; audit it as one or the other")


def _groups(adata: ad.AnnData, group_column: str | None) -> np.ndarray:
    if group_column is None:
        return np.asarray(adata.obs_names, dtype=object).astype(str)
    values = adata.obs[group_column]
    if values.isna().any():
        raise InputError(f"group column {group_column!r} has {int(values.isna().sum())} row(s) without a value; "
                         "every row needs its patient")
    return values.astype(str).to_numpy()


def _pca2(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(row indices plotted, their first 2 PC scores, explained variance ratios)."""
    rows = np.arange(len(x))
    if len(x) > MAX_SCATTER:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), MAX_SCATTER, replace=False))
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    n_pc = min(2, vt.shape[0])
    scores = np.zeros((len(rows), 2))
    scores[:, :n_pc] = xc[rows] @ vt[:n_pc].T
    var = s ** 2
    ratio = (var / var.sum()).tolist() if var.sum() > 0 else [0.0] * len(var)
    return rows, scores, [float(r) for r in ratio[:2]]


def _probe_entry(col: Column, role: str, probes: dict[str, Any], alpha: float, max_excess: float) -> dict[str, Any]:
    ps = [probes[p].p_value for p in _PROBES]
    mde = [probes[p].min_detectable_excess for p in _PROBES]
    column_mde = min((m for m in mde if not math.isnan(m)), default=math.inf)
    entry: dict[str, Any] = {"role": role, **col.summary(), **{p: probes[p].to_dict() for p in _PROBES},
                             "p_bonferroni": min(1.0, 2 * min(ps)),
                             "max_excess": max(probes[p].excess for p in _PROBES),
                             "max_excess_over_chance": max(probes[p].excess_over_chance for p in _PROBES),
                             "min_detectable_excess": None if math.isinf(column_mde) else column_mde,
                             "underpowered": bool(column_mde > max_excess)}
    failed = [p for p in _PROBES if 2 * probes[p].p_value < alpha and probes[p].excess > max_excess]
    for p in _PROBES:
        entry[p]["verdict"] = (FAIL if p in failed else PASS) if role == "nuisance" else LABEL
    entry["verdict"] = (FAIL if failed else PASS) if role == "nuisance" else LABEL
    entry["failed_probes"] = failed
    return entry


def _audit_key(adata: ad.AnnData, key: str, groups_all: np.ndarray, columns: Sequence[str], label: str | None,
               settings: dict[str, Any], tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    x_all = np.asarray(adata.obsm[key], dtype=np.float64)
    if x_all.ndim != 2:
        raise InputError(f"obsm[{key!r}] is not a 2D array (shape {x_all.shape})")
    finite = np.asarray(np.isfinite(x_all).all(axis=1), dtype=bool)
    out: dict[str, Any] = {"key": key, "n_rows": int(finite.sum()), "dim": int(x_all.shape[1]),
                           "dropped_no_embedding": int((~finite).sum()), "columns": {}, "batch": {}}
    if (~finite).any():
        logger.info("%s: %d of %d rows have no embedding (a missing modality) and are left out of its audit",
                    key, int((~finite).sum()), len(finite))
    rows = np.flatnonzero(finite)
    x, groups = x_all[rows], groups_all[rows]
    t0 = time.perf_counter()
    k_folds, k, seed, b = settings["n_folds"], settings["k"], settings["seed"], settings["n_permutations"]
    min_groups = settings["min_groups"]
    prepared: dict[str, Column] = {}
    cache = ProbeCache(x, n_folds=k_folds, k=k, seed=seed, ridge=settings["ridge"])  # shared by the columns
    for col in [*columns, *([label] if label else [])]:
        role = "label" if col == label else "nuisance"
        try:
            if len(rows) == 0:
                raise InputError(f"no row has an embedding in obsm[{key!r}] (every row is NaN: no patient has this "
                                 "modality); leave it out of --keys, or embed a cohort that has it")
            c = prepare_column(adata.obs[col].to_numpy()[rows], groups, column=col, min_groups=min_groups,
                               where=f"{key}", allow_varying=role == "label")
            linear, knn = cache.probes(c)
        except InputError as exc:
            logger.warning("%s: column %r not tested: %s", key, col, exc)
            out["columns"][col] = {"role": role, "column": col, "verdict": NOT_TESTED, "reason": str(exc)}
            tick()
            continue
        prepared[col] = c
        probes = {p.name: run_probe(p, c, n_permutations=b, seed=seed, critical_level=settings["alpha"] / 2)
                  for p in (linear, knn)}
        out["columns"][col] = _probe_entry(c, role, probes, settings["alpha"], settings["max_excess"])
        if role == "nuisance":
            xs = x[c.rows]
            out["batch"][col] = {"silhouette": batch_metrics.silhouette_by_batch(xs, c.codes, seed=seed),
                                 **batch_metrics.ilisi(knn.idx, c, seed=seed)}
        tick()
    if label is not None and label in prepared and len(rows) > 1:
        idx = cache.knn(np.arange(len(rows)), _codes(groups)).idx  # every row of the key
        lab = _codes_on(prepared[label], len(rows))
        for col in columns:
            if col in prepared:
                out["batch"][col]["robustness"] = batch_metrics.robustness_index(idx, lab, _codes_on(prepared[col],
                                                                                                      len(rows)))
    label_excess = out["columns"].get(label, {}).get("max_excess") if label else None
    for col in columns:
        entry = out["columns"][col]
        entry["red_flag"] = bool(label_excess is not None and entry.get("max_excess") is not None
                                 and entry["p_bonferroni"] < settings["alpha"] and entry["max_excess"] > 0
                                 and entry["max_excess"] > label_excess)
    tested = [out["columns"][c] for c in columns if out["columns"][c]["verdict"] != NOT_TESTED]
    mdes = [math.inf if e["min_detectable_excess"] is None else e["min_detectable_excess"] for e in tested]
    out["status"] = "tested" if len(tested) == len(columns) else ("partly tested" if tested else NOT_TESTED)
    out["min_detectable_excess"] = (None if not mdes or math.isinf(max(mdes)) else max(mdes))
    out["underpowered"] = [e["column"] for e in tested if e["underpowered"]]
    if len(rows) >= 2:
        plotted, scores, ratio = _pca2(x, seed)
        obs_rows = rows[plotted]
        out["pca"] = {"pc1": scores[:, 0].tolist(), "pc2": scores[:, 1].tolist(), "explained": ratio,
                      "values": {col: ["" if pd.isna(v) else str(v) for v in adata.obs[col].to_numpy()[obs_rows]]
                                 for col in [*columns, *([label] if label else [])]}}
    out["seconds"] = time.perf_counter() - t0
    return out


def _codes(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def _codes_on(col: Column, n: int) -> np.ndarray:
    """The column's class codes on all ``n`` rows of the key (-1 where dropped)."""
    out = np.full(n, -1, dtype=np.int64)
    out[col.rows] = col.codes
    return out


def audit_embeddings(
    adata: ad.AnnData,
    columns: Sequence[str],
    *,
    label: str | None = None,
    keys: Sequence[str] | None = None,
    group_column: str | None = None,
    alpha: float = 0.05,
    max_excess: float = 0.10,
    n_permutations: int = 1000,
    n_folds: int = 5,
    k: int = 15,
    seed: int = 0,
    ridge: float = RIDGE,
    min_groups: int | None = None,
    fail_on_red_flag: bool = False,
    source: str = "the embeddings",
    command: str | Sequence[str] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_sha256: str | None = None,
) -> dict[str, Any]:
    """Audit ``adata``'s embeddings for the nuisance ``columns`` (see the module docstring).

    Args:
        adata: Embeddings (``obsm`` keys) and metadata (``obs``).
        columns: Nuisance columns of ``obs`` to audit (site, scanner, batch, ...).
        label: Optional biology label column of ``obs``, probed side by side.
        keys: ``obsm`` keys to audit; default :func:`default_keys`.
        group_column: ``obs`` column naming each row's patient; default: each row is a patient.
        alpha: Significance level (Bonferroni over the two probes of a column).
        max_excess: Largest tolerated balanced accuracy above chance.
        n_permutations: Permutations of the p-values.
        n_folds: Folds of the linear probe.
        k: Neighbours of the kNN probe and of the batch metrics.
        seed: Seed of the folds, permutations and samples.
        ridge: Ridge penalty per training row (standardised features).
        min_groups: Classes held by fewer patients are left out of a column's probes; default ``max(2, n_folds)``.
        fail_on_red_flag: A red flag also fails the audit.
        source: The input's name, for messages (a path: the folder where a checkpoint it names is looked for).
        command: The command line recorded in ``run`` (a string, or argv as a list); default :data:`sys.argv`.
        checkpoint: The checkpoint file the embeddings came from (the CLI's ``--checkpoint``): its SHA-256 is
            recorded; default: the file ``uns["biossl"]["checkpoint"]`` names, when it exists.
        checkpoint_sha256: The checkpoint's SHA-256 when the caller has it already (not hashed again).

    Returns:
        A JSON-safe dict: ``settings``, ``input``, ``run`` (command, date, version, checkpoint), ``keys`` (one
        entry per key), ``verdicts`` (table rows), ``verdict`` (``pass``/``fail``/``incomplete``),
        ``not_tested``, ``power``, ``red_flags``, ``artifacts`` (``None``).

    Raises:
        InputError: unknown columns or keys, bad settings, a column that cannot be probed at all.
    """
    _check_settings(alpha, max_excess, n_permutations, n_folds, k)
    _check_columns(adata, columns, label, group_column, source)
    available = [str(key) for key in adata.obsm]
    keys = list(keys) if keys else default_keys(adata)
    if not keys:
        raise InputError(f"{source} has no embedding in obsm (keys X_fused, X_<modality>); write it with "
                         "`biossl embed`")
    for key in keys:
        if key not in adata.obsm:
            raise InputError(f"embedding {key!r} is not in the obsm of {source}; available: "
                             f"{', '.join(available) or 'none'}")
    min_groups = max(2, n_folds) if min_groups is None else min_groups
    groups = _groups(adata, group_column)
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise InputError(f"{source} holds {n_groups} patients, fewer than --folds {n_folds}; use --folds "
                         f"{max(2, n_groups)} or fewer")
    for col in [*columns, *([label] if label else [])]:  # testable at all? (raises with the reason)
        prepare_column(adata.obs[col].to_numpy(), groups, column=col, min_groups=min_groups, where=source,
                       allow_varying=col == label, log=False)
    settings = {"alpha": alpha, "max_excess": max_excess, "n_permutations": n_permutations, "n_folds": n_folds, "k": k,
                "seed": seed, "ridge": ridge, "min_groups": min_groups, "group_column": group_column,
                "fail_on_red_flag": fail_on_red_flag}
    per_key = []
    names = [*columns, *([label] if label else [])]
    with _Ticks(len(keys) * len(names), desc="audit", unit="column") as tick:
        for key in keys:
            logger.info("auditing %s for %s%s", key, ", ".join(columns), f" (label {label})" if label else "")
            per_key.append(_audit_key(adata, key, groups, columns, label, settings, tick))
    verdicts, red_flags = _verdict_rows(per_key, label)
    not_tested = _not_tested(per_key, columns, label, fail_on_red_flag)
    failed = any(v["verdict"] == FAIL for v in verdicts) or (fail_on_red_flag and bool(red_flags))
    blocking = [n for n in not_tested if n["affects_verdict"]]
    verdict = FAIL if failed else (INCOMPLETE if blocking else PASS)
    uns = adata.uns.get("biossl")
    provenance = uns if isinstance(uns, dict) else {}
    result = {
        "biossl_version": __version__, "settings": settings, "columns": list(columns), "label": label,
        "input": {"source": source, "n_rows": int(adata.n_obs), "n_patients": n_groups, "provenance": provenance},
        "run": run_metadata(command=command, checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256,
                            provenance=provenance, source=source),
        "keys": per_key, "verdicts": verdicts, "red_flags": red_flags, "verdict": verdict,
        "exit_code": EXIT_CODES[verdict], "not_tested": not_tested,
        "suggested_keys": [e["key"] for e in per_key if e["status"] == "tested"] if blocking else None,
        "power": _power(per_key, columns, max_excess, alpha), "artifacts": None,
    }
    return jsonable(result)


class _Ticks:
    """One progress bar over ``total`` steps, advanced by calling the object (:func:`biossl.progress.progress`)."""

    def __init__(self, total: int, *, desc: str, unit: str) -> None:
        self._bar: Iterator[int] = iter(progress(range(total), desc, total=total, unit=unit))
        next(self._bar, None)  # shows 0 / total

    def __call__(self) -> None:
        next(self._bar, None)

    def __enter__(self) -> _Ticks:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:  # an error: close the bar where it stands
            getattr(self._bar, "close", lambda: None)()
            return
        for _ in self._bar:  # finish (and close) the bar
            pass


def _verdict_rows(per_key: list[dict[str, Any]], label: str | None) -> tuple[list[dict[str, Any]],
                                                                             list[dict[str, Any]]]:
    """The verdict table (one row per key, column and probe; one per untested pair) and the red flags."""
    verdicts, red_flags = [], []
    for entry in per_key:
        for col, res in entry["columns"].items():
            if res["verdict"] == NOT_TESTED:
                verdicts.append({"key": entry["key"], "column": col, "role": res["role"], "probe": "-",
                                 "balanced_accuracy": None, "chance": None, "null_mean": None, "excess": None,
                                 "excess_over_chance": None, "min_detectable_excess": None, "p_value": None,
                                 "verdict": NOT_TESTED, "n_rows": 0, "reason": res["reason"]})
                continue
            for p in _PROBES:
                verdicts.append({"key": entry["key"], "column": col, "role": res["role"], "probe": p,
                                 "balanced_accuracy": res[p]["balanced_accuracy"], "chance": res[p]["chance"],
                                 "null_mean": res[p].get("null_mean"), "excess": res[p]["excess"],
                                 "excess_over_chance": res[p]["excess_over_chance"],
                                 "min_detectable_excess": res[p]["min_detectable_excess"],
                                 "p_value": res[p]["p_value"], "verdict": res[p]["verdict"], "n_rows": res["n_rows"],
                                 "n_groups": res["n_groups"]})
            if res.get("red_flag"):
                red_flags.append({"key": entry["key"], "column": col, "excess": res["max_excess"],
                                  "label_excess": entry["columns"][label]["max_excess"] if label else None})
    return verdicts, red_flags


def _todo(reason: str, key: str, n_rows: int) -> str:
    """What a user can do about a column that could not be tested on a key."""
    if n_rows == 0:
        return f"leave {key} out of --keys (no patient has this embedding), or embed a cohort that has the modality"
    if "has no value" in reason:
        return (f"fill in the column for the {n_rows} row(s) that have {key}, or leave {key} out of --keys to get a "
                "verdict on the rest")
    return (f"{n_rows} row(s) have {key}: audit a larger cohort, merge rare values of the column, use fewer "
            f"--folds, or leave {key} out of --keys to get a verdict on the rest")


def _not_tested(per_key: list[dict[str, Any]], columns: Sequence[str], label: str | None,
                fail_on_red_flag: bool) -> list[dict[str, Any]]:
    """The (key, column) pairs that could not be tested, why, what to do, and whether they make the audit incomplete.

    A nuisance column always counts; the label counts only with ``fail_on_red_flag`` (no red flag can be checked).
    """
    out = []
    for entry in per_key:
        for col in [*columns, *([label] if label else [])]:
            res = entry["columns"][col]
            if res["verdict"] != NOT_TESTED:
                continue
            out.append({"key": entry["key"], "column": col, "role": res["role"], "reason": res["reason"],
                        "what_to_do": _todo(res["reason"], entry["key"], entry["n_rows"]),
                        "affects_verdict": res["role"] == "nuisance" or fail_on_red_flag})
    return out


def _power(per_key: list[dict[str, Any]], columns: Sequence[str], max_excess: float, alpha: float) -> dict[str, Any]:
    """The smallest detectable excess per tested nuisance column, and the underpowered ones (module docstring)."""
    tested = [{"key": e["key"], "column": c, "n_groups": e["columns"][c]["n_groups"],
               "n_classes": len(e["columns"][c]["classes"]),
               "min_detectable_excess": e["columns"][c]["min_detectable_excess"],
               "underpowered": e["columns"][c]["underpowered"]}
              for e in per_key for c in columns if e["columns"][c]["verdict"] != NOT_TESTED]
    return {"method": f"smallest excess over the permutation null's mean that can reach p < alpha / 2 = {alpha / 2:g} "
                      "(the null's upper quantile minus its mean; the smaller of the two probes')",
            "max_excess": max_excess, "columns": tested,
            "underpowered": [t for t in tested if t["underpowered"]]}


def _command_line(command: str | Sequence[str] | None) -> str:
    if isinstance(command, str):
        return command
    argv = list(sys.argv if command is None else command)
    if argv and command is None:  # the console script's full path says nothing: its name
        name = Path(argv[0]).name
        argv[0] = "python -m biossl" if name == "__main__.py" else name
        return " ".join([argv[0], *(shlex.quote(a) for a in argv[1:])])
    return shlex.join(argv)


def _checkpoint_file(checkpoint: str | Path | None, provenance: dict[str, Any], source: str) -> tuple[Path | None, str]:
    """(the checkpoint file to hash, where its name came from), or (None, why not)."""
    if checkpoint is not None:
        return (Path(checkpoint), "checkpoint given") if Path(checkpoint).is_file() else (None, "checkpoint given")
    named = provenance.get("checkpoint")
    if not isinstance(named, str) or not named:
        return None, "not recorded in the embeddings"
    candidates = [Path(named)]
    if Path(source).suffix == ".h5ad":
        candidates.append(Path(source).parent / named)
    found = next((c for c in candidates if c.is_file()), None)
    return found, "named by the embeddings' provenance"


def run_metadata(*, command: str | Sequence[str] | None = None, checkpoint: str | Path | None = None,
                 checkpoint_sha256: str | None = None, provenance: dict[str, Any] | None = None,
                 source: str = "") -> dict[str, Any]:
    """What ran the audit: command line, UTC date, biossl version, checkpoint (name, path, SHA-256).

    Args:
        command: Command line (string or argv); default :data:`sys.argv`.
        checkpoint: Checkpoint file to hash.
        checkpoint_sha256: Its hash when the caller has it (nothing is read then).
        provenance: The embeddings' ``uns["biossl"]`` (its ``checkpoint`` and ``checkpoint_sha256``).
        source: The embeddings file, beside which a checkpoint named by the provenance is looked for.
    """
    provenance = provenance or {}
    path, origin = _checkpoint_file(checkpoint, provenance, source)
    sha = checkpoint_sha256
    if sha is None and path is not None:
        sha = file_sha256(path)
        origin += ", hashed"
    elif sha is None and provenance.get("checkpoint_sha256"):
        sha, origin = str(provenance["checkpoint_sha256"]), "recorded in the embeddings' provenance"
    elif sha is None:
        origin += "; file not found, not hashed"
    name = str(checkpoint) if checkpoint is not None else provenance.get("checkpoint")
    return {"command": _command_line(command),
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "biossl_version": __version__,
            "checkpoint": {"name": name, "path": str(path.resolve()) if path is not None else None, "sha256": sha,
                           "origin": origin}}


def exit_code(result: dict[str, Any]) -> int:
    """0 when the audit passes, 1 when it fails, 3 when it is incomplete (some key or column not tested)."""
    return EXIT_CODES.get(result["verdict"], 1)


def write_audit(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/audit.json`` and ``out_dir/report.html`` together, atomically; return their paths."""
    from biossl.audit.report import render_html

    out = Path(out_dir)
    json_path, html_path = out / "audit.json", out / "report.html"
    # One pair: both written before either lands; the previous pair removed first; audit.json (what pipelines
    # read) lands last, so it never sits beside another run's report (biossl.io.atomic_outputs).
    html, text = render_html(result), json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n"
    with atomic_outputs(html_path, json_path) as (html_tmp, json_tmp):
        html_tmp.write_text(html)
        json_tmp.write_text(text)
    return json_path, html_path


__all__ = ["EXIT_CODES", "FAIL", "INCOMPLETE", "NOT_TESTED", "PASS", "audit_embeddings", "default_keys", "exit_code",
           "jsonable", "run_metadata", "write_audit"]

"""``biossl finetune``: clinical heads on patient embeddings, cross-validated, with baselines, as JSON.

Built: the linear (or MLP) probe on frozen embeddings from ``biossl embed`` and, with
``--baseline-features``, the PCA + logistic regression / Cox baseline on raw features, both on the same
patients and folds. Fine-tuning the encoders, training from scratch, label fractions and pseudo-labels
are later :class:`biossl.downstream.methods.Method` implementations run by the same cross-validation.

Examples::

    biossl finetune --embeddings emb.h5ad --labels labels.csv --task subtype --label-column subtype --out r.json
    biossl finetune --embeddings emb.h5ad --labels labels.csv --task survival --splits splits/
                    --baseline-features expression.csv --out r.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Default L2 penalty of the probe by task (loss averaged per patient, or per event for Cox).
DEFAULT_L2 = {"subtype": 0.01, "survival": 0.1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    parser.add_argument("--embeddings", type=Path, default=None, metavar="H5AD",
                        help="patient embeddings from `biossl embed` (omit to run only --baseline-features)")
    parser.add_argument("--embedding", default="X_fused", metavar="KEY",
                        help="obsm key to probe: X_fused (default), X_expression, X_wsi, X_volume, X_sequence")
    parser.add_argument("--labels", type=Path, required=True, metavar="CSV", help="per-patient labels table")
    parser.add_argument("--id-column", default="patient_id", help="patient column of --labels (default patient_id)")
    parser.add_argument("--unknown-labels", choices=("error", "drop"), default="error",
                        help="labelled patients absent from the embeddings: fail (default) or drop with a warning")
    parser.add_argument("--task", choices=("subtype", "survival"), required=True)
    parser.add_argument("--label-column", default=None, metavar="COL", help="class column (subtype task)")
    parser.add_argument("--time-column", default="time", metavar="T", help="survival time column (default time)")
    parser.add_argument("--event-column", default="event", metavar="E",
                        help="event column, 1 = event observed, 0 = censored (default event)")
    folds = parser.add_mutually_exclusive_group()
    folds.add_argument("--splits", type=Path, default=None, metavar="SPLITS",
                       help="user folds: a table patient_id,fold or a folder of PORPOISE splits_{k}.csv")
    folds.add_argument("--folds", type=int, default=5, metavar="K",
                       help="K stratified folds made here (default 5; by class, or by event for survival)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and of the heads (default 0)")
    parser.add_argument("--head", choices=("linear", "mlp"), default="linear", help="probe head (default linear)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of --head mlp (default 64)")
    parser.add_argument("--survival-loss", choices=("cox", "discrete"), default="cox",
                        help="Cox partial likelihood (default) or discrete-time NLL over --bins time bins")
    parser.add_argument("--bins", type=int, default=4, help="time bins of the discrete-time head (default 4)")
    parser.add_argument("--l2", type=float, default=None,
                        help=f"L2 penalty of the probe (default {DEFAULT_L2['subtype']} subtype, "
                             f"{DEFAULT_L2['survival']} survival)")
    parser.add_argument("--baseline-features", type=Path, default=None, metavar="TABLE",
                        help="raw features (expression table: CSV/TSV/Parquet/h5ad) for the PCA baseline")
    parser.add_argument("--baseline-components", type=int, default=16, help="PCA components of the baseline")
    parser.add_argument("--baseline-penalizer", type=float, default=1.0, help="lifelines Cox penalizer (default 1)")
    parser.add_argument("--out", type=Path, required=True, metavar="JSON", help="result file (written atomically)")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def _probe_features(path: Path, key: str) -> tuple[Any, dict[str, Any], list[str]]:
    from biossl.downstream.embed import read_embeddings
    from biossl.downstream.methods import feature_frame
    from biossl.errors import InputError

    adata = read_embeddings(path)
    if key not in adata.obsm:
        raise InputError(f"{path} has no obsm[{key!r}]; it has {sorted(adata.obsm.keys())}: pick one with --embedding")
    patients = [str(p) for p in adata.obs_names]
    frame = feature_frame(adata.obsm[key], patients, what=f"{path} obsm[{key!r}]")
    provenance = adata.uns.get("biossl", {})
    info = {"file": path.name, "obsm": key,
            **{k: str(provenance[k]) for k in ("checkpoint", "data_fingerprint", "cohort_fingerprint")
               if k in provenance}}
    return frame, info, patients


def _baseline_features(path: Path) -> Any:
    from biossl.data.expression import read_expression
    from biossl.downstream.methods import feature_frame

    adata = read_expression(path, aggregate="mean")
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
    return feature_frame(x, [str(p) for p in adata.obs["patient_id"]], what=f"baseline features {path}")


def run(args: argparse.Namespace) -> int:
    """Cross-validate the probe (and baselines) and write the JSON result."""
    import pandas as pd

    from biossl import __version__
    from biossl.data.labels import MAX_NAMED, read_labels
    from biossl.data.splits import read_splits
    from biossl.downstream.cv import common_patients, cross_validate, folds_for, summary_table
    from biossl.downstream.methods import LinearProbe, Method, PCABaseline
    from biossl.downstream.tasks import subtype_task, survival_task
    from biossl.errors import InputError
    from biossl.io import write_text_atomic

    if args.embeddings is None and args.baseline_features is None:
        raise InputError("nothing to evaluate: give --embeddings (from `biossl embed`) and/or --baseline-features")
    if args.task == "subtype" and not args.label_column:
        raise InputError("--task subtype needs --label-column COL (the labels table's class column)")
    methods: list[Method] = []
    inputs: dict[str, Any] = {"labels": args.labels.name}
    known: list[str] | None = None
    if args.embeddings is not None:
        features, inputs["embeddings"], known = _probe_features(args.embeddings, args.embedding)
        l2 = DEFAULT_L2[args.task] if args.l2 is None else args.l2
        methods.append(LinearProbe(features, name=f"{'linear' if args.head == 'linear' else 'mlp'}_probe",
                                   hidden=None if args.head == "linear" else args.hidden,
                                   survival_loss=args.survival_loss, n_bins=args.bins, l2=l2))
    if args.baseline_features is not None:
        raw = _baseline_features(args.baseline_features)
        inputs["baseline_features"] = args.baseline_features.name
        kind = "cox" if args.task == "survival" else "logreg"
        methods.append(PCABaseline(raw, n_components=args.baseline_components, penalizer=args.baseline_penalizer,
                                   name=f"pca{args.baseline_components}_{kind}", source=args.baseline_features.name))
        if known is None:
            known = sorted(map(str, raw.index))

    known_from = (f"the embeddings {args.embeddings}" if args.embeddings is not None
                  else f"the baseline features {args.baseline_features}")
    labels = read_labels(args.labels, patients=known, patients_from=known_from, unknown=args.unknown_labels,
                         id_column=args.id_column)
    if args.task == "subtype":
        task = subtype_task(labels, args.label_column, source=args.labels)
    else:
        task = survival_task(labels, args.time_column, args.event_column, source=args.labels)
    task = common_patients(task, methods)
    for reason, left in task.excluded.items():
        if left and reason.startswith("no_input"):
            logger.warning("%d labelled patient(s) lack the inputs of %s and are left out of every method, e.g. %s",
                           len(left), reason.split(":", 1)[1], left[:MAX_NAMED])
    splits = read_splits(args.splits) if args.splits is not None else None
    task, folds = folds_for(task, splits=splits, n_folds=args.folds, seed=args.seed,
                            source=str(args.splits) if args.splits is not None else "")
    results = cross_validate(task, methods, folds, seed=args.seed)

    fold_info = {"source": args.splits.name if args.splits is not None else f"{args.folds} stratified folds made "
                 f"with seed {args.seed}", "n_folds": int(folds["fold"].nunique())}
    report = {
        "biossl_version": __version__,
        "inputs": inputs,
        **task.describe(),
        "folds": {**fold_info, "assignment": dict(zip(folds["patient_id"], folds["fold"].astype(int)))},
        "excluded": {reason: {"n": len(p), "patients": p} for reason, p in task.excluded.items()},
        "metric_sd": "sample sd over folds (ddof 1); folds where a metric is undefined are left out (n_folds)",
        "methods": results,
    }
    write_text_atomic(args.out, json.dumps(_json_safe(report), indent=1) + "\n")
    table = summary_table(results, task.metric_names)
    described = task.describe()
    extra = (f", {described['n_events']} events" if "n_events" in described
             else f", classes {described.get('classes')}")
    print(f"{args.task}: {len(task)} patients{extra}; {fold_info['n_folds']} folds ({fold_info['source']})")
    with pd.option_context("display.width", 200):
        print(table.to_string(index=False))
    print(f"-> {args.out}")
    return 0

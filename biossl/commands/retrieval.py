"""``biossl retrieval --embeddings EMB.h5ad --out retrieval.json``: cross-modal retrieval between embeddings.

For every ordered pair of the chosen ``obsm`` keys (default: every per-modality key, ``X_fused`` left
out) and the patients having both, ranks each patient's own target embedding among all patients' by
cosine similarity; prints recall@k beside its chance level ``k / n`` and the median rank. See
:mod:`biossl.downstream.retrieval`. Use ``--patients`` to score patients that pretraining never saw.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "cross-modal retrieval: recall@k of each patient's own embedding in another modality"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    parser.add_argument("--embeddings", type=Path, required=True, metavar="H5AD",
                        help="embeddings written by `biossl embed`")
    parser.add_argument("--keys", default=None, metavar="KEY,KEY,...",
                        help="obsm keys to compare, e.g. X_rna,X_cnv (default: every X_<modality>, not X_fused)")
    parser.add_argument("--patients", type=Path, default=None, metavar="CSV",
                        help="score only these patients (a table with a patient column, e.g. the patients held out "
                             "of pretraining); default: every patient")
    parser.add_argument("--id-column", default="patient_id", help="patient column of --patients (default patient_id)")
    parser.add_argument("--k", default="1,5,10", metavar="K,K,...", help="the k of recall@k (default 1,5,10)")
    parser.add_argument("--out", type=Path, required=True, metavar="JSON", help="result file (written atomically)")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also draw the recall@k curves")


def _keys(adata: Any, text: str | None, path: Path) -> list[str]:
    from biossl.downstream.embed import FUSED
    from biossl.errors import InputError

    available = sorted(adata.obsm.keys())
    if text is None:
        keys = [k for k in available if k.startswith("X_") and k != FUSED]
    else:
        keys = list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
        missing = [k for k in keys if k not in adata.obsm]
        if missing:
            raise InputError(f"{path} has no obsm {missing}; it has {available}: fix --keys")
    if len(keys) < 2:
        raise InputError(f"{path}: retrieval needs two or more embedding keys; found {keys} among {available} "
                         "(embed a checkpoint of two or more modalities, or name them with --keys)")
    return keys


def _patients(path: Path, column: str, known: list[str], source: Path) -> list[str]:
    import pandas as pd

    from biossl.errors import InputError

    try:
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() in (".tsv", ".txt") else ",", dtype=str)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"--patients {path}: not a readable table ({exc})") from None
    if column not in table.columns:
        raise InputError(f"--patients {path} has no column {column!r} (columns: {list(table.columns)[:8]}); "
                         "name the patient column with --id-column")
    wanted = list(dict.fromkeys(table[column].dropna().astype(str).str.strip()))
    found = set(known)
    unknown = [p for p in wanted if p not in found]
    if unknown and len(unknown) == len(wanted):
        raise InputError(f"--patients {path}: none of its {len(wanted)} patients is in {source} (e.g. "
                         f"{unknown[:3]}); check the IDs match the embeddings' patient IDs")
    if unknown:
        import logging

        logging.getLogger(__name__).warning("--patients %s: %d of %d patients are not in %s (e.g. %s); scoring "
                                            "the other %d", path, len(unknown), len(wanted), source, unknown[:3],
                                            len(wanted) - len(unknown))
    return [p for p in wanted if p in found]


def run(args: argparse.Namespace) -> int:
    """Score every ordered pair of keys, print the table, write the JSON (and the plot)."""
    import numpy as np

    from biossl import __version__
    from biossl.commands.finetune import _parse_list
    from biossl.downstream.embed import read_embeddings
    from biossl.downstream.retrieval import cross_modal_retrieval, plot_retrieval
    from biossl.errors import InputError
    from biossl.io import jsonable, write_text_atomic

    ks = sorted(set(_parse_list(args.k, "--k", int)))
    if not ks or min(ks) < 1:
        raise InputError(f"--k {args.k!r}: give positive integers such as 1,5,10")
    adata = read_embeddings(args.embeddings)
    keys = _keys(adata, args.keys, args.embeddings)
    patients = [str(p) for p in adata.obs_names]
    rows = np.arange(len(patients))
    if args.patients is not None:
        chosen = _patients(args.patients, args.id_column, patients, args.embeddings)
        index = {p: i for i, p in enumerate(patients)}
        rows = np.asarray([index[p] for p in chosen], dtype=int)
        patients = chosen
    embeddings = {k: np.asarray(adata.obsm[k], dtype=np.float64)[rows] for k in keys}
    pairs = cross_modal_retrieval(embeddings, patients, ks=ks, source=str(args.embeddings))
    report = {"biossl_version": __version__, "embeddings": args.embeddings.name, "keys": keys,
              "patients_from": args.patients.name if args.patients else "all patients of the embeddings",
              "provenance": {k: str(v) for k, v in adata.uns.get("biossl", {}).items()
                             if k in ("checkpoint", "data_fingerprint", "cohort_fingerprint")},
              "k": ks, "pairs": pairs}
    write_text_atomic(args.out, __import__("json").dumps(jsonable(report), indent=1) + "\n")
    if args.plot is not None:
        plot_retrieval(pairs, args.plot, title=f"cross-modal retrieval, {args.embeddings.name}")
    head = ["query", "target", "n", *(f"R@{k}" for k in ks), *(f"chance@{k}" for k in ks), "median rank (chance)"]
    print(" | ".join(head))
    for e in pairs:
        cells = [e["query"], e["target"], str(e["n"]), *(f"{e['recall'][str(k)]:.3f}" for k in ks),
                 *(f"{e['chance'][str(k)]:.3f}" for k in ks), f"{e['median_rank']:g} ({e['chance_median_rank']:g})"]
        print(" | ".join(cells))
    print(f"-> {args.out}" + (f", {args.plot}" if args.plot else ""))
    return 0

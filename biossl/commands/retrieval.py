"""``biossl retrieval --embeddings EMB.h5ad --out retrieval.json``: cross-modal retrieval between embeddings.

For every ordered pair of the chosen ``obsm`` keys (default: every per-modality key, ``X_fused`` left
out) and the patients having both, ranks each patient's own target embedding among all patients' by
cosine similarity; prints recall@k beside its chance level ``k / n`` and the median rank. See
:mod:`biossl.downstream.retrieval`. Use ``--patients`` to score patients that pretraining never saw.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "cross-modal retrieval: recall@k of each patient's own embedding in another modality"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    from biossl.commands.options import add_shared

    parser.add_argument("--embeddings", type=Path, required=True, metavar="H5AD",
                        help="embeddings written by `biossl embed`")
    parser.add_argument("--keys", default=None, metavar="KEY,KEY,...",
                        help="obsm keys to compare, e.g. X_rna,X_cnv (default: every X_<modality>, not X_fused)")
    parser.add_argument("--patients", type=Path, default=None, metavar="CSV",
                        help="score only these patients (a table with a patient column, e.g. the patients held out "
                             "of pretraining); default: every patient")
    parser.add_argument("--id-column", default="patient_id", metavar="COL", help="patient column of --patients")
    parser.add_argument("--k", default="1,5,10", metavar="K,K,...", help="the k of recall@k")
    add_shared(parser, "out", required=("out",), help={"out": "result JSON (written atomically)"})
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also draw the recall@k curves")


def run(args: argparse.Namespace) -> int:
    """Score every ordered pair of keys (:func:`biossl.api.retrieval`), print the table, write the JSON (and plot)."""
    from biossl.api import retrieval
    from biossl.commands.finetune import _parse_list

    ks = _parse_list(args.k, "--k", int)
    result = retrieval(args.embeddings, keys=args.keys, patients=args.patients, id_column=args.id_column, k=ks,
                       out=args.out, plot=args.plot)
    ks = result["k"]
    head = ["query", "target", "n", *(f"R@{k}" for k in ks), *(f"chance@{k}" for k in ks), "median rank (chance)"]
    print(" | ".join(head))
    for e in result["pairs"]:
        cells = [e["query"], e["target"], str(e["n"]), *(f"{e['recall'][str(k)]:.3f}" for k in ks),
                 *(f"{e['chance'][str(k)]:.3f}" for k in ks), f"{e['median_rank']:g} ({e['chance_median_rank']:g})"]
        print(" | ".join(cells))
    print(f"-> {args.out}" + (f", {args.plot}" if args.plot else ""))
    return 0

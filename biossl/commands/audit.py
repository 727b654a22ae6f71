"""``biossl audit``: do the embeddings encode the biology, or the site, the scanner and the batch.

    biossl audit --embeddings emb.h5ad --columns site,scanner [--label subtype] --out audit/
    biossl audit --checkpoint last.ckpt --manifest manifest.csv --labels labels.csv --columns site --out audit/
    biossl audit --checkpoint last.ckpt --manifest manifest.csv --columns site --artifacts --out audit/

Writes ``<out>/audit.json`` and a self-contained ``<out>/report.html``, prints the verdict table, and
exits 0 when every audited column passes, 1 when one fails (so an audit can gate a pipeline), 3 when
nothing fails but a requested key or column could not be tested (INCOMPLETE), 2 on bad input, 74 when
the outputs cannot be written (a full disk: one line naming the path). The two files are written
together: the previous run's pair is replaced as a whole, and ``audit.json`` never sits beside another
run's ``report.html``. See :mod:`biossl.audit.run` for what is measured and how the
verdict is reached. With ``--artifacts`` the synthetic artifact probes of :mod:`biossl.audit.artifacts`
run too (they inform, they never change the verdict) and the report draws their drift curves.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    from biossl.commands.options import add_shared

    src = parser.add_argument_group("input (--embeddings, or --checkpoint with --manifest)")
    src.add_argument("--embeddings", type=Path, default=None, metavar="H5AD",
                     help="embeddings from `biossl embed` (with --artifacts, --checkpoint may come too)")
    add_shared(src, "checkpoint", "manifest", "labels", "work_dir", "features_dir", "max_instances", "skip_bad",
               "device",
               help={"checkpoint": "embed the cohort of --manifest with this pretraining checkpoint first",
                     "manifest": "cohort manifest (with --checkpoint)",
                     "labels": "per-patient labels table; its columns join obs (labelled patients absent from the "
                               "embeddings are dropped with a warning)",
                     "max_instances": "embeddings from --checkpoint: at most N instances per patient and modality, "
                                      "drawn with --seed (default: every tile of every slide, as `biossl embed`)",
                     "skip_bad": "embeddings from --checkpoint: skip unreadable manifest rows with a warning",
                     "device": "embeddings from --checkpoint: auto (CUDA if available, bf16 autocast), cpu, cuda, "
                               "cuda:1, ..."})
    src.add_argument("--artifacts", action="store_true",
                     help="also run the synthetic artifact probes (drift, detectability, stability; --checkpoint)")
    parser.add_argument("--columns", type=_names, required=True, metavar="COL[,COL...]",
                        help="obs columns to audit, e.g. site,scanner,batch")
    parser.add_argument("--label", default=None, metavar="COL", help="biology label column probed side by side")
    parser.add_argument("--keys", type=_names, default=None, metavar="KEY[,KEY...]",
                        help="obsm embeddings to audit (default: X_fused and every X_<modality>)")
    parser.add_argument("--group-column", default=None, metavar="COL",
                        help="obs column naming each row's patient when rows are tiles or cells (default: one row per "
                             "patient)")
    parser.add_argument("--alpha", type=float, default=0.05, metavar="A",
                        help="significance level (Bonferroni over 2 probes)")
    parser.add_argument("--max-excess", type=float, default=0.10, metavar="X",
                        help="largest tolerated balanced accuracy above the permutation null's mean")
    parser.add_argument("--permutations", type=int, default=1000, metavar="B", help="permutations per p-value")
    parser.add_argument("--folds", type=int, default=5, metavar="K", help="folds of the linear probe")
    parser.add_argument("--k", type=int, default=15, metavar="K", help="neighbours of the kNN probe and mixing metrics")
    add_shared(parser, "seed", help={"seed": "seed of folds, permutations and samples"})
    parser.add_argument("--fail-on-red-flag", action="store_true",
                        help="also fail when a column is easier to predict than --label")
    add_shared(parser, "out", "pseudonymize", "salt_file", required=("out",),
               help={"out": "folder: writes PATH/audit.json and PATH/report.html",
                     "pseudonymize": "write patient IDs in audit.json and report.html as HMAC-SHA256 pseudonyms"})


def run(args: argparse.Namespace) -> int:
    """Run the audit (:func:`biossl.api.audit`), write the JSON and the report, print the verdict table.

    Returns the exit code of the verdict (:func:`biossl.audit.run.exit_code`).
    """
    from biossl.audit.api import audit
    from biossl.audit.report import format_verdicts
    from biossl.audit.run import exit_code
    from biossl.errors import InputError
    from biossl.privacy import read_salt

    if args.salt_file is not None and not args.pseudonymize:
        raise InputError("--salt-file only applies with --pseudonymize; add it or drop --salt-file")
    salt = read_salt(args.salt_file) if args.pseudonymize else None
    result = audit(args.embeddings, args.columns, label=args.label, keys=args.keys, checkpoint=args.checkpoint,
                   manifest=args.manifest, labels=args.labels, device=getattr(args, "device", "auto"),
                   work_dir=args.work_dir, features_dir=getattr(args, "features_dir", None),
                   skip_bad=getattr(args, "skip_bad", False), max_tiles=args.max_instances, seed=args.seed,
                   artifacts=args.artifacts, salt=salt, out=args.out, group_column=args.group_column,
                   alpha=args.alpha, max_excess=args.max_excess, n_permutations=args.permutations,
                   n_folds=args.folds, k=args.k, fail_on_red_flag=args.fail_on_red_flag,
                   command=getattr(args, "_command", None))
    print(format_verdicts(result))
    print(f"wrote {args.out / 'audit.json'} and {args.out / 'report.html'}")
    return exit_code(result)

"""``biossl audit``: do the embeddings encode the biology, or the site, the scanner and the batch.

    biossl audit --embeddings emb.h5ad --columns site,scanner [--label subtype] --out audit/
    biossl audit --checkpoint last.ckpt --manifest manifest.csv --labels labels.csv --columns site --out audit/
    biossl audit --checkpoint last.ckpt --manifest manifest.csv --columns site --artifacts --out audit/

Writes ``<out>/audit.json`` and a self-contained ``<out>/report.html``, prints the verdict table, and
exits 0 when every audited column passes, 1 when one fails (so an audit can gate a pipeline), 2 on
bad input, 74 when the outputs cannot be written (a full disk: one line naming the path). The two files
are written together: the previous run's pair is replaced as a whole, and ``audit.json`` never sits
beside another run's ``report.html``. See :mod:`biossl.audit.run` for what is measured and how the
verdict is reached. With ``--artifacts`` the synthetic artifact probes of :mod:`biossl.audit.artifacts`
run too (they inform, they never change the verdict) and the report draws their drift curves.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    src = parser.add_argument_group("input (--embeddings, or --checkpoint with --manifest)")
    src.add_argument("--embeddings", type=Path, default=None, metavar="H5AD",
                     help="embeddings from `biossl embed` (with --artifacts, --checkpoint may come too)")
    src.add_argument("--checkpoint", type=Path, default=None, metavar="CKPT",
                     help="embed the cohort of --manifest with this pretraining checkpoint first")
    src.add_argument("--manifest", type=Path, default=None, metavar="MANIFEST",
                     help="cohort manifest (with --checkpoint)")
    src.add_argument("--labels", type=Path, default=None, metavar="CSV",
                     help="per-patient labels table; its columns join obs (labelled patients absent from the "
                          "embeddings are dropped with a warning)")
    src.add_argument("--work-dir", type=Path, default=None, metavar="DIR",
                     help="tile coordinates and scan cache for --checkpoint (default: the pretraining run's for its "
                     "own cohort, else ./biossl_work)")
    src.add_argument("--max-tiles", "--max-instances", dest="max_instances", type=int, default=None, metavar="N",
                     help="embeddings from --checkpoint: at most N instances per patient and modality, drawn with "
                          "--seed (default: every tile of every slide, as `biossl embed`)")
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
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (Bonferroni over 2 probes; 0.05)")
    parser.add_argument("--max-excess", type=float, default=0.10,
                        help="largest tolerated balanced accuracy above chance (default 0.10)")
    parser.add_argument("--permutations", type=int, default=1000, metavar="B", help="permutations per p-value (1000)")
    parser.add_argument("--folds", type=int, default=5, help="folds of the linear probe (default 5)")
    parser.add_argument("--k", type=int, default=15, help="neighbours of the kNN probe and mixing metrics (15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of folds, permutations and samples (default 0)")
    parser.add_argument("--fail-on-red-flag", action="store_true",
                        help="also fail when a column is easier to predict than --label")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="writes DIR/audit.json, DIR/report.html")
    parser.add_argument("--pseudonymize", action="store_true",
                        help="write patient IDs in audit.json and report.html as HMAC-SHA256 pseudonyms")
    parser.add_argument("--salt-file", type=Path, default=None, metavar="FILE",
                        help="file holding the secret salt of --pseudonymize (default: $BIOSSL_SALT)")


def run(args: argparse.Namespace) -> int:
    """Run the audit, write the JSON and the report, print the verdict table; 0 pass, 1 fail."""
    from biossl.audit.report import format_verdicts
    from biossl.audit.run import audit_embeddings, exit_code, write_audit
    from biossl.commands.embed import instance_policy
    from biossl.errors import InputError
    from biossl.privacy import read_salt

    if args.salt_file is not None and not args.pseudonymize:
        raise InputError("--salt-file only applies with --pseudonymize; add it or drop --salt-file")
    salt = read_salt(args.salt_file) if args.pseudonymize else None
    if args.embeddings is None and args.checkpoint is None:
        raise InputError("give either --embeddings H5AD or --checkpoint CKPT with --manifest MANIFEST")
    if args.embeddings is not None and args.checkpoint is not None and not args.artifacts:
        raise InputError("give either --embeddings H5AD or --checkpoint CKPT with --manifest MANIFEST, not both "
                         "(both only with --artifacts: the embeddings are audited, the checkpoint re-embeds corrupted "
                         "inputs)")
    if args.artifacts and args.checkpoint is None:
        raise InputError("--artifacts corrupts the cohort's inputs and re-embeds them: it needs --checkpoint and "
                         "--manifest")
    if args.checkpoint is not None and args.manifest is None:
        raise InputError("--checkpoint needs --manifest (the cohort to embed)")
    if args.max_instances is not None and args.embeddings is not None:
        raise InputError("--max-tiles applies to embeddings computed from --checkpoint; the embeddings of --embeddings "
                         "were computed by `biossl embed` (give it --max-tiles there)")
    instance_policy(args)  # a bad --max-tiles fails before any work
    loaded = None  # the checkpoint and the cohort, opened once for the embeddings and the artifact probes
    if args.embeddings is None:
        from biossl.downstream.embed import embed_loaded, load_cohort

        loaded = load_cohort(args.checkpoint, args.manifest, work_dir=args.work_dir, seed=args.seed,
                             policy=instance_policy(args))
        adata = embed_loaded(loaded, labels=args.labels, unknown_labels="drop")
        source = f"the embeddings of {args.manifest} by {args.checkpoint}"
    else:
        if args.checkpoint is None and args.manifest is not None:
            raise InputError("--manifest goes with --checkpoint; the embeddings from `biossl embed` already hold the "
                             "manifest metadata")
        from biossl.downstream.embed import read_embeddings

        adata = read_embeddings(args.embeddings)
        source = str(args.embeddings)
        if args.labels is not None:
            _join_labels(adata, args.labels, args.embeddings)
    if salt is not None:  # before the probes: the report prints each patient's value of these columns
        from biossl.privacy import refuse_identifying_columns

        refuse_identifying_columns(adata, args.columns, flag="--columns", output="audit.json and report.html")
        refuse_identifying_columns(adata, [args.label], flag="--label", output="audit.json and report.html")
    result = audit_embeddings(adata, args.columns, label=args.label, keys=args.keys, group_column=args.group_column,
                              alpha=args.alpha, max_excess=args.max_excess, n_permutations=args.permutations,
                              n_folds=args.folds, k=args.k, seed=args.seed, fail_on_red_flag=args.fail_on_red_flag,
                              source=source)
    if args.artifacts:
        import pandas as pd

        from biossl.audit.artifacts import artifact_audit
        from biossl.downstream.embed import load_cohort

        assert args.manifest is not None  # checked above (--artifacts needs --checkpoint, which needs --manifest)
        if loaded is None:  # audited embeddings from --embeddings: open the cohort now
            loaded = load_cohort(args.checkpoint, args.manifest, work_dir=args.work_dir, seed=args.seed)
        # Stability uses the biology label as the audited embeddings hold it (from --labels or `biossl embed`).
        labels = (None if args.label is None or args.label not in adata.obs.columns else
                  {str(p): (None if pd.isna(v) else v) for p, v in adata.obs[args.label].items()})
        result["artifacts"] = artifact_audit(loaded.module, loaded.dataset, labels=labels, seed=args.seed)
    if salt is not None:  # checked early, so that a missing salt fails before any work
        # audit.json and report.html hold aggregates only (scores per column, PCA points without names):
        # no patient ID to replace, which the privacy tests check.
        result["pseudonymized"] = "the audit holds no patient IDs (aggregates and unnamed points only)"
        from biossl.privacy import hide_identifiers

        result, hidden = hide_identifiers(result, adata.obs_names)  # file names (the source) holding an ID
        if hidden:
            result["pseudonymized_hidden"] = hidden
    json_path, html_path = write_audit(result, args.out)
    print(format_verdicts(result))
    print(f"wrote {json_path} and {html_path}")
    return exit_code(result)


def _join_labels(adata: Any, labels: Path, embeddings: Path) -> None:
    """Add the labels table's columns to ``adata.obs`` (a column already there must hold the same values)."""
    import pandas as pd

    from biossl.data.labels import read_labels
    from biossl.errors import InputError

    patients = [str(p) for p in adata.obs_names]
    table = read_labels(labels, patients=patients, patients_from=f"the embeddings {embeddings}", unknown="drop")
    for col in table.columns:
        values = table[col].reindex(patients)
        if col in adata.obs.columns:
            old = adata.obs[col].astype(object).where(adata.obs[col].notna(), None).astype(str).tolist()
            new = values.astype(object).where(values.notna(), None).astype(str).tolist()
            if old != new:
                raise InputError(f"labels table {labels}: column {col!r} is already in {embeddings} with other values; "
                                 "rename it in the labels table")
            continue
        adata.obs[col] = pd.Series(values.to_numpy(), index=adata.obs_names).astype(object)

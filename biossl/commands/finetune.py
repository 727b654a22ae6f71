"""``biossl finetune``: clinical heads, cross-validated, in several modes and with baselines, as JSON.

Every method of a run is scored on the same patients and folds, side by side in the JSON:

* ``--mode probe`` (default): a linear (or MLP) probe on frozen embeddings -- from ``--embeddings``
  (``biossl embed``), or computed here from ``--checkpoint`` and ``--manifest``;
* ``--mode finetune``: the checkpoint's encoders, projections and attention-MIL pools trained end to
  end with the head (:mod:`biossl.downstream.finetuning`);
* ``--mode scratch``: the same architecture with random weights, same training;
* ``--baseline-features``: on raw features (an expression table), PCA + logistic regression / Cox, and
  the probe's L2 head on *all* standardised features (``linear_all_logreg`` / ``linear_all_cox``) with
  its penalty chosen per training fold by inner CV (``--baseline-l2``); ``--baseline-kmer K``:
  k-mer logistic regression on the patients' DNA (:mod:`biossl.downstream.kmers`);
* ``--splits``: the user's k folds, or one held-out test set (a table ``patient_id,split`` with
  ``train`` / ``test``; ``dev`` rows are left out): every method above then trains on the training
  patients and is scored once on the test patients (one "fold", sd null);
* ``--label-fractions`` / ``--seeds``: every method again on fractions of each training fold's labels
  (:mod:`biossl.downstream.cv`), written to the JSON's ``label_efficiency`` section and drawn as a PNG;
* ``--semi-supervised``: pseudo-labelled variants (``<method>+pl``) of the probe and of fine-tuning
  that also train on the unlabelled patients (subtype only).

Examples::

    biossl finetune --embeddings emb.h5ad --labels labels.csv --task subtype --label-column subtype --out r.json
    biossl finetune --embeddings emb.h5ad --labels labels.csv --task survival --splits splits/
                    --baseline-features expression.csv --out r.json
    biossl finetune --checkpoint last.ckpt --manifest manifest.csv --labels labels.csv --task subtype
                    --label-column subtype --mode probe,finetune,scratch --label-fractions 0.1,0.25,1
                    --seeds 0,1,2 --out r.json          # also writes r.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from biossl.downstream.finetune_settings import DEFAULT_L2, FinetuneSettings

logger = logging.getLogger(__name__)


#: The library's fine-tuning defaults, the options' defaults (a torch-free module: ``--help`` stays fast).
D = FinetuneSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    from biossl.commands.options import add_shared

    parser.add_argument("--embeddings", type=_embeddings_item, action="append", default=None, metavar="[NAME=]H5AD",
                        help="patient embeddings from `biossl embed` for the probe (omit to embed here from "
                             "--checkpoint and --manifest, or to run only baselines). Repeat it as NAME=H5AD to "
                             "probe several runs side by side on the same folds (methods linear_probe:NAME:KEY)")
    parser.add_argument("--embedding", default="X_fused", metavar="KEY[,KEY...]",
                        help="embedding to probe / fine-tune: X_fused (default) or X_<modality> (X_rna, X_wsi, ...); "
                             "several comma-separated keys are probed side by side (probe mode), each as "
                             "linear_probe:<key>, on the patients that have all of them; with several --embeddings "
                             "NAME=H5AD, NAME:KEY probes KEY of that file only (e.g. a:X_rna,c:X_fused)")
    add_shared(parser, "labels", required=("labels",), help={"labels": "per-patient labels table"})
    parser.add_argument("--id-column", default="patient_id", metavar="COL", help="patient column of --labels")
    parser.add_argument("--unknown-labels", choices=("error", "drop"), default="error",
                        help="labelled patients absent from the embeddings: fail (error) or drop with a warning")
    parser.add_argument("--task", choices=("subtype", "survival"), required=True)
    parser.add_argument("--label-column", default=None, metavar="COL", help="class column (subtype task)")
    parser.add_argument("--time-column", default="time", metavar="COL", help="survival time column")
    parser.add_argument("--event-column", default="event", metavar="COL",
                        help="event column, 1 = event observed, 0 = censored")
    folds = parser.add_mutually_exclusive_group()
    folds.add_argument("--splits", type=Path, default=None, metavar="SPLITS",
                       help="user folds: a table patient_id,fold or a folder of PORPOISE splits_{k}.csv; or one "
                            "held-out test set: a table patient_id,split with train/test (dev rows are left out), "
                            "every method trained on train and scored on test")
    folds.add_argument("--folds", type=int, default=5, metavar="K",
                       help="K stratified folds made here (by class, or by event for survival)")
    parser.add_argument("--group-by", default=None, metavar="COL",
                        help="group-preserving folds, e.g. --group-by site: all patients of one site in one fold, "
                             "so no site is in both training and test (values from the labels table, else the "
                             "embeddings' obs, else the manifest metadata); with --splits, checks they are")
    add_shared(parser, "seed", help={"seed": "seed of the folds and of the heads"})
    parser.add_argument("--head", choices=("linear", "mlp"), default="linear", help="probe head")
    parser.add_argument("--hidden", type=int, default=64, metavar="N", help="hidden width of --head mlp")
    parser.add_argument("--survival-loss", choices=("cox", "discrete"), default="cox",
                        help="Cox partial likelihood or discrete-time NLL over --bins time bins")
    parser.add_argument("--bins", type=int, default=4, metavar="N", help="time bins of the discrete-time head")
    parser.add_argument("--l2", default=None, metavar="L2",
                        help=f"L2 penalty of the probe (default {DEFAULT_L2['subtype']} subtype, "
                             f"{DEFAULT_L2['survival']} survival); 'auto' or a list L,L,... chooses one per training "
                             "fold by an inner 3-fold CV on its training patients (auto: 1e-6 ... 1e3, one per "
                             "decade; a choice at an end of the grid is flagged)")
    parser.add_argument("--baseline-features", type=Path, action="append", default=None, metavar="TABLE",
                        help="raw features (a table: CSV/TSV/Parquet/h5ad) for two baselines: PCA + logistic "
                             "regression / Cox, and logistic regression / Cox on all standardised features. Repeat "
                             "it for several tables (e.g. RNA, CNV, mutations): each gets its own PCA "
                             "(--baseline-components 16,8,8) and the all-features model sees them side by side "
                             "(early fusion), on the patients present in every table")
    parser.add_argument("--baseline-l2", default="auto", metavar="L2",
                        help="L2 penalty of the all-features baseline: auto (default; chosen per training fold by "
                             "inner 3-fold CV over 1e-6 ... 1e3), one value, or a list L,L,... to choose from")
    parser.add_argument("--baseline-components", default="16", metavar="N[,N...]",
                        help="PCA components of the baseline: one per --baseline-features table, or one number "
                             "for all")
    parser.add_argument("--baseline-penalizer", type=float, default=1.0, metavar="P", help="lifelines Cox penalizer")
    parser.add_argument("--baseline-kmer", type=int, nargs="?", const=4, default=None, metavar="K",
                        help="k-mer frequencies (length K; 4 when K is omitted) + logistic regression on the "
                             "patients' DNA of --manifest (subtype tasks)")
    parser.add_argument("--kmer-canonical", action="store_true",
                        help="merge each k-mer with its reverse complement (default: strand-specific k-mers)")
    add_shared(parser, "out", "pseudonymize", "salt_file", required=("out",),
               help={"out": "result JSON (written atomically)",
                     "pseudonymize": "write patient IDs in the JSON as HMAC-SHA256 pseudonyms (as `biossl embed "
                                     "--pseudonymize`, same salt gives the same pseudonyms)"})
    modes = parser.add_argument_group("modes: probe, fine-tuning, from scratch")
    modes.add_argument("--mode", default=None, metavar="MODES",
                       help="comma-separated: probe (frozen embeddings; default), finetune (train the "
                            "checkpoint's encoders end to end), scratch (same architecture, random weights)")
    add_shared(modes, "checkpoint", "manifest", "work_dir", "features_dir", "skip_bad", "max_instances", "device",
               help={"checkpoint": "pretraining checkpoint (finetune, scratch; probe without --embeddings)",
                     "manifest": "cohort manifest the checkpoint's encoders read (and --baseline-kmer's sequences)",
                     "max_instances": "probe embeddings from --checkpoint: at most N instances per patient and "
                                      "modality, drawn with --seed (default: every tile of every slide, as "
                                      "`biossl embed`)"})
    modes.add_argument("--epochs", type=int, default=D.epochs, metavar="N", help="finetune/scratch epochs")
    add_shared(modes, "batch_size", default={"batch_size": D.batch_size},
               help={"batch_size": "patients per finetune/scratch step"})
    modes.add_argument("--lr", type=float, default=D.lr, metavar="LR",
                       help="AdamW learning rate of the projections, pools and head; of everything for scratch")
    modes.add_argument("--encoder-lr", type=float, default=D.encoder_lr, metavar="LR",
                       help="learning rate of the pretrained encoders in finetune mode")
    modes.add_argument("--weight-decay", type=float, default=D.weight_decay, metavar="WD", help="AdamW weight decay")
    eff = parser.add_argument_group("label efficiency and semi-supervised learning")
    eff.add_argument("--label-fractions", default=None, metavar="F,F,...",
                     help="fractions in (0, 1] of each training fold's labelled patients, e.g. 0.01,0.05,0.1,0.25,1")
    eff.add_argument("--seeds", default=None, metavar="S,S,...",
                     help="seeds of the label subsample and the fits at each fraction (default: --seed)")
    eff.add_argument("--plot", type=Path, default=None, metavar="PNG",
                     help="label-efficiency plot (default: --out with .png)")
    eff.add_argument("--semi-supervised", action="store_true",
                     help="add pseudo-labelled variants (<method>+pl) of probe/finetune that also train on the "
                          "unlabelled patients (subtype only)")
    eff.add_argument("--pseudo-threshold", type=float, default=D.pseudo_threshold, metavar="P",
                     help="confidence above which an unlabelled patient gets a pseudo-label")
    eff.add_argument("--pseudo-weight", type=float, default=D.pseudo_weight, metavar="W",
                     help="weight of the pseudo-label loss")


def _embeddings_item(text: str) -> tuple[str, Path]:
    """``--embeddings [NAME=]H5AD`` -> ``(name, path)``; the name defaults to the file's stem."""
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, Path(path)
    return Path(text).stem, Path(text)


def _embedding_keys(text: str) -> list[str]:
    """``--embedding``: one obsm key, or several comma-separated."""
    from biossl.errors import InputError

    keys = list(dict.fromkeys(k.strip() for k in str(text).split(",") if k.strip()))
    if not keys:
        raise InputError("--embedding is empty; give an obsm key such as X_fused")
    return keys


def _l2(text: str | None, task: str, flag: str = "--l2") -> float | list[float]:
    """``--l2``: the task's default, one penalty, ``auto`` (the grid of inner CV) or a list to choose from."""
    from biossl.downstream.evaluation import l2_penalty

    return l2_penalty(text, task, flag)


def _salt(args: argparse.Namespace) -> bytes | None:
    """The salt of ``--pseudonymize`` (read before any work), else None."""
    from biossl.errors import InputError
    from biossl.privacy import read_salt

    if args.salt_file is not None and not args.pseudonymize:
        raise InputError("--salt-file only applies with --pseudonymize; add it or drop --salt-file")
    return read_salt(args.salt_file) if args.pseudonymize else None


def _parse_list(text: str | None, flag: str, kind: type) -> list[Any]:
    from biossl.errors import InputError

    if text is None:
        return []
    values = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        try:
            values.append(kind(item))
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise InputError(f"{flag}: {item!r} is not {what}; give a comma-separated list such as "
                             f"{'0,1,2' if kind is int else '0.1,0.25,1'}") from None
    if not values:
        raise InputError(f"{flag} is empty; give a comma-separated list")
    return values


def _modes(args: argparse.Namespace) -> list[str]:
    """``--mode`` as a list, checked later by :func:`biossl.downstream.evaluation.check_request`.

    Default: the probe when there are embeddings to probe (``--embeddings``, or ``--checkpoint`` with
    ``--manifest``), else none.
    """
    if args.mode is None:
        can_probe = args.embeddings is not None or (args.checkpoint is not None and args.manifest is not None)
        return ["probe"] if can_probe else []
    return list(dict.fromkeys(m.strip() for m in str(args.mode).split(",") if m.strip())) or [str(args.mode)]


def _check_args(args: argparse.Namespace) -> None:
    """What only the command line can get wrong; the request itself is checked by ``run_evaluation``."""
    from biossl.errors import InputError

    if args.plot is not None and args.label_fractions is None:
        raise InputError("--plot draws the label-efficiency curve: give --label-fractions too")
    if args.seeds is not None and args.label_fractions is None:
        raise InputError("--seeds repeats the label-efficiency runs: give --label-fractions too")


def run(args: argparse.Namespace) -> int:
    """Cross-validate the probe, fine-tuning, scratch and baselines; write the JSON (and the PNG).

    The work is :func:`biossl.downstream.evaluation.run_evaluation` (as :func:`biossl.api.evaluate`).
    """
    from biossl.commands.embed import instance_policy
    from biossl.downstream.evaluation import run_evaluation, write_evaluation
    from biossl.errors import InputError

    modes = _modes(args)
    _check_args(args)
    embedding_keys = _embedding_keys(args.embedding)
    baseline_l2 = _l2(args.baseline_l2, args.task, "--baseline-l2")
    salt = _salt(args)
    fractions = _parse_list(args.label_fractions, "--label-fractions", float)
    seeds = _parse_list(args.seeds, "--seeds", int)
    plot = None
    if fractions:
        plot = args.plot or args.out.with_suffix(".png")
        if plot.resolve() == args.out.resolve():
            raise InputError(f"--plot {plot} is the --out file; give the plot a name of its own")
    settings = FinetuneSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                encoder_lr=args.encoder_lr, weight_decay=args.weight_decay,
                                hidden=None if args.head == "linear" else args.hidden,
                                survival_loss=args.survival_loss, n_bins=args.bins,
                                pseudo_threshold=args.pseudo_threshold, pseudo_weight=args.pseudo_weight)
    components = (_parse_list(args.baseline_components, "--baseline-components", int)
                  if args.baseline_features else 16)
    evaluation = run_evaluation(
        task=args.task, labels=args.labels, modes=modes, embeddings=args.embeddings, keys=embedding_keys,
        label_column=args.label_column, time_column=args.time_column, event_column=args.event_column,
        id_column=args.id_column, unknown_labels=args.unknown_labels, splits=args.splits, folds=args.folds,
        group_by=args.group_by, seed=args.seed, head=args.head, hidden=args.hidden, survival_loss=args.survival_loss,
        bins=args.bins, l2=_l2(args.l2, args.task), baseline_features=args.baseline_features or (),
        baseline_l2=baseline_l2, baseline_components=components, baseline_penalizer=args.baseline_penalizer,
        baseline_kmer=args.baseline_kmer, kmer_canonical=args.kmer_canonical, checkpoint=args.checkpoint,
        manifest=args.manifest, work_dir=args.work_dir, features_dir=args.features_dir, skip_bad=args.skip_bad,
        policy=instance_policy(args), device=args.device, settings=settings, label_fractions=fractions, seeds=seeds,
        semi_supervised=args.semi_supervised, salt=salt, plot_name=plot.name if plot is not None else None)
    write_evaluation(evaluation, args.out, plot)
    print("\n".join(evaluation.summary))
    print(f"-> {args.out}" + (f", {plot}" if plot is not None else ""))
    return 0

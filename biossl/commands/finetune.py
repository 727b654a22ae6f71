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
import json
import logging
from pathlib import Path
from typing import Any

from biossl.downstream.finetune_settings import FinetuneSettings

logger = logging.getLogger(__name__)

#: Default L2 penalty of the probe by task (loss averaged per patient, or per event for Cox).
DEFAULT_L2 = {"subtype": 0.01, "survival": 0.1}
MODES = ("probe", "finetune", "scratch")


#: The library's fine-tuning defaults, the options' defaults (a torch-free module: ``--help`` stays fast).
D = FinetuneSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    parser.add_argument("--embeddings", type=_embeddings_item, action="append", default=None, metavar="[NAME=]H5AD",
                        help="patient embeddings from `biossl embed` for the probe (omit to embed here from "
                             "--checkpoint and --manifest, or to run only baselines). Repeat it as NAME=H5AD to "
                             "probe several runs side by side on the same folds (methods linear_probe:NAME:KEY)")
    parser.add_argument("--embedding", default="X_fused", metavar="KEY[,KEY...]",
                        help="embedding to probe / fine-tune: X_fused (default) or X_<modality> (X_rna, X_wsi, ...); "
                             "several comma-separated keys are probed side by side (probe mode), each as "
                             "linear_probe:<key>, on the patients that have all of them; with several --embeddings "
                             "NAME=H5AD, NAME:KEY probes KEY of that file only (e.g. a:X_rna,c:X_fused)")
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
                       help="user folds: a table patient_id,fold or a folder of PORPOISE splits_{k}.csv; or one "
                            "held-out test set: a table patient_id,split with train/test (dev rows are left out), "
                            "every method trained on train and scored on test")
    folds.add_argument("--folds", type=int, default=5, metavar="K",
                       help="K stratified folds made here (default 5; by class, or by event for survival)")
    parser.add_argument("--group-by", default=None, metavar="COL",
                        help="group-preserving folds, e.g. --group-by site: all patients of one site in one fold, "
                             "so no site is in both training and test (values from the labels table, else the "
                             "embeddings' obs, else the manifest metadata); with --splits, checks they are")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and of the heads (default 0)")
    parser.add_argument("--head", choices=("linear", "mlp"), default="linear", help="probe head (default linear)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of --head mlp (default 64)")
    parser.add_argument("--survival-loss", choices=("cox", "discrete"), default="cox",
                        help="Cox partial likelihood (default) or discrete-time NLL over --bins time bins")
    parser.add_argument("--bins", type=int, default=4, help="time bins of the discrete-time head (default 4)")
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
                        help="PCA components of the baseline (default 16); one per --baseline-features table, or "
                             "one number for all")
    parser.add_argument("--baseline-penalizer", type=float, default=1.0, help="lifelines Cox penalizer (default 1)")
    parser.add_argument("--baseline-kmer", type=int, nargs="?", const=4, default=None, metavar="K",
                        help="k-mer frequencies (length K; 4 when K is omitted) + logistic regression on the "
                             "patients' DNA of --manifest (subtype tasks)")
    parser.add_argument("--kmer-canonical", action="store_true",
                        help="merge each k-mer with its reverse complement (default: strand-specific k-mers)")
    parser.add_argument("--out", type=Path, required=True, metavar="JSON", help="result file (written atomically)")
    parser.add_argument("--pseudonymize", action="store_true",
                        help="write patient IDs in the JSON as HMAC-SHA256 pseudonyms (as `biossl embed "
                             "--pseudonymize`, same salt gives the same pseudonyms)")
    parser.add_argument("--salt-file", type=Path, default=None, metavar="FILE",
                        help="file holding the secret salt of --pseudonymize (default: $BIOSSL_SALT)")
    modes = parser.add_argument_group("modes: probe, fine-tuning, from scratch")
    modes.add_argument("--mode", default=None, metavar="MODES",
                       help="comma-separated: probe (frozen embeddings; default), finetune (train the "
                            "checkpoint's encoders end to end), scratch (same architecture, random weights)")
    modes.add_argument("--checkpoint", type=Path, default=None, metavar="CKPT",
                       help="pretraining checkpoint (finetune, scratch; probe without --embeddings)")
    modes.add_argument("--manifest", type=Path, default=None, metavar="MANIFEST",
                       help="cohort manifest the checkpoint's encoders read (and --baseline-kmer's sequences)")
    modes.add_argument("--work-dir", type=Path, default=None, metavar="DIR",
                       help="tile coordinates and scan cache (default: the pretraining run's for its own "
                       "cohort, else ./biossl_work)")
    modes.add_argument("--features-dir", type=Path, default=None, metavar="DIR",
                       help="cached tile features (checkpoints pretrained with `biossl cache-features`)")
    modes.add_argument("--skip-bad", action="store_true", help="skip unreadable manifest rows with a warning")
    modes.add_argument("--max-tiles", "--max-instances", dest="max_instances", type=int, default=None, metavar="N",
                       help="probe embeddings from --checkpoint: at most N instances per patient and modality, drawn "
                            "with --seed (default: every tile of every slide, as `biossl embed`)")
    modes.add_argument("--device", default="auto", help="auto (CUDA if available, bf16 autocast), cpu, cuda, ...")
    modes.add_argument("--epochs", type=int, default=D.epochs, help=f"finetune/scratch epochs (default {D.epochs})")
    modes.add_argument("--batch-size", type=int, default=D.batch_size, metavar="N",
                       help=f"patients per finetune/scratch step (default {D.batch_size})")
    modes.add_argument("--lr", type=float, default=D.lr,
                       help=f"AdamW learning rate of the projections, pools and head; of everything for scratch "
                            f"(default {D.lr:g})")
    modes.add_argument("--encoder-lr", type=float, default=D.encoder_lr,
                       help=f"learning rate of the pretrained encoders in finetune mode (default {D.encoder_lr:g})")
    modes.add_argument("--weight-decay", type=float, default=D.weight_decay,
                       help=f"AdamW weight decay (default {D.weight_decay:g})")
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
    eff.add_argument("--pseudo-threshold", type=float, default=D.pseudo_threshold,
                     help=f"confidence above which an unlabelled patient gets a pseudo-label (default "
                          f"{D.pseudo_threshold})")
    eff.add_argument("--pseudo-weight", type=float, default=D.pseudo_weight,
                     help=f"weight of the pseudo-label loss (default {D.pseudo_weight:g})")


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


def _probe_features(path: Path, keys: list[str]) -> tuple[dict[str, Any], dict[str, Any], list[str], Any]:
    """``({key: features}, provenance, patients, obs)`` of embeddings of an ``.h5ad`` (read once)."""
    from biossl.downstream.embed import read_embeddings
    from biossl.downstream.methods import feature_frame
    from biossl.errors import InputError

    adata = read_embeddings(path)
    missing = [k for k in keys if k not in adata.obsm]
    if missing:
        raise InputError(f"{path} has no obsm{missing}; it has {sorted(adata.obsm.keys())}: pick with --embedding")
    patients = [str(p) for p in adata.obs_names]
    frames = {key: feature_frame(adata.obsm[key], patients, what=f"{path} obsm[{key!r}]") for key in keys}
    provenance = adata.uns.get("biossl", {})
    info = {"file": path.name, "obsm": keys[0] if len(keys) == 1 else keys,
            **{k: str(provenance[k]) for k in ("checkpoint", "data_fingerprint", "cohort_fingerprint")
               if k in provenance}}
    return frames, info, patients, adata.obs


def _l2(text: str | None, task: str, flag: str = "--l2") -> float | list[float]:
    """``--l2``: the task's default, one penalty, ``auto`` (the grid of inner CV) or a list to choose from."""
    from biossl.downstream.methods import L2_GRID
    from biossl.errors import InputError

    if text is None:
        return DEFAULT_L2[task]
    if text.strip().lower() == "auto":
        return list(L2_GRID)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} {text!r}: give a number, a comma-separated list of numbers, or auto") from None
    if not values or any(not (v >= 0 and v < float("inf")) for v in values):
        raise InputError(f"{flag} {text!r}: penalties must be finite numbers >= 0")
    return values[0] if len(values) == 1 else values


def _salt(args: argparse.Namespace) -> bytes | None:
    """The salt of ``--pseudonymize`` (read before any work), else None."""
    from biossl.errors import InputError
    from biossl.privacy import read_salt

    if args.salt_file is not None and not args.pseudonymize:
        raise InputError("--salt-file only applies with --pseudonymize; add it or drop --salt-file")
    return read_salt(args.salt_file) if args.pseudonymize else None


def _groups(column: str, labels: Any, labels_path: Path,
            sources: list[tuple[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """``patient -> group`` from the labels table's ``column``, else the first other source that has it."""
    from biossl.errors import InputError

    found = [(f"the labels table {labels_path.name}", labels[column])] if column in labels.columns else []
    found += [(where, values) for where, values in sources if values is not None]
    if not found:
        where = ", ".join([f"the labels table {labels_path.name}"] + [w for w, _ in sources])
        raise InputError(f"--group-by {column}: no column {column!r} in {where}; add it to the labels table "
                         "(patient_id, ..., site) or to the manifest metadata")
    where, values = found[0]
    values = values.dropna()
    values = values[values.astype(str).str.strip() != ""]
    return {str(p): str(v) for p, v in values.items()}, {"column": column, "from": where}


def _baseline_features(paths: list[Path]) -> tuple[Any, list[int]]:
    """The tables side by side on the patients present in all of them, and each table's column count."""
    import pandas as pd

    from biossl.data.expression import read_expression
    from biossl.downstream.methods import feature_frame
    from biossl.errors import InputError

    frames = []
    for path in paths:
        adata = read_expression(path, aggregate="mean")
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
        frame = feature_frame(x, [str(p) for p in adata.obs["patient_id"]], what=f"baseline features {path}")
        frames.append(frame.set_axis([f"{path.name}:{g}" for g in adata.var_names], axis=1))
    if len(frames) == 1:
        return frames[0], [frames[0].shape[1]]
    joined = pd.concat(frames, axis=1, join="inner")
    if joined.empty:
        raise InputError(f"--baseline-features {', '.join(map(str, paths))}: no patient is in every table; check "
                         "that the tables share patient IDs")
    dropped = max(len(f) for f in frames) - len(joined)
    if dropped:
        logger.warning("baseline features: %d patient(s) are not in every table and are left out of the baselines",
                       dropped)
    return joined, [f.shape[1] for f in frames]


def _components(text: str, n_tables: int) -> list[int]:
    """``--baseline-components``: one count for every table, or one per table."""
    from biossl.errors import InputError

    values = _parse_list(text, "--baseline-components", int)
    if len(values) == 1:
        values = values * n_tables
    if len(values) != n_tables or min(values) < 1:
        raise InputError(f"--baseline-components {text}: give one positive number, or one per --baseline-features "
                         f"table ({n_tables})")
    return values


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
    from biossl.errors import InputError

    if args.mode is None:
        can_probe = args.embeddings is not None or (args.checkpoint is not None and args.manifest is not None)
        return ["probe"] if can_probe else []
    modes = list(dict.fromkeys(m.strip() for m in str(args.mode).split(",") if m.strip()))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise InputError(f"--mode {args.mode}: unknown mode(s) {unknown}; give one or more of "
                         f"{', '.join(MODES)}, comma-separated (e.g. --mode probe,finetune,scratch)")
    for mode in modes:
        if mode in ("finetune", "scratch") and (args.checkpoint is None or args.manifest is None):
            missing = " and ".join(f for f, v in (("--checkpoint CKPT", args.checkpoint),
                                                  ("--manifest MANIFEST", args.manifest)) if v is None)
            raise InputError(f"--mode {mode} needs {missing}: the pretraining checkpoint whose architecture "
                             f"{'is fine-tuned' if mode == 'finetune' else 'is trained from scratch'} and the "
                             "cohort manifest its encoders read")
    if "probe" in modes and args.embeddings is None and (args.checkpoint is None or args.manifest is None):
        raise InputError("--mode probe needs --embeddings H5AD (from `biossl embed`), or --checkpoint CKPT and "
                         "--manifest MANIFEST to embed the cohort here")
    return modes


def _check_args(args: argparse.Namespace, modes: list[str]) -> None:
    from biossl.downstream.kmers import MAX_K
    from biossl.downstream.methods import SURVIVAL_PSEUDO_LABELS
    from biossl.errors import InputError

    if args.task == "subtype" and not args.label_column:
        raise InputError("--task subtype needs --label-column COL (the labels table's class column)")
    if not modes and not args.baseline_features and args.baseline_kmer is None:
        raise InputError("nothing to evaluate: give --embeddings (from `biossl embed`), --checkpoint with --manifest "
                         "and --mode, --baseline-features and/or --baseline-kmer")
    if args.semi_supervised:
        if args.task != "subtype":
            raise InputError(SURVIVAL_PSEUDO_LABELS)
        if not {"probe", "finetune"} & set(modes):
            raise InputError("--semi-supervised adds pseudo-labelled variants of --mode probe and finetune; "
                             "give one of those modes")
    if args.baseline_kmer is not None:
        if args.task != "subtype":
            raise InputError("--baseline-kmer is a classification baseline (k-mer logistic regression); use it with "
                             "--task subtype")
        if args.manifest is None:
            raise InputError("--baseline-kmer needs --manifest MANIFEST: the cohort whose DNA sequence files are "
                             "counted")
        if not 1 <= args.baseline_kmer <= MAX_K:
            raise InputError(f"--baseline-kmer must be between 1 and {MAX_K} (4**K features); got "
                             f"{args.baseline_kmer}")
    if getattr(args, "max_instances", None) is not None and args.checkpoint is None:
        raise InputError("--max-tiles applies to probe embeddings computed from --checkpoint; the embeddings of "
                         "--embeddings were computed by `biossl embed` (give it --max-tiles there)")
    if args.plot is not None and args.label_fractions is None:
        raise InputError("--plot draws the label-efficiency curve: give --label-fractions too")
    if args.seeds is not None and args.label_fractions is None:
        raise InputError("--seeds repeats the label-efficiency runs: give --label-fractions too")


def run(args: argparse.Namespace) -> int:
    """Cross-validate the probe, fine-tuning, scratch and baselines; write the JSON (and the PNG)."""
    import pandas as pd

    from biossl import __version__
    from biossl.data.labels import MAX_NAMED, read_labels
    from biossl.data.splits import is_held_out, read_splits, scored_folds
    from biossl.downstream.cv import (
        check_fraction,
        common_patients,
        cross_validate,
        folds_for,
        label_efficiency,
        label_efficiency_table,
        metric_names,
        summary_table,
    )
    from biossl.downstream.methods import AllFeaturesLinear, LinearProbe, Method, PCABaseline, feature_frame
    from biossl.downstream.tasks import subtype_task, survival_task
    from biossl.errors import InputError
    from biossl.io import atomic_outputs, jsonable, write_text_atomic

    modes = _modes(args)
    _check_args(args, modes)
    embedding_keys = _embedding_keys(args.embedding)
    if len(embedding_keys) > 1 and {"finetune", "scratch"} & set(modes):
        raise InputError(f"--embedding {args.embedding}: --mode finetune and scratch train one embedding; give one key "
                         "(several keys are for the probe)")
    baseline_l2 = _l2(args.baseline_l2, args.task, "--baseline-l2")
    salt = _salt(args)
    fractions = sorted(set(_parse_list(args.label_fractions, "--label-fractions", float)))
    for fraction in fractions:
        check_fraction(fraction)
    seeds = list(dict.fromkeys(_parse_list(args.seeds, "--seeds", int))) or [args.seed]

    methods: list[Method] = []
    inputs: dict[str, Any] = {"labels": args.labels.name}
    known: set[str] = set()
    sources: list[str] = []
    bags = None
    device: Any = None  # resolved with the cohort's bags, the only methods that run a model
    cohort: Any = None  # the manifest's cohort, when some method reads it
    settings = None
    group_sources: list[tuple[str, Any]] = []
    if {"finetune", "scratch"} & set(modes) or ("probe" in modes and args.embeddings is None):
        from biossl.device import resolve_device
        from biossl.downstream.finetuning import CohortBags

        device = resolve_device(args.device)  # a bad --device fails before the checkpoint is read
        settings = FinetuneSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                    encoder_lr=args.encoder_lr, weight_decay=args.weight_decay,
                                    hidden=None if args.head == "linear" else args.hidden,
                                    survival_loss=args.survival_loss, n_bins=args.bins,
                                    pseudo_threshold=args.pseudo_threshold, pseudo_weight=args.pseudo_weight)
        settings.check()
        from biossl.commands.embed import instance_policy

        bags = CohortBags(args.checkpoint, args.manifest, work_dir=args.work_dir, features_dir=args.features_dir,
                          skip_bad=args.skip_bad, seed=args.seed, policy=instance_policy(args))
        for key in embedding_keys:
            bags.modalities_for(key)  # a bad --embedding fails before any fit
        known |= set(bags.dataset.patients)
        sources.append(f"the cohort {args.manifest}")
        inputs.update(checkpoint=args.checkpoint.name, manifest=args.manifest.name)
    if "probe" in modes:
        probe_name = f"{'linear' if args.head == 'linear' else 'mlp'}_probe"
        if args.embeddings is not None:
            frames: dict[str, Any] = {}
            infos: list[dict[str, Any]] = []
            patients: list[str] = []
            names = [name for name, _ in args.embeddings]
            if len(set(names)) < len(names):
                raise InputError(f"--embeddings: the names {names} repeat; give each file its own NAME=H5AD")
            unknown = sorted({k.split(":", 1)[0] for k in embedding_keys if ":" in k} - set(names))
            if unknown:
                raise InputError(f"--embedding {args.embedding}: {unknown} name no --embeddings NAME=H5AD (names: "
                                 f"{names}); qualify a key as NAME:KEY to probe it in one file only")
            for name, path in args.embeddings:
                own = [k.split(":", 1)[1] for k in embedding_keys if k.startswith(f"{name}:")]
                keys = list(dict.fromkeys([*(k for k in embedding_keys if ":" not in k), *own]))
                if not keys:
                    continue
                found, info, rows, obs = _probe_features(path, keys)
                prefix = "" if len(args.embeddings) == 1 else f"{name}:"
                frames.update({prefix + key: frame for key, frame in found.items()})
                infos.append(info if len(args.embeddings) == 1 else {"name": name, **info})
                patients = list(dict.fromkeys([*patients, *rows]))
                if args.group_by is not None:
                    group_sources.append((f"the embeddings {path.name}",
                                          obs[args.group_by].rename(index=str) if args.group_by in obs.columns
                                          else None))
                sources.append(f"the embeddings {path}")
            inputs["embeddings"] = infos[0] if len(infos) == 1 else infos
        else:
            assert bags is not None
            frames = {}
            for key in embedding_keys:
                frame = bags.embeddings(key, device=device)
                frames[key] = feature_frame(frame.to_numpy(), list(frame.index), what=f"{key} of {args.checkpoint}")
                patients = list(frame.index)
            inputs["embeddings"] = {"computed_from": args.checkpoint.name,
                                    "obsm": embedding_keys[0] if len(embedding_keys) == 1 else embedding_keys,
                                    "instances": bags.policy.describe()}
        known |= set(patients)
        l2 = _l2(args.l2, args.task)
        probe_kw: dict[str, Any] = dict(hidden=None if args.head == "linear" else args.hidden,
                                        survival_loss=args.survival_loss, n_bins=args.bins, l2=l2)
        for key, features in frames.items():
            name = probe_name if len(frames) == 1 else f"{probe_name}:{key}"
            methods.append(LinearProbe(features, name=name, **probe_kw))
            if args.semi_supervised:
                methods.append(LinearProbe(features, name=f"{name}+pl", semi_supervised=True,
                                           pseudo_threshold=args.pseudo_threshold, pseudo_weight=args.pseudo_weight,
                                           **probe_kw))
    for mode in ("finetune", "scratch"):
        if mode in modes:
            from biossl.downstream.finetuning import EncoderFinetune

            assert bags is not None and settings is not None
            methods.append(EncoderFinetune(bags, mode="finetune" if mode == "finetune" else "scratch",
                                           embedding=args.embedding, settings=settings, device=device))
            if mode == "finetune" and args.semi_supervised:
                methods.append(EncoderFinetune(bags, mode="finetune", embedding=args.embedding, settings=settings,
                                               semi_supervised=True, device=device))
    if args.baseline_features:
        raw, blocks = _baseline_features(args.baseline_features)
        tables = ", ".join(p.name for p in args.baseline_features)
        inputs["baseline_features"] = tables if len(blocks) == 1 else [p.name for p in args.baseline_features]
        kind = "cox" if args.task == "survival" else "logreg"
        components = _components(args.baseline_components, len(blocks))
        methods.append(PCABaseline(raw, n_components=components, blocks=blocks, penalizer=args.baseline_penalizer,
                                   name=f"pca{'+'.join(map(str, components))}_{kind}", source=tables))
        methods.append(AllFeaturesLinear(raw, name=f"linear_all_{kind}", source=tables, l2=baseline_l2))
        known |= set(map(str, raw.index))
        sources.append(f"the baseline features {tables}")
    if args.baseline_kmer is not None:
        from biossl.data.cohort import Cohort
        from biossl.downstream.kmers import KmerBaseline, patient_kmer_frequencies

        cohort = bags.cohort if bags is not None else Cohort.from_manifest(args.manifest, skip_bad=args.skip_bad)
        kmers = patient_kmer_frequencies(cohort, args.baseline_kmer, canonical=args.kmer_canonical)
        methods.append(KmerBaseline(kmers, k=args.baseline_kmer, canonical=args.kmer_canonical))
        inputs.setdefault("manifest", args.manifest.name)
        known |= set(cohort.patients)
        sources.append(f"the cohort {args.manifest}")

    labels = read_labels(args.labels, patients=sorted(known), patients_from=" and ".join(dict.fromkeys(sources)),
                         unknown=args.unknown_labels, id_column=args.id_column)
    if args.task == "subtype":
        task = subtype_task(labels, args.label_column, source=args.labels)
    else:
        task = survival_task(labels, args.time_column, args.event_column, source=args.labels)
    unlabelled = sorted(known - set(task.patients))
    task = common_patients(task, methods)
    for reason, left in task.excluded.items():
        if left and reason.startswith("no_input"):
            logger.warning("%d labelled patient(s) lack the inputs of %s and are left out of every method, e.g. %s",
                           len(left), reason.split(":", 1)[1], left[:MAX_NAMED])
    groups = None
    if args.group_by is not None:
        cohort = bags.cohort if bags is not None else cohort
        if cohort is not None:
            meta = cohort.metadata
            group_sources.append((f"the manifest {args.manifest.name}",
                                  meta[args.group_by] if args.group_by in meta.columns else None))
        groups, inputs["group_by"] = _groups(args.group_by, labels, args.labels, group_sources)
    splits = read_splits(args.splits) if args.splits is not None else None
    task, folds = folds_for(task, splits=splits, n_folds=args.folds, seed=args.seed,
                            source=str(args.splits) if args.splits is not None else "", groups=groups,
                            group_name=args.group_by or "group")
    if args.semi_supervised:
        logger.info("semi-supervised: %d patient(s) without a label join training, plus the labels each fraction "
                    "drops", len(unlabelled))
    pool = unlabelled if args.semi_supervised else []

    efficiency: dict[str, Any] | None = None
    plot_path = None
    if fractions:
        plot_path = args.plot or args.out.with_suffix(".png")
        if plot_path.resolve() == args.out.resolve():
            raise InputError(f"--plot {plot_path} is the --out file; give the plot a name of its own")
        efficiency, runs = label_efficiency(task, methods, folds, fractions, seeds, unlabelled=pool)
        results = runs.get((1.0, args.seed)) or cross_validate(task, methods, folds, seed=args.seed, unlabelled=pool)
        plot_title = (f"{args.task}: {len(task)} patients; mean ± sd over {len(scored_folds(folds))} folds x "
                      f"{len(seeds)} seed(s)")
        efficiency["plot"] = Path(plot_path).name
    else:
        results = cross_validate(task, methods, folds, seed=args.seed, unlabelled=pool)

    held_out = is_held_out(folds)
    fold_info: dict[str, Any] = {
        "source": args.splits.name if args.splits is not None else f"{args.folds} stratified folds made with seed "
        f"{args.seed}", "n_folds": len(scored_folds(folds))}
    if groups is not None:
        fold_info["grouped_by"] = {**inputs["group_by"],
                                   "n_groups": len({groups[p] for p in folds["patient_id"]}),
                                   "note": f"every {args.group_by} value is in one fold: none is in both the "
                                           "training and the test patients of a fold"}
    if held_out:
        fold_info["design"] = ("held-out test set: fold -1 = split train (always trained on), fold 0 = split test "
                               "(scored); dev patients left out")
        fold_info["n_train"] = int((folds["fold"] == -1).sum())
        fold_info["n_test"] = int((folds["fold"] != -1).sum())
    report: dict[str, Any] = {
        "biossl_version": __version__,
        "inputs": inputs,
        "modes": modes,
        **task.describe(),
        "folds": {**fold_info, "assignment": dict(zip(folds["patient_id"], folds["fold"].astype(int)))},
        "excluded": {reason: {"n": len(p), "patients": p} for reason, p in task.excluded.items()},
        "metric_sd": "sample sd over folds (ddof 1); folds where a metric is undefined are left out (n_folds)",
        "methods": results,
    }
    if args.semi_supervised:
        report["unlabelled"] = {"n": len(unlabelled), "patients": unlabelled,
                                "note": "patients with inputs but no usable label; with label fractions, each fit "
                                        "also gets the training labels its fraction drops"}
    if efficiency is not None:
        report["label_efficiency"] = efficiency
    if salt is not None:
        from biossl.privacy import hide_identifiers, pseudonymize_record

        # Only the sections that hold patients: numbers elsewhere (fractions, seeds, folds) must stay.
        ids = known | set(map(str, labels.index))
        for section in ("folds", "excluded", "unlabelled"):
            if section in report:
                report[section] = pseudonymize_record(report[section], ids, salt)
        # Elsewhere (file names in inputs, the plot's name, notes): a text holding an identifier is hidden.
        report, hidden = hide_identifiers(report, ids)
        report["pseudonymized"] = "patient IDs replaced by HMAC-SHA256 pseudonyms (biossl.privacy)"
        if hidden:
            report["pseudonymized_hidden"] = hidden
            logger.warning("pseudonymised report: %d text(s) held a patient identifier and are hidden: %s",
                           len(hidden), ", ".join(hidden))
    text = json.dumps(jsonable(report), indent=1) + "\n"
    if plot_path is None or efficiency is None:
        write_text_atomic(args.out, text)
    else:  # the plot and the JSON naming it land together, the JSON last (biossl.io.atomic_outputs)
        from biossl.downstream.plots import plot_label_efficiency

        with atomic_outputs(plot_path, args.out) as (png_tmp, json_tmp):
            plot_label_efficiency(efficiency, png_tmp, title=plot_title)
            json_tmp.write_text(text)
    table = summary_table(results, metric_names(task))
    described = task.describe()
    extra = (f", {described['n_events']} events" if "n_events" in described
             else f", classes {described.get('classes')}")
    design = (f"held-out test set ({fold_info['n_train']} train, {fold_info['n_test']} test; {fold_info['source']})"
              if held_out else f"{fold_info['n_folds']} folds ({fold_info['source']})")
    print(f"{args.task}: {len(task)} patients{extra}; {design}")
    with pd.option_context("display.width", 200):
        print(table.to_string(index=False))
        if efficiency is not None:
            print(f"label efficiency, {efficiency['metric']} (mean ± sd over folds x seeds {seeds}):")
            print(label_efficiency_table(efficiency).to_string(index=False))
    print(f"-> {args.out}" + (f", {plot_path}" if plot_path is not None else ""))
    return 0

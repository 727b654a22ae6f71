"""``biossl embed --checkpoint CKPT --manifest MANIFEST --out embeddings.h5ad``: patient embeddings as AnnData.

Every tissue tile of every slide (every instance of each modality) is embedded by default; ``--max-tiles N``
samples N per patient and modality. See :mod:`biossl.downstream.embed` for the layout, the instances and the
fusion, and :mod:`biossl.privacy` for ``--pseudonymize`` (patient IDs replaced by keyed hashes, identifying
columns dropped, nothing written that maps back).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from biossl.data.bags import InstancePolicy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                        help="checkpoint written by `biossl pretrain` (e.g. <run>/checkpoints/last.ckpt)")
    parser.add_argument("--manifest", type=Path, required=True, metavar="MANIFEST",
                        help="cohort manifest (CSV/TSV/Parquet): patient_id, modality, path, metadata")
    parser.add_argument("--out", type=Path, required=True, metavar="H5AD",
                        help="output .h5ad (written atomically; a full disk: one line, exit code 74)")
    parser.add_argument("--labels", type=Path, default=None, metavar="CSV",
                        help="per-patient labels table; its columns are added to obs")
    parser.add_argument("--id-column", default="patient_id", help="patient column of --labels (default patient_id)")
    parser.add_argument("--unknown-labels", choices=("error", "drop"), default="error",
                        help="labelled patients that the manifest lacks: fail (default) or drop them with a warning")
    parser.add_argument("--work-dir", type=Path, default=None, metavar="DIR",
                        help="tile coordinates and scan cache (default: the pretraining run's for its own "
                        "cohort, else ./biossl_work)")
    parser.add_argument("--features-dir", type=Path, default=None, metavar="DIR",
                        help="cached tile features (checkpoints pretrained with `biossl cache-features`)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="kept for scripts; instances are encoded --chunk-size at a time (default 8)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers reading tiles and scans")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-tiles sample (default 0)")
    add_instance_arguments(parser)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable manifest rows with a warning")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--pseudonymize", action="store_true",
                        help="replace patient IDs by HMAC-SHA256 pseudonyms keyed by a secret salt and drop "
                             "identifying obs columns (see biossl.privacy)")
    parser.add_argument("--salt-file", type=Path, default=None, metavar="FILE",
                        help="file holding the secret salt of --pseudonymize (default: $BIOSSL_SALT)")
    parser.add_argument("--keep-obs", action="append", default=[], metavar="COLUMN",
                        help="with --pseudonymize, also keep this manifest column in obs (repeatable)")


def add_instance_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, chunk: bool = True) -> None:
    """``--max-tiles``/``--max-instances`` (and ``--chunk-size``): which instances a patient's embedding uses."""
    parser.add_argument("--max-tiles", "--max-instances", dest="max_instances", type=int, default=None, metavar="N",
                        help="use at most N instances per patient and modality (tiles across all of its slides, "
                             "scan grid patches, DNA windows, table rows), drawn with --seed; default: every "
                             "instance (every tissue tile of every slide)")
    if chunk:
        parser.add_argument("--chunk-size", type=int, default=256, metavar="N",
                            help="instances read and encoded per forward pass (default 256; memory grows with it, "
                                 "not with a slide's tile count)")


def instance_policy(args: argparse.Namespace) -> InstancePolicy:
    """The :class:`~biossl.data.bags.InstancePolicy` of ``--max-tiles`` and ``--chunk-size`` (checked).

    Raises:
        InputError: ``--max-tiles`` or ``--chunk-size`` below 1.
    """
    from biossl.data.bags import InstancePolicy
    from biossl.downstream.embed import DEFAULT_CHUNK_SIZE
    from biossl.errors import InputError

    limit, chunk = getattr(args, "max_instances", None), getattr(args, "chunk_size", DEFAULT_CHUNK_SIZE)
    if limit is not None and limit < 1:
        raise InputError(f"--max-tiles (--max-instances) must be at least 1; got {limit} (leave it out to use every "
                         "tile of every slide)")
    if chunk < 1:
        raise InputError(f"--chunk-size must be at least 1; got {chunk}")
    return InstancePolicy(max_instances=limit, chunk_size=chunk)


def run(args: argparse.Namespace) -> int:
    """Embed the cohort and write the AnnData."""
    from biossl.device import resolve_device
    from biossl.downstream.embed import embed_cohort, obsm_key, write_embeddings
    from biossl.errors import InputError
    from biossl.privacy import pseudonymize_obs, read_salt
    from biossl.threads import cap_workers

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1; got {args.batch_size}")
    policy = instance_policy(args)
    if (args.salt_file is not None or args.keep_obs) and not args.pseudonymize:
        raise InputError("--salt-file and --keep-obs only apply with --pseudonymize; add it or drop them")
    salt = read_salt(args.salt_file) if args.pseudonymize else None  # fail before any work
    num_workers = cap_workers(args.num_workers, "--num-workers")
    device = resolve_device(args.device)  # a bad --device fails before the checkpoint is read
    adata = embed_cohort(args.checkpoint, args.manifest, work_dir=args.work_dir, labels=args.labels,
                         id_column=args.id_column, unknown_labels=args.unknown_labels, batch_size=args.batch_size,
                         num_workers=num_workers, seed=args.seed, features_dir=args.features_dir,
                         skip_bad=args.skip_bad, device=device, policy=policy)
    if salt is not None:
        adata = pseudonymize_obs(adata, salt, keep=args.keep_obs)
    write_embeddings(adata, args.out)
    modalities = adata.uns["biossl"]["modalities"]
    counts = ", ".join(f"{m} {int(adata.obs[f'has_{m}'].sum())}" for m in modalities)
    print(f"{adata.n_obs} patients x {adata.uns['biossl']['embed_dim']} dims -> {args.out}")
    print(f"  patients per modality: {counts}")
    used = ", ".join(f"{m} {int(adata.obs[f'n_instances_{m}'].sum())}" for m in modalities
                     if f"n_instances_{m}" in adata.obs)
    if used:
        print(f"  instances used ({adata.uns['biossl']['instances']['policy']}): {used}")
    print(f"  obsm: {', '.join(['X_fused'] + [obsm_key(m) for m in modalities])}")
    if salt is not None:
        said = adata.uns["biossl"]["pseudonymized"]
        print(f"  pseudonymised: patient IDs -> HMAC-SHA256 pseudonyms; obs columns kept: "
              f"{', '.join(said['kept_columns']) or 'none'}; dropped: {', '.join(said['dropped_columns']) or 'none'}")
    return 0

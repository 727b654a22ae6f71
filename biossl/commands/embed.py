"""``biossl embed --checkpoint CKPT --manifest MANIFEST --out embeddings.h5ad``: patient embeddings as AnnData.

Every tissue tile of every slide (every instance of each modality) is embedded by default; ``--max-tiles N``
samples N per patient and modality. See :mod:`biossl.downstream.embed` for the layout, the instances and the
fusion, and :mod:`biossl.privacy` for ``--pseudonymize`` (patient IDs replaced by keyed hashes, identifying
columns dropped, nothing written that maps back).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from biossl.data.bags import InstancePolicy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    from biossl.commands.options import add_shared

    add_shared(parser, "checkpoint", "manifest", "out", "labels", required=("checkpoint", "manifest", "out"),
               help={"out": "output .h5ad (written atomically; a full disk: one line, exit code 74)",
                     "labels": "per-patient labels table; its columns are added to obs"})
    parser.add_argument("--id-column", default="patient_id", metavar="COL", help="patient column of --labels")
    parser.add_argument("--unknown-labels", choices=("error", "drop"), default="error",
                        help="labelled patients that the manifest lacks: fail (error) or drop them with a warning")
    add_shared(parser, "work_dir", "features_dir", "batch_size", "num_workers", "seed",
               help={"batch_size": "kept for scripts; instances are encoded --chunk-size at a time",
                     "seed": "seed of the --max-tiles sample"})
    add_instance_arguments(parser)
    add_shared(parser, "skip_bad", "device", "pseudonymize", "salt_file",
               help={"pseudonymize": "replace patient IDs by HMAC-SHA256 pseudonyms keyed by a secret salt and drop "
                                     "identifying obs columns (see biossl.privacy)"})
    parser.add_argument("--keep-obs", action="append", default=[], metavar="COLUMN",
                        help="with --pseudonymize, also keep this manifest column in obs (repeatable)")


def add_instance_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, chunk: bool = True) -> None:
    """``--max-tiles``/``--max-instances`` (and ``--chunk-size``): which instances a patient's embedding uses."""
    from biossl.commands.options import add_shared

    add_shared(parser, "max_instances")
    if chunk:
        parser.add_argument("--chunk-size", type=int, default=256, metavar="N",
                            help="instances read and encoded per forward pass (memory grows with it, not with a "
                                 "slide's tile count)")


def instance_policy(args: argparse.Namespace) -> InstancePolicy:
    """The :class:`~biossl.data.bags.InstancePolicy` of ``--max-tiles`` and ``--chunk-size`` (checked).

    Raises:
        InputError: ``--max-tiles`` or ``--chunk-size`` below 1.
    """
    from biossl.downstream.embed import DEFAULT_CHUNK_SIZE, instance_policy_of

    return instance_policy_of(getattr(args, "max_instances", None), getattr(args, "chunk_size", DEFAULT_CHUNK_SIZE))


def run(args: argparse.Namespace) -> int:
    """Embed the cohort (:func:`biossl.api.embed`) and write the AnnData."""
    from biossl.api import embed
    from biossl.downstream.embed import DEFAULT_CHUNK_SIZE, obsm_key
    from biossl.errors import InputError
    from biossl.privacy import read_salt

    if (args.salt_file is not None or args.keep_obs) and not args.pseudonymize:
        raise InputError("--salt-file and --keep-obs only apply with --pseudonymize; add it or drop them")
    salt = read_salt(args.salt_file) if args.pseudonymize else None  # fail before any work
    adata = embed(args.checkpoint, args.manifest, labels=args.labels, id_column=args.id_column,
                  unknown_labels=args.unknown_labels, work_dir=args.work_dir, features_dir=args.features_dir,
                  device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
                  skip_bad=args.skip_bad, max_tiles=getattr(args, "max_instances", None),
                  chunk_size=getattr(args, "chunk_size", DEFAULT_CHUNK_SIZE), seed=args.seed, salt=salt,
                  keep_obs=args.keep_obs, out=args.out)
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

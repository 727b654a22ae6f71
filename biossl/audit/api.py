"""The audit as one Python call (:func:`audit`): ``biossl audit`` and ``biossl.audit(...)`` both run it.

It lives in the audit layer so that the package :mod:`biossl.audit` itself can be called as this
function (``biossl.audit(adata, ["site"])``) without the audit importing anything above it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biossl.errors import InputError

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

logger = logging.getLogger(__name__)


def audit(
    embeddings: ad.AnnData | str | Path | None,
    columns: str | Sequence[str],
    *,
    label: str | None = None,
    keys: str | Sequence[str] | None = None,
    checkpoint: str | Path | None = None,
    manifest: str | Path | None = None,
    labels: str | Path | pd.DataFrame | None = None,
    device: str = "auto",
    work_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    skip_bad: bool = False,
    max_tiles: int | None = None,
    chunk_size: int | None = None,
    seed: int = 0,
    artifacts: bool = False,
    salt: bytes | None = None,
    out: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Audit embeddings: do they encode the biology, or the site, the scanner and the batch.

    For every embedding key and every nuisance column, a grouped linear probe and a kNN probe with
    exact permutation p-values, batch-mixing metrics and a PCA; the verdict (pass, fail, incomplete)
    and how it was reached are described in :mod:`biossl.audit.run`. What ``biossl audit`` does.

    Args:
        embeddings: An AnnData as ``biossl embed`` writes it (not changed: labels join a copy), or an
            ``.h5ad`` path; ``None`` to embed the cohort of ``manifest`` with ``checkpoint`` first.
        columns: ``obs`` columns to audit (``"site"``, ``["site", "scanner"]`` or ``"site,scanner"``).
        label: Biology label column probed side by side (red flags: a site easier to read than it).
        keys: ``obsm`` keys to audit (default: ``X_fused`` and every ``X_<modality>``).
        checkpoint: Pretraining checkpoint: embed ``manifest`` with it (``embeddings=None``), or with
            ``artifacts=True`` re-embed corrupted inputs.
        manifest: The cohort manifest (with ``checkpoint``).
        labels: Per-patient labels table (file or DataFrame) whose columns join ``obs``; labelled
            patients absent from the embeddings are dropped with a warning.
        device: Where a checkpoint embeds (``"auto"``: CUDA if available, ``"cpu"``, ``"cuda:1"``).
        work_dir: Tile coordinates and scan cache of the cohort (with ``checkpoint``).
        features_dir: Cached tile features (checkpoints pretrained with ``biossl cache-features``).
        skip_bad: Skip unreadable manifest rows with a warning.
        max_tiles: Embeddings from ``checkpoint``: at most this many instances per patient and modality.
        chunk_size: Instances encoded per forward pass (default 256).
        seed: Seed of the folds, permutations, samples (and of ``max_tiles``' draw).
        artifacts: Also run the synthetic artifact probes (needs ``checkpoint`` and ``manifest``).
        salt: Secret salt: write the result as pseudonymised (see :mod:`biossl.privacy`); columns holding
            patient identifiers are refused.
        out: Folder: also write ``out/audit.json`` and ``out/report.html`` (together, atomically).
        **options: Passed to :func:`biossl.audit.run.audit_embeddings`: ``alpha``, ``max_excess``,
            ``n_permutations``, ``n_folds``, ``k``, ``group_column``, ``fail_on_red_flag``, ``command``, ...

    Returns:
        The JSON-safe result (``verdict``, ``verdicts``, ``keys``, ``red_flags``, ...), as ``audit.json``
        holds it; :func:`biossl.audit.run.exit_code` gives the verb's exit code.

    Raises:
        InputError: contradictory or missing inputs, unknown columns or keys, a column that cannot be
            tested at all, bad settings.

    Examples:
        >>> import biossl
        >>> result = biossl.audit("embeddings.h5ad", ["site"], label="subtype",
        ...                       n_permutations=999, out="audit/")       # doctest: +SKIP
        >>> result["verdict"], [r for r in result["verdicts"] if r["verdict"] == "fail"]  # doctest: +SKIP
        >>> biossl.audit(None, "site", checkpoint="last.ckpt", manifest="manifest.csv",
        ...              device="cuda")                                   # doctest: +SKIP
    """
    from biossl.audit.run import audit_embeddings, write_audit

    columns = [c.strip() for c in columns.split(",") if c.strip()] if isinstance(columns, str) else list(columns)
    keys = [k.strip() for k in keys.split(",") if k.strip()] if isinstance(keys, str) else keys
    _check_inputs(embeddings, checkpoint, manifest, artifacts, max_tiles)
    policy = _policy(max_tiles, chunk_size)
    loaded = None  # the checkpoint and the cohort, opened once for the embeddings and the artifact probes
    if embeddings is None:
        assert checkpoint is not None and manifest is not None
        adata, loaded = _embed(checkpoint, manifest, labels=labels, device=device, work_dir=work_dir,
                               features_dir=features_dir, skip_bad=skip_bad, seed=seed, policy=policy)
        source = f"the embeddings of {manifest} by {checkpoint}"
    else:
        adata, source = _open(embeddings)
        if labels is not None:
            join_labels(adata, labels, source)
    if salt is not None:  # before the probes: the report prints each patient's value of these columns
        from biossl.privacy import refuse_identifying_columns

        refuse_identifying_columns(adata, columns, flag="--columns", output="audit.json and report.html")
        refuse_identifying_columns(adata, [label], flag="--label", output="audit.json and report.html")
    if checkpoint is not None:
        options.setdefault("checkpoint", checkpoint)
        if embeddings is None:  # embedded here: the hash embed recorded, not a second read of the file
            options.setdefault("checkpoint_sha256", adata.uns.get("biossl", {}).get("checkpoint_sha256"))
    result = audit_embeddings(adata, columns, label=label, keys=keys, seed=seed, source=source, **options)
    if artifacts:
        result["artifacts"] = _artifacts(adata, label, loaded, checkpoint, manifest, work_dir=work_dir,
                                         features_dir=features_dir, skip_bad=skip_bad, seed=seed, device=device)
    if salt is not None:
        # audit.json and report.html hold aggregates only (scores per column, PCA points without names):
        # no patient ID to replace, which the privacy tests check.
        from biossl.privacy import hide_identifiers

        result["pseudonymized"] = "the audit holds no patient IDs (aggregates and unnamed points only)"
        result, hidden = hide_identifiers(result, adata.obs_names)  # file names (the source) holding an ID
        if hidden:
            result["pseudonymized_hidden"] = hidden
    if out is not None:
        write_audit(result, out)
    return result


def _check_inputs(embeddings: Any, checkpoint: Any, manifest: Any, artifacts: bool, max_tiles: int | None) -> None:
    if embeddings is None and checkpoint is None:
        raise InputError("give either --embeddings H5AD (embeddings=) or --checkpoint CKPT with --manifest MANIFEST")
    if embeddings is not None and checkpoint is not None and not artifacts:
        raise InputError("give either --embeddings H5AD or --checkpoint CKPT with --manifest MANIFEST, not both "
                         "(both only with --artifacts: the embeddings are audited, the checkpoint re-embeds corrupted "
                         "inputs)")
    if artifacts and checkpoint is None:
        raise InputError("--artifacts corrupts the cohort's inputs and re-embeds them: it needs --checkpoint and "
                         "--manifest")
    if checkpoint is not None and manifest is None:
        raise InputError("--checkpoint needs --manifest (the cohort to embed)")
    if checkpoint is None and manifest is not None:
        raise InputError("--manifest goes with --checkpoint; the embeddings from `biossl embed` already hold the "
                         "manifest metadata")
    if max_tiles is not None and embeddings is not None:
        raise InputError("--max-tiles applies to embeddings computed from --checkpoint; the embeddings of --embeddings "
                         "were computed by `biossl embed` (give it --max-tiles there)")


def _policy(max_tiles: int | None, chunk_size: int | None) -> Any:
    from biossl.downstream.embed import DEFAULT_CHUNK_SIZE, instance_policy_of

    return instance_policy_of(max_tiles, DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size)


def _open(embeddings: Any) -> tuple[Any, str]:
    """A copy of an AnnData (labels join it, not the caller's), or the read ``.h5ad``, and its name."""
    import anndata as ad

    from biossl.downstream.embed import read_embeddings

    if isinstance(embeddings, ad.AnnData):
        return embeddings.copy(), "(AnnData)"
    return read_embeddings(embeddings), str(embeddings)


def _embed(checkpoint: str | Path, manifest: str | Path, *, labels: Any, device: str, work_dir: Any,
           features_dir: Any, skip_bad: bool, seed: int, policy: Any) -> tuple[Any, Any]:
    """Embed the cohort on ``device`` (labels joined, unknown ones dropped); also return the loaded cohort."""
    from biossl.device import resolve_device
    from biossl.downstream.embed import embed_loaded, load_cohort
    from biossl.downstream.evaluation import table_path

    resolved = resolve_device(device)  # a bad device fails before the checkpoint is read
    loaded = load_cohort(checkpoint, manifest, work_dir=work_dir, features_dir=features_dir, skip_bad=skip_bad,
                         seed=seed, policy=policy)
    if labels is None:
        return embed_loaded(loaded, device=resolved), loaded
    with table_path(labels, "labels") as path:
        return embed_loaded(loaded, labels=path, unknown_labels="drop", device=resolved), loaded


def _artifacts(adata: Any, label: str | None, loaded: Any, checkpoint: Any, manifest: Any, *, work_dir: Any,
               features_dir: Any, skip_bad: bool, seed: int, device: str) -> Any:
    """The synthetic artifact probes on the cohort (opened now when the audited embeddings came as a file)."""
    import pandas as pd

    from biossl.audit.artifacts import artifact_audit
    from biossl.device import resolve_device
    from biossl.downstream.embed import load_cohort

    if loaded is None:  # audited embeddings given: open the cohort now
        loaded = load_cohort(checkpoint, manifest, work_dir=work_dir, features_dir=features_dir, skip_bad=skip_bad,
                             seed=seed)
    # Stability uses the biology label as the audited embeddings hold it (from labels or `biossl embed`).
    labels = (None if label is None or label not in adata.obs.columns else
              {str(p): (None if pd.isna(v) else v) for p, v in adata.obs[label].items()})
    return artifact_audit(loaded.module, loaded.dataset, labels=labels, seed=seed, device=resolve_device(device))


def join_labels(adata: Any, labels: Any, source: str) -> None:
    """Add a labels table's columns to ``adata.obs`` (a column already there must hold the same values).

    Raises:
        InputError: an unreadable table, or a column it shares with ``obs`` holding other values.
    """
    import pandas as pd

    from biossl.data.labels import read_labels
    from biossl.downstream.evaluation import table_path

    patients = [str(p) for p in adata.obs_names]
    with table_path(labels, "labels") as path:
        name = path if not isinstance(labels, pd.DataFrame) else "(labels DataFrame)"
        table = read_labels(path, patients=patients, patients_from=f"the embeddings {source}", unknown="drop")
    for col in table.columns:
        values = table[col].reindex(patients)
        if col in adata.obs.columns:
            old = adata.obs[col].astype(object).where(adata.obs[col].notna(), None).astype(str).tolist()
            new = values.astype(object).where(values.notna(), None).astype(str).tolist()
            if old != new:
                raise InputError(f"labels table {name}: column {col!r} is already in {source} with other values; "
                                 "rename it in the labels table")
            continue
        adata.obs[col] = pd.Series(values.to_numpy(), index=adata.obs_names).astype(object)


__all__ = ["audit", "join_labels"]

"""The Python API of biossl: what the verbs ``embed``, ``finetune``, ``audit`` and ``retrieval`` do, as calls.

Each verb parses its options and calls one of these functions; a notebook calls them directly and gets
the same numbers the verb writes::

    import biossl
    import scanpy as sc

    adata = biossl.embed("run/checkpoints/last.ckpt", "manifest.csv", labels="labels.csv")
    result = biossl.evaluate(adata, "labels.csv", task="subtype", label_column="subtype")
    audit = biossl.audit(adata, ["site"], label="subtype")
    pairs = biossl.retrieval(adata, keys=["X_rna", "X_cnv"])
    wsi = biossl.patients_with(adata, "wsi")          # only the patients that have slides
    sc.pp.neighbors(wsi, use_rep="X_wsi")

All of them are re-exported by :mod:`biossl` (``biossl.embed`` ...), imported on first use so that
``import biossl`` stays light. Bad input raises :class:`biossl.errors.InputError` with a message that
names the file, the column or the patient at fault; outputs (``out=``) are written atomically.
Progress bars (stderr) show by default; :func:`biossl.progress.set_progress` turns them off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from biossl.audit.api import audit
from biossl.errors import InputError

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

logger = logging.getLogger(__name__)


def embed(
    checkpoint: str | Path,
    manifest: str | Path,
    *,
    labels: str | Path | pd.DataFrame | None = None,
    id_column: str = "patient_id",
    unknown_labels: Literal["error", "drop"] = "error",
    work_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 8,
    num_workers: int = 0,
    skip_bad: bool = False,
    max_tiles: int | None = None,
    chunk_size: int | None = None,
    seed: int = 0,
    salt: bytes | None = None,
    keep_obs: Sequence[str] = (),
    out: str | Path | None = None,
) -> ad.AnnData:
    """Embed every patient of a cohort with a pretraining checkpoint: an AnnData, one row per patient.

    What ``biossl embed`` does (layout: :mod:`biossl.downstream.embed`): ``obsm["X_fused"]`` (also
    ``X``) and one ``obsm["X_<modality>"]`` per modality of the checkpoint -- NaN rows for patients who
    lack that modality (:func:`patients_with` keeps those who have it) -- ``obs`` the manifest
    metadata, ``has_<modality>`` flags, instance counts and the labels' columns, ``uns["biossl"]``
    the provenance. Every tile of every slide is used unless ``max_tiles`` is given.

    Args:
        checkpoint: ``.ckpt`` written by ``biossl pretrain`` (e.g. ``run/checkpoints/last.ckpt``).
        manifest: Cohort manifest (CSV/TSV/Parquet): ``patient_id, modality, path`` plus metadata.
        labels: Per-patient labels (file or DataFrame with a patient column) added to ``obs``.
        id_column: Patient column of ``labels``.
        unknown_labels: Labelled patients missing from the manifest: ``"error"`` or ``"drop"`` (warning).
        work_dir: Tile coordinates and scan cache (default: the pretraining run's for its own cohort,
            else ``./biossl_work``).
        features_dir: Cached tile features (checkpoints pretrained with ``biossl cache-features``).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        batch_size: Kept for scripts (instances are encoded ``chunk_size`` at a time); at least 1.
        num_workers: DataLoader workers reading tiles and scans (capped at the CPUs available).
        skip_bad: Skip unreadable manifest rows with a warning.
        max_tiles: At most this many instances per patient and modality, drawn with ``seed``.
        chunk_size: Instances read and encoded per forward pass (default 256).
        seed: Seed of the ``max_tiles`` draw.
        salt: Secret salt: replace patient IDs by HMAC-SHA256 pseudonyms and drop identifying ``obs``
            columns (:mod:`biossl.privacy`; read one with :func:`biossl.privacy.read_salt`).
        keep_obs: With ``salt``, manifest columns to keep in ``obs`` anyway.
        out: Also write the AnnData to this ``.h5ad`` (atomically).

    Returns:
        The patients' embeddings as an AnnData.

    Raises:
        InputError: an unreadable or foreign checkpoint, a bad manifest or labels table, bad options.
        OutputError: ``out`` cannot be written (a full disk).

    Examples:
        >>> import biossl
        >>> adata = biossl.embed("run/checkpoints/last.ckpt", "manifest.csv", labels="labels.csv",
        ...                      device="cuda", out="embeddings.h5ad")  # doctest: +SKIP
        >>> adata.obsm["X_fused"].shape, adata.obs["has_wsi"].sum()     # doctest: +SKIP
    """
    from biossl.device import resolve_device
    from biossl.downstream.embed import DEFAULT_CHUNK_SIZE, embed_cohort, instance_policy_of, write_embeddings
    from biossl.threads import cap_workers

    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1; got {batch_size}")
    policy = instance_policy_of(max_tiles, DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size)
    if keep_obs and salt is None:
        raise InputError("--keep-obs (keep_obs=) only applies with --pseudonymize (a salt); add it or drop it")
    num_workers = cap_workers(num_workers, "--num-workers")
    resolved = resolve_device(device)  # a bad device fails before the checkpoint is read
    with _optional_table(labels, "labels") as labels_path:
        adata = embed_cohort(checkpoint, manifest, work_dir=work_dir, labels=labels_path, id_column=id_column,
                             unknown_labels=unknown_labels, batch_size=batch_size, num_workers=num_workers,
                             seed=seed, features_dir=features_dir, skip_bad=skip_bad, device=resolved, policy=policy)
    if salt is not None:
        from biossl.privacy import pseudonymize_obs

        adata = pseudonymize_obs(adata, salt, keep=keep_obs)
    if out is not None:
        write_embeddings(adata, out)
    return adata


def evaluate(
    embeddings: ad.AnnData | str | Path | Mapping[str, ad.AnnData | str | Path]
    | Sequence[tuple[str, ad.AnnData | str | Path]] | None,
    labels: str | Path | pd.DataFrame,
    *,
    task: Literal["subtype", "survival"],
    label_column: str | None = None,
    keys: str | Sequence[str] = "X_fused",
    folds: int = 5,
    splits: str | Path | pd.DataFrame | None = None,
    group_by: str | None = None,
    seed: int = 0,
    head: Literal["linear", "mlp"] = "linear",
    baseline_features: str | Path | Sequence[str | Path] | None = None,
    mode: str | Sequence[str] | None = None,
    max_tiles: int | None = None,
    chunk_size: int | None = None,
    out: str | Path | None = None,
    plot: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Cross-validate a probe on frozen embeddings (and baselines) for a subtype or survival task.

    What ``biossl finetune`` does: every method is fitted and scored on the same patients and folds
    (stratified folds made with ``seed``, or ``splits``); the result is the dict the verb writes as
    JSON: ``methods`` (per method: ``settings``, per-fold scores, ``summary`` mean ± sd per metric --
    AUROC, balanced accuracy for subtype; c-index, Uno's c, integrated Brier score for survival),
    ``folds`` (the assignment), ``excluded`` patients, ``inputs`` and the task's description.

    Args:
        embeddings: An AnnData from :func:`embed`, an ``.h5ad`` path, or several side by side as
            ``{name: AnnData or path}`` (methods ``linear_probe:<name>:<key>``); ``None`` for baselines only
            or to embed here from ``checkpoint`` and ``manifest`` (``options``).
        labels: Per-patient labels table (file or DataFrame) with ``patient_id``.
        task: ``"subtype"`` (classes of ``label_column``) or ``"survival"`` (``time``, ``event`` columns;
            ``time_column=``/``event_column=`` in ``options``).
        label_column: The class column (subtype).
        keys: ``obsm`` key(s) probed: ``"X_fused"``, ``"X_wsi,X_rna"`` or a list; ``"name:key"`` probes a
            key of one of several embeddings only. Several keys are probed on the patients having all.
        folds: Stratified folds made here (by class, or by event for survival).
        splits: The user's folds (``patient_id,fold``; ``patient_id,split`` with train/test; a PORPOISE
            folder), as a file or a DataFrame; replaces ``folds``.
        group_by: Group-preserving folds on this column (labels, embeddings' ``obs`` or manifest).
        seed: Seed of the folds and of the heads.
        head: ``"linear"`` probe or ``"mlp"`` (``hidden=`` in ``options``).
        baseline_features: Raw feature table(s) for the PCA and all-features baselines.
        mode: ``"probe"`` (default with embeddings or a checkpoint), ``"finetune"``, ``"scratch"`` or a list.
        max_tiles: Embeddings computed from ``checkpoint``: instances per patient and modality.
        chunk_size: Instances encoded per forward pass when embedding here.
        out: Also write the JSON here (atomically; with ``label_fractions``, the plot beside it).
        plot: The label-efficiency plot (default: ``out`` with ``.png``).
        **options: The other options of ``biossl finetune`` under their Python names, passed to
            :func:`biossl.downstream.evaluation.run_evaluation`: ``l2``, ``hidden``, ``survival_loss``,
            ``bins``, ``time_column``, ``event_column``, ``id_column``, ``unknown_labels``, ``baseline_l2``,
            ``baseline_components``, ``baseline_penalizer``, ``baseline_kmer``, ``kmer_canonical``,
            ``checkpoint``, ``manifest``, ``work_dir``, ``features_dir``, ``skip_bad``, ``device``,
            ``settings`` (:class:`~biossl.downstream.finetune_settings.FinetuneSettings`), ``label_fractions``,
            ``seeds``, ``semi_supervised``, ``salt``.

    Returns:
        The result dict, equal to the JSON ``biossl finetune`` writes for the same inputs.

    Raises:
        InputError: bad labels, keys, folds or options (the message names them and what to do).

    Examples:
        >>> import biossl
        >>> result = biossl.evaluate("embeddings.h5ad", "labels.csv", task="subtype",
        ...                          label_column="subtype", keys="X_fused,X_wsi")  # doctest: +SKIP
        >>> {m: r["summary"]["auroc"]["mean"] for m, r in result["methods"].items()}  # doctest: +SKIP
        >>> biossl.evaluate(adata, "labels.csv", task="survival", splits="splits/",
        ...                 baseline_features="expression.csv", out="survival.json")  # doctest: +SKIP
    """
    from biossl.downstream.embed import DEFAULT_CHUNK_SIZE, instance_policy_of
    from biossl.downstream.evaluation import run_evaluation, write_evaluation

    sources = _embedding_sources(embeddings)
    checkpoint, manifest = options.get("checkpoint"), options.get("manifest")
    if mode is None:
        modes = ["probe"] if sources is not None or (checkpoint is not None and manifest is not None) else []
    else:
        modes = [m.strip() for m in mode.split(",") if m.strip()] if isinstance(mode, str) else list(mode)
    tables = ([baseline_features] if isinstance(baseline_features, (str, Path)) else list(baseline_features or ()))
    fractions = options.get("label_fractions") or ()
    plot_path = None
    if fractions and out is not None:
        plot_path = Path(plot) if plot is not None else Path(out).with_suffix(".png")
    policy = instance_policy_of(max_tiles, DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size)
    evaluation = run_evaluation(task=task, labels=labels, modes=modes, embeddings=sources, keys=_names(keys),
                                label_column=label_column, folds=folds, splits=splits, group_by=group_by, seed=seed,
                                head=head, baseline_features=tables, policy=policy,
                                plot_name=plot_path.name if plot_path is not None else None, **options)
    if out is not None:
        write_evaluation(evaluation, out, plot_path)
    return evaluation.report


def retrieval(
    embeddings: ad.AnnData | str | Path,
    *,
    keys: str | Sequence[str] | None = None,
    patients: str | Path | Sequence[str] | None = None,
    id_column: str = "patient_id",
    k: int | Sequence[int] = (1, 5, 10),
    out: str | Path | None = None,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """Cross-modal retrieval: does a patient's embedding in one modality pick out the same patient in another.

    What ``biossl retrieval`` does (:mod:`biossl.downstream.retrieval`): for every ordered pair of
    ``keys`` and the patients having both, each patient's own target embedding is ranked among all
    patients' by cosine similarity; recall@k is reported beside its chance level ``k / n``.

    Args:
        embeddings: An AnnData from :func:`embed` or its ``.h5ad`` file.
        keys: ``obsm`` keys to compare (default: every ``X_<modality>``, not ``X_fused``); two or more.
        patients: Score only these patients: a list of IDs, or a table with an ``id_column`` (e.g. the
            patients held out of pretraining).
        id_column: Patient column of a ``patients`` table.
        k: The k of recall@k.
        out: Also write the result as JSON (atomically).
        plot: Also draw the recall@k curves (PNG).

    Returns:
        ``{"biossl_version", "embeddings", "keys", "patients_from", "provenance", "k", "pairs"}``; each pair
        ``{"query", "target", "n", "recall", "chance", "median_rank", ...}`` -- the JSON ``biossl retrieval``
        writes.

    Raises:
        InputError: fewer than two keys, unknown keys or patients, ``k`` below 1.

    Examples:
        >>> import biossl
        >>> result = biossl.retrieval("embeddings.h5ad", keys="X_rna,X_cnv", k=[1, 5])  # doctest: +SKIP
        >>> [(p["query"], p["target"], p["recall"]["1"], p["chance"]["1"]) for p in result["pairs"]]  # doctest: +SKIP
    """
    import json

    import numpy as np

    from biossl import __version__
    from biossl.downstream.retrieval import cross_modal_retrieval, plot_retrieval
    from biossl.io import jsonable, write_text_atomic

    ks = sorted({int(k)} if isinstance(k, int) else {int(v) for v in k})
    if not ks or min(ks) < 1:
        raise InputError(f"--k {k!r}: give positive integers such as 1,5,10")
    adata, name = _read(embeddings)
    chosen_keys = _retrieval_keys(adata, keys, name)
    ids = [str(p) for p in adata.obs_names]
    rows = np.arange(len(ids))
    patients_from = "all patients of the embeddings"
    if patients is not None:
        chosen = _chosen_patients(patients, id_column, ids, name)
        index = {p: i for i, p in enumerate(ids)}
        rows = np.asarray([index[p] for p in chosen], dtype=int)
        ids = chosen
        patients_from = Path(patients).name if isinstance(patients, (str, Path)) else "the given patients"
    vectors = {key: np.asarray(adata.obsm[key], dtype=np.float64)[rows] for key in chosen_keys}
    pairs = cross_modal_retrieval(vectors, ids, ks=ks, source=name)
    report = {"biossl_version": __version__, "embeddings": Path(name).name if name != "(AnnData)" else name,
              "keys": chosen_keys, "patients_from": patients_from,
              "provenance": {key: str(v) for key, v in adata.uns.get("biossl", {}).items()
                             if key in ("checkpoint", "data_fingerprint", "cohort_fingerprint")},
              "k": ks, "pairs": pairs}
    text = json.dumps(jsonable(report), indent=1) + "\n"
    if out is not None:
        write_text_atomic(out, text)
    if plot is not None:
        plot_retrieval(pairs, plot, title=f"cross-modal retrieval, {report['embeddings']}")
    return dict(json.loads(text))


def patients_with(adata: ad.AnnData, modality: str) -> ad.AnnData:
    """The patients that have a modality, as a new AnnData whose ``obsm`` rows are all finite.

    ``biossl embed`` keeps every patient in one AnnData, with NaN rows in ``obsm["X_<modality>"]`` for
    the patients who lack that modality; scanpy's neighbours, UMAP and clustering refuse NaN. This
    keeps the patients whose ``obs["has_<modality>"]`` is true (when the column exists) and whose
    embedding row is finite, and copies them (``obs``, ``X``, every ``obsm`` key; other per-modality
    keys may still hold NaN rows for their own missing patients).

    Args:
        adata: Embeddings as :func:`embed` returns them (or read from its ``.h5ad``).
        modality: A modality (``"wsi"``) or its key (``"X_wsi"``); ``"fused"`` / ``"X_fused"`` keeps the
            patients with any embedding.

    Returns:
        A copy holding only those patients.

    Raises:
        InputError: the modality is not in ``adata`` (the message lists those that are).

    Examples:
        >>> import biossl, scanpy as sc
        >>> adata = biossl.embed("last.ckpt", "manifest.csv")               # doctest: +SKIP
        >>> wsi = biossl.patients_with(adata, "wsi")                         # doctest: +SKIP
        >>> sc.pp.neighbors(wsi, use_rep="X_wsi"); sc.tl.umap(wsi)           # doctest: +SKIP
    """
    import numpy as np

    name = str(modality).strip()
    key = name if name.startswith("X_") else f"X_{name}"
    bare = key[2:]
    has = f"has_{bare}"
    if key not in adata.obsm and has not in adata.obs.columns:
        available = sorted({str(k)[2:] for k in adata.obsm if str(k).startswith("X_")}
                           | {str(c)[4:] for c in adata.obs.columns if str(c).startswith("has_")})
        raise InputError(f"modality {modality!r} is not in these embeddings (no obsm[{key!r}], no obs[{has!r}]); "
                         f"available: {', '.join(available) or 'none'}")
    keep = np.ones(adata.n_obs, dtype=bool)
    if has in adata.obs.columns:
        keep &= np.asarray(adata.obs[has].astype(bool).to_numpy(), dtype=bool)
    if key in adata.obsm:
        values = np.asarray(adata.obsm[key], dtype=np.float64)
        keep &= np.isfinite(values.reshape(adata.n_obs, -1)).all(axis=1)
    if not keep.any():
        logger.warning("no patient has %s: the AnnData returned is empty", bare)
    return adata[keep].copy()


# -- helpers ---------------------------------------------------------------------------------------------------
class _optional_table:  # noqa: N801 (a context manager used like a function)
    """``table_path`` of a table, or ``None`` when there is none."""

    def __init__(self, table: Any, what: str) -> None:
        from biossl.downstream.evaluation import table_path

        self._cm = table_path(table, what) if table is not None else None

    def __enter__(self) -> Path | None:
        return self._cm.__enter__() if self._cm is not None else None

    def __exit__(self, *exc: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)


def _names(text: str | Sequence[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    return list(dict.fromkeys(str(k).strip() for k in items if str(k).strip()))


def _embedding_sources(embeddings: Any) -> list[tuple[str, Any]] | None:
    """``[(name, AnnData or path)]`` of ``evaluate``'s ``embeddings``."""
    import anndata as ad

    if embeddings is None:
        return None
    if isinstance(embeddings, ad.AnnData):
        return [("embeddings", embeddings)]
    if isinstance(embeddings, (str, Path)):
        return [(Path(embeddings).stem, Path(embeddings))]
    items = list(embeddings.items()) if isinstance(embeddings, Mapping) else [tuple(item) for item in embeddings]
    out = []
    for item in items:
        if len(item) != 2:
            raise InputError(f"embeddings: {item!r} is not a (name, AnnData or .h5ad path) pair")
        name, source = item
        out.append((str(name), source if isinstance(source, ad.AnnData) else Path(source)))
    if not out:
        raise InputError("embeddings is empty; give an AnnData, an .h5ad path or {name: AnnData or path}")
    return out


def _read(embeddings: Any) -> tuple[Any, str]:
    import anndata as ad

    from biossl.downstream.embed import read_embeddings

    if isinstance(embeddings, ad.AnnData):
        return embeddings, "(AnnData)"
    return read_embeddings(embeddings), str(embeddings)


def _retrieval_keys(adata: Any, keys: str | Sequence[str] | None, source: str) -> list[str]:
    available = sorted(str(k) for k in adata.obsm)
    if keys is None:
        chosen = [k for k in available if k.startswith("X_") and k != "X_fused"]
    else:
        chosen = _names(keys)
        missing = [k for k in chosen if k not in adata.obsm]
        if missing:
            raise InputError(f"{source} has no obsm {missing}; it has {available}: fix --keys")
    if len(chosen) < 2:
        raise InputError(f"{source}: retrieval needs two or more embedding keys; found {chosen} among {available} "
                         "(embed a checkpoint of two or more modalities, or name them with --keys)")
    return chosen


def _chosen_patients(patients: str | Path | Sequence[str], column: str, known: list[str], source: str) -> list[str]:
    """The patients of a ``--patients`` table (or list) that the embeddings have, in its order."""
    import pandas as pd

    if isinstance(patients, (str, Path)):
        path = Path(patients)
        what = f"--patients {path}"
        try:
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() in (".tsv", ".txt") else ",", dtype=str)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise InputError(f"{what}: not a readable table ({exc})") from None
        if column not in table.columns:
            raise InputError(f"{what} has no column {column!r} (columns: {list(table.columns)[:8]}); "
                             "name the patient column with --id-column")
        wanted = list(dict.fromkeys(table[column].dropna().astype(str).str.strip()))
    else:
        what = "patients"
        wanted = list(dict.fromkeys(str(p).strip() for p in patients))
    found = set(known)
    unknown = [p for p in wanted if p not in found]
    if unknown and len(unknown) == len(wanted):
        raise InputError(f"{what}: none of its {len(wanted)} patients is in {source} (e.g. {unknown[:3]}); check "
                         "the IDs match the embeddings' patient IDs")
    if unknown:
        logger.warning("%s: %d of %d patients are not in %s (e.g. %s); scoring the other %d", what, len(unknown),
                       len(wanted), source, unknown[:3], len(wanted) - len(unknown))
    return [p for p in wanted if p in found]


__all__ = ["audit", "embed", "evaluate", "patients_with", "retrieval"]

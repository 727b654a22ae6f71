"""Patient embeddings from a pretraining checkpoint, written as AnnData (``biossl embed``).

The checkpoint fixes everything the data side needs: the bag spec (instances per modality and their
shapes), the gene vocabulary that expression is aligned to, the tokeniser, and the tiling options of
the pretraining run (``data.mpp``, ``data.tile_size``, ``data.min_tissue`` of its resolved config).

**Instances.** By default a patient's embedding of a modality uses *every* instance the patient has
(:class:`~biossl.data.bags.InstancePolicy`): every tissue tile of every one of its slides (the tiles
``biossl tile`` kept), every patch of each scan's non-overlapping grid at the checkpoint's spacing
(stride = patch size, far edges zero-padded), every DNA window tiling its sequences, every row of its
tables. Instances are read and encoded ``chunk_size`` at a time (slides and DNA are read chunk by chunk,
so memory does not grow with a slide's tile count beyond the ``N x D`` instance embeddings of one
patient; a scan's or a table's instances are read per patient and encoded in chunks), then the
modality's pooling (the checkpoint's attention-MIL pool) runs once over all ``N`` instance embeddings.
``max_instances`` (``--max-tiles``) uses at most that many per patient and modality instead, drawn
without replacement by numpy's generator seeded ``(seed, patient index, crc32(modality))``. The same
checkpoint, cohort, ``seed`` and policy give the same embeddings on every run; the chunk size changes
nothing but float rounding. Pretraining and fine-tuning still draw random bags of the bag spec's ``k``.

**Fusion.** ``X_fused`` is :class:`biossl.encoders.fusion.MeanFusion` (parameter-free; nothing needs
training) over the L2-normalised modality embeddings -- the space the cross-modal CLIP loss compares
in -- of the modalities each patient has: a missing modality has weight exactly 0.

**Output.** ``obs``: one row per patient (index ``patient_id``) with the manifest metadata (one value
per patient), ``has_<modality>`` flags, ``pretrain_holdout`` (patients the checkpoint's run held
out of pretraining, ``data.holdout``; only when it held some out) and, with a labels table, its
columns; ``obsm["X_<modality>"]`` the pooled embedding of each modality of the checkpoint, NaN rows
where the patient lacks it;
``obs["n_instances_<modality>"]`` the instances each embedding used and ``obs["n_available_<modality>"]``
those the patient has (0 where it lacks the modality);
``obsm["X_fused"]``, also copied to ``X`` (vars ``fused_000`` ...) so that scanpy's defaults work;
``uns["biossl"]`` the provenance (``instances``: the policy, all or sampled ``N``, and the chunk size).
Patients with none of the checkpoint's modalities have no embedding and are left out (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader

from biossl import __version__, keys
from biossl.data.bags import (
    BagSampler,
    BagSpec,
    InstancePolicy,
    InstanceReads,
    PatientBagDataset,
    batch_to,
    collate_bags,
)
from biossl.data.cohort import Cohort, read_manifest
from biossl.data.labels import MAX_NAMED, check_obs_columns, read_labels
from biossl.encoders.patient import PatientEncoder, PatientModel
from biossl.errors import InputError
from biossl.io import file_sha256, write_h5ad_atomic

logger = logging.getLogger(__name__)

FUSED = "X_fused"
FUSION_NOTE = "MeanFusion of the L2-normalised embeddings of each patient's present modalities"
SAMPLING_NOTE = ("every instance of each patient (all tissue tiles of all slides, every grid patch of each scan, every "
                 "DNA window, every table row), or at most max_instances drawn with numpy's generator seeded (seed, "
                 "patient index, crc32(modality)); encoded in chunks, pooled once over all of them")
#: Instances encoded per forward pass by default (``--chunk-size``).
DEFAULT_CHUNK_SIZE = 256


def obsm_key(modality: str) -> str:
    """``X_<modality>``."""
    return f"X_{modality}"


def bag_spec_of(state: dict[str, Any], modalities: Iterable[str], checkpoint: Path) -> BagSpec:
    """The checkpoint's bag spec, limited to the modalities its model encodes.

    Raises:
        InputError: the checkpoint stores no bag spec.
    """
    stored = state.get("bag_spec")
    if not isinstance(stored, dict):
        raise InputError(f"checkpoint {checkpoint} stores no bag spec (data_state['bag_spec']); embed from a "
                         "checkpoint written by `biossl pretrain`")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()
              if k in BagSpec.__dataclass_fields__}
    spec = BagSpec(**fields)
    spec.modalities = tuple(modalities)
    return spec


def _pretrain_data_config(state: dict[str, Any]) -> dict[str, Any]:
    text = state.get("config")
    if not isinstance(text, str):
        return {}
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    data = cfg.get("data") if isinstance(cfg, dict) else None
    return data if isinstance(data, dict) else {}



def pretrained_on(state: dict[str, Any], manifest: Path, *, skip_bad: bool = False) -> str | None:
    """``None`` if ``manifest`` is the cohort the checkpoint was pretrained on, else why it is not (for messages).

    The same cohort is the same manifest file and the same data (:meth:`Cohort.fingerprint`, which covers
    the table with its absolute file paths and every file's size and time, equal to the checkpoint's
    ``data_fingerprint``). A manifest path the checkpoint records relative to where pretraining ran (unknown
    here) is not compared; the fingerprint alone decides then.
    """
    trained_on = _pretrain_data_config(state).get("manifest")
    if not trained_on:
        return "the checkpoint records no manifest"
    if Path(str(trained_on)).is_absolute() and Path(str(trained_on)).resolve() != manifest.resolve():
        return f"the checkpoint was pretrained on another manifest ({trained_on})"
    try:
        same = Cohort.from_manifest(manifest, skip_bad=skip_bad).fingerprint() == state.get("data_fingerprint")
    except InputError:
        same = False
    if same:
        return None
    if Path(str(trained_on)).is_absolute():
        return f"manifest {manifest} or its files changed since pretraining (another data fingerprint)"
    return f"the checkpoint was pretrained on another cohort or on files changed since ({trained_on})"


def default_work_dir(state: dict[str, Any], manifest: Path, *, skip_bad: bool = False) -> Path:
    """The work folder of a run on ``manifest`` without ``--work-dir`` (logged, with the reason).

    The checkpoint's ``data.work_dir`` only for the cohort it was pretrained on (:func:`pretrained_on`).
    Any other cohort gets ``biossl_work`` in the current folder (``biossl_work_<manifest stem>`` if that
    is the checkpoint's), so a new cohort never writes into, or reads from, the pretraining run's folder
    unless asked.
    """
    data_cfg = _pretrain_data_config(state)
    theirs = Path(str(data_cfg.get("work_dir") or "biossl_work"))
    reason = pretrained_on(state, manifest, skip_bad=skip_bad)
    if reason is None:
        logger.info("work folder %s: the checkpoint's (manifest %s is the cohort it was pretrained on)",
                    theirs, manifest)
        return theirs
    work = Path("biossl_work")
    if work.resolve() == theirs.resolve():
        work = Path(f"biossl_work_{manifest.stem}")
    logger.info("work folder %s (not the checkpoint's %s: %s); pass --work-dir to choose one", work, theirs, reason)
    return work


def _checkpoint_features_dir(state: dict[str, Any], checkpoint: Path, manifest: Path, *, skip_bad: bool) -> str:
    """The checkpoint's ``data.features_dir``, for the cohort it was pretrained on only (else ask for one).

    Feature files named by a slide's stem alone (TRIDENT, CLAM) cannot be told apart from those of
    another slide of that name, so a new cohort never reads the pretraining cohort's folder unless asked.

    Raises:
        InputError: The checkpoint records no features folder, or ``manifest`` is another cohort.
    """
    theirs = _pretrain_data_config(state).get("features_dir")
    ask = "pass the folder written by `biossl cache-features` for this cohort with --features-dir"
    if not theirs:
        raise InputError(f"checkpoint {checkpoint} encodes slides from cached tile features: {ask}")
    reason = pretrained_on(state, manifest, skip_bad=skip_bad)
    if reason is not None:
        raise InputError(f"checkpoint {checkpoint} encodes slides from cached tile features, and its features "
                         f"folder {theirs} is the pretraining cohort's ({reason}): {ask} (it may be the same "
                         "folder when its files are named per slide file by `biossl cache-features`)")
    logger.info("tile features from %s: the checkpoint's (manifest %s is the cohort it was pretrained on)",
                theirs, manifest)
    return str(theirs)


def _as_text(values: pd.Series) -> list[str]:
    return ["" if pd.isna(v) else str(v) for v in values]


def _obs_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns as categoricals of text (missing stays missing), so h5ad can store them."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = pd.Categorical(out[col].map(lambda v: v if pd.isna(v) else str(v)))
    return out


def open_cohort(module: PatientModel, checkpoint: Path, manifest: Path, *, work_dir: str | Path | None = None,
                features_dir: str | Path | None = None, skip_bad: bool = False, batch_size: int = 8,
                num_workers: int = 0, seed: int = 0) -> tuple[PatientBagDataset, Cohort, list[str], BagSpec]:
    """The patient-bag dataset of a cohort as a pretrained module reads it (bag spec, vocabulary, tiling).

    Slides without tile coordinates are tiled into ``work_dir`` first (as pretraining does).

    Args:
        module: The :class:`~biossl.encoders.patient.PatientEncoder` loaded from ``checkpoint``.
        checkpoint: Its file, for messages.
        manifest: The cohort manifest.
        work_dir: Tile coordinates and scan cache; default: :func:`default_work_dir` (the pretraining run's
            only for the cohort it was pretrained on).
        features_dir: Cached tile features (feature-cache checkpoints).
        skip_bad: Skip unreadable manifest rows with a warning.
        batch_size: Patients per batch of the data module.
        num_workers: DataLoader workers.
        seed: Seed of the instance draws.

    Returns:
        ``(dataset, cohort, the checkpoint's modalities in canonical order, bag spec)``.

    Raises:
        InputError: the checkpoint lacks what the data needs (bag spec, vocabulary, feature folder).
    """
    from biossl.modules.datamodule import BagDataModule

    state = module.data_state
    modalities = list(keys.canonical_order(module.modality_specs))
    kinds = {m: module.kind_of(m) for m in modalities}
    states = modality_states(state, kinds)
    spec = bag_spec_of(state, modalities, checkpoint)
    data_cfg = _pretrain_data_config(state)
    if any(kinds[m] == keys.SLIDE and str(module.modality_specs[m].get("encoder", "")).startswith("features/")
           for m in modalities):
        features_dir = features_dir or _checkpoint_features_dir(state, checkpoint, manifest, skip_bad=skip_bad)
    for m in modalities:
        if kinds[m] == keys.TABLE and not states.get(m, {}).get("vocabulary"):
            raise InputError(f"checkpoint {checkpoint} has a {m} table encoder but no feature vocabulary for it; "
                             "re-run pretraining with this biossl version")
    work = Path(work_dir) if work_dir else default_work_dir(state, manifest, skip_bad=skip_bad)
    dm = BagDataModule(
        manifest, work_dir=work, spec=spec, batch_size=batch_size, num_workers=num_workers, seed=seed,
        mpp=float(data_cfg.get("mpp") or 0.5), tile_size=int(data_cfg.get("tile_size") or 256),
        min_tissue=float(data_cfg.get("min_tissue") or 0.5), slide_mpp=data_cfg.get("slide_mpp"), skip_bad=skip_bad,
        override_slide_mpp=data_cfg.get("override_slide_mpp"), features_dir=features_dir,
        kinds=kinds,
    )
    dm.states = states
    dm.prepare_data()
    dm.setup("predict")
    dataset, cohort = dm.dataset, dm.cohort
    assert dataset is not None and cohort is not None
    unknown = [m for m in cohort.modalities if m not in kinds]
    if unknown:
        logger.warning("manifest %s: modalities %s are not the checkpoint's (%s) and are not embedded; rename them "
                       "to the checkpoint's names if they are the same data", manifest, unknown, ", ".join(modalities))
    missing = [m for m in modalities if m not in cohort.kinds]
    if missing:
        logger.warning("manifest %s has no %s rows: X_%s will be empty (NaN)", manifest, "/".join(missing),
                       "/X_".join(missing))
    clash = {m: (cohort.kinds[m], kinds[m]) for m in modalities if m in cohort.kinds and cohort.kinds[m] != kinds[m]}
    if clash:
        said = "; ".join(f"{m} is a {a} in the manifest but a {b} in the checkpoint" for m, (a, b) in clash.items())
        raise InputError(f"manifest {manifest}: {said}; fix the manifest's kind column")
    for m in modalities:
        given = cohort.options.get(m, {}).get(keys.VALUE_TYPE) or None
        trained = states.get(m, {}).get("value_type") or None
        if m in cohort.kinds and given is not None and given != trained:
            raise InputError(f"manifest {manifest}: modality {m!r} has value_type {given or 'none (detect)'} but the "
                             f"checkpoint's {m} encoder was trained on {trained or 'none (detect)'}; give the "
                             "manifest's value_type column the checkpoint's, or leave it empty")
    for m in modalities:
        if kinds[m] == keys.TABLE and m in dataset.sources:
            _check_gene_overlap(dataset, m, cohort, checkpoint, len(states[m]["vocabulary"]))
    return dataset, cohort, modalities, spec


def modality_states(state: dict[str, Any], kinds: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per modality, what the checkpoint recorded to open it (``data_state["modalities"]``).

    A checkpoint written before kinds kept the one table's vocabulary as ``data_state["vocabulary"]``:
    it becomes the ``expression`` modality's.
    """
    states = {m: dict(v) for m, v in (state.get("modalities") or {}).items()}
    if keys.EXPRESSION in kinds and state.get("vocabulary") and not states.get(keys.EXPRESSION, {}).get("vocabulary"):
        states.setdefault(keys.EXPRESSION, {})["vocabulary"] = list(state["vocabulary"])
    return states


def _check_gene_overlap(dataset: PatientBagDataset, modality: str, cohort: Cohort, checkpoint: Path,
                        n_genes: int) -> None:
    """Refuse a table that shares no feature with the checkpoint's vocabulary (a different gene vocabulary).

    Genes missing from a table are masked, so a partial overlap works (and is logged while aligning);
    with no gene in common every profile would be all-masked and its embedding meaningless.

    Raises:
        InputError: some expression file of the cohort has none of the checkpoint's genes.
    """
    aligned: dict[str, tuple[np.ndarray, np.ndarray]] = getattr(dataset.sources[modality], "rows", {})
    disjoint = sorted({str(path) for p, (_, mask) in aligned.items() if not mask.any()
                       for path in cohort.files(p, modality)})
    if disjoint:
        raise InputError(f"{modality} table {', '.join(disjoint[:3])} shares no feature with the {n_genes}-gene "
                         "vocabulary of "
                         f"checkpoint {checkpoint} (another gene vocabulary: symbols vs Ensembl IDs, another panel?); "
                         "rename the genes to the checkpoint's (its data_state['vocabulary']) or pretrain on this "
                         "cohort")


def embed_cohort(
    checkpoint: str | Path,
    manifest: str | Path,
    *,
    work_dir: str | Path | None = None,
    labels: str | Path | None = None,
    id_column: str = keys.PATIENT_ID,
    unknown_labels: Literal["error", "drop"] = "error",
    batch_size: int = 8,
    num_workers: int = 0,
    seed: int = 0,
    features_dir: str | Path | None = None,
    skip_bad: bool = False,
    device: str | torch.device = "cpu",
    policy: InstancePolicy | None = None,
) -> ad.AnnData:
    """Embed every patient of a cohort with a checkpoint's patient encoder; see the module docstring for the layout.

    Args:
        checkpoint: ``.ckpt`` written by ``biossl pretrain`` (loaded safely, weights only).
        manifest: The cohort manifest (CSV/TSV/Parquet).
        work_dir: Folder for tile coordinates (slides are tiled once, as pretraining does) and cached
            scans; default: :func:`default_work_dir` (the pretraining run's ``data.work_dir`` only for the
            cohort it was pretrained on, else ``biossl_work``).
        labels: Optional per-patient labels table whose columns are added to ``obs``.
        id_column: Patient column of the labels table.
        unknown_labels: Labelled patients absent from the cohort: ``"error"`` or ``"drop"`` (warning).
        batch_size: Patients per forward pass.
        num_workers: DataLoader workers reading tiles and scans.
        seed: Seed of the instance draw (see the module docstring).
        features_dir: Cached tile features, for checkpoints pretrained in feature-cache mode.
        skip_bad: Skip unreadable manifest rows with a warning (report in ``work_dir``).
        device: Where the model runs.
        policy: Which instances each embedding uses and the chunk size (default: every instance, chunks of
            :data:`DEFAULT_CHUNK_SIZE`; see the module docstring).

    Raises:
        InputError: an unreadable or foreign checkpoint, a bad manifest or labels table, a checkpoint
            lacking what the data needs (bag spec, vocabulary), or no patient with an embeddable modality.
    """
    if labels is not None:  # a label that .h5ad cannot store must fail before the embeddings, not after them
        check_obs_columns(read_labels(labels, id_column=id_column).columns, f"labels table {labels}")
    loaded = load_cohort(checkpoint, manifest, work_dir=work_dir, features_dir=features_dir, skip_bad=skip_bad,
                         batch_size=batch_size, num_workers=num_workers, seed=seed, policy=policy)
    return embed_loaded(loaded, labels=labels, id_column=id_column, unknown_labels=unknown_labels,
                        batch_size=batch_size, num_workers=num_workers, device=device)


@dataclass
class LoadedCohort:
    """A pretraining checkpoint's patient encoder and a cohort's patient bags as it reads them (:func:`load_cohort`)."""

    checkpoint: Path
    manifest: Path
    module: PatientEncoder
    dataset: PatientBagDataset
    cohort: Cohort
    modalities: list[str]
    spec: BagSpec
    seed: int
    #: Which instances :func:`embed_loaded` uses (default: every instance).
    policy: InstancePolicy = InstancePolicy(chunk_size=DEFAULT_CHUNK_SIZE)


def load_cohort(checkpoint: str | Path, manifest: str | Path, *, work_dir: str | Path | None = None,
                features_dir: str | Path | None = None, skip_bad: bool = False, batch_size: int = 8,
                num_workers: int = 0, seed: int = 0, policy: InstancePolicy | None = None) -> LoadedCohort:
    """Load ``checkpoint`` (weights only) and open the cohort of ``manifest`` as it reads it (:func:`open_cohort`).

    Open once, then embed (:func:`embed_loaded`) and run other passes over the same bags (artifact audit).

    Raises:
        InputError: as :func:`embed_cohort`, for the checkpoint and the manifest.
    """
    checkpoint, manifest = Path(checkpoint), Path(manifest)
    module = PatientEncoder.from_checkpoint(checkpoint)
    metadata = [c for c in read_manifest(manifest).columns if c not in (*keys.REQUIRED_COLUMNS, "manifest_row")]
    check_obs_columns(metadata, f"manifest {manifest}")  # they become obs columns: fail before the work
    dataset, cohort, modalities, spec = open_cohort(module, checkpoint, manifest, work_dir=work_dir,
                                                    features_dir=features_dir, skip_bad=skip_bad,
                                                    batch_size=batch_size, num_workers=num_workers, seed=seed)
    return LoadedCohort(checkpoint=checkpoint, manifest=manifest, module=module, dataset=dataset, cohort=cohort,
                        modalities=modalities, spec=spec, seed=seed,
                        policy=policy or InstancePolicy(chunk_size=DEFAULT_CHUNK_SIZE))


def embed_loaded(
    loaded: LoadedCohort,
    *,
    labels: str | Path | None = None,
    id_column: str = keys.PATIENT_ID,
    unknown_labels: Literal["error", "drop"] = "error",
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> ad.AnnData:
    """:func:`embed_cohort` of a cohort already loaded with :func:`load_cohort` (its seed and policy pick instances).

    ``batch_size`` is not used (instances are encoded ``loaded.policy.chunk_size`` at a time); it is kept
    for callers of the bag-draw era.

    Raises:
        InputError: a bad labels table, or no patient with an embeddable modality.
    """
    checkpoint, manifest, module, seed = loaded.checkpoint, loaded.manifest, loaded.module, loaded.seed
    dataset, cohort, modalities, spec = loaded.dataset, loaded.cohort, loaded.modalities, loaded.spec
    state = module.data_state
    whole = embed_whole(module, dataset, modalities, policy=loaded.policy, num_workers=num_workers, seed=seed,
                        device=device)
    emb, has, fused = whole.emb, whole.has, whole.fused
    dim = module.embed_dim
    patients = list(dataset.patients)
    any_modality = np.any(np.stack([has[m] for m in modalities]), axis=0)
    if not any_modality.any():
        raise InputError(f"no patient of {manifest} has any of the checkpoint's modalities ({', '.join(modalities)})")
    if not any_modality.all():
        dropped = [p for p, ok in zip(patients, any_modality) if not ok]
        logger.warning("%d patient(s) have none of the checkpoint's modalities (%s) and get no embedding: %s",
                       len(dropped), ", ".join(modalities), dropped[:MAX_NAMED])
    keep = np.flatnonzero(any_modality)
    kept = [patients[i] for i in keep]

    obs = cohort.metadata.reindex(kept)
    obs.index = pd.Index(kept, name=keys.PATIENT_ID)
    for m in modalities:
        obs[f"has_{m}"] = has[m][keep]
    for m in modalities:
        obs[f"n_instances_{m}"] = whole.used[m][keep]
        obs[f"n_available_{m}"] = whole.available[m][keep]
    if state.get("holdout_patients"):
        held = set(map(str, state["holdout_patients"]))
        obs["pretrain_holdout"] = [p in held for p in kept]
    label_columns: list[str] = []
    if labels is not None:
        table = read_labels(labels, patients=kept, patients_from=f"the cohort {manifest}", unknown=unknown_labels,
                            id_column=id_column)
        check_obs_columns(table.columns, f"labels table {labels}")
        for col in table.columns:
            if col in obs.columns:
                if _as_text(obs[col]) != _as_text(table[col].reindex(kept)):
                    raise InputError(f"labels table {labels}: column {col!r} is also manifest metadata with other "
                                     "values; rename it in the labels table")
                continue
            obs[col] = table[col].reindex(kept).to_numpy()
            label_columns.append(col)
    adata = ad.AnnData(X=fused[keep].copy(), obs=_obs_safe(obs),
                       var=pd.DataFrame(index=[f"fused_{i:03d}" for i in range(dim)]))
    adata.obsm[FUSED] = fused[keep]
    for m in modalities:
        adata.obsm[obsm_key(m)] = emb[m][keep]
    adata.uns["biossl"] = {
        "checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint),
        "checkpoint_biossl_version": str(state.get("version", "")),
        "biossl_version": __version__, "data_fingerprint": str(state.get("data_fingerprint", "")),
        "cohort_fingerprint": cohort.fingerprint(), "manifest": manifest.name, "modalities": modalities,
        "kinds": {m: module.kind_of(m) for m in modalities}, "embed_dim": int(dim), "fusion": FUSION_NOTE,
        "sampling": SAMPLING_NOTE, "seed": int(seed),
        "instances": loaded.policy.describe(),
        "bag_spec": {k: list(v) if isinstance(v, tuple) else ("none" if v is None else v)
                     for k, v in vars(spec).items()},
        "label_columns": label_columns,
    }
    logger.info("embedded %d patients: %s", len(kept), ", ".join(
        f"{m} {int(has[m].sum())} ({int(whole.used[m].sum())} instances)" for m in modalities))
    return adata


#: Maps a collated CPU batch and its patients' positions in the dataset to the batch to encode (``None``: skip it).
BatchTransform = Callable[[dict[str, Any], list[int]], dict[str, Any] | None]
#: ``(emb, has, fused)`` of :func:`embed_dataset` (``fused`` ``None`` when not fused).
Embedded = tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]


def embed_dataset(module: PatientModel, dataset: PatientBagDataset, modalities: list[str], *, batch_size: int = 8,
                  num_workers: int = 0, seed: int = 0, device: str | torch.device = "cpu",
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Pooled embedding of every patient of ``dataset`` (in its order), per modality and fused.

    Only ``modalities`` are encoded (the batch's other modalities are left out).

    Returns:
        ``(emb, has, fused)``: ``emb[m]`` float32 ``[n, dim]`` with NaN rows where a patient lacks
        ``m``; ``has[m]`` bool ``[n]``; ``fused`` the :class:`~biossl.encoders.fusion.MeanFusion` of the
        L2-normalised embeddings of each patient's present modalities (zeros where none).
        The module is left in eval mode on ``device``.
    """
    emb, has, fused = embed_views(module, dataset, {FUSED: (modalities, None)}, batch_size=batch_size,
                                  num_workers=num_workers, seed=seed, device=device)[FUSED]
    assert fused is not None
    return emb, has, fused


def embed_views(module: PatientModel, dataset: PatientBagDataset,
                views: Mapping[Hashable, tuple[Sequence[str], BatchTransform | None]], *, fuse: bool = True,
                batch_size: int = 8, num_workers: int = 0, seed: int = 0, device: str | torch.device = "cpu",
                ) -> dict[Hashable, Embedded]:
    """:func:`embed_dataset` of several views of every batch, each batch read once (the epoch-0 draw).

    Args:
        module: The patient encoder (or the pretraining module while it trains: a :class:`PatientModel`).
        dataset: The patient bags.
        views: Name -> (its modalities, a :data:`BatchTransform` applied to each batch first or ``None``).
            Each view encodes its modalities of the (transformed) batch.
        fuse: Also fuse each view's modalities (else its ``fused`` is ``None``).
        batch_size: Patients per forward pass.
        num_workers: DataLoader workers.
        seed: Seed of the instance draw.
        device: Where the model runs; the module is left in eval mode there.

    Returns:
        Name -> ``(emb, has, fused)`` as :func:`embed_dataset` returns them.
    """
    from biossl.device import resolve_device
    from biossl.encoders.fusion import fused_embedding

    loader = DataLoader(dataset, batch_size=batch_size, sampler=BagSampler(len(dataset), shuffle=False, seed=seed),
                        collate_fn=collate_bags, num_workers=num_workers)
    device = resolve_device(device)
    module.eval().to(device)
    n, dim = len(dataset), module.embed_dim
    out: dict[Hashable, Embedded] = {
        name: ({m: np.full((n, dim), np.nan, dtype=np.float32) for m in mods},
               {m: np.zeros(n, dtype=bool) for m in mods}, np.zeros((n, dim), dtype=np.float32) if fuse else None)
        for name, (mods, _) in views.items()}
    start = 0
    with torch.no_grad():
        for batch in loader:
            indices = list(range(start, start + len(batch["patient_id"])))
            start += len(indices)
            for name, (mods, transform) in views.items():
                view = batch if transform is None else transform(batch, indices)
                if view is None:
                    continue
                view = {k: v for k, v in view.items() if k in ("patient_id", keys.METADATA) or k in mods}
                pooled, present, _ = module.encode_batch(batch_to(view, device), with_masked_loss=False)
                emb, has, fused = out[name]
                for m in pooled:
                    rows = np.asarray(indices)[present[m].cpu().numpy().astype(bool)]
                    emb[m][rows] = pooled[m][present[m]].float().cpu().numpy()
                    has[m][rows] = True
                if pooled and fused is not None:
                    fused[indices[0]:indices[-1] + 1] = fused_embedding(pooled, present).cpu().numpy()
    return out


@dataclass
class WholeEmbedded:
    """What :func:`embed_whole` returns.

    Per modality ``emb`` ``[n, D]`` (NaN rows where absent), ``has``, ``used`` and ``available`` instance
    counts ``[n]``; and ``fused`` ``[n, D]``.
    """

    emb: dict[str, np.ndarray]
    has: dict[str, np.ndarray]
    used: dict[str, np.ndarray]
    available: dict[str, np.ndarray]
    fused: np.ndarray


class _Pending:
    """Instances read but not yet encoded (of one modality), and each patient's encoded instance embeddings."""

    def __init__(self, module: PatientEncoder, device: torch.device, out: WholeEmbedded, chunk: int) -> None:
        self.module, self.device, self.out, self.chunk = module, device, out, chunk
        self.items: list[dict[str, Any]] = []
        self.size = 0
        self.parts: dict[int, list[torch.Tensor]] = {}

    def add(self, item: dict[str, Any]) -> None:
        if self.items and item["modality"] != self.items[0]["modality"]:
            self.flush()
        if item["entry"] is None:  # the patient lacks the modality (a draw-based source said so)
            self.out.available[item["modality"]][item["index"]] = max(int(item["available"]), 0)
            return
        self.items.append(item)
        self.size += len(item["entry"][keys.X])
        if self.size >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        items, self.items, self.size = self.items, [], 0
        m = items[0]["modality"]
        entries = [it["entry"] for it in items]
        names = list(entries[0])
        joined = entries[0] if len(entries) == 1 else {k: torch.cat([e[k] for e in entries]) for k in names}
        n = len(joined[keys.X])
        z = torch.cat([self.module.embed_instances(m, batch_to({k: v[a:a + self.chunk] for k, v in joined.items()},
                                                               self.device))
                       for a in range(0, n, self.chunk)])
        start = 0
        for it, e in zip(items, entries):
            k = len(e[keys.X])
            self.parts.setdefault(it["index"], []).append(z[start:start + k])
            start += k
            if it["last"]:
                self._finish(it, self.parts.pop(it["index"]))

    def _finish(self, item: dict[str, Any], parts: list[torch.Tensor]) -> None:
        """Pool the patient's instance embeddings (all of them now encoded) into its embedding."""
        m, i = item["modality"], item["index"]
        self.out.available[m][i] = max(int(item["available"]), 0)
        z = torch.cat(parts)
        self.out.emb[m][i] = self.module.pool(m, z).float().cpu().numpy()
        self.out.has[m][i] = True
        self.out.used[m][i] = len(z)


def embed_whole(module: PatientEncoder, dataset: PatientBagDataset, modalities: Sequence[str], *,
                policy: InstancePolicy | None = None, num_workers: int = 0, seed: int = 0,
                device: str | torch.device = "cpu") -> WholeEmbedded:
    """Every patient's embedding of each modality from all its instances (or a seeded sample; module docstring).

    Instances are read by :class:`~biossl.data.bags.InstanceReads` (in ``num_workers`` DataLoader workers),
    encoded ``policy.chunk_size`` at a time -- chunks of consecutive patients are packed together, a large
    patient is split -- and each patient's ``N x D`` instance embeddings pooled once by the modality's pool.
    A progress bar (:mod:`biossl.progress`) counts the chunks read.

    Returns:
        A :class:`WholeEmbedded`; ``fused`` is :func:`~biossl.encoders.fusion.fused_embedding` of the
        modalities each patient has (zeros where none). The module is left in eval mode on ``device``.
    """
    from biossl.device import resolve_device
    from biossl.encoders.fusion import fused_embedding
    from biossl.progress import progress

    policy = policy or InstancePolicy(chunk_size=DEFAULT_CHUNK_SIZE)
    device = resolve_device(device)
    module.eval().to(device)
    n, dim = len(dataset), module.embed_dim
    out = WholeEmbedded(emb={m: np.full((n, dim), np.nan, dtype=np.float32) for m in modalities},
                        has={m: np.zeros(n, dtype=bool) for m in modalities},
                        used={m: np.zeros(n, dtype=np.int64) for m in modalities},
                        available={m: np.zeros(n, dtype=np.int64) for m in modalities},
                        fused=np.zeros((n, dim), dtype=np.float32))
    reads = InstanceReads(dataset, list(modalities), policy, seed)
    loader = DataLoader(reads, batch_size=None, shuffle=False, num_workers=num_workers)
    pending = _Pending(module, device, out, int(policy.chunk_size))
    with torch.no_grad():
        for item in progress(loader, "embed", total=len(reads), unit="chunk"):
            pending.add(item)
        pending.flush()
        if modalities:
            pooled = {m: torch.from_numpy(np.nan_to_num(out.emb[m])) for m in modalities}
            present = {m: torch.from_numpy(out.has[m]) for m in modalities}
            out.fused = fused_embedding(pooled, present).cpu().numpy().astype(np.float32)
    return out


def instance_policy_of(max_instances: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> InstancePolicy:
    """The :class:`~biossl.data.bags.InstancePolicy` of ``--max-tiles`` and ``--chunk-size``, checked.

    Raises:
        InputError: ``max_instances`` or ``chunk_size`` below 1.
    """
    if max_instances is not None and max_instances < 1:
        raise InputError(f"--max-tiles (--max-instances) must be at least 1; got {max_instances} (leave it out to use "
                         "every tile of every slide)")
    if chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1; got {chunk_size}")
    return InstancePolicy(max_instances=max_instances, chunk_size=chunk_size)


def write_embeddings(adata: ad.AnnData, path: str | Path) -> None:
    """Write ``adata`` as ``.h5ad`` atomically (a failed write leaves no file under ``path``).

    Raises:
        OutputError: the disk is full or the folder not writable (one line, exit code 74).
    """
    write_h5ad_atomic(adata, path)  # built in memory: HDF5 never meets a full disk (it can crash there)


def read_embeddings(path: str | Path) -> ad.AnnData:
    """Read an ``.h5ad`` written by :func:`write_embeddings`.

    Raises:
        InputError: the file is missing or not an h5ad.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"embeddings file {path} not found; write it with `biossl embed`")
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path} is not a readable .h5ad file ({exc}); write it with `biossl embed`") from exc


__all__ = ["DEFAULT_CHUNK_SIZE", "FUSED", "BatchTransform", "InstancePolicy", "LoadedCohort", "WholeEmbedded",
           "bag_spec_of", "default_work_dir", "embed_cohort", "embed_dataset", "embed_loaded", "embed_views",
           "embed_whole", "instance_policy_of", "load_cohort", "obsm_key", "open_cohort", "pretrained_on",
           "read_embeddings", "write_embeddings"]

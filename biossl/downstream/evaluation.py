"""The whole evaluation of ``biossl finetune`` as a library call: methods, labels, folds, CV, the JSON report.

:func:`run_evaluation` builds every method a run asks for -- the probe on frozen embeddings (from
``.h5ad`` files or AnnData objects, or computed from a checkpoint), fine-tuning and training from
scratch, the PCA / all-features baselines on raw tables, the k-mer baseline -- reads the labels,
makes or reads the folds, cross-validates every method on the same patients and folds (and at label
fractions), and returns an :class:`Evaluation`: the report ``biossl finetune`` writes as JSON, the
text it prints, and what :func:`write_evaluation` needs to write it (and the label-efficiency plot).
:func:`biossl.api.evaluate` and ``biossl finetune`` are thin wrappers over it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from biossl.downstream.finetune_settings import DEFAULT_L2, FinetuneSettings
from biossl.errors import InputError

if TYPE_CHECKING:
    from biossl.data.bags import InstancePolicy

logger = logging.getLogger(__name__)

MODES = ("probe", "finetune", "scratch")


@dataclass
class Evaluation:
    """What :func:`run_evaluation` returns.

    Attributes:
        report: The result as ``biossl finetune`` writes it (JSON-safe: ``json.loads`` of :attr:`text`).
        text: The JSON text of :attr:`report`.
        summary: The lines ``biossl finetune`` prints (design, one row per method, label efficiency).
        efficiency: The ``label_efficiency`` section (``None`` without label fractions).
        plot_title: Title of the label-efficiency plot.
    """

    report: dict[str, Any]
    text: str
    summary: list[str] = field(default_factory=list)
    efficiency: dict[str, Any] | None = None
    plot_title: str = ""


def l2_penalty(value: float | Sequence[float] | str | None, task: str, what: str = "l2") -> float | list[float]:
    """An L2 penalty option: ``None`` (the task's default), ``"auto"`` (the inner-CV grid), a number or a list.

    Raises:
        InputError: a negative or non-finite penalty, or an empty list.
    """
    from biossl.downstream.methods import L2_GRID

    if value is None:
        return DEFAULT_L2[task]
    given = value  # as the user wrote it, for the messages
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return list(L2_GRID)
        try:
            value = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"{what} {value!r}: give a number, a comma-separated list of numbers, or auto") from None
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if not values or any(not (v >= 0 and v < float("inf")) for v in values):
        raise InputError(f"{what} {given!r}: penalties must be finite numbers >= 0")
    return values[0] if len(values) == 1 else values


@contextlib.contextmanager
def table_path(table: Any, what: str) -> Iterator[Path]:
    """A path to read ``table`` from: the file itself, or a DataFrame written to a temporary CSV.

    A DataFrame whose index is named (``patient_id``) keeps it as a column.
    """
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        yield Path(table)
        return
    frame = table.reset_index() if table.index.name is not None else table
    with tempfile.TemporaryDirectory(prefix="biossl_") as tmp:
        path = Path(tmp) / f"{what.replace(' ', '_')}.csv"
        frame.to_csv(path, index=False)
        yield path


def probe_features(source: Any, keys: Sequence[str], name: str | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any], list[str], Any]:
    """``({key: features}, provenance, patients, obs)`` of embeddings (an ``.h5ad`` read once, or an AnnData).

    Raises:
        InputError: the file is unreadable or lacks one of ``keys``.
    """
    import anndata as ad

    from biossl.downstream.embed import read_embeddings
    from biossl.downstream.methods import feature_frame

    if isinstance(source, ad.AnnData):
        adata, label, file = source, f"the embeddings {name or 'AnnData'}", name or "AnnData"
    else:
        adata, label, file = read_embeddings(source), str(source), Path(source).name
    missing = [k for k in keys if k not in adata.obsm]
    if missing:
        raise InputError(f"{label} has no obsm{missing}; it has {sorted(adata.obsm.keys())}: pick with --embedding "
                         "(keys=)")
    patients = [str(p) for p in adata.obs_names]
    frames = {key: feature_frame(adata.obsm[key], patients, what=f"{label} obsm[{key!r}]") for key in keys}
    provenance = adata.uns.get("biossl", {})
    info = {"file": file, "obsm": keys[0] if len(keys) == 1 else list(keys),
            **{k: str(provenance[k]) for k in ("checkpoint", "data_fingerprint", "cohort_fingerprint")
               if k in provenance}}
    return frames, info, patients, adata.obs


def _groups(column: str, labels: Any, labels_name: str,
            sources: list[tuple[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """``patient -> group`` from the labels table's ``column``, else the first other source that has it."""
    found = [(f"the labels table {labels_name}", labels[column])] if column in labels.columns else []
    found += [(where, values) for where, values in sources if values is not None]
    if not found:
        where = ", ".join([f"the labels table {labels_name}"] + [w for w, _ in sources])
        raise InputError(f"--group-by {column}: no column {column!r} in {where}; add it to the labels table "
                         "(patient_id, ..., site) or to the manifest metadata")
    where, values = found[0]
    values = values.dropna()
    values = values[values.astype(str).str.strip() != ""]
    return {str(p): str(v) for p, v in values.items()}, {"column": column, "from": where}


def baseline_tables(paths: Sequence[Any]) -> tuple[Any, list[int]]:
    """The tables side by side on the patients present in all of them, and each table's column count."""
    import pandas as pd

    from biossl.data.expression import read_expression
    from biossl.downstream.methods import feature_frame

    frames = []
    for path in paths:
        adata = read_expression(path, aggregate="mean")
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
        frame = feature_frame(x, [str(p) for p in adata.obs["patient_id"]], what=f"baseline features {path}")
        frames.append(frame.set_axis([f"{Path(path).name}:{g}" for g in adata.var_names], axis=1))
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


def _components(components: int | Sequence[int], n_tables: int) -> list[int]:
    values = [int(components)] if isinstance(components, int) else [int(c) for c in components]
    if len(values) == 1:
        values = values * n_tables
    if len(values) != n_tables or min(values) < 1:
        raise InputError(f"--baseline-components {components}: give one positive number, or one per "
                         f"--baseline-features table ({n_tables})")
    return values


def check_request(*, task: str, modes: Sequence[str], label_column: str | None, has_embeddings: bool,
                  checkpoint: Any, manifest: Any, baseline_features: Sequence[Any], baseline_kmer: int | None,
                  semi_supervised: bool, keys: Sequence[str]) -> None:
    """Refuse a request that cannot run, before any work (messages name the CLI flags and the API's arguments).

    Raises:
        InputError: what is missing or contradictory, and what to give instead.
    """
    from biossl.downstream.kmers import MAX_K
    from biossl.downstream.methods import SURVIVAL_PSEUDO_LABELS

    if task not in ("subtype", "survival"):
        raise InputError(f"task {task!r}: give subtype or survival")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InputError(f"--mode {','.join(modes)}: unknown mode(s) {unknown}; give one or more of "
                         f"{', '.join(MODES)}, comma-separated (e.g. --mode probe,finetune,scratch)")
    if task == "subtype" and not label_column:
        raise InputError("--task subtype needs --label-column COL (the labels table's class column)")
    if not modes and not baseline_features and baseline_kmer is None:
        raise InputError("nothing to evaluate: give --embeddings (from `biossl embed`), --checkpoint with --manifest "
                         "and --mode, --baseline-features and/or --baseline-kmer")
    for mode in modes:
        if mode in ("finetune", "scratch") and (checkpoint is None or manifest is None):
            missing = " and ".join(f for f, v in (("--checkpoint CKPT", checkpoint), ("--manifest MANIFEST", manifest))
                                   if v is None)
            raise InputError(f"--mode {mode} needs {missing}: the pretraining checkpoint whose architecture "
                             f"{'is fine-tuned' if mode == 'finetune' else 'is trained from scratch'} and the "
                             "cohort manifest its encoders read")
    if "probe" in modes and not has_embeddings and (checkpoint is None or manifest is None):
        raise InputError("--mode probe needs --embeddings H5AD (from `biossl embed`), or --checkpoint CKPT and "
                         "--manifest MANIFEST to embed the cohort here")
    if len(keys) > 1 and {"finetune", "scratch"} & set(modes):
        raise InputError(f"--embedding {','.join(keys)}: --mode finetune and scratch train one embedding; give one "
                         "key (several keys are for the probe)")
    if semi_supervised:
        if task != "subtype":
            raise InputError(SURVIVAL_PSEUDO_LABELS)
        if not {"probe", "finetune"} & set(modes):
            raise InputError("--semi-supervised adds pseudo-labelled variants of --mode probe and finetune; "
                             "give one of those modes")
    if baseline_kmer is not None:
        if task != "subtype":
            raise InputError("--baseline-kmer is a classification baseline (k-mer logistic regression); use it with "
                             "--task subtype")
        if manifest is None:
            raise InputError("--baseline-kmer needs --manifest MANIFEST: the cohort whose DNA sequence files are "
                             "counted")
        if not 1 <= baseline_kmer <= MAX_K:
            raise InputError(f"--baseline-kmer must be between 1 and {MAX_K} (4**K features); got {baseline_kmer}")


def run_evaluation(
    *,
    task: str,
    labels: Any,
    modes: Sequence[str] = ("probe",),
    embeddings: Sequence[tuple[str, Any]] | None = None,
    keys: Sequence[str] = ("X_fused",),
    label_column: str | None = None,
    time_column: str = "time",
    event_column: str = "event",
    id_column: str = "patient_id",
    unknown_labels: Literal["error", "drop"] = "error",
    splits: Any = None,
    folds: int = 5,
    group_by: str | None = None,
    seed: int = 0,
    head: Literal["linear", "mlp"] = "linear",
    hidden: int = 64,
    survival_loss: Literal["cox", "discrete"] = "cox",
    bins: int = 4,
    l2: float | Sequence[float] | str | None = None,
    baseline_features: Sequence[str | Path] = (),
    baseline_l2: float | Sequence[float] | str = "auto",
    baseline_components: int | Sequence[int] = 16,
    baseline_penalizer: float = 1.0,
    baseline_kmer: int | None = None,
    kmer_canonical: bool = False,
    checkpoint: str | Path | None = None,
    manifest: str | Path | None = None,
    work_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    skip_bad: bool = False,
    policy: InstancePolicy | None = None,
    device: str = "auto",
    settings: FinetuneSettings | None = None,
    label_fractions: Sequence[float] = (),
    seeds: Sequence[int] = (),
    semi_supervised: bool = False,
    salt: bytes | None = None,
    plot_name: str | None = None,
) -> Evaluation:
    """Cross-validate the probe, fine-tuning, scratch and baselines on the same patients and folds.

    The arguments are those of ``biossl finetune`` (see its ``--help``); ``embeddings`` is a list of
    ``(name, .h5ad path or AnnData)``, ``labels`` and ``splits`` a file or a DataFrame, ``settings`` the
    training settings of fine-tuning and of the pseudo-labels (default :class:`FinetuneSettings`).

    Returns:
        An :class:`Evaluation` (the report, its JSON text, the printed summary).

    Raises:
        InputError: a bad request or input (see :func:`check_request`, the labels, the folds).
    """
    with table_path(labels, "labels") as labels_path:
        if splits is None:
            return _run(labels_path=labels_path, labels_name=_name(labels, "labels"), splits_path=None,
                        splits_name=None, **_options(locals()))
        with table_path(splits, "splits") as splits_path:
            return _run(labels_path=labels_path, labels_name=_name(labels, "labels"), splits_path=splits_path,
                        splits_name=_name(splits, "splits"), **_options(locals()))


def _name(table: Any, what: str) -> str:
    import pandas as pd

    return f"({what} DataFrame)" if isinstance(table, pd.DataFrame) else Path(table).name


def _options(scope: dict[str, Any]) -> dict[str, Any]:
    drop = ("labels", "splits", "labels_path", "splits_path")
    return {k: v for k, v in scope.items() if k not in drop}


def _run(*, labels_path: Path, labels_name: str, splits_path: Path | None, splits_name: str | None, task: str,
         modes: Sequence[str], embeddings: Sequence[tuple[str, Any]] | None, keys: Sequence[str],
         label_column: str | None, time_column: str, event_column: str, id_column: str,
         unknown_labels: Literal["error", "drop"], folds: int, group_by: str | None, seed: int, head: str,
         hidden: int, survival_loss: str, bins: int, l2: Any, baseline_features: Sequence[Any], baseline_l2: Any,
         baseline_components: Any, baseline_penalizer: float, baseline_kmer: int | None, kmer_canonical: bool,
         checkpoint: Any, manifest: Any, work_dir: Any, features_dir: Any, skip_bad: bool, policy: Any, device: str,
         settings: FinetuneSettings | None, label_fractions: Sequence[float], seeds: Sequence[int],
         semi_supervised: bool, salt: bytes | None, plot_name: str | None) -> Evaluation:
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
    from biossl.io import jsonable

    modes = list(dict.fromkeys(modes))
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise InputError("--embedding is empty; give an obsm key such as X_fused")
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    manifest = Path(manifest) if manifest is not None else None
    baseline_paths = [Path(p) for p in baseline_features]
    check_request(task=task, modes=modes, label_column=label_column, has_embeddings=embeddings is not None,
                  checkpoint=checkpoint, manifest=manifest, baseline_features=baseline_paths,
                  baseline_kmer=baseline_kmer, semi_supervised=semi_supervised, keys=keys)
    if policy is not None and policy.max_instances is not None and checkpoint is None:
        raise InputError("--max-tiles applies to probe embeddings computed from --checkpoint; the embeddings of "
                         "--embeddings were computed by `biossl embed` (give it --max-tiles there)")
    probe_l2 = l2_penalty(l2, task, "--l2")
    baseline_l2 = l2_penalty(baseline_l2, task, "--baseline-l2")
    fractions = sorted({float(f) for f in label_fractions})
    for fraction in fractions:
        check_fraction(fraction)
    seeds = list(dict.fromkeys(int(s) for s in seeds)) or [seed]
    settings = settings or FinetuneSettings(hidden=None if head == "linear" else hidden,
                                            survival_loss=survival_loss, n_bins=bins)  # type: ignore[arg-type]

    methods: list[Method] = []
    inputs: dict[str, Any] = {"labels": labels_name}
    known: set[str] = set()
    sources: list[str] = []
    bags = None
    resolved: Any = None  # the device, resolved with the cohort's bags, the only methods that run a model
    cohort: Any = None  # the manifest's cohort, when some method reads it
    group_sources: list[tuple[str, Any]] = []
    patients: list[str] = []
    if {"finetune", "scratch"} & set(modes) or ("probe" in modes and embeddings is None):
        from biossl.device import resolve_device
        from biossl.downstream.finetuning import CohortBags

        resolved = resolve_device(device)  # a bad device fails before the checkpoint is read
        settings.check()
        bags = CohortBags(checkpoint, manifest, work_dir=work_dir, features_dir=features_dir, skip_bad=skip_bad,
                          seed=seed, policy=policy)
        for key in keys:
            bags.modalities_for(key)  # a bad key fails before any fit
        known |= set(bags.dataset.patients)
        sources.append(f"the cohort {manifest}")
        assert checkpoint is not None and manifest is not None
        inputs.update(checkpoint=checkpoint.name, manifest=manifest.name)
    if "probe" in modes:
        probe_name = f"{'linear' if head == 'linear' else 'mlp'}_probe"
        frames: dict[str, Any] = {}
        if embeddings is not None:
            infos: list[dict[str, Any]] = []
            names = [name for name, _ in embeddings]
            if len(set(names)) < len(names):
                raise InputError(f"--embeddings: the names {names} repeat; give each file its own NAME=H5AD")
            unknown = sorted({k.split(":", 1)[0] for k in keys if ":" in k} - set(names))
            if unknown:
                raise InputError(f"--embedding {','.join(keys)}: {unknown} name no --embeddings NAME=H5AD (names: "
                                 f"{names}); qualify a key as NAME:KEY to probe it in one file only")
            for name, source in embeddings:
                own = [k.split(":", 1)[1] for k in keys if k.startswith(f"{name}:")]
                wanted = list(dict.fromkeys([*(k for k in keys if ":" not in k), *own]))
                if not wanted:
                    continue
                found, info, rows, obs = probe_features(source, wanted, name)
                prefix = "" if len(embeddings) == 1 else f"{name}:"
                frames.update({prefix + key: frame for key, frame in found.items()})
                infos.append(info if len(embeddings) == 1 else {"name": name, **info})
                patients = list(dict.fromkeys([*patients, *rows]))
                if group_by is not None:
                    group_sources.append((f"the embeddings {info['file']}",
                                          obs[group_by].rename(index=str) if group_by in obs.columns else None))
                sources.append(f"the embeddings {source if not hasattr(source, 'obsm') else name}")
            inputs["embeddings"] = infos[0] if len(infos) == 1 else infos
        else:
            assert bags is not None and checkpoint is not None
            for key in keys:
                frame = bags.embeddings(key, device=resolved)
                frames[key] = feature_frame(frame.to_numpy(), list(frame.index), what=f"{key} of {checkpoint}")
                patients = list(frame.index)
            inputs["embeddings"] = {"computed_from": checkpoint.name, "obsm": keys[0] if len(keys) == 1 else keys,
                                    "instances": bags.policy.describe()}
        known |= set(patients)
        probe_kw: dict[str, Any] = dict(hidden=None if head == "linear" else hidden, survival_loss=survival_loss,
                                        n_bins=bins, l2=probe_l2)
        for key, features in frames.items():
            name = probe_name if len(frames) == 1 else f"{probe_name}:{key}"
            methods.append(LinearProbe(features, name=name, **probe_kw))
            if semi_supervised:
                methods.append(LinearProbe(features, name=f"{name}+pl", semi_supervised=True,
                                           pseudo_threshold=settings.pseudo_threshold,
                                           pseudo_weight=settings.pseudo_weight, **probe_kw))
    for mode in ("finetune", "scratch"):
        if mode in modes:
            from biossl.downstream.finetuning import EncoderFinetune

            assert bags is not None
            methods.append(EncoderFinetune(bags, mode="finetune" if mode == "finetune" else "scratch",
                                           embedding=keys[0], settings=settings, device=resolved))
            if mode == "finetune" and semi_supervised:
                methods.append(EncoderFinetune(bags, mode="finetune", embedding=keys[0], settings=settings,
                                               semi_supervised=True, device=resolved))
    if baseline_paths:
        raw, blocks = baseline_tables(baseline_paths)
        tables = ", ".join(p.name for p in baseline_paths)
        inputs["baseline_features"] = tables if len(blocks) == 1 else [p.name for p in baseline_paths]
        kind = "cox" if task == "survival" else "logreg"
        components = _components(baseline_components, len(blocks))
        methods.append(PCABaseline(raw, n_components=components, blocks=blocks, penalizer=baseline_penalizer,
                                   name=f"pca{'+'.join(map(str, components))}_{kind}", source=tables))
        methods.append(AllFeaturesLinear(raw, name=f"linear_all_{kind}", source=tables, l2=baseline_l2))
        known |= set(map(str, raw.index))
        sources.append(f"the baseline features {tables}")
    if baseline_kmer is not None:
        from biossl.data.cohort import Cohort
        from biossl.downstream.kmers import KmerBaseline, patient_kmer_frequencies

        assert manifest is not None
        cohort = bags.cohort if bags is not None else Cohort.from_manifest(manifest, skip_bad=skip_bad)
        kmers = patient_kmer_frequencies(cohort, baseline_kmer, canonical=kmer_canonical)
        methods.append(KmerBaseline(kmers, k=baseline_kmer, canonical=kmer_canonical))
        inputs.setdefault("manifest", manifest.name)
        known |= set(cohort.patients)
        sources.append(f"the cohort {manifest}")

    labels = read_labels(labels_path, patients=sorted(known), patients_from=" and ".join(dict.fromkeys(sources)),
                         unknown=unknown_labels, id_column=id_column)
    if task == "subtype":
        assert label_column is not None  # check_request
        the_task = subtype_task(labels, label_column, source=labels_path)
    else:
        the_task = survival_task(labels, time_column, event_column, source=labels_path)
    unlabelled = sorted(known - set(the_task.patients))
    the_task = common_patients(the_task, methods)
    for reason, left in the_task.excluded.items():
        if left and reason.startswith("no_input"):
            logger.warning("%d labelled patient(s) lack the inputs of %s and are left out of every method, e.g. %s",
                           len(left), reason.split(":", 1)[1], left[:MAX_NAMED])
    groups = None
    if group_by is not None:
        cohort = bags.cohort if bags is not None else cohort
        if cohort is not None and manifest is not None:
            meta = cohort.metadata
            group_sources.append((f"the manifest {manifest.name}",
                                  meta[group_by] if group_by in meta.columns else None))
        groups, inputs["group_by"] = _groups(group_by, labels, labels_name, group_sources)
    split_table = read_splits(splits_path) if splits_path is not None else None
    the_task, fold_table = folds_for(the_task, splits=split_table, n_folds=folds, seed=seed,
                                     source=str(splits_path) if splits_path is not None else "", groups=groups,
                                     group_name=group_by or "group")
    if semi_supervised:
        logger.info("semi-supervised: %d patient(s) without a label join training, plus the labels each fraction "
                    "drops", len(unlabelled))
    pool = unlabelled if semi_supervised else []

    efficiency: dict[str, Any] | None = None
    plot_title = ""
    if fractions:
        efficiency, runs = label_efficiency(the_task, methods, fold_table, fractions, seeds, unlabelled=pool)
        results = (runs.get((1.0, seed))
                   or cross_validate(the_task, methods, fold_table, seed=seed, unlabelled=pool))
        plot_title = (f"{task}: {len(the_task)} patients; mean ± sd over {len(scored_folds(fold_table))} folds x "
                      f"{len(seeds)} seed(s)")
        if plot_name is not None:
            efficiency["plot"] = plot_name
    else:
        results = cross_validate(the_task, methods, fold_table, seed=seed, unlabelled=pool)

    held_out = is_held_out(fold_table)
    fold_info: dict[str, Any] = {
        "source": splits_name if splits_name is not None else f"{folds} stratified folds made with seed {seed}",
        "n_folds": len(scored_folds(fold_table))}
    if groups is not None:
        fold_info["grouped_by"] = {**inputs["group_by"],
                                   "n_groups": len({groups[p] for p in fold_table["patient_id"]}),
                                   "note": f"every {group_by} value is in one fold: none is in both the "
                                           "training and the test patients of a fold"}
    if held_out:
        fold_info["design"] = ("held-out test set: fold -1 = split train (always trained on), fold 0 = split test "
                               "(scored); dev patients left out")
        fold_info["n_train"] = int((fold_table["fold"] == -1).sum())
        fold_info["n_test"] = int((fold_table["fold"] != -1).sum())
    report: dict[str, Any] = {
        "biossl_version": __version__,
        "inputs": inputs,
        "modes": modes,
        **the_task.describe(),
        "folds": {**fold_info, "assignment": dict(zip(fold_table["patient_id"], fold_table["fold"].astype(int)))},
        "excluded": {reason: {"n": len(p), "patients": p} for reason, p in the_task.excluded.items()},
        "metric_sd": "sample sd over folds (ddof 1); folds where a metric is undefined are left out (n_folds)",
        "methods": results,
    }
    if semi_supervised:
        report["unlabelled"] = {"n": len(unlabelled), "patients": unlabelled,
                                "note": "patients with inputs but no usable label; with label fractions, each fit "
                                        "also gets the training labels its fraction drops"}
    if efficiency is not None:
        report["label_efficiency"] = efficiency
    if salt is not None:
        report = _pseudonymize(report, known | set(map(str, labels.index)), salt)
    text = json.dumps(jsonable(report), indent=1) + "\n"

    table = summary_table(results, metric_names(the_task))
    described = the_task.describe()
    extra = (f", {described['n_events']} events" if "n_events" in described
             else f", classes {described.get('classes')}")
    design = (f"held-out test set ({fold_info['n_train']} train, {fold_info['n_test']} test; {fold_info['source']})"
              if held_out else f"{fold_info['n_folds']} folds ({fold_info['source']})")
    summary = [f"{task}: {len(the_task)} patients{extra}; {design}"]
    with pd.option_context("display.width", 200):
        summary.append(table.to_string(index=False))
        if efficiency is not None:
            summary.append(f"label efficiency, {efficiency['metric']} (mean ± sd over folds x seeds {seeds}):")
            summary.append(label_efficiency_table(efficiency).to_string(index=False))
    return Evaluation(report=json.loads(text), text=text, summary=summary, efficiency=efficiency,
                      plot_title=plot_title)


def _pseudonymize(report: dict[str, Any], ids: set[str], salt: bytes) -> dict[str, Any]:
    """Patient IDs in the report's patient sections as pseudonyms; texts elsewhere holding an ID hidden."""
    from biossl.privacy import hide_identifiers, pseudonymize_record

    # Only the sections that hold patients: numbers elsewhere (fractions, seeds, folds) must stay.
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
    return report


def write_evaluation(evaluation: Evaluation, out: str | Path, plot: str | Path | None = None) -> None:
    """Write the JSON (atomically); with label fractions and ``plot``, the plot and the JSON land together.

    Raises:
        InputError: ``plot`` is the JSON file.
        OutputError: the folder is not writable or the disk is full.
    """
    from biossl.io import atomic_outputs, write_text_atomic

    out = Path(out)
    if plot is None or evaluation.efficiency is None:
        write_text_atomic(out, evaluation.text)
        return
    plot = Path(plot)
    if plot.resolve() == out.resolve():
        raise InputError(f"--plot {plot} is the --out file; give the plot a name of its own")
    from biossl.downstream.plots import plot_label_efficiency

    with atomic_outputs(plot, out) as (png_tmp, json_tmp):  # the JSON naming the plot lands last
        plot_label_efficiency(evaluation.efficiency, png_tmp, title=evaluation.plot_title)
        json_tmp.write_text(evaluation.text)


__all__ = ["MODES", "Evaluation", "baseline_tables", "check_request", "l2_penalty", "probe_features",
           "run_evaluation", "table_path", "write_evaluation"]

"""Joint multimodal pretraining: objectives per modality plus a cross-modal loss.

For each modality present in a batch the module

1. flattens the patients' bags to instances and computes that modality's objectives (by default its
   masked loss: MAE on tiles and volume patches, masked gene and nucleotide modelling; any objective
   of :mod:`biossl.modules.tasks` can be chosen per modality),
2. embeds the instances, projects them to a shared width and pools each patient's bag with
   attention-MIL into one patient-modality embedding,

then scores every pair of modalities with a cross-modal loss (CLIP-style InfoNCE by default), in
which patients who lack one modality of the pair are masked out (never dropped). The total is a
weighted sum; every term is logged.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from biossl import __version__, keys
from biossl.checkpoint import load_checkpoint, rebuild_error
from biossl.encoders import ENCODERS
from biossl.encoders.base import ModalityModel
from biossl.encoders.patient import (
    DEFAULT_EMBED_DIM,
    PatientEncoder,
    bag_instances,
    build_encoder,
    kind_name,
    pool_instances,
    resolve_spec,
)
from biossl.encoders.pooling import GatedAttentionMIL
from biossl.errors import InputError
from biossl.kinds import KINDS
from biossl.modules.tasks import CrossModal, Task, build_target, build_tasks, normalise_entries
from biossl.objectives._heads import cosine_momentum, momentum_update

logger = logging.getLogger(__name__)


def check_spec(modality: str, spec: Any) -> None:
    """Check one ``model.modalities`` entry before any data is read: its kind, encoder and objectives.

    Raises:
        InputError: Not a mapping, an unknown kind or encoder name, or an objective that does not exist or
            does not apply to the modality's kind (where the kind is known: its ``kind`` or a legacy name).
    """
    if not isinstance(spec, dict):
        raise InputError(f"model.modalities.{modality} must be a mapping ({{encoder: ..., ...}}); got {spec!r}")
    kind = spec.get("kind") or keys.LEGACY_KINDS.get(modality)
    if kind is not None and kind not in KINDS:
        raise InputError(f"model.modalities.{modality}.kind: unknown kind {kind!r}; known kinds: "
                         f"{', '.join(KINDS.names())}")
    encoder = spec.get("encoder")
    if encoder is not None and encoder not in ENCODERS:
        try:
            ENCODERS.get(str(encoder))
        except KeyError as exc:
            raise InputError(f"model.modalities.{modality}.encoder: {exc.args[0]}") from None
    if spec.get("objective") is not None:
        normalise_entries(modality, spec["objective"], kind)


def factory_options(name: str) -> set[str] | None:
    """The keyword options the encoder factory ``name`` names; ``None`` when it takes any (``**kwargs``)."""
    params = inspect.signature(ENCODERS.get(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def compile_methods(encoder: ModalityModel, backend: bool | str = True) -> None:
    """Replace the encoder's entry points by ``torch.compile``-d versions, on the instance.

    The engine calls ``embed`` / ``masked_loss`` / ``tokens`` rather than ``forward``, so compiling the
    module (which compiles ``forward`` only) would do nothing; compiling the bound methods keeps the
    module itself, its parameter names and its checkpoints unchanged.
    """
    name_of_backend = "inductor" if backend is True else str(backend)
    for name in ("embed", "masked_loss", "tokens"):
        setattr(encoder, name, torch.compile(getattr(encoder, name), backend=name_of_backend))


class PretrainModule(pl.LightningModule):
    """Train every present modality jointly.

    Args:
        modalities: Per modality name of the manifest (``t1``, ``rna``, the legacy ``wsi``, ...),
            ``{"encoder": <registry name>, **encoder kwargs}``, optionally with ``kind`` (else the
            manifest's or the legacy name's), and ``objective``: a registry name, ``{name, weight, views,
            momentum, **options}``, or a list of those (default: the kind's masked objective; see
            :mod:`biossl.modules.tasks`). ``encoder`` defaults to the kind's. What the data fixes is
            filled in when absent (:meth:`biossl.kinds.base.Kind.encoder_options`: a table's feature
            count and value type, a sequence's window length, cached feature width).
        embed_dim: Width of the shared space where patient-modality embeddings are compared.
        masked_weight: Weight of each modality's masked loss (a number, or one per modality).
        contrastive_weight: Weight of the cross-modal loss.
        cross_modal: The cross-modal objective: ``clip`` (default), ``infonce``, ``barlow_twins``,
            ``vicreg``, ``simsiam`` or ``swav``, as a name or ``{name, **options}``.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps before the cosine decay.
        total_steps: Length of the cosine schedule; ``None`` uses the trainer's estimate.
        compile: Compile each encoder's ``embed``, ``masked_loss`` and ``tokens`` with ``torch.compile``
            (``True``: the default inductor backend; a string names another backend, e.g. ``"eager"``
            to debug). Parameter names and checkpoints are the same as without compiling.
        seed: Seed of the per-step masking randomness (makes resumed runs equal to uninterrupted ones).
    """

    def __init__(
        self,
        modalities: dict[str, dict[str, Any]],
        *,
        embed_dim: int = DEFAULT_EMBED_DIM,
        masked_weight: float | dict[str, float] = 1.0,
        contrastive_weight: float = 1.0,
        cross_modal: str | dict[str, Any] = "clip",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 10,
        total_steps: int | None = None,
        compile: bool | str = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not modalities:
            raise InputError("model.modalities is empty; name at least one modality of the manifest")
        for m, spec in modalities.items():
            check_spec(m, spec)  # a bad kind, encoder or objective stops here, before any data is read
        self.save_hyperparameters()
        self.modality_specs = {m: dict(s) for m, s in modalities.items()}
        self.embed_dim = embed_dim
        self.masked_weight = masked_weight
        self.contrastive_weight = contrastive_weight
        self.seed = seed
        self.encoders = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        self.pools = nn.ModuleDict()
        #: Per modality, its tasks (objectives bound to the encoder), and momentum encoders where needed.
        self.tasks = nn.ModuleDict()
        self.targets = nn.ModuleDict()
        self._task_weights: dict[str, float] = {}
        self._total_steps = total_steps
        self.contrastive = CrossModal(list(modalities), embed_dim, cross_modal) if len(modalities) >= 2 else None
        #: The last training step's loss terms (detached; ``train/loss``, ``train/masked/<m>``, ``train/clip/<a>-<b>``,
        #: diagnostics), as written to the loggers; ``trainer.logged_metrics`` holds only what ``self.log`` logs.
        self.last_terms: dict[str, torch.Tensor] = {}
        #: Extra state saved in checkpoints (gene vocabulary, tokeniser, data fingerprint).
        self.data_state: dict[str, Any] = {}

    # -- model construction ---------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build encoders once the data (gene vocabulary) is known; idempotent."""
        if len(self.encoders):
            return
        self._fill_from_data()
        # Initial weights are a function of the seed alone, whatever the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._build()

    def kind_of(self, m: str) -> str:
        """The kind of modality ``m`` (its spec's ``kind``; the legacy names have their own)."""
        return kind_name(m, self.modality_specs[m])

    def patient_encoder(self) -> PatientEncoder:
        """The Lightning-free encoder of this module: its ``encoders``, ``projections`` and ``pools`` (shared)."""
        self.configure_model()
        encoder = PatientEncoder(self.modality_specs, embed_dim=self.embed_dim, data_state=self.data_state,
                                 hparams=dict(self.hparams), build=False)
        encoder.encoders, encoder.projections, encoder.pools = self.encoders, self.projections, self.pools
        return encoder

    def _build(self) -> None:
        for m, spec in self.modality_specs.items():
            kind = self.kind_of(m)
            enc = build_encoder(m, spec)
            tasks = build_tasks(m, enc, spec.get("objective"), masked_weight=self._weight(m), kind=kind)
            self.tasks[m] = nn.ModuleList(tasks)
            for task in tasks:
                self._task_weights[self._loss_key(m, task)] = task.weight
            if any(t.needs_target for t in tasks):
                self.targets[m] = build_target(enc)
            if self.hparams["compile"]:
                compile_methods(enc, self.hparams["compile"])
            self.encoders[m] = enc
            self.projections[m] = nn.Linear(enc.embed_dim, self.embed_dim)
            self.pools[m] = GatedAttentionMIL(self.embed_dim)

    def _tasks(self, m: str) -> list[Task]:
        return list(self.tasks[m])  # type: ignore[call-overload]

    @staticmethod
    def _loss_key(m: str, task: Task) -> str:
        return f"{'masked' if task.contract == 'masked' else task.name}/{m}"

    def _fill_from_data(self) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "cohort", None) is not None:
            self.data_state["data_fingerprint"] = dm.cohort.fingerprint()
            self.data_state["bag_spec"] = dict(vars(dm.spec))
            held = list(getattr(dm, "holdout_patients", []) or [])
            if held:
                self.data_state["holdout_patients"] = held
        dataset = getattr(dm, "dataset", None)
        states: dict[str, dict[str, Any]] = dataset.states() if dataset is not None else {}
        if states:
            self.data_state["modalities"] = states
        for m, spec in self.modality_specs.items():
            state = states.get(m, {})
            if state.get("kind"):
                if spec.get("kind") and spec["kind"] != state["kind"]:
                    raise InputError(f"model.modalities.{m}.kind is {spec['kind']!r} but the manifest's {m} rows are "
                                     f"{state['kind']!r}; one name has one kind")
                spec["kind"] = state["kind"]
            kind = resolve_spec(m, spec)
            if dm is not None:
                takes = factory_options(str(spec["encoder"]))
                for k, v in kind.encoder_options(state, dm.spec).items():
                    if takes is None or k in takes:  # an encoder gets the data's options it takes
                        spec.setdefault(k, v)
            if "tokeniser" in state:
                self.data_state["tokeniser"] = state["tokeniser"]
        if keys.EXPRESSION in states and states[keys.EXPRESSION].get("vocabulary"):
            self.data_state["vocabulary"] = list(states[keys.EXPRESSION]["vocabulary"])  # where older readers look
        self.data_state["modality_specs"] = {m: dict(s) for m, s in self.modality_specs.items()}

    # -- forward --------------------------------------------------------------------------------
    def encode_batch(
        self, batch: dict[str, Any], *, with_masked_loss: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Return patient-modality embeddings [B, D] and present masks [B] per modality, and task losses.

        Task losses (unweighted) are keyed ``"<objective>/<modality>"``, the masked ones ``"masked/<m>"``;
        ``with_masked_loss=False`` skips every task (embedding only).
        """
        pooled: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        masked: dict[str, torch.Tensor] = {}
        for m in self.modality_specs:
            if m not in batch:
                continue
            entry = batch[m]
            xi, gm = bag_instances(entry)
            enc: ModalityModel = self.encoders[m]  # type: ignore[assignment]
            if with_masked_loss:
                target = self.targets[m] if m in self.targets else None  # noqa: SIM401 (ModuleDict has no get)
                for task in self._tasks(m):
                    masked[self._loss_key(m, task)] = task(enc, xi, gm, target)
            # The embedding is the patient encoder's (biossl.encoders.patient): the same numbers at inference.
            pooled[m] = pool_instances(enc, self.projections[m], self.pools[m], xi, gm, entry[keys.MASK])
            present[m] = entry[keys.PRESENT]
        return pooled, present, masked

    def _weight(self, m: str) -> float:
        w = self.masked_weight
        return float(w.get(m, 1.0)) if isinstance(w, dict) else float(w)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One joint step; logs ``train/loss``, ``train/masked/<m>`` and ``train/clip/<a>-<b>``."""
        # Masking randomness is a function of the step, so a resumed run draws what an
        # uninterrupted one would have.
        torch.manual_seed(self.seed * 1_000_003 + self.global_step * 101 + self.global_rank)
        pooled, present, losses = self.encode_batch(batch)
        total = sum((self._task_weights[k] * v for k, v in losses.items()), torch.zeros((), device=self.device))
        metrics = {f"train/{k}": v.detach() for k, v in losses.items()}
        if self.contrastive is not None:
            c_total, pairs = self.contrastive(pooled, present)
            total = total + self.contrastive_weight * c_total
            metrics["train/contrastive"] = c_total.detach()
            for name in self.contrastive.last_scored:  # pairs with >= 2 patients having both
                metrics[f"train/{name}"] = pairs[name].detach()
        for m in self.tasks:
            if m in batch:
                for task in self._tasks(m):
                    metrics.update({f"train/{k}/{m}": v for k, v in task.diagnostics().items()})
        # The terms go straight to the loggers after the step (on_train_batch_end), at Lightning's steps and
        # log_every_n_steps: self.log's per-metric bookkeeping cost ~2-3 ms a step for the ~20 terms of a
        # four-modality run (benchmarks/RESULTS.md), and these per-step terms need none of it (no epoch
        # aggregation, no cross-rank reduction: loggers write on rank 0 only, as Lightning's do).
        metrics["train/loss"] = total.detach()
        self.last_terms = metrics
        self.log("train/loss", total.detach(), batch_size=len(batch["patient_id"]), prog_bar=True, logger=False)
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Write this step's loss terms to the loggers, every ``trainer.log_every_n_steps`` steps."""
        terms = self.last_terms
        trainer = self.trainer
        every = int(getattr(trainer, "log_every_n_steps", 1) or 0)  # set by Lightning at run time
        if not terms or not trainer.loggers or every == 0:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step Lightning's own logging uses
        if (step + 1) % every and not trainer.should_stop:
            return
        values = {k: float(v) for k, v in terms.items()}
        values["epoch"] = trainer.current_epoch
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then move the momentum encoders and heads (BYOL, MoCo, JEPA, ...)."""
        super().optimizer_step(*args, **kwargs)
        if not any(t.uses_momentum for m in self.tasks for t in self._tasks(m)):
            return
        total = max(1, int(self._total_steps or self.trainer.estimated_stepping_batches))
        for m in self.tasks:
            bases = []
            for task in self._tasks(m):
                if task.uses_momentum:
                    momentum = cosine_momentum(self.global_step, total, base=task.momentum)
                    task.after_step(momentum)
                    bases.append(momentum)
            if m in self.targets and bases:
                momentum_update(self.encoders[m], self.targets[m], min(bases))

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """AdamW with linear warm-up and cosine decay, stepped every optimiser step."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams["weight_decay"]},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams["lr"],
        )
        total = self.hparams["total_steps"] or int(self.trainer.estimated_stepping_batches)
        self._total_steps = total
        warm = max(0, int(self.hparams["warmup_steps"]))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- resumability and checkpoint content ------------------------------------------------------
    def on_train_start(self) -> None:
        """Let a resumable loader read how many batches of the epoch have finished their step."""
        loader = self.trainer.train_dataloader
        if loader is not None and hasattr(loader, "progress"):
            loop = self.trainer.fit_loop.epoch_loop
            loader.progress = lambda: int(loop.batch_progress.current.processed)  # type: ignore[attr-defined]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the gene vocabulary, tokeniser, data fingerprint, resolved specs and loaded plug-ins."""
        from biossl.plugins import records

        checkpoint["biossl"] = {"version": __version__, **self.data_state, "plugins": records()}

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> PretrainModule:
        """Load a pretrained module with safe (``weights_only``) loading, without a trainer or data.

        The whole training module (objectives' heads, momentum encoders, cross-modal loss included);
        inference needs only :meth:`PatientEncoder.from_checkpoint
        <biossl.encoders.patient.PatientEncoder.from_checkpoint>`. Every failure is one line naming the
        file and what to do (:func:`biossl.checkpoint.load_checkpoint`: a missing, truncated or
        unreadable file; a file that is not a ``biossl pretrain`` checkpoint; another major version), or
        weights that do not fit the architecture the checkpoint describes.

        Raises:
            InputError: The file is not a usable biossl pretraining checkpoint (see above).
        """
        path = Path(path)
        ckpt = load_checkpoint(path, map_location=map_location)
        state = ckpt["biossl"]
        try:
            # LightningCLI adds bookkeeping keys (``_instantiator``, ``_class_path``) the constructor does not take.
            hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
            hparams["modalities"] = state["modality_specs"]
            # Compiling is a training-time choice: a loaded module runs eagerly (compiled entry points
            # are bound to this instance, so a deep copy for fine-tuning would train the original).
            hparams["compile"] = False
            module = cls(**hparams)
            module.data_state = dict(state)
            module.configure_model()
            module.load_state_dict(ckpt["state_dict"])
        except InputError:  # what an encoder needs is not there (a moved model folder): its own line
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise rebuild_error(path, ckpt, exc) from None
        return module

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild encoders from the checkpoint's resolved specs before weights are loaded."""
        state = checkpoint.get("biossl", {})
        self.data_state.update(state)
        specs = state.get("modality_specs")
        if specs and not len(self.encoders):
            self.modality_specs = {m: dict(s) for m, s in specs.items()}

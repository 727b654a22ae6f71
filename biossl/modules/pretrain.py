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

import logging
import math
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from biossl import __version__
from biossl.data import keys
from biossl.encoders import ENCODERS
from biossl.encoders.base import ModalityModel
from biossl.encoders.pooling import GatedAttentionMIL
from biossl.errors import InputError
from biossl.modules.tasks import MASKED, CrossModal, Task, build_target, build_tasks, normalise_entries
from biossl.objectives._heads import cosine_momentum, momentum_update

logger = logging.getLogger(__name__)


def compile_methods(encoder: ModalityModel, backend: bool | str = True) -> None:
    """Replace the encoder's entry points by ``torch.compile``-d versions, on the instance.

    The engine calls ``embed`` / ``masked_loss`` / ``tokens`` rather than ``forward``, so compiling the
    module (which compiles ``forward`` only) would do nothing; compiling the bound methods keeps the
    module itself, its parameter names and its checkpoints unchanged.
    """
    name_of_backend = "inductor" if backend is True else str(backend)
    for name in ("embed", "masked_loss", "tokens"):
        setattr(encoder, name, torch.compile(getattr(encoder, name), backend=name_of_backend))


def _unreadable_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words (torch's own text is many lines)."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"it holds a pickled {found.group(1)} object, which safe loading refuses (biossl checkpoints hold "
                "only tensors and plain values), so `biossl pretrain` did not write it; use "
                "<run>/checkpoints/last.ckpt of a `biossl pretrain` run")
    if isinstance(exc, EOFError) or "central directory" in text or "zip archive" in text:
        return ("it is truncated or corrupt (an interrupted copy or download?); copy it again, or use an earlier "
                "checkpoint of the run (<run>/checkpoints/step*.ckpt)")
    return (f"not a PyTorch checkpoint file ({type(exc).__name__}); use <run>/checkpoints/last.ckpt of a "
            "`biossl pretrain` run")


def _one_line(exc: BaseException, limit: int = 240) -> str:
    return " ".join(str(exc).split())[:limit]


#: What to do about an unusable checkpoint.
REDO = "use <run>/checkpoints/last.ckpt of a `biossl pretrain` run"


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a ``biossl pretrain`` checkpoint, every failure one line.

    Raises:
        InputError: the file is missing, unreadable (truncated, not a checkpoint, pickled objects) or
            has no ``biossl`` section (not written by ``biossl pretrain``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} not found (no such file); {REDO}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 (truncated zips, foreign pickles, ... raise many types)
        raise InputError(f"{path} is not a readable checkpoint: {_unreadable_reason(exc)}") from None
    state = ckpt.get("biossl") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "modality_specs" not in state:
        what = ("a plain state_dict" if isinstance(ckpt, dict) and ckpt and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else
                "a Lightning checkpoint of another model" if isinstance(ckpt, dict) and "state_dict" in ckpt else
                f"a {type(ckpt).__name__}")
        raise InputError(f"checkpoint {path} is not a biossl pretraining checkpoint, not a checkpoint written by "
                         f"`biossl pretrain` (no 'biossl' section: {what}); {REDO}")
    return ckpt


class PretrainModule(pl.LightningModule):
    """Train every present modality jointly.

    Args:
        modalities: Per modality, ``{"encoder": <registry name>, **encoder kwargs}``, optionally with
            ``objective``: a registry name, ``{name, weight, views, momentum, **options}``, or a list
            of those (default: the encoder's masked objective; see :mod:`biossl.modules.tasks`). The
            expression encoder's ``n_genes`` and the sequence encoder's ``max_len`` are filled in from
            the data when absent.
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
        embed_dim: int = 128,
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
        unknown = set(modalities) - set(keys.MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; known: {', '.join(keys.MODALITIES)}")
        for m, spec in modalities.items():
            if "encoder" not in spec:
                raise ValueError(f"modality {m!r}: give an 'encoder' name; known: {', '.join(ENCODERS.names())}")
            if spec.get("objective") is not None:
                normalise_entries(m, spec["objective"])  # fail on a bad objective before any data is read
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

    def _build(self) -> None:
        for m, spec in self.modality_specs.items():
            kwargs = {k: v for k, v in spec.items() if k not in ("encoder", "objective")}
            enc = ENCODERS.build(spec["encoder"], **kwargs)
            if not isinstance(enc, ModalityModel):
                raise TypeError(f"encoder {spec['encoder']!r} does not return a ModalityModel")
            tasks = build_tasks(m, enc, spec.get("objective"), masked_weight=self._weight(m))
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
        return f"{'masked' if task.name in MASKED else task.name}/{m}"

    def _fill_from_data(self) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        vocab = getattr(dm, "vocabulary", None)
        if vocab is not None:
            self.data_state["vocabulary"] = list(vocab.genes)
        if dm is not None and getattr(dm, "cohort", None) is not None:
            self.data_state["data_fingerprint"] = dm.cohort.fingerprint()
            self.data_state["bag_spec"] = dict(vars(dm.spec))
            held = list(getattr(dm, "holdout_patients", []) or [])
            if held:
                self.data_state["holdout_patients"] = held
        if keys.EXPRESSION in self.modality_specs and "vocabulary" in self.data_state:
            self.modality_specs[keys.EXPRESSION].setdefault("n_genes", len(self.data_state["vocabulary"]))
        feature_dim = getattr(getattr(dm, "dataset", None), "feature_dim", None)
        if keys.WSI in self.modality_specs and feature_dim:
            self.modality_specs[keys.WSI].setdefault("in_dim", int(feature_dim))
        if keys.SEQUENCE in self.modality_specs and dm is not None:
            self.modality_specs[keys.SEQUENCE].setdefault("max_len", dm.spec.window_length)
            self.data_state["tokeniser"] = {"alphabet": keys.NUCLEOTIDES, "pad": keys.PAD_TOKEN,
                                            "mask": keys.MASK_TOKEN, "vocab_size": keys.VOCAB_SIZE}
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
            x, mask = entry[keys.X], entry[keys.MASK]
            b, k = mask.shape
            xi = x[mask]
            gm = entry[keys.GENE_MASK][mask] if keys.GENE_MASK in entry else None
            enc: ModalityModel = self.encoders[m]  # type: ignore[assignment]
            if with_masked_loss:
                target = self.targets[m] if m in self.targets else None  # noqa: SIM401 (ModuleDict has no get)
                for task in self._tasks(m):
                    masked[self._loss_key(m, task)] = task(enc, xi, gm, target)
            z = self.projections[m](enc.embed(xi, gene_mask=gm))
            bag = z.new_zeros((b, k, z.shape[-1]))
            bag[mask] = z
            pooled[m], _ = self.pools[m](bag, mask)
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
        # One call for every term: each self.log call costs Lightning bookkeeping (benchmarks/RESULTS.md).
        self.log_dict(metrics, batch_size=len(batch["patient_id"]))
        self.log("train/loss", total.detach(), batch_size=len(batch["patient_id"]), prog_bar=True)
        return total

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
        """Store the gene vocabulary, tokeniser, data fingerprint and resolved specs."""
        checkpoint["biossl"] = {"version": __version__, **self.data_state}

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> PretrainModule:
        """Load a pretrained module with safe (``weights_only``) loading, without a trainer or data.

        Every failure is one line naming the file and what to do: a missing, truncated or unreadable
        file; a file that is not a ``biossl pretrain`` checkpoint (a plain ``state_dict``, another
        project's Lightning checkpoint, a pickled object); a checkpoint written by a biossl of another
        major version (its version is stored in ``checkpoint["biossl"]["version"]``); or weights that do
        not fit the architecture the checkpoint describes.

        Raises:
            InputError: The file is not a usable biossl pretraining checkpoint (see above).
        """
        path = Path(path)
        ckpt = load_checkpoint(path, map_location=map_location)
        state = ckpt["biossl"]
        version = str(state.get("version", "unknown"))
        if version.split(".")[0] != __version__.split(".")[0]:
            raise InputError(f"checkpoint {path} was written by biossl {version}, incompatible with this biossl "
                             f"{__version__} (checkpoints load within one major version); install biossl "
                             f"{version} to use it, or pretrain again with this version")
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
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"checkpoint {path} (biossl {version}) does not rebuild its model "
                             f"({type(exc).__name__}: {_one_line(exc)}); it may be damaged or edited; {REDO}") from None
        return module

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild encoders from the checkpoint's resolved specs before weights are loaded."""
        state = checkpoint.get("biossl", {})
        self.data_state.update(state)
        specs = state.get("modality_specs")
        if specs and not len(self.encoders):
            self.modality_specs = {m: dict(s) for m, s in specs.items()}

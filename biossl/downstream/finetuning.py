"""Fine-tuning the pretrained encoders end to end, and the same architecture trained from scratch.

Both are :class:`~biossl.downstream.methods.Method` implementations (:class:`EncoderFinetune`), so
cross-validation scores them on the same patients and folds as the linear probe and the baselines.

**Model.** For each patient, every modality of the embedding is encoded instance by instance, projected
and pooled with the checkpoint's attention-MIL pool (:meth:`PatientEncoder.encode_batch
<biossl.encoders.patient.PatientEncoder.encode_batch>`), exactly as ``biossl embed`` does; ``X_fused``
is the mean of the L2-normalised embeddings of the modalities the patient has, ``X_<modality>`` one
modality. The embedding is standardised with the mean and sd of the training patients' embeddings
*before* training (fixed for the fit, the same transform the linear probe applies), then a head of
:mod:`biossl.downstream.heads` gives class logits (cross-entropy, balanced class weights), a Cox risk
(partial likelihood within each batch) or discrete-time hazards.

**Modes.** ``finetune`` starts from the checkpoint's weights; ``scratch`` builds the same modules from
the checkpoint's stored config (``data_state["modality_specs"]`` and hyper-parameters) with fresh
random weights drawn from seed ``SCRATCH_SEED_OFFSET + seed`` (never the pretraining's seed, whose
initial weights pretraining started from).

**Training** (defaults in :class:`FinetuneSettings`): AdamW, weight decay 0.01, gradient norm
clipped to 1; ``finetune`` trains the encoders at ``encoder_lr`` = 1e-4 and the projections,
attention pools and head at ``lr`` = 1e-3 (ten times faster: the encoders hold what pretraining
learned, the head starts from nothing); ``scratch`` trains everything at ``lr`` (there are no
pretrained weights to protect). 10 epochs, batches of 16 patients shuffled with the seed; each
epoch ``e`` draws new bags (the bag draw of epoch ``e + 1``; scoring uses epoch 0's draw, the one
``biossl embed`` uses). Masked-modelling objectives are not trained. Device: CUDA when available
(bf16 autocast for the encoders, the head in float32), else the CPU; CPU fits on at most
:data:`SMALL_FIT` training patients run on one thread.

**Semi-supervised** (``semi_supervised=True``, subtype only): the unlabelled patients given to a fit
are shuffled into the same batches; their rows add
:class:`~biossl.objectives.pseudo_label.PseudoLabelLoss` (threshold ``tau``, weight ``lambda``;
pseudo-labels from the same forward pass, detached -- the new bag drawn every epoch is the only
augmentation) to the labelled rows' head loss. ``last_fit["pseudo_label"]`` reports how many
unlabelled patients were used and the fraction above the threshold.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from biossl import keys
from biossl.data.bags import InstancePolicy, batch_to, collate_bags
from biossl.device import resolve_device
from biossl.downstream.embed import DEFAULT_CHUNK_SIZE, FUSED
from biossl.downstream.finetune_settings import FinetuneSettings
from biossl.downstream.heads import Head
from biossl.downstream.methods import SURVIVAL_PSEUDO_LABELS, make_head
from biossl.downstream.tasks import Task
from biossl.encoders.patient import PatientEncoder
from biossl.errors import InputError

logger = logging.getLogger(__name__)

Mode = Literal["finetune", "scratch"]
#: Scratch weights are drawn with this offset added to the fit's seed (so never the pretraining's init).
SCRATCH_SEED_OFFSET = 10_000
#: CPU fits on at most this many training patients (labelled + unlabelled) run on one thread.
SMALL_FIT = 64


class CohortBags:
    """A cohort's patient bags as a pretraining checkpoint reads them, with its frozen patient encoder.

    Built once and shared by the probe's embeddings, the fine-tuned and the from-scratch methods.

    Args:
        checkpoint: ``.ckpt`` written by ``biossl pretrain``.
        manifest: The cohort manifest.
        work_dir: Tile coordinates and scan cache (default: :func:`biossl.downstream.embed.default_work_dir`).
        features_dir: Cached tile features (feature-cache checkpoints).
        skip_bad: Skip unreadable manifest rows with a warning.
        seed: Seed of the bag draws (fine-tuning scores the draw of epoch 0) and of the embeddings' sample.
        policy: Which instances the frozen embeddings (:meth:`embeddings`) use, as ``biossl embed``
            (default: every instance); fine-tuning itself trains and predicts on bags of the bag spec's ``k``.
    """

    def __init__(self, checkpoint: str | Path, manifest: str | Path, *, work_dir: str | Path | None = None,
                 features_dir: str | Path | None = None, skip_bad: bool = False, seed: int = 0,
                 policy: InstancePolicy | None = None) -> None:
        from biossl.downstream.embed import open_cohort

        self.checkpoint, self.manifest = Path(checkpoint), Path(manifest)
        #: The pretrained patient encoder, never trained here (fits train deep copies of it).
        self.module = PatientEncoder.from_checkpoint(self.checkpoint).eval()
        #: Names of the parameters the architecture trains (fixed ones, e.g. sin-cos position embeddings, stay fixed).
        self.trainable = {name for name, p in self.module.named_parameters() if p.requires_grad}
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.dataset, self.cohort, self.modalities, self.spec = open_cohort(
            self.module, self.checkpoint, self.manifest, work_dir=work_dir, features_dir=features_dir,
            skip_bad=skip_bad, seed=seed)
        self.seed = seed
        self.policy = policy or InstancePolicy(chunk_size=DEFAULT_CHUNK_SIZE)
        self._index = {p: i for i, p in enumerate(self.dataset.patients)}

    def modalities_for(self, embedding: str) -> list[str]:
        """The modalities an obsm-style key uses: all of the checkpoint's for ``X_fused``, else one.

        Raises:
            InputError: ``embedding`` names a modality the checkpoint does not encode.
        """
        if embedding == FUSED:
            return list(self.modalities)
        modality = embedding.removeprefix("X_")
        if modality not in self.modalities:
            raise InputError(f"--embedding {embedding}: checkpoint {self.checkpoint.name} encodes "
                             f"{', '.join(self.modalities)}; use X_fused or X_<one of them>")
        return [modality]

    def patients_with(self, modalities: Sequence[str]) -> set[str]:
        """Patients of the cohort with at least one of ``modalities``."""
        wanted = set(modalities)
        return {p for p in self.dataset.patients if wanted & set(self.cohort.modalities_of(p))}

    def batch(self, patients: Sequence[str], epoch: int, modalities: Sequence[str]) -> dict[str, Any]:
        """Collated bags of ``patients`` drawn as at ``epoch``, restricted to ``modalities``."""
        batch = collate_bags([self.dataset[(self._index[p], epoch)] for p in patients])
        return {k: v for k, v in batch.items() if k in ("patient_id", keys.METADATA) or k in modalities}

    def fresh_module(self, seed: int) -> PatientEncoder:
        """The checkpoint's architecture (stored specs and hyper-parameters) with random weights from ``seed``.

        Built as pretraining builds it (the objectives' heads included: they draw from the same random
        stream), so the weights are those pretraining would start from with ``seed``.
        """
        from biossl.modules.pretrain import PretrainModule

        hparams = {k: v for k, v in self.module.hparams.items() if not k.startswith("_")}
        hparams.update(modalities=copy.deepcopy(self.module.data_state["modality_specs"]), seed=seed)
        module = PretrainModule(**hparams)
        module.data_state = copy.deepcopy(self.module.data_state)
        module.configure_model()
        return module.patient_encoder()

    def embeddings(self, embedding: str = FUSED, *, device: str | torch.device = "cpu",
                   batch_size: int = 16) -> pd.DataFrame:
        """Frozen patient embeddings (``X_fused`` or ``X_<modality>``) as ``biossl embed`` computes them.

        Every instance of each patient, or the policy's sample (:func:`~biossl.downstream.embed.embed_whole`).
        Rows are the patients with instances of the embedding's modalities (sorted); the module is not
        changed (it ends on the CPU). ``batch_size`` is not used (instances go ``policy.chunk_size`` at a time).
        """
        from biossl.downstream.embed import embed_whole

        modalities = self.modalities_for(embedding)
        whole = embed_whole(self.module, self.dataset, modalities, policy=self.policy, seed=self.seed, device=device)
        emb, has, fused = whole.emb, whole.has, whole.fused
        self.module.cpu()
        values = fused if embedding == FUSED else emb[modalities[0]]
        rows = np.flatnonzero(np.any(np.stack([has[m] for m in modalities]), axis=0))
        patients = [str(self.dataset.patients[i]) for i in rows]
        frame = pd.DataFrame(values[rows].astype(np.float64), index=pd.Index(patients, name="patient_id"))
        return frame.sort_index()


class BagModel(nn.Module):
    """Encoders, projections and attention-MIL pools of a patient encoder, then (optionally) a head.

    Args:
        module: A :class:`~biossl.encoders.patient.PatientEncoder`.
        modalities: The modalities of the embedding (one, or all for the fused embedding).
        fused: Fuse (mean of L2-normalised modality embeddings, as ``X_fused``) or take the one modality's.
        head: Task head on the standardised embedding; ``None`` to embed only.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, module: PatientEncoder, modalities: Sequence[str], *, fused: bool = True,
                 head: Head | None = None) -> None:
        super().__init__()
        self.backbone = module
        self.modalities = list(modalities)
        self.fused = fused
        self.head = head
        dim = int(module.embed_dim)
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def trained_parameters(self, trainable: set[str]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(encoder parameters, projection + pool + head parameters)`` of the used modalities.

        Only backbone parameters named in ``trainable`` (those the architecture trains) are returned.
        """
        def part(prefix: str) -> list[nn.Parameter]:
            return [p for m in self.modalities for name, p in self.backbone.named_parameters()
                    if name.startswith(f"{prefix}.{m}.") and name in trainable]

        encoders = part("encoders")
        rest = part("projections") + part("pools")
        if self.head is not None:
            rest += list(self.head.parameters())
        return encoders, rest

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        """The patient embedding ``[B, D]`` (fused: mean of the present modalities' unit vectors)."""
        from biossl.encoders.fusion import fused_embedding

        pooled, present, _ = self.backbone.encode_batch(batch, with_masked_loss=False)
        if not self.fused:
            return pooled[self.modalities[0]].float()
        return fused_embedding(pooled, present)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Head outputs on the standardised embedding (float32, outside any autocast)."""
        z = self.embed(batch)
        assert self.head is not None
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.head((z.float() - self.shift) / self.scale)


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


class EncoderFinetune:
    """Train encoders + projections + attention-MIL pools + a task head end to end on each training fold.

    Args:
        bags: The cohort and the pretrained module (:class:`CohortBags`).
        mode: ``"finetune"`` (start from the checkpoint) or ``"scratch"`` (same architecture, random weights).
        embedding: ``X_fused`` or ``X_<modality>``.
        settings: Training settings.
        semi_supervised: Add pseudo-labelled unlabelled patients (subtype only).
        name: Name in reports (default: the mode, ``+pl`` when semi-supervised).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ...
    """

    def __init__(self, bags: CohortBags, *, mode: Mode = "finetune", embedding: str = FUSED,
                 settings: FinetuneSettings | None = None, semi_supervised: bool = False, name: str | None = None,
                 device: str | torch.device = "auto") -> None:
        if mode not in ("finetune", "scratch"):
            raise InputError(f"--mode must be probe, finetune or scratch; got {mode!r}")
        self.bags, self.mode, self.embedding = bags, mode, embedding
        self.settings = settings or FinetuneSettings()
        self.settings.check()
        self.semi_supervised = semi_supervised
        self.name = name or (mode + ("+pl" if semi_supervised else ""))
        self.device = resolve_device(device)
        self.used = bags.modalities_for(embedding)
        self._patients = bags.patients_with(self.used)
        #: What the last fit reports (epochs, losses, seconds, pseudo-label use).
        self.last_fit: dict[str, Any] = {}
        #: The model of the last fit (on the CPU), for inspection.
        self.last_model: BagModel | None = None

    def patients(self) -> set[str]:
        """Patients with at least one of the embedding's modalities."""
        return set(self._patients)

    def describe(self) -> dict[str, Any]:
        """Settings for the report."""
        s = self.settings
        lrs = ({"encoder_lr": s.encoder_lr, "lr (projections, pools, head)": s.lr} if self.mode == "finetune"
               else {"lr (everything)": s.lr})
        out: dict[str, Any] = {
            "method": ("fine-tuning the pretrained encoders end to end" if self.mode == "finetune" else
                       "same architecture trained from scratch (random weights, no pretraining)"),
            "checkpoint": self.bags.checkpoint.name, "embedding": self.embedding, "modalities": self.used,
            "head": "linear" if s.hidden is None else f"mlp({s.hidden})", "survival_loss": s.survival_loss,
            "n_bins": s.n_bins, "class_weight": "balanced" if s.balanced else "none",
            "optimiser": f"AdamW (weight decay {s.weight_decay}, grad norm clip {s.grad_clip})", **lrs,
            "epochs": s.epochs, "batch_size": s.batch_size, "device": str(self.device),
            "precision": "bf16 autocast" if self.device.type == "cuda" else "float32",
            "embedding_standardised": "mean/sd of the training patients' embeddings before training",
        }
        if self.mode == "scratch":
            out["init_seed"] = f"{SCRATCH_SEED_OFFSET} + seed"
        if self.semi_supervised:
            out["semi_supervised"] = {"loss": "PseudoLabelLoss", "threshold": s.pseudo_threshold,
                                      "weight": s.pseudo_weight}
        return out

    def backbone(self, seed: int) -> PatientEncoder:
        """The encoder a fit starts from: a copy of the pretrained one, or fresh random weights (scratch)."""
        if self.mode == "scratch":
            module = self.bags.fresh_module(SCRATCH_SEED_OFFSET + seed)
        else:
            module = copy.deepcopy(self.bags.module)
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    def _threads(self, n: int) -> contextlib.AbstractContextManager[None]:
        from biossl.downstream.methods import one_thread_if_small

        if self.device.type != "cpu" or n > SMALL_FIT:
            return contextlib.nullcontext()
        return one_thread_if_small(0)

    def fit_predict(self, task: Task, train: np.ndarray, test: np.ndarray, *, seed: int,
                    unlabelled: Sequence[str] = ()) -> np.ndarray:
        """Train on the patients at ``train`` (and ``unlabelled`` when semi-supervised); predict ``test``."""
        if self.semi_supervised and task.kind != "subtype":
            raise InputError(SURVIVAL_PSEUDO_LABELS)
        pool = [p for p in dict.fromkeys(unlabelled) if p in self._patients] if self.semi_supervised else []
        with self._threads(len(train) + len(pool)):
            return self._fit_predict(task, train, test, seed=seed, pool=pool)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward_embed(self, model: BagModel, patients: Sequence[str], epoch: int) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for chunk in _chunks(patients, self.settings.batch_size):
                with self._autocast():
                    out.append(model.embed(batch_to(self.bags.batch(chunk, epoch, self.used), self.device)).float())
        return torch.cat(out)

    def _fit_predict(self, task: Task, train: np.ndarray, test: np.ndarray, *, seed: int,
                     pool: list[str]) -> np.ndarray:
        from biossl.objectives.pseudo_label import PseudoLabelLoss

        s = self.settings
        started = time.perf_counter()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            head = make_head(task, train, int(self.bags.module.embed_dim), hidden=s.hidden,
                             survival_loss=s.survival_loss, n_bins=s.n_bins, balanced=s.balanced)
            model = BagModel(self.backbone(seed), self.used, fused=self.embedding == FUSED, head=head)
            model.to(self.device)
            labelled = [task.patients[i] for i in train]
            model.eval()
            z = self._forward_embed(model, labelled, 0)
            model.shift.copy_(z.mean(dim=0))
            sd = torch.nan_to_num(z.std(dim=0), nan=1.0)
            model.scale.copy_(torch.where(sd > 0, sd, torch.ones_like(sd)))
            encoders, rest = model.trained_parameters(self.bags.trainable)
            for p in encoders + rest:
                p.requires_grad_(True)
            groups = ([{"params": encoders, "lr": s.encoder_lr}, {"params": rest, "lr": s.lr}]
                      if self.mode == "finetune" else [{"params": encoders + rest, "lr": s.lr}])
            opt = torch.optim.AdamW(groups, weight_decay=s.weight_decay)
            pseudo = PseudoLabelLoss(threshold=s.pseudo_threshold, weight=s.pseudo_weight)
            target = {k: v.to(self.device) for k, v in task.target(train, dtype=torch.float32).items()}
            ids = labelled + pool
            rng = np.random.default_rng((seed, 7))
            losses: list[float] = []
            used = unlabelled_rows = 0.0
            unsup: list[float] = []
            steps = 0
            for epoch in range(s.epochs):
                model.train()
                epoch_loss, epoch_rows = 0.0, 0
                for chunk in _chunks(rng.permutation(len(ids)).tolist(), s.batch_size):
                    batch = batch_to(self.bags.batch([ids[i] for i in chunk], epoch + 1, self.used), self.device)
                    with self._autocast():
                        out = model(batch)
                    rows = torch.as_tensor(chunk, device=self.device)
                    lab = rows < len(labelled)
                    loss = out.sum() * 0.0
                    if bool(lab.any()):
                        loss = loss + head.loss(out[lab], {k: v[rows[lab]] for k, v in target.items()})
                    if pool and bool((~lab).any()):
                        none = torch.full((int((~lab).sum()),), pseudo.unlabelled, dtype=torch.long,
                                          device=self.device)
                        loss = loss + pseudo(out[~lab], none)
                        n_unlab = int((~lab).sum())
                        used += float(pseudo.diagnostics["pseudo_label/used_fraction"]) * n_unlab
                        unlabelled_rows += n_unlab
                        if epoch == s.epochs - 1:
                            unsup.append(float(pseudo.diagnostics["pseudo_label/unsupervised"]))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(encoders + rest, s.grad_clip)
                    opt.step()
                    steps += 1
                    epoch_loss += float(loss.detach()) * len(chunk)
                    epoch_rows += len(chunk)
                losses.append(epoch_loss / max(1, epoch_rows))
            model.eval()
            with torch.no_grad():
                test_ids = [task.patients[i] for i in test]
                outs = []
                for chunk in _chunks(test_ids, s.batch_size):
                    with self._autocast():
                        outs.append(model(batch_to(self.bags.batch(chunk, 0, self.used), self.device)))
                prediction = head.predict(torch.cat(outs))
        for p in encoders + rest:
            p.requires_grad_(False)
        self.last_model = model.cpu()
        self.last_fit = {"steps": steps, "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1],
                         "seconds": round(time.perf_counter() - started, 2)}
        if self.semi_supervised:
            self.last_fit["pseudo_label"] = {
                "n_unlabelled": len(pool), "threshold": s.pseudo_threshold,
                "used_fraction": used / unlabelled_rows if unlabelled_rows else 0.0,
                "unsupervised_loss_last_epoch": float(np.mean(unsup)) if unsup else 0.0}
        logger.info("%s: %d steps, loss %.3f -> %.3f, %.1f s", self.name, steps, losses[0], losses[-1],
                    self.last_fit["seconds"])
        return prediction


__all__ = ["FUSED", "SCRATCH_SEED_OFFSET", "SMALL_FIT", "BagModel", "CohortBags", "EncoderFinetune",
           "FinetuneSettings"]

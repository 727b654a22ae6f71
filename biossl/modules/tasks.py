"""How each objective of :mod:`biossl.objectives` trains a modality's encoder.

The objectives are plain losses with different call contracts (two embeddings, an input plus an
``embed`` function, per-position tokens, ...). A :class:`Task` binds one objective to one modality's
encoder and turns a batch of that modality's instances into a scalar loss; :class:`CrossModal` binds
one objective to every pair of modalities, on patient-level embeddings. What the engine knows of an
objective is on its registered class (:class:`biossl.objectives.ObjectiveInfo`, the ``info`` attribute:
call contract, the kinds of modality it trains, whether it can be used across modalities, the paper,
which constructor argument takes the embedding width; and an optional ``options_from_encoder`` hook);
nothing here names an objective, so a new one is a file in :mod:`biossl.objectives` and nothing else.
``biossl list objectives`` prints the registry.

In a pretraining config::

    model:
      modalities:
        wsi: {encoder: image/vit_tiny, ..., objective: [mae, {name: byol, weight: 0.5, views: strong}]}
        sequence: {encoder: sequence/transformer, objective: rc_contrastive}
      cross_modal: {name: vicreg, proj_dim: 256}

Each objective entry is a registry name or ``{name, weight, views, momentum, **objective options}``;
the default per modality is the encoder's own masked objective (``mae`` or ``masked_tokens``).
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from biossl import keys
from biossl.encoders.base import ModalityModel
from biossl.errors import InputError
from biossl.kinds import get_kind
from biossl.objectives import OBJECTIVES, ObjectiveInfo, catalogue, objective_info
from biossl.objectives._heads import make_target
from biossl.objectives.jepa import sample_block_masks

#: Call contracts that need a momentum (EMA) copy of the modality's encoder.
TARGET_CONTRACTS = ("momentum", "jepa")
#: Call contracts fed augmented views of the instances.
VIEW_CONTRACTS = ("two_view", "one_view", "momentum")
#: Options of an objective entry that the engine reads (everything else goes to the objective).
ENGINE_OPTIONS = ("name", "weight", "views", "momentum")


def __getattr__(name: str) -> Any:
    """``MASKED``: names of the registered objectives with the ``masked`` contract, read from the registry.

    Kept for callers that still test a name against it; prefer ``task.contract == "masked"``.
    """
    if name == "MASKED":
        return tuple(n for n, meta in catalogue().items() if meta.contract == "masked")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def info(name: str) -> ObjectiveInfo:
    """Return the :class:`ObjectiveInfo` of the objective registered as ``name``; an unknown name lists the known ones.

    Raises:
        InputError: An unknown name, or a registered class without its own ``info``.
    """
    if name not in OBJECTIVES:
        known = OBJECTIVES.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown objective {name!r}.{hint} Known: {', '.join(known)}")
    return objective_info(name)


def normalise_entries(modality: str, spec: Any, kind: str | None = None) -> list[dict[str, Any]]:
    """Turn a modality's ``objective`` setting into a list of ``{name, ...}`` dicts, checked.

    ``kind`` is the modality's kind (default: the legacy name's own kind; ``None`` for an unknown name
    skips the check of which objectives apply, done again once the data gives the kind).

    Raises:
        InputError: An unknown objective, one that does not apply to the modality's kind, or a bad entry.
    """
    kind = kind or keys.LEGACY_KINDS.get(modality)
    if kind is not None:
        kind = get_kind(kind).catalogue_kind()
    items = spec if isinstance(spec, list) else [spec]
    out: list[dict[str, Any]] = []
    for item in items:
        entry = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, Mapping) else None
        if entry is None or not isinstance(entry.get("name"), str):
            raise InputError(
                f"modality {modality!r}: each objective is a name or a mapping with 'name'; got {item!r}"
            )
        meta = info(entry["name"])
        if kind is not None and kind not in meta.kinds:
            usable = sorted(n for n, i in catalogue().items() if kind in i.kinds)
            where = "between modalities (model.cross_modal)" if meta.contract == "cross" else (
                "in biossl finetune" if meta.contract == "finetune" else f"on {', '.join(meta.kinds)} modalities"
            )
            raise InputError(
                f"objective {entry['name']!r} cannot train the {modality} encoder ({kind}); it is used {where}. "
                f"Objectives for {kind} modalities: {', '.join(usable)}"
            )
        out.append(entry)
    names = [e["name"] for e in out]
    if len(set(names)) != len(names):
        raise InputError(f"modality {modality!r}: objective listed twice in {names}")
    return out


def default_objective(kind: str) -> str:
    """The kind's own masked objective (``mae`` for images and features, ``masked_tokens`` for tables and DNA)."""
    return get_kind(kind).default_objective


class Task(nn.Module):
    """One objective training one modality's encoder on a batch of instances.

    Call contracts (:attr:`biossl.objectives.ObjectiveInfo.contract` of the objective):

    * ``masked``: the encoder's own masked loss (MAE / masked inpainting, masked genes/nucleotides).
    * ``two_view``: ``obj(embed(view1), embed(view2))``; ``one_view``: ``obj(embed(view))``.
    * ``momentum``: ``obj(embed(v1), embed(v2), target.embed(v1), target.embed(v2))`` with a momentum
      copy of the encoder; :meth:`after_step` moves the objective's own target heads.
    * ``embed_fn``: ``obj(x, embed)``; the objective transforms the input itself (rotations, jigsaw
      shuffles, reverse complements).
    * ``cpc``: ``obj(tokens(x), valid)`` over sequence positions.
    * ``jepa``: context tokens from the encoder on the context block, targets from the momentum copy on
      the whole input.
    * ``autoencoder``: the encoder is the backbone of a denoising AE or VAE on the profile.

    Args:
        name: Registry name of the objective.
        modality: The modality whose instances it sees.
        kind: Its kind (default: the legacy name's kind).
        encoder: That modality's encoder (read for its width and geometry; not kept): its ``embed_dim``
            goes to the objective's ``info.dim_option`` argument, and the objective's
            ``options_from_encoder`` hook, if any, reads the rest (token grid, spatial dims, ...).
        weight: Weight of this loss in the total.
        views: Augmentation strength of the views (two-view kinds; see :func:`biossl.transforms.make_views`).
        momentum: Base momentum of the EMA target (cosine schedule to 1 over training).
        **options: Passed to the objective's constructor.
    """

    def __init__(
        self,
        name: str,
        modality: str,
        encoder: ModalityModel,
        *,
        kind: str | None = None,
        weight: float = 1.0,
        views: str = "default",
        momentum: float = 0.996,
        **options: Any,
    ) -> None:
        super().__init__()
        meta = info(name)
        self.name, self.modality, self.contract = name, modality, meta.contract
        self.modality_kind = kind or keys.LEGACY_KINDS.get(modality, "")
        self.weight, self.momentum = float(weight), float(momentum)
        self.views = None
        if self.contract in VIEW_CONTRACTS:
            if self.modality_kind == keys.SLIDE and not hasattr(encoder, "spatial_dims"):
                raise InputError(
                    f"objective {name!r} needs augmented views of pixel tiles, but the {modality} encoder "
                    f"{type(encoder).__name__} reads cached features; use mae (masked feature modelling) there"
                )
            self.views = get_kind(self.modality_kind).views(views)
        self.objective = self._build(encoder, meta, options) if self.contract != "masked" else None

    @property
    def needs_target(self) -> bool:
        """Whether this task needs a momentum copy of the encoder."""
        return self.contract in TARGET_CONTRACTS

    @property
    def uses_momentum(self) -> bool:
        """Whether anything must move after each optimiser step (a target encoder or target heads)."""
        return self.needs_target or callable(getattr(self.objective, "update_target", None))

    def _build(self, enc: ModalityModel, meta: ObjectiveInfo, options: dict[str, Any]) -> nn.Module:
        name = self.name
        derived: dict[str, Any] = {meta.dim_option: enc.embed_dim} if meta.dim_option else {}
        hook = getattr(OBJECTIVES.get(name), "options_from_encoder", None)
        if callable(hook):
            derived.update(hook(enc, modality=self.modality, kind=self.modality_kind))
        options = {**derived, **options}  # the config's own options win
        try:
            return OBJECTIVES.build(name, **options)
        except TypeError as exc:
            raise InputError(f"objective {name!r} on {self.modality}: bad option ({exc})") from None

    def forward(
        self,
        encoder: ModalityModel,
        x: torch.Tensor,
        gene_mask: torch.Tensor | None = None,
        target: ModalityModel | None = None,
    ) -> torch.Tensor:
        """Return this task's scalar loss on the instances ``x`` (``gene_mask`` for expression)."""
        kind, obj = self.contract, self.objective
        if kind == "masked" or obj is None:
            return encoder.masked_loss(x, gene_mask=gene_mask)

        def embed(v: torch.Tensor, gm: torch.Tensor | None = gene_mask, model: ModalityModel = encoder) -> torch.Tensor:
            return model.embed(v, gene_mask=gm)

        if kind in VIEW_CONTRACTS:
            (v1, g1), (v2, g2) = self._view(x, gene_mask), self._view(x, gene_mask)
            if kind == "one_view":
                out: torch.Tensor = obj(embed(v1, g1))
            elif kind == "two_view":
                out = obj(embed(v1, g1), embed(v2, g2))
            else:
                assert target is not None
                with torch.no_grad():
                    t1, t2 = embed(v1, g1, target), embed(v2, g2, target)
                out = obj(embed(v1, g1), embed(v2, g2), t1, t2)
            return out
        if kind == "embed_fn":
            out = obj(x, embed)
            return out
        if kind == "cpc":
            out = obj(encoder.tokens(x), x != keys.PAD_TOKEN)
            return out
        if kind == "jepa":
            assert target is not None and encoder.token_grid is not None
            lengths = (x != keys.PAD_TOKEN).sum(dim=1).tolist() if self.modality_kind == keys.SEQUENCE else None
            ctx, tgt = sample_block_masks(x.shape[0], encoder.token_grid, lengths=lengths)
            ctx, tgt = ctx.to(x.device), tgt.to(x.device)
            if lengths is not None:  # the grid is max_len long; this batch's windows may be shorter
                ctx, tgt = ctx[:, : x.shape[1]], tgt[..., : x.shape[1]]
            with torch.no_grad():
                full = target.tokens(x)
            out = obj(encoder.tokens(x, keep=ctx), full, ctx, tgt)
            return out
        if kind == "autoencoder":
            out = obj(x, observed=gene_mask, backbone=embed)
            return out
        raise InputError(f"objective {self.name!r} cannot be used in pretraining")  # pragma: no cover

    def _view(self, x: torch.Tensor, gene_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self.views is not None
        if gene_mask is not None:  # table views move the feature mask with the values
            v, gm = self.views(x, gene_mask)
            return v, gm
        return self.views(x), gene_mask

    def after_step(self, momentum: float) -> None:
        """Move the objective's own momentum heads (MoCo, BYOL, DirectPred) after an optimiser step."""
        update = getattr(self.objective, "update_target", None)
        if callable(update):
            update(momentum)

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Detached scalars the objective recorded on its last call (collapse monitors, accuracies)."""
        return dict(getattr(self.objective, "diagnostics", {}) or {})


def build_tasks(modality: str, encoder: ModalityModel, spec: Any, *, masked_weight: float,
                kind: str | None = None) -> list[Task]:
    """Build the tasks of one modality from its ``objective`` setting (default: its kind's masked objective)."""
    kind = kind or keys.LEGACY_KINDS[modality]
    entries = normalise_entries(modality, spec if spec is not None else default_objective(kind), kind)
    tasks = []
    for entry in entries:
        options = {k: v for k, v in entry.items() if k not in ENGINE_OPTIONS}
        default_w = masked_weight if info(entry["name"]).contract == "masked" else 1.0
        tasks.append(
            Task(
                entry["name"],
                modality,
                encoder,
                kind=kind,
                weight=float(entry.get("weight", default_w)),
                views=str(entry.get("views", "default")),
                momentum=float(entry.get("momentum", 0.996)),
                **options,
            )
        )
    return tasks


def build_target(encoder: ModalityModel) -> ModalityModel:
    """A frozen momentum copy of ``encoder``."""
    target = make_target(encoder)
    assert isinstance(target, ModalityModel)
    return target


class CrossModal(nn.Module):
    """One objective on every pair of modalities, over the patients who have both.

    An objective with the ``cross`` contract (``clip``) is one module that scores every pair itself
    (per-pair temperatures, distributed gather; ``info.pairs_objective`` names it when it is not the
    objective itself); any other objective usable across modalities (``info.across``: ``infonce``,
    ``barlow_twins``, ``vicreg``, ``simsiam``, ``swav``) gets one instance per pair, fed modality A as
    view 1 and modality B as view 2.

    Returns ``(mean over scored pairs, {"<name>/<a>-<b>": loss})``; :attr:`last_scored` names the pairs
    that had at least two patients with both modalities.
    """

    def __init__(self, modalities: Sequence[str], dim: int, spec: Any = "clip") -> None:
        super().__init__()
        entry = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = str(entry.pop("name", "clip"))
        meta = info(name)
        if not meta.across:
            usable = sorted(n for n, i in catalogue().items() if i.across)
            raise InputError(f"objective {name!r} cannot be used between modalities; use one of {', '.join(usable)}")
        self.name = name
        self.pairs = list(itertools.combinations(modalities, 2))
        self.last_scored: list[str] = []
        multi: nn.Module | None = None
        per_pair: dict[str, nn.Module] = {}
        try:
            if meta.contract == "cross":  # one module scores every pair (clip: multimodal_clip)
                multi = OBJECTIVES.build(meta.pairs_objective or name, modalities=list(modalities), **entry)
            else:  # one instance of a two-view objective per pair
                extra = {meta.dim_option: dim} if meta.dim_option else {}
                per_pair = {f"{a}-{b}": OBJECTIVES.build(name, **extra, **entry) for a, b in self.pairs}
        except TypeError as exc:
            raise InputError(f"cross-modal objective {name!r}: bad option ({exc})") from None
        # The attribute keeps its name ``clip``: checkpoints hold its parameters as ``contrastive.clip.*``.
        self.clip = multi
        self.per_pair = nn.ModuleDict(per_pair)

    def forward(
        self, embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score every pair present in the batch."""
        if self.clip is not None:
            total, per_pair = self.clip(embeddings, present)
            self.last_scored = list(getattr(self.clip, "last_scored", []))
            return total, per_pair
        losses: dict[str, torch.Tensor] = {}
        scored: list[str] = []
        ref = next(iter(embeddings.values()))
        for a, b in self.pairs:
            key = f"{self.name}/{a}-{b}"
            if a not in embeddings or b not in embeddings:
                continue
            both = present[a] & present[b]
            if int(both.sum()) < 2:
                losses[key] = ref.new_zeros(())
                continue
            losses[key] = self.per_pair[f"{a}-{b}"](embeddings[a][both], embeddings[b][both])
            scored.append(key)
        self.last_scored = scored
        if not scored:
            return ref.sum() * 0.0, losses
        return torch.stack([losses[k] for k in scored]).mean(), losses


def objective_table() -> list[list[str]]:
    """Rows (name, call contract, kinds, within/across, paper) of every registered objective."""
    rows = []
    for name, meta in catalogue().items():
        where = [w for w, ok in (("within", bool(meta.kinds)), ("across", meta.across)) if ok]
        kinds = ", ".join(meta.kinds) or ("all pairs" if meta.across else "fine-tuning")
        rows.append([name, meta.contract, kinds, " + ".join(where) or "fine-tuning", meta.paper])
    return rows


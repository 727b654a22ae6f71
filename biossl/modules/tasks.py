"""How each objective of :mod:`biossl.objectives` trains a modality's encoder.

The objectives are plain losses with different call contracts (two embeddings, an input plus an
``embed`` function, per-position tokens, ...). A :class:`Task` binds one objective to one modality's
encoder and turns a batch of that modality's instances into a scalar loss; :class:`CrossModal` binds
one objective to every pair of modalities, on patient-level embeddings. :data:`CATALOGUE` says, for
every registered objective, which modalities it applies to, whether it can be used across modalities,
and which paper it follows; ``biossl list objectives`` prints it.

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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from biossl.data import keys
from biossl.encoders.base import ModalityModel
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives._heads import make_target
from biossl.objectives.jepa import sample_block_masks
from biossl.transforms import make_views

IMAGES = (keys.WSI, keys.VOLUME)
ALL = tuple(keys.MODALITIES)


@dataclass(frozen=True)
class ObjectiveInfo:
    """What the engine knows about one objective."""

    kind: str  #: call contract, see :class:`Task`
    modalities: tuple[str, ...]  #: modalities it can train within
    across: bool  #: usable between two modality embeddings of one patient
    paper: str


CATALOGUE: dict[str, ObjectiveInfo] = {
    "mae": ObjectiveInfo("masked", IMAGES, False, "He et al. 2022, Masked Autoencoders Are Scalable Vision Learners"),
    "masked_tokens": ObjectiveInfo(
        "masked", (keys.EXPRESSION, keys.SEQUENCE), False, "Devlin et al. 2019, BERT (masked genes / nucleotides)"
    ),
    "infonce": ObjectiveInfo("two_view", ALL, True, "Chen et al. 2020, SimCLR (NT-Xent)"),
    "moco": ObjectiveInfo("momentum", ALL, False, "He et al. 2020 / Chen et al. 2020, MoCo v1/v2"),
    "clip": ObjectiveInfo("cross", (), True, "Radford et al. 2021, CLIP"),
    "multimodal_clip": ObjectiveInfo("cross", (), True, "Radford et al. 2021, CLIP over every modality pair"),
    "byol": ObjectiveInfo("momentum", ALL, False, "Grill et al. 2020, BYOL"),
    "simsiam": ObjectiveInfo("two_view", ALL, True, "Chen and He 2021, SimSiam"),
    "directpred": ObjectiveInfo("momentum", ALL, False, "Tian et al. 2021, DirectPred"),
    "barlow_twins": ObjectiveInfo("two_view", ALL, True, "Zbontar et al. 2021, Barlow Twins"),
    "vicreg": ObjectiveInfo("two_view", ALL, True, "Bardes et al. 2022, VICReg"),
    "swav": ObjectiveInfo("two_view", ALL, True, "Caron et al. 2020, SwAV"),
    "deepcluster": ObjectiveInfo("one_view", ALL, False, "Caron et al. 2018, DeepCluster"),
    "jepa": ObjectiveInfo("jepa", (keys.WSI, keys.VOLUME, keys.SEQUENCE), False, "Assran et al. 2023, I-JEPA"),
    "cpc": ObjectiveInfo("cpc", (keys.SEQUENCE,), False, "van den Oord et al. 2018, CPC"),
    "rc_contrastive": ObjectiveInfo(
        "embed_fn", (keys.SEQUENCE,), False, "Gündüz et al. 2023, Self-GenomeNet (reverse-complement contrast)"
    ),
    "denoising_ae": ObjectiveInfo("autoencoder", (keys.EXPRESSION,), False, "Vincent et al. 2008, denoising AE"),
    "vae": ObjectiveInfo("autoencoder", (keys.EXPRESSION,), False, "Kingma and Welling 2014, VAE"),
    "rotation": ObjectiveInfo("embed_fn", IMAGES, False, "Gidaris et al. 2018, RotNet (3D: Taleb et al. 2020)"),
    "jigsaw": ObjectiveInfo("embed_fn", IMAGES, False, "Noroozi and Favaro 2016, jigsaw puzzles"),
    "pseudo_label": ObjectiveInfo("finetune", (), False, "Lee 2013, pseudo-label (fine-tuning only)"),
}

MASKED = ("mae", "masked_tokens")
#: Kinds that need a momentum (EMA) copy of the modality's encoder.
TARGET_KINDS = ("momentum", "jepa")
#: Options of an objective entry that the engine reads (everything else goes to the objective).
ENGINE_OPTIONS = ("name", "weight", "views", "momentum")


def info(name: str) -> ObjectiveInfo:
    """Return the catalogue entry of ``name``; an unknown name lists the known ones."""
    if name not in CATALOGUE:
        close = difflib.get_close_matches(name, list(CATALOGUE), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown objective {name!r}.{hint} Known: {', '.join(sorted(CATALOGUE))}")
    return CATALOGUE[name]


def normalise_entries(modality: str, spec: Any) -> list[dict[str, Any]]:
    """Turn a modality's ``objective`` setting into a list of ``{name, ...}`` dicts, checked.

    Raises:
        InputError: An unknown objective, one that does not apply to ``modality``, or a bad entry.
    """
    items = spec if isinstance(spec, list) else [spec]
    out: list[dict[str, Any]] = []
    for item in items:
        entry = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, Mapping) else None
        if entry is None or not isinstance(entry.get("name"), str):
            raise InputError(
                f"modality {modality!r}: each objective is a name or a mapping with 'name'; got {item!r}"
            )
        meta = info(entry["name"])
        if modality not in meta.modalities:
            usable = sorted(n for n, i in CATALOGUE.items() if modality in i.modalities)
            where = "between modalities (model.cross_modal)" if meta.kind == "cross" else (
                "in biossl finetune" if meta.kind == "finetune" else f"on {', '.join(meta.modalities)}"
            )
            raise InputError(
                f"objective {entry['name']!r} cannot train the {modality} encoder; it is used {where}. "
                f"Objectives for {modality}: {', '.join(usable)}"
            )
        out.append(entry)
    names = [e["name"] for e in out]
    if len(set(names)) != len(names):
        raise InputError(f"modality {modality!r}: objective listed twice in {names}")
    return out


def default_objective(modality: str) -> str:
    """The encoder's own masked objective: ``mae`` for images, ``masked_tokens`` otherwise."""
    return "mae" if modality in IMAGES else "masked_tokens"


class Task(nn.Module):
    """One objective training one modality's encoder on a batch of instances.

    Kinds (the objective's call contract):

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
        encoder: That modality's encoder (read for its width and geometry; not kept).
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
        weight: float = 1.0,
        views: str = "default",
        momentum: float = 0.996,
        **options: Any,
    ) -> None:
        super().__init__()
        meta = info(name)
        self.name, self.modality, self.kind = name, modality, meta.kind
        self.weight, self.momentum = float(weight), float(momentum)
        self.views = None
        if self.kind in ("two_view", "one_view", "momentum"):
            if modality == keys.WSI and not hasattr(encoder, "spatial_dims"):
                raise InputError(
                    f"objective {name!r} needs augmented views of pixel tiles, but the wsi encoder "
                    f"{type(encoder).__name__} reads cached features; use mae (masked feature modelling) there"
                )
            self.views = make_views(modality, views)
        self.objective = self._build(encoder, options) if self.kind != "masked" else None

    @property
    def needs_target(self) -> bool:
        """Whether this task needs a momentum copy of the encoder."""
        return self.kind in TARGET_KINDS

    @property
    def uses_momentum(self) -> bool:
        """Whether anything must move after each optimiser step (a target encoder or target heads)."""
        return self.needs_target or callable(getattr(self.objective, "update_target", None))

    def _build(self, enc: ModalityModel, options: dict[str, Any]) -> nn.Module:
        dim = enc.embed_dim
        kind, name = self.kind, self.name
        if kind in ("two_view", "one_view", "momentum") and name not in ("infonce",):
            options = {"dim": dim, **options}
        elif name in ("rotation", "jigsaw"):
            spatial_dims = getattr(enc, "spatial_dims", 2)
            options = {"dim": dim, "spatial_dims": spatial_dims, **options}
            if name == "jigsaw":
                options.setdefault("grid", 3 if spatial_dims == 2 else 2)  # 3x3 tiles, 2x2x2 volumes
        elif kind == "cpc":
            options = {"embed_dim": dim, **options}
        elif kind == "jepa":
            if enc.token_grid is None:
                raise InputError(
                    f"jepa on {self.modality} needs an encoder with a fixed token grid (a ViT, or the sequence "
                    f"transformer); {type(enc).__name__} has none"
                )
            options = {"grid": enc.token_grid, "embed_dim": dim, **options}
        elif kind == "autoencoder":
            in_dim = getattr(enc, "n_genes", None) or getattr(enc, "in_dim", None)
            if not in_dim:
                raise InputError(f"{name} needs an encoder of fixed-width profiles; {type(enc).__name__} is not")
            options = {"in_dim": int(in_dim), "latent_dim": dim, "backbone_dim": dim, **options}
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
        kind, obj = self.kind, self.objective
        if kind == "masked" or obj is None:
            return encoder.masked_loss(x, gene_mask=gene_mask)

        def embed(v: torch.Tensor, gm: torch.Tensor | None = gene_mask, model: ModalityModel = encoder) -> torch.Tensor:
            return model.embed(v, gene_mask=gm)

        if kind in ("two_view", "one_view", "momentum"):
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
            lengths = (x != keys.PAD_TOKEN).sum(dim=1).tolist() if self.modality == keys.SEQUENCE else None
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
        if self.modality == keys.EXPRESSION:
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


def build_tasks(modality: str, encoder: ModalityModel, spec: Any, *, masked_weight: float) -> list[Task]:
    """Build the tasks of one modality from its ``objective`` setting (default: its masked objective)."""
    entries = normalise_entries(modality, spec if spec is not None else default_objective(modality))
    tasks = []
    for entry in entries:
        options = {k: v for k, v in entry.items() if k not in ENGINE_OPTIONS}
        default_w = masked_weight if entry["name"] in MASKED else 1.0
        tasks.append(
            Task(
                entry["name"],
                modality,
                encoder,
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

    ``clip`` keeps its own multi-pair module (per-pair temperatures, distributed gather); any other
    objective usable across modalities (``infonce``, ``barlow_twins``, ``vicreg``, ``simsiam``,
    ``swav``) gets one instance per pair, fed modality A as view 1 and modality B as view 2.

    Returns ``(mean over scored pairs, {"<name>/<a>-<b>": loss})``; :attr:`last_scored` names the pairs
    that had at least two patients with both modalities.
    """

    def __init__(self, modalities: Sequence[str], dim: int, spec: Any = "clip") -> None:
        super().__init__()
        entry = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = str(entry.pop("name", "clip"))
        meta = info(name)
        if not meta.across:
            usable = sorted(n for n, i in CATALOGUE.items() if i.across)
            raise InputError(f"objective {name!r} cannot be used between modalities; use one of {', '.join(usable)}")
        self.name = name
        self.pairs = list(itertools.combinations(modalities, 2))
        self.last_scored: list[str] = []
        if name in ("clip", "multimodal_clip"):
            from biossl.objectives.clip import MultiModalCLIP

            self.clip: MultiModalCLIP | None = MultiModalCLIP(list(modalities), **entry)
            self.per_pair = nn.ModuleDict()
        else:
            self.clip = None
            extra = {} if name == "infonce" else {"dim": dim}
            self.per_pair = nn.ModuleDict({f"{a}-{b}": OBJECTIVES.build(name, **extra, **entry) for a, b in self.pairs})

    def forward(
        self, embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score every pair present in the batch."""
        if self.clip is not None:
            total, per_pair = self.clip(embeddings, present)
            self.last_scored = list(self.clip.last_scored)
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
    """Rows (name, kind, modalities, within/across, paper) of every registered objective."""
    OBJECTIVES.names()  # import every objective module
    rows = []
    for name in sorted(CATALOGUE):
        meta = CATALOGUE[name]
        where = [w for w, ok in (("within", bool(meta.modalities)), ("across", meta.across)) if ok]
        mods = ", ".join(meta.modalities) or ("all pairs" if meta.across else "fine-tuning")
        rows.append([name, meta.kind, mods, " + ".join(where) or "fine-tuning", meta.paper])
    return rows


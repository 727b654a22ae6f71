"""Self-supervised objectives: one method per file, each a plain ``nn.Module``.

Modules register their classes in :data:`OBJECTIVES` under plain names (``"clip"``, ``"mae"``, ...).
Each registered class carries what the pretraining engine (:mod:`biossl.modules.tasks`) needs to know
about it as a class attribute ``info = ObjectiveInfo(...)``: its call contract, the kinds of modality it
trains, whether it works between two modalities, the paper, and which constructor argument takes the
embedding width. A class may also define a classmethod ``options_from_encoder(encoder, *, modality,
kind) -> dict`` for constructor options read off the encoder (a token grid, spatial dims, a profile
width); it may raise :class:`~biossl.errors.InputError` when the encoder does not fit. A new objective
is then one file here and nothing else::

    @OBJECTIVES.register("my_loss")
    class MyLoss(nn.Module):
        info = ObjectiveInfo("two_view", kinds=("table",), across=True, paper="...", dim_option="dim")

        def __init__(self, dim: int, *, scale: float = 1.0) -> None: ...
        def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor: ...
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from biossl import keys
from biossl.errors import InputError
from biossl.registry import Registry

OBJECTIVES: Registry[nn.Module] = Registry("objective", package="biossl.objectives")

#: Kinds of image instances (tiles, volume patches).
IMAGE_KINDS: tuple[str, ...] = (keys.SLIDE, keys.VOLUME)
#: Kinds with augmentation views, which the two-view objectives train.
VIEW_KINDS: tuple[str, ...] = (keys.SLIDE, keys.VOLUME, keys.TABLE, keys.SEQUENCE)

#: Call contracts the engine knows (see :class:`biossl.modules.tasks.Task` for each one's call).
CONTRACTS: tuple[str, ...] = (
    "masked",  # the encoder's own masked loss (mae, masked_tokens); the objective is never built
    "two_view",  # obj(embed(view1), embed(view2))
    "one_view",  # obj(embed(view))
    "momentum",  # obj(embed(v1), embed(v2), target.embed(v1), target.embed(v2)), with an EMA encoder copy
    "embed_fn",  # obj(x, embed): the objective transforms the input itself
    "cpc",  # obj(tokens(x), valid) over sequence positions
    "jepa",  # obj(context tokens, target tokens, context mask, target masks), with an EMA encoder copy
    "autoencoder",  # obj(x, observed=mask, backbone=embed)
    "cross",  # scores every modality pair at once: built as obj(modalities, **options)
    "finetune",  # a fine-tuning loss (biossl finetune), never a pretraining objective
)


@dataclass(frozen=True)
class ObjectiveInfo:
    """What the engine knows about one registered objective (its class attribute ``info``).

    Args:
        contract: How the engine calls it, one of :data:`CONTRACTS`.
        kinds: The kinds of modality (``slide``, ``volume``, ``table``, ``sequence``, ``features`` or a
            plug-in kind) whose encoder it can train; empty for cross-modal and fine-tuning losses.
        across: Usable between two modalities' patient-level embeddings (``model.cross_modal``): a
            ``two_view`` objective then gets one instance per modality pair; a ``cross`` one scores all
            pairs itself.
        paper: The method's reference, printed by ``biossl list objectives``.
        dim_option: The constructor argument that receives the embedding width (the encoder's, or the
            shared width across modalities); ``None`` when it takes none.
        pairs_objective: For a ``cross`` objective, the registered name of the module that scores every
            modality pair at once (``clip`` -> ``multimodal_clip``); ``None``: this one does.

    Raises:
        ValueError: An unknown contract, ``kinds`` given as one string, or fields that contradict the
            contract (kinds on a ``cross``/``finetune`` objective, a ``cross`` one not ``across``).
    """

    contract: str
    kinds: tuple[str, ...] = ()
    across: bool = False
    paper: str = ""
    dim_option: str | None = None
    pairs_objective: str | None = None

    def __post_init__(self) -> None:
        if self.contract not in CONTRACTS:
            raise ValueError(f"unknown objective contract {self.contract!r}; use one of {', '.join(CONTRACTS)}")
        if isinstance(self.kinds, str):
            raise ValueError(f"ObjectiveInfo kinds must be a tuple of kind names, e.g. ({self.kinds!r},)")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.contract in ("cross", "finetune") and self.kinds:
            raise ValueError(f"a {self.contract!r} objective trains no modality's encoder on its own; give it no kinds")
        if self.contract == "cross" and not self.across:
            raise ValueError("a 'cross' objective is used between modalities: set across=True")
        if self.pairs_objective is not None and self.contract != "cross":
            raise ValueError("pairs_objective applies to 'cross' objectives only")


def objective_info(name: str) -> ObjectiveInfo:
    """The :class:`ObjectiveInfo` of the objective registered as ``name``.

    Raises:
        KeyError: ``name`` is not registered (the message lists the known names).
        InputError: The registered class declares no ``info`` of its own.
    """
    factory = OBJECTIVES.get(name)
    meta = getattr(factory, "__dict__", {}).get("info")
    if not isinstance(meta, ObjectiveInfo):
        raise InputError(
            f"objective {name!r} ({getattr(factory, '__qualname__', factory)!s}) declares no ObjectiveInfo of its "
            f"own; give the registered class a class attribute `info = ObjectiveInfo(contract, kinds=..., "
            f"paper=...)` (see biossl.objectives)"
        )
    return meta


def catalogue() -> dict[str, ObjectiveInfo]:
    """Every registered objective's :class:`ObjectiveInfo`, by name (sorted; plug-ins included)."""
    return {name: objective_info(name) for name in OBJECTIVES.names()}


__all__ = ["CONTRACTS", "IMAGE_KINDS", "OBJECTIVES", "VIEW_KINDS", "ObjectiveInfo", "catalogue", "objective_info"]

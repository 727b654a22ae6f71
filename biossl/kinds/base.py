"""The contract of a modality kind: how a named modality's files become bags of instances.

A kind is a class registered in :data:`biossl.registry.KINDS`. The cohort asks it to check files
(:meth:`Kind.probe`, :meth:`Kind.patients_in`); the bag dataset asks it to open a modality's files for
a set of patients (:meth:`Kind.open`, returning a :class:`Source` that draws a patient's bag); the
pretraining engine asks it for its default encoder and masked objective, the encoder options the data
fixes (:meth:`Kind.encoder_options`), its augmentation views (:meth:`Kind.views`); the audit asks it for
its synthetic artifacts (:attr:`Kind.artifacts`). Nothing else in biossl branches on a kind.

A plug-in kind is one class in one file::

    from biossl.kinds.base import Kind
    from biossl.registry import KINDS

    @KINDS.register("spectrum")
    class Spectrum(Kind):
        default_encoder = "features/mlp"
        ...
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from biossl.data.bags import Pick, SourceContext
from biossl.errors import InputError


class Source(Protocol):
    """A modality's files opened for a set of patients."""

    def draw(self, patient: str, pick: Pick) -> dict[str, torch.Tensor] | None:
        """The patient's bag: ``{"x": Tensor[k, ...], **per-instance extras}``, or ``None`` if it has none."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep to open this modality again the same way (JSON-able)."""


class Kind:
    """Base class of a modality kind; subclasses set the class attributes and implement :meth:`open`.

    Attributes:
        name: The registered name (set by the registry decorator's caller, e.g. ``"volume"``).
        default_encoder: Encoder registry name used when a modality's config names none.
        default_objective: The within-modality objective used when the config names none.
        objectives_kind: The built-in kind whose objectives apply to this kind's instances (objectives
            declare the kinds they train, e.g. ``("slide", "volume")``); ``None``: :attr:`name`. A plug-in
            kind of feature vectors sets ``"features"`` to train with masked feature modelling.
        instances: The :class:`~biossl.data.bags.BagSpec` field giving the bag size ``k``.
        artifacts: Names of the synthetic artifacts the audit applies (:mod:`biossl.transforms.artifacts`).
        view_module: The module of :mod:`biossl.transforms` holding this kind's augmentation views, or
            ``None`` when it has none.
        multi_patient: A file may hold many patients (a table): the cohort checks that each row's
            patient is in it (:meth:`patients_in`).
        extensions: File name endings the kind reads (for messages).
    """

    name: ClassVar[str] = ""
    objectives_kind: ClassVar[str | None] = None
    default_encoder: ClassVar[str] = ""
    default_objective: ClassVar[str] = "mae"
    instances: ClassVar[str] = ""
    artifacts: ClassVar[tuple[str, ...]] = ()
    view_module: ClassVar[str | None] = None
    multi_patient: ClassVar[bool] = False
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Options a modality of this kind accepts (``value_type`` for tables).
    option_names: ClassVar[tuple[str, ...]] = ()

    # -- the cohort's checks ------------------------------------------------------------------------
    def probe(self, path: Path, *, thorough: bool = False, options: Mapping[str, Any] | None = None) -> None:
        """Raise an exception whose message says what is wrong with ``path``; return if it reads.

        ``thorough`` is the full check (``biossl cohort``, once per pretraining run); the default is cheap.
        """
        if not Path(path).is_file():
            raise InputError(f"{path}: file not found")

    def patients_in(self, path: Path, options: Mapping[str, Any] | None = None) -> Collection[str] | None:
        """The patients a multi-patient file holds (``None``: the file is one patient's)."""
        return None

    def check_options(self, modality: str, options: Mapping[str, Any]) -> None:
        """Raise :class:`InputError` on an option this kind does not take or a bad value."""
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            takes = ", ".join(self.option_names) or "none"
            raise InputError(f"modality {modality!r} ({self.name}): unknown option(s) {unknown}; "
                             f"{self.name} takes: {takes}")

    # -- bags -----------------------------------------------------------------------------------------
    def open(self, modality: str, cohort: Any, patients: list[str], ctx: SourceContext) -> Source:
        """Open the modality's files of ``patients`` (tables are read here; slides and scans lazily)."""
        raise NotImplementedError

    def bag_size(self, spec: Any) -> int:
        """``k``, the instances per patient of this kind."""
        return int(getattr(spec, self.instances))

    # -- the model ------------------------------------------------------------------------------------
    def encoder_options(self, state: Mapping[str, Any], spec: Any) -> dict[str, Any]:
        """Encoder options that the data fixes (feature count, sequence length), from :meth:`Source.state`."""
        return {}

    def views(self, strength: str = "default", **options: Any) -> nn.Module:
        """Random augmentation views of this kind's instances (two-view objectives)."""
        from biossl.transforms import make_views

        if self.view_module is None:
            raise InputError(f"{self.name} instances have no augmentation views; use a masked objective")
        return make_views(self.view_module, strength, **options)

    @classmethod
    def catalogue_kind(cls) -> str:
        """The kind under which the objective catalogue lists this kind's objectives."""
        return cls.objectives_kind or cls.name

    def __repr__(self) -> str:
        return f"<kind {self.name}>"


def get_kind(name: str) -> Kind:
    """An instance of the kind registered as ``name``; an unknown name is an :class:`InputError` listing the known."""
    from biossl.registry import KINDS

    try:
        cls = KINDS.get(name)
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    kind: Kind = cls()
    if not kind.name:
        raise InputError(f"kind {name!r}: its class {cls.__name__} sets no `name`")
    return kind


def pad_instances(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack instance tensors ``[k_i, ...]`` into ``[sum k_i, ...]`` (they share the instance shape)."""
    return torch.cat(tensors) if len(tensors) > 1 else tensors[0]

"""The patient encoder of a pretraining checkpoint, without Lightning: what inference loads.

:class:`PatientEncoder` holds, per modality name, the three parts of the pretraining module that make
a patient-modality embedding -- the instance encoder (``encoders[m]``, a
:class:`~biossl.encoders.base.ModalityModel`), its projection to the shared width
(``projections[m]``) and the attention-MIL pool (``pools[m]``) -- under the pretraining module's
attribute names, so a checkpoint's ``encoders.*``, ``projections.*`` and ``pools.*`` weights load
unchanged. The objectives' heads, momentum encoders and cross-modal loss are training-only and are
not built. ``biossl embed``, ``finetune``, ``audit`` and ``cache-features`` load it with
:meth:`PatientEncoder.from_checkpoint`; :class:`~biossl.modules.pretrain.PretrainModule` computes its
embeddings with the same functions (:func:`bag_instances`, :func:`pool_instances`), so both give the
same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from biossl import keys
from biossl.checkpoint import load_checkpoint, one_line, rebuild_error
from biossl.encoders import ENCODERS
from biossl.encoders.base import ModalityModel
from biossl.encoders.pooling import GatedAttentionMIL
from biossl.errors import InputError
from biossl.kinds import Kind, get_kind

#: Keys of a modality's spec that the engine reads (everything else goes to the encoder factory).
SPEC_KEYS = ("encoder", "objective", "kind")
#: Width of the shared space where patient-modality embeddings are compared, unless a config says otherwise.
DEFAULT_EMBED_DIM = 128
#: The parts of a pretraining module a patient encoder holds (its attribute and state-dict prefixes).
PARTS = ("encoders", "projections", "pools")

#: ``(pooled, present, losses)``: per modality ``[B, D]`` embeddings and ``[B]`` present masks, and task losses.
Encoded = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]
_Self = TypeVar("_Self")


@runtime_checkable
class PatientModel(Protocol):
    """What embedding code needs of a model: a :class:`PatientEncoder`, or the pretraining module itself.

    The audit's nuisance probe embeds with the live training module; everything else uses
    :class:`PatientEncoder`. Both are :class:`torch.nn.Module`.
    """

    @property
    def embed_dim(self) -> int:
        """Width of the pooled embeddings."""

    @property
    def modality_specs(self) -> dict[str, dict[str, Any]]:
        """Resolved spec per modality name."""

    @property
    def data_state(self) -> dict[str, Any]:
        """What the checkpoint recorded about the data (bag spec, vocabularies, config)."""

    def kind_of(self, m: str) -> str:
        """The kind of modality ``m``."""

    def encode_batch(self, batch: dict[str, Any], *, with_masked_loss: bool = ...) -> Encoded:
        """Pooled embeddings and present masks per modality (and task losses, none when not asked)."""

    def eval(self: _Self) -> _Self:
        """Evaluation mode (as :meth:`torch.nn.Module.eval`)."""

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """Move to a device (as :meth:`torch.nn.Module.to`)."""


def kind_name(modality: str, spec: Mapping[str, Any]) -> str:
    """The kind of ``modality``: its spec's ``kind``, else the legacy name's (``wsi`` is a slide, ...).

    Raises:
        InputError: Neither names one.
    """
    kind = spec.get("kind") or keys.LEGACY_KINDS.get(modality)
    if not kind:
        raise InputError(f"model.modalities.{modality}: no kind is known; give it in the manifest's kind column, in "
                         f"data.kinds, or as model.modalities.{modality}.kind")
    return str(kind)


def resolve_spec(modality: str, spec: dict[str, Any]) -> Kind:
    """Write the kind and the kind's default encoder into ``spec`` where it has none; return the kind.

    Raises:
        InputError: No kind is known, or the kind is not registered.
    """
    kind = get_kind(kind_name(modality, spec))
    spec["kind"] = kind.name
    spec.setdefault("encoder", kind.default_encoder)
    return kind


def build_encoder(modality: str, spec: Mapping[str, Any]) -> ModalityModel:
    """The instance encoder a modality's spec names (its kind's default if none), with the spec's options.

    Raises:
        InputError: The encoder does not take the spec's options.
        KeyError: The encoder name is not registered.
        TypeError: The factory does not return a :class:`ModalityModel`.
    """
    name = spec.get("encoder") or get_kind(kind_name(modality, spec)).default_encoder
    kwargs = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    try:
        encoder = ENCODERS.build(name, **kwargs)
    except TypeError as exc:
        raise InputError(f"model.modalities.{modality}: encoder {name!r} does not take these options "
                         f"({one_line(exc)}); see `biossl list encoders`") from None
    if not isinstance(encoder, ModalityModel):
        raise TypeError(f"encoder {name!r} does not return a ModalityModel")
    return encoder


def bag_instances(entry: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The real instances of a batch's modality entry, flattened ``[N, ...]``, and their gene mask (tables)."""
    mask = entry[keys.MASK]
    gene_mask = entry[keys.GENE_MASK][mask] if keys.GENE_MASK in entry else None
    return entry[keys.X][mask], gene_mask


def pool_instances(encoder: ModalityModel, projection: nn.Module, pool: nn.Module, instances: torch.Tensor,
                   gene_mask: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Embed and project the instances, put them back in their bags ``[B, K, D]`` and pool each bag ``[B, D]``."""
    z = projection(encoder.embed(instances, gene_mask=gene_mask))
    b, k = mask.shape
    bag = z.new_zeros((b, k, z.shape[-1]))
    bag[mask] = z
    pooled, _ = pool(bag, mask)
    return pooled


def instance_embeddings(encoder: ModalityModel, projection: nn.Module, entry: Mapping[str, torch.Tensor]
                        ) -> torch.Tensor:
    """Projected embeddings ``[n, D]`` of a flat chunk of instances ``{"x": [n, ...], "gene_mask": [n, G]?}``.

    The per-instance half of :func:`pool_instances`: a whole patient's instances are embedded chunk by
    chunk with it, then pooled once with :func:`pool_embeddings`.
    """
    return projection(encoder.embed(entry[keys.X], gene_mask=entry.get(keys.GENE_MASK)))


def pool_embeddings(pool: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Pool all ``[N, D]`` instance embeddings of one patient-modality into ``[D]`` (the modality's pooling)."""
    mask = torch.ones((1, z.shape[0]), dtype=torch.bool, device=z.device)
    pooled, _ = pool(z.unsqueeze(0), mask)
    return pooled[0]


def part_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoders.*``, ``projections.*`` and ``pools.*`` weights of a checkpoint's state dict.

    Names written through a ``torch.compile``-d module (``._orig_mod``) are read as the plain module's.
    """
    return {k.replace("._orig_mod", ""): v for k, v in state_dict.items() if k.split(".", 1)[0] in PARTS}


class PatientEncoder(nn.Module):
    """Per modality: instance encoder, projection to ``embed_dim`` and attention-MIL pool (module docstring).

    Args:
        modality_specs: Per modality name, ``{"encoder": <registry name>, "kind": ..., **encoder kwargs}``
            as a checkpoint stores them (``data_state["modality_specs"]``); a missing kind or encoder is
            filled in as the pretraining module does. ``objective`` is ignored (training only).
        embed_dim: Width of the shared space.
        data_state: What the checkpoint recorded about the data (bag spec, vocabularies, config, version).
        hparams: The pretraining module's hyper-parameters (to build the same architecture again).
        seed: Seed of the initial weights (the pretraining's; a checkpoint's weights replace them).
        build: Build the parts (``False``: the caller fills ``encoders``, ``projections``, ``pools``).
    """

    def __init__(self, modality_specs: Mapping[str, Mapping[str, Any]], *, embed_dim: int = DEFAULT_EMBED_DIM,
                 data_state: Mapping[str, Any] | None = None, hparams: Mapping[str, Any] | None = None,
                 seed: int = 0, build: bool = True) -> None:
        super().__init__()
        self.modality_specs = {m: dict(s) for m, s in modality_specs.items()}
        self.embed_dim = int(embed_dim)
        #: What the checkpoint recorded about the data (gene vocabulary, tokeniser, bag spec, config, version).
        self.data_state: dict[str, Any] = dict(data_state or {})
        #: The pretraining module's hyper-parameters (``modalities`` are the resolved specs).
        self.hparams: dict[str, Any] = dict(hparams or {})
        self.encoders = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        self.pools = nn.ModuleDict()
        if not build:
            return
        for m, spec in self.modality_specs.items():
            resolve_spec(m, spec)
        # Initial weights are a function of the seed alone, whatever the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m, spec in self.modality_specs.items():
                encoder = build_encoder(m, spec)
                self.encoders[m] = encoder
                self.projections[m] = nn.Linear(encoder.embed_dim, self.embed_dim)
                self.pools[m] = GatedAttentionMIL(self.embed_dim)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, map_location: str | torch.device = "cpu",
                        modalities: Iterable[str] | None = None) -> PatientEncoder:
        """Load a ``biossl pretrain`` checkpoint's patient encoder safely (weights only), without Lightning.

        Every failure is one line naming the file and what to do (:func:`biossl.checkpoint.load_checkpoint`:
        a missing, truncated, foreign or pickled file, another major version), or weights that do not fit
        the architecture the checkpoint describes.

        Args:
            path: The ``.ckpt`` file.
            map_location: Where the weights are loaded.
            modalities: Build only these of the checkpoint's modalities (default: all).

        Raises:
            InputError: The file is not a usable biossl pretraining checkpoint (see above).
        """
        return cls.from_loaded(load_checkpoint(path, map_location=map_location), path, modalities=modalities)

    @classmethod
    def from_loaded(cls, ckpt: dict[str, Any], path: str | Path, *,
                    modalities: Iterable[str] | None = None) -> PatientEncoder:
        """:meth:`from_checkpoint` of a checkpoint already read by :func:`~biossl.checkpoint.load_checkpoint`.

        Raises:
            InputError: The checkpoint's specs or weights do not rebuild its model (``path`` names it).
        """
        state = ckpt["biossl"]
        try:
            # LightningCLI adds bookkeeping keys (``_instantiator``, ``_class_path``) the module does not take.
            hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
            specs = dict(state["modality_specs"])
            # Compiling is a training-time choice: a loaded encoder runs eagerly.
            hparams.update(modalities=specs, compile=False)
            wanted = list(specs) if modalities is None else list(modalities)
            encoder = cls({m: specs[m] for m in wanted}, embed_dim=int(hparams.get("embed_dim", DEFAULT_EMBED_DIM)),
                          data_state=state, hparams=hparams, seed=int(hparams.get("seed", 0)))
            weights = part_weights(ckpt["state_dict"])
            encoder.load_state_dict({k: v for k, v in weights.items() if k.split(".", 2)[1] in encoder.encoders})
        except InputError:  # what an encoder needs is not there (a moved model folder): its own line
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise rebuild_error(path, ckpt, exc) from None
        if modalities is None:
            encoder.data_state["modality_specs"] = {m: dict(s) for m, s in encoder.modality_specs.items()}
        return encoder

    def kind_of(self, m: str) -> str:
        """The kind of modality ``m`` (its spec's ``kind``; the legacy names have their own)."""
        return kind_name(m, self.modality_specs[m])

    def encode_batch(self, batch: dict[str, Any], *, with_masked_loss: bool = False) -> Encoded:
        """Patient-modality embeddings ``[B, D]`` and present masks ``[B]`` of the batch's modalities.

        The same numbers as :meth:`PretrainModule.encode_batch <biossl.modules.pretrain.PretrainModule.encode_batch>`
        of the module the weights come from. There are no objectives here: the losses are always empty
        (``with_masked_loss`` is accepted for code that takes either model).
        """
        pooled: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        for m in self.modality_specs:
            if m not in batch:
                continue
            entry = batch[m]
            instances, gene_mask = bag_instances(entry)
            encoder: ModalityModel = self.encoders[m]  # type: ignore[assignment]
            pooled[m] = pool_instances(encoder, self.projections[m], self.pools[m], instances, gene_mask,
                                       entry[keys.MASK])
            present[m] = entry[keys.PRESENT]
        return pooled, present, {}

    def embed_instances(self, modality: str, entry: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Projected embeddings ``[n, embed_dim]`` of a chunk of ``modality``'s instances."""
        encoder: ModalityModel = self.encoders[modality]  # type: ignore[assignment]
        return instance_embeddings(encoder, self.projections[modality], entry)

    def pool(self, modality: str, z: torch.Tensor) -> torch.Tensor:
        """One patient's embedding ``[embed_dim]`` of ``modality`` from all its instance embeddings ``[N, D]``."""
        return pool_embeddings(self.pools[modality], z)


__all__ = ["DEFAULT_EMBED_DIM", "PARTS", "SPEC_KEYS", "Encoded", "PatientEncoder", "PatientModel", "bag_instances",
           "build_encoder", "instance_embeddings", "kind_name", "part_weights", "pool_embeddings", "pool_instances",
           "resolve_spec"]

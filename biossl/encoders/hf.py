"""Hugging Face models from a local ``save_pretrained`` folder as instance encoders (``encoder: hf``).

A modality's config names the folder; nothing is downloaded (``local_files_only``)::

    model:
      modalities:
        he:  {encoder: hf, path: /models/phikon}                       # a ViT (Phikon-type)
        dna: {encoder: hf, path: /models/nucleotide-transformer}       # ESM- or BERT-type masked LM
        rna: {encoder: hf, path: /models/gene-bert, max_length: 2048}  # BERT masked LM, gene vocabulary

What the folder holds decides how instances are read:

* **vision transformer** (a config with ``image_size`` and ``num_channels``, e.g. ``ViTModel``) for
  slide tiles: a tile (biossl's float ``[3, H, W]`` in [0, 1], i.e. its 8-bit pixels / 255) is
  normalised as the folder's image processor (``preprocessor_config.json``) would normalise those
  pixels: ``rescale_factor`` if ``do_rescale``, then ``(p - image_mean) / image_std`` if
  ``do_normalize``. No resizing: the tile size (``data.spec.tile_px``) must be the model's
  ``image_size`` (checked when the encoder meets the data, before training). The instance embedding is
  the CLS token of ``last_hidden_state`` (after the final layer norm), as Phikon's and most pathology
  ViTs' model cards use it; the ``pooler`` (dense + tanh, often untrained) is not used and is kept
  frozen, so an export writes it back unchanged.
* **masked-LM with a tokenizer** (``*ForMaskedLM``: ESM as Nucleotide Transformer, BERT) for DNA windows:
  biossl's window token ids are turned back into their letters (``A C G T N``, the alphabet of
  :mod:`biossl.keys`; the reader folds case and ambiguity codes into these, so nothing else is lost) and
  tokenised by the folder's tokenizer. The instance embedding is the mean of ``last_hidden_state`` over
  the tokenizer's non-padding tokens (its special tokens included), as the Nucleotide Transformer's
  model card computes a sequence embedding.
* **gene-token masked-LM** (a BERT-type masked LM whose vocabulary holds gene names) for table rows, with
  Geneformer's rank-value encoding: per profile, the genes that were measured (``gene_mask``), are in the
  model's vocabulary and have a value above ``min_value`` (default 0: the expressed genes), ranked by
  value, highest first (ties in the table's column order), truncated to ``max_length`` tokens with the
  tokenizer's ``[CLS]`` first and its ``[SEP]`` / end token last. The instance embedding is the
  ``[CLS]`` hidden state of ``last_hidden_state``. The values ranked are those biossl hands every table
  encoder (counts: library-size normalised and log1p, which keeps each profile's order); Geneformer's
  division by each gene's corpus median is not applied.

``freeze: true`` keeps the weights fixed (no gradients, always in eval mode): features only. Otherwise
the model is adapted: a masked-LM's masked loss is its own head's (BERT masking of ``mask_ratio`` of the
non-special tokens, 80/10/10, cross-entropy of the model's MLM head), plus any biossl objective set for
the modality and the cross-modal term. A vision model has no masked head: its masked term is 0 and it is
adapted by the cross-modal term and the biossl objectives set for it (``objective: [byol]``, ...).

The adapted weights are in the checkpoint's state dict; the folder gives the architecture, tokenizer and
processor only, and must exist when a checkpoint is loaded. A folder that has moved is found through
``$BIOSSL_HF_MODELS`` (:data:`HF_MODELS_ENV`): a folder holding model folders under their original names
(or the model folder itself). :meth:`HFModel.export_pretrained` writes the (adapted) model back as a
``save_pretrained`` folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biossl.encoders import ENCODERS
from biossl.encoders.base import ModalityModel
from biossl.errors import InputError
from biossl.keys import BINARY, CATEGORICAL, NUCLEOTIDES, VOCAB_SIZE

log = logging.getLogger(__name__)

#: Environment variable naming where model folders recorded in a checkpoint are now.
HF_MODELS_ENV = "BIOSSL_HF_MODELS"
#: The one line for a missing ``transformers``.
INSTALL = 'encoder hf needs the optional package transformers: pip install "biossl[hf]"'
#: ``image_mean`` / ``image_std`` of transformers' ``ViTImageProcessor`` (used when a folder has no processor file).
_VIT_DEFAULT = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
#: Largest ``model_max_length`` taken as a real limit (tokenizers without one say 1e30).
_NO_LIMIT = 1_000_000
#: Folders whose missing masked head was already logged in this process.
_TOLD: set[str] = set()


def import_transformers() -> Any:
    """The ``transformers`` module, quiet (no progress bars, no load reports); one line if it is not installed.

    Raises:
        InputError: transformers is not installed.
    """
    try:
        import transformers
    except ImportError:
        raise InputError(INSTALL) from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _one_line(exc: BaseException, limit: int = 200) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


def model_folder(path: str | os.PathLike[str]) -> Path:
    """The model folder ``path`` names, or where ``$BIOSSL_HF_MODELS`` says it now is.

    Args:
        path: The folder a config or a checkpoint's spec gives.

    Raises:
        InputError: No such folder (moved or deleted), with how to point at its new place.
    """
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder.resolve()
    moved = os.environ.get(HF_MODELS_ENV)
    if moved:
        root = Path(moved).expanduser()
        for candidate in (root / folder.name, root):
            if candidate.name == folder.name and candidate.is_dir():
                log.info("hf model folder %s not found; using %s (from $%s)", folder, candidate, HF_MODELS_ENV)
                return candidate.resolve()
        raise InputError(f"hf model folder {folder} not found, and ${HF_MODELS_ENV}={moved} holds no folder "
                         f"{folder.name!r}; set {HF_MODELS_ENV} to the folder that now holds {folder.name!r}")
    if folder.exists():
        raise InputError(f"hf path {folder} is a file; give path: the folder that save_pretrained wrote")
    raise InputError(f"hf model folder {folder} not found (moved or deleted?); if it has moved, set "
                     f"{HF_MODELS_ENV}=<the folder that now holds {folder.name!r}> (any verb; a pretraining config "
                     f"can also give path: its new place)")


def read_config_json(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json``, checked to be a transformers model config.

    Raises:
        InputError: No config.json, an unreadable one, or one without a ``model_type``.
    """
    file = folder / "config.json"
    if not file.is_file():
        raise InputError(f"{folder} is not a Hugging Face model folder (no config.json); give path: the folder "
                         "that save_pretrained wrote (config.json, the weights, tokenizer or preprocessor files)")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{file} is not a readable model config ({_one_line(exc)}); save the model again with "
                         "save_pretrained") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise InputError(f"{file} names no model_type: not a transformers model config; save the model with "
                         "save_pretrained")
    return data


def _load_config(tf: Any, folder: Path) -> Any:
    read_config_json(folder)
    try:
        return tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 (a third-party folder: unknown model types, remote code, ...)
        raise InputError(f"{folder}: transformers cannot read its config ({_one_line(exc)}); biossl runs models "
                         "that transformers has built in (no trust_remote_code)") from None


def _load_model(tf: Any, folder: Path, config: Any, masked_lm: bool) -> Any:
    auto = tf.AutoModelForMaskedLM if masked_lm else tf.AutoModel
    try:
        model, info = auto.from_pretrained(str(folder), config=config, local_files_only=True, dtype=torch.float32,
                                           output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 (missing or damaged weights files raise many types)
        raise InputError(f"{folder}: the model weights do not load ({_one_line(exc)}); the folder needs the "
                         "weights save_pretrained wrote (model.safetensors)") from None
    missing = [k for k in info.get("missing_keys", []) if k.split(".")[0] != "pooler"]
    if missing:
        raise InputError(f"{folder}: {len(missing)} weights of its {type(model).__name__} are not in the folder "
                         f"(e.g. {', '.join(sorted(missing)[:3])}); the weights file is not this config's model")
    return model


def _load_tokenizer(tf: Any, folder: Path, model: Any) -> Any:
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 (missing or foreign tokenizer files raise many types)
        raise InputError(f"{folder}: its tokenizer does not load ({_one_line(exc, 120)}); a DNA or gene-token model "
                         "needs its own tokenizer files in the folder (tokenizer.save_pretrained(folder))") from None
    rows = int(model.get_input_embeddings().num_embeddings)
    if len(tokenizer) > rows:
        raise InputError(f"{folder}: its tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} "
                         "rows, so the tokenizer is not this model's; put the model's own tokenizer files in the "
                         "folder")
    if len(tokenizer) < rows:
        log.warning("hf %s: the tokenizer has %d tokens, the model %d embedding rows (padded vocabularies are "
                    "common; otherwise the tokenizer is not this model's)", folder, len(tokenizer), rows)
    if tokenizer.pad_token_id is None:
        raise InputError(f"{folder}: its tokenizer has no padding token; biossl batches instances and needs one")
    return tokenizer


class HFModel(ModalityModel):
    """A transformers model of a local folder as a biossl instance encoder (module docstring).

    Args:
        model: The loaded model (``*ForMaskedLM`` or a base model).
        folder: Its folder.
        freeze: Keep the weights fixed (features only).
        mask_ratio: Fraction of the non-special tokens of each instance that the masked loss hides.
    """

    model: Any  # a transformers PreTrainedModel
    random_ids: torch.Tensor

    def __init__(self, model: Any, folder: Path, *, freeze: bool = False, mask_ratio: float = 0.15) -> None:
        super().__init__()
        if not 0.0 < mask_ratio <= 1.0:
            raise InputError(f"hf: mask_ratio must be in (0, 1], got {mask_ratio}")
        self.model = model
        self.folder = folder
        self.freeze, self.mask_ratio = bool(freeze), float(mask_ratio)
        self.embed_dim = int(model.config.hidden_size)
        self.tokenizer: Any = None
        if self.freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.model.train(not self.freeze)  # from_pretrained returns eval mode; a module starts in training mode

    @property
    def has_mlm_head(self) -> bool:
        """Whether the model has its own masked-LM head (a ``*ForMaskedLM``)."""
        return type(self.model).__name__.endswith("ForMaskedLM")

    def train(self, mode: bool = True) -> HFModel:
        """As :meth:`torch.nn.Module.train`; a frozen model stays in eval mode (no dropout)."""
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def _base(self, **inputs: torch.Tensor) -> torch.Tensor:
        base = self.model.base_model
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            out: torch.Tensor = base(**inputs).last_hidden_state
        return out

    def _mlm_loss(self, ids: torch.Tensor, attention: torch.Tensor, maskable: torch.Tensor,
                  random_ids: torch.Tensor) -> torch.Tensor:
        """BERT masking of ``mask_ratio`` of the ``maskable`` positions and the model's own MLM loss."""
        selected = select_positions(maskable, self.mask_ratio)
        labels = ids.masked_fill(~selected, -100)
        draw = torch.rand(ids.shape, device=ids.device)
        corrupted = ids.masked_fill(selected & (draw < 0.8), int(self.tokenizer.mask_token_id))
        swap = selected & (draw >= 0.8) & (draw < 0.9)
        pick = random_ids[torch.randint(len(random_ids), ids.shape, device=ids.device)]
        corrupted = torch.where(swap, pick, corrupted)
        loss: torch.Tensor = self.model(input_ids=corrupted, attention_mask=attention, labels=labels).loss
        return loss

    def _no_masked_loss(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((), dtype=torch.float32)

    def export_pretrained(self, folder: Path) -> None:
        """Write the (adapted) model as a ``save_pretrained`` folder, with its tokenizer or image processor.

        Written beside its target and renamed into place (:func:`biossl.io.atomic_dir`): an interrupted
        export leaves nothing under ``folder``. ``folder`` must not exist, or be empty.

        Raises:
            InputError: ``folder`` exists and is not empty.
        """
        from biossl.io import atomic_dir

        folder = Path(folder)
        try:
            with atomic_dir(folder, replace=folder.is_dir() and not any(folder.iterdir())) as tmp:
                self.write_pretrained(tmp)
        except FileExistsError:
            raise InputError(f"{folder} exists and is not an empty folder; export into a new folder") from None

    def write_pretrained(self, folder: Path) -> None:
        """Write the model, and its tokenizer or image processor, into the existing folder ``folder``.

        Not atomic: :meth:`export_pretrained` and ``biossl export`` call it inside a temporary folder.
        """
        self.model.save_pretrained(str(folder))
        self._save_preprocessing(Path(folder))

    def _save_preprocessing(self, folder: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))


def select_positions(valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """``round(ratio * n)`` (at least one) of each row's ``n`` valid positions, uniformly at random; bool ``[N, L]``."""
    n_valid = valid.sum(dim=1)
    k = torch.minimum(torch.round(n_valid * ratio).clamp_min(1), n_valid)
    scores = torch.rand(valid.shape, device=valid.device).masked_fill(~valid, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < k.unsqueeze(1)) & valid


class HFImageModel(HFModel):
    """A vision transformer (``ViTModel``-type) on 2D tiles; embedding = CLS of ``last_hidden_state``."""

    spatial_dims = 2
    in_channels = 3
    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: Any, folder: Path, processor: dict[str, Any], **options: Any) -> None:
        super().__init__(model, folder, **options)
        config = model.config
        size = config.image_size
        self.img_size = tuple(size) if isinstance(size, list | tuple) else (int(size), int(size))
        if int(config.num_channels) != 3:
            raise InputError(f"{folder}: the model reads {config.num_channels}-channel images; slide tiles are RGB")
        self.processor = dict(processor)
        scale = float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 1.0
        mean, std = np.zeros(3), np.ones(3)
        if processor.get("do_normalize", True):
            mean = np.broadcast_to(np.asarray(processor.get("image_mean", 0.5), dtype=np.float64), 3)
            std = np.broadcast_to(np.asarray(processor.get("image_std", 0.5), dtype=np.float64), 3)
        # A tile is its 8-bit pixels / 255: the processor's (255 * x * scale - mean) / std as x * a + b.
        self.register_buffer("scale", torch.tensor(255.0 * scale / std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("shift", torch.tensor(-mean / std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        pooler = getattr(model, "pooler", None)
        if isinstance(pooler, nn.Module):  # unused: kept (frozen) so that an export writes it back
            for p in pooler.parameters():
                p.requires_grad_(False)

    def check_size(self, tile_px: int) -> None:
        """Refuse tiles of another size than the model's input.

        Raises:
            InputError: ``tile_px`` is not the model's ``image_size``.
        """
        if (tile_px, tile_px) != self.img_size:
            side = self.img_size[0] if self.img_size[0] == self.img_size[1] else self.img_size
            raise InputError(f"the hf model {self.folder} reads {side} px images but the tiles are {tile_px} px; "
                             f"set data.spec.tile_px: {side} (tiles are resized to it)")

    def pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        """Tiles ``[N, 3, H, W]`` in [0, 1] normalised as the folder's image processor does."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"hf vision model expects tiles [N, 3, H, W], got {tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.img_size:
            self.check_size(int(x.shape[-1]))  # square tiles of another size: the one line
            raise ValueError(f"hf vision model reads {self.img_size} images, got {tuple(x.shape[2:])}")
        return x.float() * self.scale + self.shift

    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLS token of the last hidden state: ``[N, hidden_size]``."""
        return self._base(pixel_values=self.pixel_values(x))[:, 0]

    def masked_loss(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """0: a vision model has no masked head (adapted by the cross-modal term and other objectives)."""
        return self._no_masked_loss(x)

    def _save_preprocessing(self, folder: Path) -> None:
        (folder / "preprocessor_config.json").write_text(json.dumps(self.processor, indent=2) + "\n")


class HFSequenceModel(HFModel):
    """A masked LM with its tokenizer on DNA windows; embedding = mean of non-padding hidden states."""

    def __init__(self, model: Any, folder: Path, tokenizer: Any, *, max_length: int | None = None,
                 **options: Any) -> None:
        super().__init__(model, folder, **options)
        self.tokenizer = tokenizer
        self.max_length = max_length or _token_limit(model.config, tokenizer)
        mask = tokenizer.mask_token or "N"
        #: Letters per biossl token id (PAD dropped, MASK as the tokenizer's mask token).
        self._letters = np.array(["", *NUCLEOTIDES, mask], dtype=object)
        specials = set(tokenizer.all_special_ids)
        self.register_buffer("random_ids", torch.tensor(sorted(set(range(len(tokenizer))) - specials)),
                             persistent=False)
        self._warned_cut = False

    def texts(self, x: torch.Tensor) -> list[str]:
        """The letters of biossl's window ids ``[N, L]`` (PAD dropped)."""
        if x.ndim != 2 or x.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"hf sequence model expects int64 tokens [N, L], got {x.dtype} {tuple(x.shape)}")
        ids = x.detach().cpu().numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
            raise ValueError(f"token ids must be in [0, {VOCAB_SIZE}) as defined in biossl.keys")
        return ["".join(row) for row in self._letters[ids]]

    def encode_texts(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """The folder's tokenizer on ``texts``: ``input_ids``, ``attention_mask``, ``special_tokens_mask``."""
        cut = self.max_length is not None
        batch = self.tokenizer(texts, padding=True, truncation=cut, max_length=self.max_length,
                               return_special_tokens_mask=True, return_tensors="pt")
        if cut and not self._warned_cut and max(len(t) for t in texts) > 0:
            longest = self.tokenizer(max(texts, key=len), add_special_tokens=True)["input_ids"]
            if len(longest) > int(self.max_length or 0):
                self._warned_cut = True
                log.warning("hf %s: DNA windows of %d tokens are cut to the model's %d; lower "
                            "data.spec.window_length", self.folder, len(longest), self.max_length)
        return {k: v.to(device) for k, v in batch.items()}

    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the last hidden states over the non-padding tokens: ``[N, hidden_size]``."""
        batch = self.encode_texts(self.texts(x), x.device)
        h = self._base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        w = batch["attention_mask"].to(h.dtype).unsqueeze(-1)
        return (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def masked_loss(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The model's own MLM loss on ``mask_ratio`` of the non-special tokens (0 when frozen or headless)."""
        if self.freeze or not self.has_mlm_head:
            return self._no_masked_loss(x)
        batch = self.encode_texts(self.texts(x), x.device)
        maskable = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
        return self._mlm_loss(batch["input_ids"], batch["attention_mask"], maskable, self.random_ids)


def _token_limit(config: Any, tokenizer: Any) -> int | None:
    """Most tokens the model reads: the tokenizer's ``model_max_length``, or its absolute positions."""
    limit = int(tokenizer.model_max_length) if tokenizer.model_max_length < _NO_LIMIT else None
    if getattr(config, "position_embedding_type", "absolute") == "absolute" and getattr(
            config, "max_position_embeddings", None):
        positions = int(config.max_position_embeddings)
        if config.model_type == "esm":  # positions start after the padding index
            positions -= int(config.pad_token_id or 0) + 1
        limit = positions if limit is None else min(limit, positions)
    return limit


class HFGeneModel(HFModel):
    """A gene-token masked LM (Geneformer-style rank-value encoding) on table rows; embedding = CLS hidden state."""

    gene_ids: torch.Tensor

    def __init__(self, model: Any, folder: Path, tokenizer: Any, genes: list[str], *,
                 max_length: int | None = None, min_value: float = 0.0, **options: Any) -> None:
        super().__init__(model, folder, **options)
        self.tokenizer = tokenizer
        if tokenizer.cls_token_id is None:
            raise InputError(f"{folder}: its tokenizer has no [CLS] token, which gene-token models embed with")
        vocab = tokenizer.get_vocab()
        specials = set(tokenizer.all_special_ids)
        ids = [vocab.get(g, -1) for g in genes]
        ids = [-1 if i in specials else i for i in ids]
        known = [g for g, i in zip(genes, ids) if i >= 0]
        if not known:
            examples = [t for t in list(vocab)[:200] if vocab[t] not in specials][:3]
            raise InputError(f"none of the table's {len(genes)} features (e.g. {', '.join(genes[:3])}) is in the "
                             f"vocabulary of the hf model {folder} ({len(vocab)} tokens, e.g. {', '.join(examples)}); "
                             "the table and the model name genes differently (symbols vs Ensembl ids?): rename the "
                             "table's columns to the model's gene names")
        lacking = [g for g, i in zip(genes, ids) if i < 0]
        if lacking:
            log.warning("hf %s: %d of the table's %d genes are not in the model's vocabulary (e.g. %s); they are "
                        "left out of its input", folder, len(lacking), len(genes), ", ".join(lacking[:5]))
        self.n_genes, self.min_value = len(genes), float(min_value)
        self.register_buffer("gene_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.register_buffer("random_ids", torch.tensor(sorted(set(i for i in ids if i >= 0))), persistent=False)
        limit = max_length or _token_limit(model.config, tokenizer) or 2048
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.end_id: int | None = None if end is None else int(end)
        self.budget = int(limit) - 1 - (self.end_id is not None)
        if self.budget < 1:
            raise InputError(f"hf: max_length {limit} leaves no room for a gene after the special tokens")

    def input_ids(self, x: torch.Tensor, gene_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank-value encoding of profiles ``[N, G]``: ``(input_ids, attention_mask)`` ``[N, T]``."""
        if x.ndim != 2 or x.shape[1] != self.n_genes:
            raise ValueError(f"hf gene model was built for {self.n_genes} features, got {tuple(x.shape)}")
        keep = (self.gene_ids >= 0).unsqueeze(0) & torch.isfinite(x) & (x > self.min_value)
        if gene_mask is not None:
            keep &= gene_mask.bool()
        values = torch.where(keep, x.float(), torch.full_like(x, -math.inf, dtype=torch.float32))
        order = torch.sort(values, dim=1, descending=True, stable=True).indices
        n = keep.sum(dim=1).clamp(max=self.budget)
        width = int(n.max()) if len(n) else 0
        pos = torch.arange(width, device=x.device).unsqueeze(0)
        pad = int(self.tokenizer.pad_token_id)
        genes = torch.where(pos < n.unsqueeze(1), self.gene_ids[order[:, :width]], pad)
        cls = torch.full((len(x), 1), int(self.tokenizer.cls_token_id), dtype=torch.long, device=x.device)
        ids = torch.cat([cls, genes, torch.full_like(cls, pad)], dim=1) if self.end_id is not None else \
            torch.cat([cls, genes], dim=1)
        if self.end_id is not None:
            ids[torch.arange(len(x), device=x.device), n + 1] = self.end_id
        length = n + 1 + (self.end_id is not None)
        attention = (torch.arange(ids.shape[1], device=x.device).unsqueeze(0) < length.unsqueeze(1)).long()
        return ids, attention

    def embed(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The ``[CLS]`` hidden state of the rank-value encoded profile: ``[N, hidden_size]``."""
        ids, attention = self.input_ids(x, gene_mask)
        return self._base(input_ids=ids, attention_mask=attention)[:, 0]

    def masked_loss(self, x: torch.Tensor, *, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked gene modelling with the model's MLM head (0 when frozen or headless)."""
        if self.freeze or not self.has_mlm_head:
            return self._no_masked_loss(x)
        ids, attention = self.input_ids(x, gene_mask)
        maskable = attention.bool() & (ids != self.tokenizer.cls_token_id)
        if self.end_id is not None:
            maskable &= ids != self.end_id
        return self._mlm_loss(ids, attention, maskable, self.random_ids)


def _processor_config(folder: Path) -> dict[str, Any]:
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        log.warning("hf %s has no preprocessor_config.json: tiles are normalised with ViTImageProcessor's "
                    "defaults (mean 0.5, std 0.5)", folder)
        return {"image_processor_type": "ViTImageProcessor", **_VIT_DEFAULT}
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{file} is not a readable image-processor config ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{file} is not an image-processor config (a JSON object)")
    return data


def _is_vision(config: Any) -> bool:
    return hasattr(config, "image_size") and hasattr(config, "num_channels")


@ENCODERS.register("hf")
def hf(
    *,
    path: str,
    freeze: bool = False,
    mask_ratio: float = 0.15,
    max_length: int | None = None,
    min_value: float = 0.0,
    genes: list[str] | None = None,
    img_size: int | None = None,
    spatial_dims: int = 2,
    in_channels: int = 3,
    max_len: int | None = None,
    n_genes: int | None = None,
    value_type: str | None = None,
    n_categories: int = 0,
    in_dim: int | None = None,
) -> HFModel:
    """Hugging Face model of a local save_pretrained folder (path:): ViT tiles, masked-LM DNA, gene-token tables.

    Args:
        path: The ``save_pretrained`` folder (config, weights, tokenizer or image-processor files).
        freeze: Keep the weights fixed (features only).
        mask_ratio: Fraction of each instance's tokens the masked-LM loss hides.
        max_length: Most tokens per instance (default: the tokenizer's or the model's limit; 2048 genes).
        min_value: Gene-token models: a gene enters a profile's ranking when its value is above this.
        genes: The table's feature names (filled in from the data).
        img_size: The tile edge the data delivers (filled in from the data; checked against the model).
        spatial_dims: 2 (filled in as 3 for volumes, which hf vision models do not read).
        in_channels: Channels of the images (3).
        max_len: The DNA window length (filled in from the data; informational).
        n_genes: The table's feature count (filled in from the data; checked against ``genes``).
        value_type: The table's value type (rank-value encoding needs expression values).
        n_categories: Categories of a categorical table (refused).
        in_dim: Width of cached tile features (refused: hf models read pixels).
    """
    tf = import_transformers()
    folder = model_folder(path)
    config = _load_config(tf, folder)
    options = {"freeze": freeze, "mask_ratio": mask_ratio}
    if in_dim is not None:
        raise InputError(f"encoder hf ({folder}) reads pixels, not cached tile features (data.features_dir); "
                         "train without features_dir, or use encoder features/mlp")
    if _is_vision(config):
        if genes is not None or max_len is not None:
            what = "table" if genes is not None else "DNA"
            raise InputError(f"the hf model {folder} is a vision model ({config.model_type}); a {what} modality "
                             "needs a masked-LM with its tokenizer")
        if spatial_dims != 2 or in_channels != 3:
            raise InputError(f"the hf model {folder} reads 2D RGB images; a volume modality (3D patches) needs "
                             "a biossl image encoder")
        image = HFImageModel(_load_model(tf, folder, config, False), folder, _processor_config(folder), **options)
        if img_size is not None:
            image.check_size(int(img_size))
        if not freeze and str(folder) not in _TOLD:
            _TOLD.add(str(folder))
            log.info("hf %s has no masked-image head: its masked term is 0; it is adapted by the cross-modal term "
                     "and the objectives set for its modality", folder)
        return image
    if img_size is not None or spatial_dims != 2:
        raise InputError(f"the hf model {folder} is a {config.model_type} text model; an image modality needs a "
                         "vision transformer folder (ViTModel-type)")
    masked_lm = any(str(a).endswith("ForMaskedLM") for a in (config.architectures or []))
    model = _load_model(tf, folder, config, masked_lm)
    if not masked_lm and not freeze:
        log.info("hf %s has no masked-LM head: its masked term is 0", folder)
    tokenizer = _load_tokenizer(tf, folder, model)
    if genes is None:
        if masked_lm and not freeze and tokenizer.mask_token_id is None:
            raise InputError(f"{folder}: its tokenizer has no mask token, which adapting a masked LM needs; "
                             "set freeze: true")
        return HFSequenceModel(model, folder, tokenizer, max_length=max_length, **options)
    if value_type in (BINARY, CATEGORICAL):
        raise InputError(f"encoder hf ranks expression values (rank-value encoding); a {value_type} table needs a "
                         "biossl table encoder (table/transformer)")
    if n_genes is not None and n_genes != len(genes):
        raise InputError(f"encoder hf: n_genes={n_genes} but {len(genes)} gene names; leave both to the data")
    if masked_lm and not freeze and tokenizer.mask_token_id is None:
        raise InputError(f"{folder}: its tokenizer has no mask token, which adapting a masked LM needs; set "
                         "freeze: true")
    return HFGeneModel(model, folder, tokenizer, list(map(str, genes)), max_length=max_length, min_value=min_value,
                       **options)

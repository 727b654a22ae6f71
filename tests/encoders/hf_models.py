"""Tiny randomly initialised Hugging Face models saved with ``save_pretrained`` (no downloads), for the hf tests.

Loaded by the hf test files with :func:`load` (tests cannot import each other under importlib mode).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pandas as pd
import torch

#: Nucleotide vocabulary of the tiny ESM model (Nucleotide Transformer's special tokens).
ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "A", "C", "G", "T", "N", "<mask>"]
#: Special tokens of a BERT vocabulary, in BERT's order.
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: Gene symbols in the tiny gene model's vocabulary that the demo table lacks.
FOREIGN_GENES = ["NOTAGENE1", "NOTAGENE2"]
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def quiet() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def vit(folder: Path, *, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> Path:
    """A ViTModel (with its pooler) and a ViTImageProcessor with ImageNet mean/std."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    quiet()
    torch.manual_seed(seed)
    ViTModel(ViTConfig(image_size=image_size, patch_size=patch_size, **SMALL)).save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def esm(folder: Path, *, vocab: list[str] | None = None, rows: int | None = None, seed: int = 0) -> Path:
    """An EsmForMaskedLM with an EsmTokenizer of ``vocab`` (nucleotides and specials); ``rows`` embedding rows."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    quiet()
    vocab = vocab or ESM_VOCAB
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = EsmTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(seed)
    config = EsmConfig(vocab_size=rows or len(vocab), pad_token_id=tokenizer.pad_token_id,
                       mask_token_id=tokenizer.mask_token_id, max_position_embeddings=128,
                       position_embedding_type="absolute", **SMALL)
    EsmForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def gene_symbols(table: Path) -> list[str]:
    """The feature columns of a real expression table (``patient_id`` first)."""
    return [c for c in pd.read_csv(table, nrows=0).columns if c != "patient_id"]


def gene_bert(folder: Path, genes: list[str], *, seed: int = 0) -> Path:
    """A BertForMaskedLM whose BertTokenizer vocabulary is BERT's specials plus ``genes``."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    quiet()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = [*BERT_SPECIALS, *genes]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=False)
    torch.manual_seed(seed)
    BertForMaskedLM(BertConfig(vocab_size=len(vocab), max_position_embeddings=256, **SMALL)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load() -> ModuleType:
    """This module, for a test file."""
    spec = importlib.util.spec_from_file_location("hf_models", Path(__file__))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""The ``hf`` encoder against the models' own outputs: biossl's instance embedding equals what transformers
computes on the same input (a real H&E tile, real promoter DNA, real TCGA expression profiles), to 1e-5.

The models are tiny, randomly initialised and written by the test with ``save_pretrained`` (no downloads).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")

from biossl.data.sequence import encode, read_sequences  # noqa: E402
from biossl.encoders import ENCODERS  # noqa: E402
from biossl.encoders.hf import HFGeneModel, HFImageModel, HFSequenceModel  # noqa: E402
from biossl.errors import InputError  # noqa: E402

spec = importlib.util.spec_from_file_location("hf_models", Path(__file__).with_name("hf_models.py"))
assert spec is not None and spec.loader is not None
hf_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hf_models)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, demo_cohort: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    genes = hf_models.gene_symbols(demo_cohort / "expression.csv")
    return {"vit": hf_models.vit(root / "vit"), "esm": hf_models.esm(root / "esm"),
            "bert": hf_models.gene_bert(root / "bert", genes[:200] + hf_models.FOREIGN_GENES),
            "genes": root}  # type: ignore[dict-item]


def _tile(fixtures: Path, size: int = 32) -> np.ndarray:
    import openslide

    with openslide.OpenSlide(str(fixtures / "wsi" / "he_small.svs")) as slide:
        w, h = slide.dimensions
        return np.array(slide.read_region((w // 2, h // 2), 0, (size, size)).convert("RGB"))


def test_vit_embedding_is_the_models_cls_token_on_the_processors_pixels(models: dict[str, Path],
                                                                        fixtures: Path) -> None:
    from PIL import Image
    from transformers import AutoImageProcessor, ViTModel

    tiles = [_tile(fixtures), _tile(fixtures)[::-1].copy()]
    processor = AutoImageProcessor.from_pretrained(str(models["vit"]), local_files_only=True)
    pixels = processor(images=[Image.fromarray(t) for t in tiles], return_tensors="pt")["pixel_values"]
    model = ViTModel.from_pretrained(str(models["vit"]), local_files_only=True).eval()
    with torch.no_grad():
        reference = model(pixel_values=pixels).last_hidden_state[:, 0]
    encoder = ENCODERS.build("hf", path=str(models["vit"]), img_size=32).eval()
    assert isinstance(encoder, HFImageModel) and encoder.embed_dim == 32 and encoder.img_size == (32, 32)
    x = torch.stack([torch.from_numpy(t).permute(2, 0, 1) for t in tiles]).float() / 255.0  # as biossl's tiles
    with torch.no_grad():
        assert torch.allclose(encoder.pixel_values(x), pixels, atol=1e-5)
        assert torch.allclose(encoder.embed(x), reference, atol=1e-5)


def test_esm_embedding_is_the_mean_of_its_hidden_states_over_real_tokens(models: dict[str, Path],
                                                                         demo_cohort: Path) -> None:
    from transformers import AutoTokenizer, EsmForMaskedLM

    records = read_sequences(demo_cohort / "sequences" / "DEMO-01.fasta")
    texts = [records[0].sequence[:40], records[1].sequence[:25]]  # two lengths: padding in the batch
    tokenizer = AutoTokenizer.from_pretrained(str(models["esm"]), local_files_only=True)
    model = EsmForMaskedLM.from_pretrained(str(models["esm"]), local_files_only=True).eval()
    reference = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding at all
            ids = tokenizer(text, return_tensors="pt")
            reference.append(model(**ids, output_hidden_states=True).hidden_states[-1][0].mean(dim=0))
    x = torch.zeros((2, 40), dtype=torch.long)  # biossl's window ids, PAD (0) after the shorter one
    for i, text in enumerate(texts):
        x[i, : len(text)] = torch.from_numpy(encode(text))
    encoder = ENCODERS.build("hf", path=str(models["esm"]), max_len=40).eval()
    assert isinstance(encoder, HFSequenceModel) and encoder.texts(x) == texts
    with torch.no_grad():
        assert torch.allclose(encoder.embed(x), torch.stack(reference), atol=1e-5)


def _rank_value_ids(tokenizer: object, genes: list[str], row: np.ndarray, max_length: int) -> list[int]:
    """Geneformer's rank-value encoding written out: expressed genes of the vocabulary, highest value first."""
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    expressed = [(g, v) for g, v in zip(genes, row) if g in vocab and v > 0]
    ranked = [g for g, _ in sorted(expressed, key=lambda gv: -gv[1])][: max_length - 2]
    return [vocab["[CLS]"], *(vocab[g] for g in ranked), vocab["[SEP]"]]


def test_gene_model_embedding_is_the_cls_state_of_the_ranked_genes(models: dict[str, Path], demo_cohort: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoTokenizer, BertForMaskedLM

    table = pd.read_csv(demo_cohort / "expression.csv", index_col="patient_id")
    genes = list(table.columns)
    rows = table.to_numpy(dtype=np.float32)[:4]
    tokenizer = AutoTokenizer.from_pretrained(str(models["bert"]), local_files_only=True)
    model = BertForMaskedLM.from_pretrained(str(models["bert"]), local_files_only=True).eval()
    reference = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([_rank_value_ids(tokenizer, genes, row, 64)])
            reference.append(model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, 0])
    with caplog.at_level(logging.WARNING, logger="biossl.encoders.hf"):
        encoder = ENCODERS.build("hf", path=str(models["bert"]), genes=genes, n_genes=len(genes), max_length=64)
    assert isinstance(encoder, HFGeneModel)
    assert "56 of the table's 256 genes are not in the model's vocabulary" in caplog.text  # reported once, at build
    encoder.eval()
    ids, attention = encoder.input_ids(torch.from_numpy(rows), None)
    assert ids[0, : attention[0].sum()].tolist() == _rank_value_ids(tokenizer, genes, rows[0], 64)
    with torch.no_grad():
        assert torch.allclose(encoder.embed(torch.from_numpy(rows)), torch.stack(reference), atol=1e-5)
    # An unmeasured gene (gene_mask False) is left out whatever its value.
    top = int(np.nanargmax(np.where([g in tokenizer.get_vocab() for g in genes], rows[0], -np.inf)))
    mask = torch.ones(rows.shape, dtype=torch.bool)
    mask[0, top] = False
    masked_ids, _ = encoder.input_ids(torch.from_numpy(rows), mask)
    assert tokenizer.get_vocab()[genes[top]] not in masked_ids[0].tolist()


def test_freeze_keeps_weights_fixed_and_dropout_off(models: dict[str, Path]) -> None:
    frozen = ENCODERS.build("hf", path=str(models["esm"]), freeze=True)
    frozen.train()
    assert not frozen.model.training and not any(p.requires_grad for p in frozen.parameters())
    x = torch.randint(1, 6, (3, 20))
    assert float(frozen.masked_loss(x)) == 0.0 and not frozen.embed(x).requires_grad
    adapted = ENCODERS.build("hf", path=str(models["esm"]))
    loss = adapted.masked_loss(x)
    loss.backward()
    assert float(loss.detach()) > 0 and adapted.model.esm.embeddings.word_embeddings.weight.grad is not None


def test_export_writes_a_folder_transformers_loads_with_the_same_outputs(models: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    encoder = ENCODERS.build("hf", path=str(models["esm"])).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01)  # "adapted"
    encoder.export_pretrained(tmp_path / "out")
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {f.name for f in (tmp_path / "out").iterdir()}
    again = ENCODERS.build("hf", path=str(tmp_path / "out")).eval()
    x = torch.randint(1, 6, (2, 16))
    with torch.no_grad():
        assert torch.allclose(again.embed(x), encoder.embed(x), atol=1e-6)
    assert AutoTokenizer.from_pretrained(str(tmp_path / "out"), local_files_only=True)("ACGT")["input_ids"]
    assert AutoModel.from_pretrained(str(tmp_path / "out"), local_files_only=True) is not None
    vit = ENCODERS.build("hf", path=str(models["vit"]))
    vit.export_pretrained(tmp_path / "vit")
    processor = json.loads((tmp_path / "vit" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.485, 0.456, 0.406]
    with pytest.raises(InputError, match="not an empty folder"):
        vit.export_pretrained(tmp_path / "vit")
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("case", ["missing", "no_config", "garbage", "vocab", "no_tokenizer", "size"])
def test_bad_folders_are_one_line_input_errors(case: str, models: dict[str, Path], tmp_path: Path) -> None:
    options: dict[str, object] = {"path": str(tmp_path / "m")}
    folder = tmp_path / "m"
    if case == "no_config":
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"\0" * 10)
    elif case == "garbage":
        folder.mkdir()
        (folder / "config.json").write_text("{not json")
    elif case == "vocab":  # a tokenizer of 14 tokens for a model of 10 rows
        hf_models.esm(folder, vocab=[*hf_models.ESM_VOCAB, "R", "Y", "S", "W"], rows=len(hf_models.ESM_VOCAB))
    elif case == "no_tokenizer":
        hf_models.esm(folder)
        for f in ("vocab.txt", "tokenizer_config.json"):
            (folder / f).unlink()
    elif case == "size":
        options.update(path=str(models["vit"]), img_size=64)
    message = {"missing": "not found (moved or deleted?)", "no_config": "no config.json",
               "garbage": "not a readable model config", "vocab": "tokenizer has 14 tokens but the model's embedding "
               "has 10 rows", "no_tokenizer": "its tokenizer does not load",
               "size": "reads 32 px images but the tiles are 64 px; set data.spec.tile_px: 32"}[case]
    with pytest.raises(InputError, match=re.escape(message)) as err:
        ENCODERS.build("hf", **options)
    assert "\n" not in str(err.value)


def test_without_transformers_the_encoder_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                               models: dict[str, Path]) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(InputError, match=r'pip install "biossl\[hf\]"'):
        ENCODERS.build("hf", path=str(models["esm"]))


def test_tiles_of_another_size_at_run_time_are_one_line(models: dict[str, Path]) -> None:
    encoder = ENCODERS.build("hf", path=str(models["vit"]))  # no tile size given: checked on the first tiles
    with pytest.raises(InputError, match=re.escape("reads 32 px images but the tiles are 64 px")):
        encoder.embed(torch.rand(2, 3, 64, 64))

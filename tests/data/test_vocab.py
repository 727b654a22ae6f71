from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from biossl.data.expression import read_expression
from biossl.data.vocab import GeneVocabulary
from biossl.errors import ExpressionError


@pytest.fixture()
def kirc(fixtures: Path) -> ad.AnnData:
    return read_expression(fixtures / "expression" / "tcga_kirc_extract.csv")


def test_save_load_roundtrip_is_atomic_json(kirc: ad.AnnData, tmp_path: Path) -> None:
    vocab = GeneVocabulary.from_adata(kirc)
    assert len(vocab) == 200 and vocab.genes == tuple(kirc.var_names)
    path = tmp_path / "out" / "genes.json"
    vocab.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["genes.json"]  # no temp file left
    assert json.loads(path.read_text())["genes"][:2] == ["AAK1", "AATK"]
    loaded = GeneVocabulary.load(path)
    assert loaded == vocab and loaded.index("AATK") == 1 and "AAK1" in loaded


def test_from_adata_top_variance_keeps_table_order(kirc: ad.AnnData) -> None:
    vocab = GeneVocabulary.from_adata(kirc, n_top_genes=10)
    var = np.asarray(kirc.X, dtype=np.float64).var(axis=0)
    expected = set(np.asarray(kirc.var_names)[np.argsort(-var)[:10]])
    assert set(vocab.genes) == expected
    order = [list(kirc.var_names).index(g) for g in vocab.genes]
    assert order == sorted(order)


def test_align_masks_missing_and_drops_extra(kirc: ad.AnnData, caplog: pytest.LogCaptureFixture) -> None:
    genes = list(kirc.var_names)
    vocab = GeneVocabulary([*genes[:150], "NOT_IN_TABLE"])
    table = kirc[:, genes[100:200][::-1]].copy()  # other order, 100 genes
    with caplog.at_level(logging.INFO, logger="biossl.data.vocab"):
        out = vocab.align(table)
    assert out.x.dtype == np.float32 and out.x.shape == (20, 151)
    assert out.gene_mask.dtype == bool
    assert out.gene_mask.tolist() == [False] * 100 + [True] * 50 + [False]
    assert out.missing == [*genes[:100], "NOT_IN_TABLE"]
    assert out.extra == genes[150:200][::-1]
    assert not out.x[:, ~out.gene_mask].any()
    np.testing.assert_array_equal(out.x[:, 100:150], kirc[:, genes[100:150]].X)
    assert out.patient_ids == list(kirc.obs["patient_id"])
    assert "101 of 151 vocabulary genes missing" in caplog.text
    assert "50 table genes not in the vocabulary dropped" in caplog.text


@pytest.mark.parametrize(
    ("genes", "pattern"),
    [([], "empty"), (["TP53", "EGFR", "TP53"], r"duplicate genes: \['TP53'\]"), (["TP53", " "], "blank")],
)
def test_bad_vocabularies(genes: list[str], pattern: str) -> None:
    with pytest.raises(ExpressionError, match=pattern):
        GeneVocabulary(genes)


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ExpressionError, match="not found"):
        GeneVocabulary.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ExpressionError, match="bad.json: cannot read"):
        GeneVocabulary.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"genes": ["TP53"]}))
    with pytest.raises(ExpressionError, match="not a biossl gene vocabulary"):
        GeneVocabulary.load(tmp_path / "other.json")


@pytest.mark.shared
def test_align_another_cohort(shared_data: Path) -> None:
    tcga = shared_data / "tcga_porpoise"
    kirc = read_expression(tcga / "tcga_kirc_all_clean.csv.zip")
    blca = read_expression(tcga / "tcga_blca_all_clean.csv.zip")
    vocab = GeneVocabulary.from_adata(kirc)
    out = vocab.align(blca)
    shared = sorted(set(kirc.var_names) & set(blca.var_names))
    assert int(out.gene_mask.sum()) == len(shared) and 0 < len(shared) < len(vocab)
    assert len(out.missing) == len(vocab) - len(shared)
    assert len(out.extra) == blca.n_vars - len(shared)
    gene = shared[0]
    np.testing.assert_array_equal(out.x[:, vocab.index(gene)], blca[:, gene].X[:, 0])

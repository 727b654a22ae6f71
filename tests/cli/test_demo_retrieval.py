"""``biossl demo``'s retrieval step: cross-modal retrieval between the demo's real table pairs, never a crash.

Inputs: a one-step pretraining of tiny encoders on the demo cohort's three tables (expression, cnv, mut: the
same TCGA case's) and its embeddings; the ``embedded`` fixture (tests/conftest.py) has one table only.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from biossl.cli import main
from biossl.commands.demo import table_modalities, table_retrieval

TABLES_PRETRAIN = """\
seed_everything: 0
trainer: {max_steps: 1, enable_model_summary: false, enable_progress_bar: false}
model:
  modalities:
    expression: {encoder: expression/transformer, embed_dim: 16, depth: 1}
    cnv: {encoder: table/mlp, embed_dim: 16, depth: 1}
    mut: {encoder: table/mlp, embed_dim: 16, depth: 1}
  embed_dim: 16
  warmup_steps: 1
data:
  batch_size: 12
  spec: {profiles: 1}
"""
KEYS = ["X_cnv", "X_expression", "X_mut"]


@pytest.fixture(scope="module")
def table_embeddings(tmp_path_factory: pytest.TempPathFactory, demo_cohort: Path) -> Path:
    """``biossl embed`` of the demo cohort from a one-step pretraining of its three tables."""
    root = tmp_path_factory.mktemp("tables")
    (root / "tables.yaml").write_text(TABLES_PRETRAIN)
    manifest = str(demo_cohort / "manifest.csv")
    assert main(["pretrain", "--config", str(root / "tables.yaml"), "--data.manifest", manifest,
                 "--data.work_dir", str(root / "work"), "--trainer.default_root_dir", str(root / "run")]) == 0
    out = root / "tables.h5ad"
    assert main(["embed", "--checkpoint", str(root / "run" / "checkpoints" / "last.ckpt"), "--manifest", manifest,
                 "--work-dir", str(root / "work"), "--out", str(out)]) == 0
    return out


def test_the_demo_table_modalities_come_from_the_kind_column(demo_cohort: Path) -> None:
    assert table_modalities(demo_cohort / "manifest.csv") == ["cnv", "expression", "mut"]


def test_retrieval_between_the_demo_tables_prints_every_ordered_pair(
        table_embeddings: Path, demo_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obsm = ["X_fused", *KEYS]
    assert table_retrieval(table_embeddings, obsm, demo_cohort / "manifest.csv", tmp_path) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "retrieval.json").is_file() and (tmp_path / "retrieval.png").is_file()
    assert f"--keys {','.join(KEYS)} " in out and "X_fused" not in out.split("--keys")[1].split()[0]
    lines = out.splitlines()
    for query, target in itertools.permutations(KEYS, 2):
        assert any(query in line and target in line and line.index(query) < line.index(target) for line in lines
                   if "biossl retrieval" not in line), (query, target, out)
    assert "memorisation check, not held-out evidence" in out


def test_fewer_than_two_table_embeddings_is_no_retrieval(
        embedded: Path, demo_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The four-modality checkpoint of conftest embeds one table (expression): nothing to compare, exit 0."""
    obsm = ["X_fused", "X_wsi", "X_volume", "X_expression", "X_sequence"]
    assert table_retrieval(embedded, obsm, demo_cohort / "manifest.csv", tmp_path) == 0
    assert "no retrieval" in capsys.readouterr().out
    assert not (tmp_path / "retrieval.json").exists()


def test_a_failed_retrieval_is_printed_and_the_demo_goes_on(
        embedded: Path, table_embeddings: Path, demo_cohort: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Bad input (keys the embeddings lack): the verb's one-line error, its exit code 2, no file.
    obsm = ["X_expression", "X_cnv", "X_mut"]  # as if present; `embedded` has X_expression only
    assert table_retrieval(embedded, obsm, demo_cohort / "manifest.csv", tmp_path) == 2
    captured = capsys.readouterr()
    assert "retrieval exit code 2" in captured.out and "Traceback" not in captured.err
    assert not (tmp_path / "retrieval.json").exists()

    # An unexpected error of the verb: one printed line, exit code 1, no traceback, no file.
    from biossl.commands import retrieval

    def broken(args: object) -> int:
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(retrieval, "run", broken)
    assert table_retrieval(table_embeddings, KEYS, demo_cohort / "manifest.csv", tmp_path) == 1
    out = capsys.readouterr().out
    assert "retrieval failed (RuntimeError: something unexpected)" in out
    assert not (tmp_path / "retrieval.json").exists()

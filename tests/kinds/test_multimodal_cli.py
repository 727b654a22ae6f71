"""Named modalities of any kind, end to end through the CLI, on a small real cohort.

``tests/fixtures/multimodal``: 16 TCGA-BLCA patients of 4 tissue source sites with three tables (``rna``
continuous z-scores, ``cnv`` categorical GISTIC calls, ``mut`` binary calls; 3 patients have no CNV) and
two MRI modalities (``t1``, ``t2``: two real MONAI scans, each given to some patients). The manifest names
each modality's kind and value type. ``biossl cohort`` → ``pretrain`` → ``embed`` → ``audit`` →
``finetune`` must run on it with the names the user chose, and bad kinds, value types and names must
stop with exit code 2 and a line naming the row or the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from biossl.cli import main

REPO = Path(__file__).resolve().parents[2]
COHORT = REPO / "tests" / "fixtures" / "multimodal"
MANIFEST = COHORT / "manifest.csv"
CONFIG = REPO / "configs" / "pretrain" / "multimodal_tiny.yaml"
NAMES = ("t1", "t2", "rna", "cnv", "mut")
#: Patients per modality, as the fixture's README says.
COUNTS = {"t1": 8, "t2": 12, "rna": 16, "cnv": 13, "mut": 16}
FAST_AUDIT = ["--permutations", "99", "--folds", "2"]


def _cli(argv: list[str]) -> int:
    """``biossl.cli.main``'s exit code (jsonargparse exits through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _pretrain(config: Path, manifest: Path, root: Path, *extra: str) -> int:
    return _cli(["pretrain", "--config", str(config), "--data.manifest", str(manifest),
                 "--data.work_dir", str(root / "work"), "--trainer.default_root_dir", str(root / "run"), *extra])


def _manifest() -> pd.DataFrame:
    return pd.read_csv(MANIFEST, dtype=str, keep_default_na=False)


def _write(df: pd.DataFrame, folder: Path, name: str = "manifest.csv") -> Path:
    """Write a manifest variant into ``folder``, its paths made absolute (the fixture's are relative)."""
    df = df.copy()
    df["path"] = [str((COHORT / p).resolve()) for p in df["path"]]
    path = folder / name
    df.to_csv(path, index=False)
    return path


def _row(df: pd.DataFrame, mask: pd.Series) -> int:
    """The spreadsheet row (header = 1) of the first row where ``mask`` holds."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 2


def _line(err: str, *words: str) -> str:
    """The one stderr line holding all ``words`` (fails, showing stderr, if none does)."""
    hits = [line for line in err.splitlines() if all(w in line for w in words)]
    assert hits, f"no line of stderr holds {words}:\n{err}"
    return hits[0]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a 4-step tiny pretraining on the multimodal cohort (``run/``, ``work/``)."""
    root = tmp_path_factory.mktemp("multimodal")
    assert _pretrain(CONFIG, MANIFEST, root) == 0
    return root


@pytest.fixture(scope="module")
def embedded(pretrained: Path) -> Path:
    """``biossl embed`` of the cohort, with its labels, from the ``pretrained`` checkpoint."""
    out = pretrained / "multimodal.h5ad"
    code = _cli(["embed", "--checkpoint", str(pretrained / "run" / "checkpoints" / "last.ckpt"),
                 "--manifest", str(MANIFEST), "--labels", str(COHORT / "labels.csv"),
                 "--work-dir", str(pretrained / "work"), "--out", str(out)])
    assert code == 0
    return out


# -- the capability ---------------------------------------------------------------------------------------
def test_cohort_validates_the_named_modalities(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["cohort", str(MANIFEST)]) == 0
    out = capsys.readouterr().out
    assert "16 patients, 65 files" in out
    for name, n in COUNTS.items():  # a line per modality: its name, (its kind,) its patients
        line = _line(out, f"  {name} ", " patients")
        assert line.split(" patients")[0].split()[-1] == str(n), line


@pytest.mark.integration
def test_pretrain_logs_a_clip_loss_per_named_pair(pretrained: Path) -> None:
    metrics = pd.read_csv(pretrained / "run" / "metrics.csv")
    clip = [c for c in metrics.columns if c.startswith("train/clip/")]
    pairs = {frozenset(c.removeprefix("train/clip/").split("-")) for c in clip}
    assert pairs and all(p <= set(NAMES) and len(p) == 2 for p in pairs), clip
    # Every patient has rna and mut, and most have cnv: these pairs are scored at every step.
    assert {frozenset({"rna", "mut"}), frozenset({"rna", "cnv"}), frozenset({"cnv", "mut"})} <= pairs, clip
    # A scan with a table: at least one of t1/t2 meets rna in some batch of 8 of the 16 patients.
    assert any(p & {"t1", "t2"} and "rna" in p for p in pairs), clip
    for name in NAMES:
        assert f"train/masked/{name}" in metrics.columns, (name, list(metrics.columns))
    assert np.isfinite(metrics["train/loss"].dropna()).all()
    # The value types reach the masked losses: cross-entropy over cnv's 5 GISTIC calls and BCE on mut's 0/1
    # start near ln 5 and ln 2 (an untrained head); MSE on the raw values would not.
    first = metrics.dropna(subset=["train/masked/cnv"]).iloc[0]
    assert abs(first["train/masked/cnv"] - np.log(5)) < 0.25 and abs(first["train/masked/mut"] - np.log(2)) < 0.15
    assert (pretrained / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.integration
def test_embed_writes_one_embedding_per_named_modality(embedded: Path) -> None:
    adata = ad.read_h5ad(embedded)
    manifest = _manifest()
    assert sorted(adata.obs_names) == sorted(manifest["patient_id"].unique())
    for name in NAMES:
        has = np.isin(adata.obs_names, manifest.loc[manifest["modality"] == name, "patient_id"])
        assert adata.obs[f"has_{name}"].astype(bool).tolist() == has.tolist(), name
        x = adata.obsm[f"X_{name}"]
        assert x.shape == (16, 32), name
        assert np.isnan(x[~has]).all() and np.isfinite(x[has]).all(), name
        assert int(has.sum()) == COUNTS[name], name
    assert np.isfinite(adata.obsm["X_fused"]).all()
    site = manifest.groupby("patient_id")["site"].first()
    assert adata.obs["site"].astype(str).tolist() == site.loc[adata.obs_names].tolist()
    assert "time" in adata.obs and "event" in adata.obs


def test_embed_refuses_a_name_whose_kind_differs_from_the_checkpoint(pretrained: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``t1`` was a volume in pretraining; a manifest whose ``t1`` rows are the rna table must not be embedded."""
    df = _manifest()
    df = df[df["modality"] != "t1"].copy()
    df.loc[df["modality"] == "rna", "modality"] = "t1"
    out = tmp_path / "e.h5ad"
    code = _cli(["embed", "--checkpoint", str(pretrained / "run" / "checkpoints" / "last.ckpt"), "--manifest",
                 str(_write(df, tmp_path)), "--work-dir", str(pretrained / "work"), "--out", str(out)])
    assert code == 2
    _line(capsys.readouterr().err, "t1", "table", "volume")
    assert not out.exists()


def test_embed_refuses_a_value_type_that_differs_from_the_checkpoint(pretrained: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    df = _manifest()
    df.loc[df["modality"] == "cnv", "value_type"] = "continuous"
    out = tmp_path / "e.h5ad"
    code = _cli(["embed", "--checkpoint", str(pretrained / "run" / "checkpoints" / "last.ckpt"), "--manifest",
                 str(_write(df, tmp_path)), "--work-dir", str(pretrained / "work"), "--out", str(out)])
    assert code == 2
    _line(capsys.readouterr().err, "cnv", "continuous", "categorical")
    assert not out.exists()


@pytest.mark.integration
def test_audit_probes_site_on_every_named_embedding(embedded: Path, tmp_path: Path) -> None:
    code = _cli(["audit", "--embeddings", str(embedded), "--columns", "site", *FAST_AUDIT, "--out", str(tmp_path)])
    result = json.loads((tmp_path / "audit.json").read_text())
    assert code == {"pass": 0, "fail": 1, "incomplete": 3}[result["verdict"]]
    assert {k["key"] for k in result["keys"]} == {"X_fused", *(f"X_{n}" for n in NAMES)}
    fused = next(k for k in result["keys"] if k["key"] == "X_fused")
    assert fused["columns"]["site"]["n_rows"] == 16 and len(fused["columns"]["site"]["classes"]) == 4
    assert (tmp_path / "report.html").is_file()


@pytest.mark.integration
@pytest.mark.parametrize(("key", "n"), [("X_rna", 16), ("X_cnv", 13)])
def test_finetune_survival_on_one_named_embedding(embedded: Path, tmp_path: Path, key: str, n: int) -> None:
    out = tmp_path / "r.json"
    code = _cli(["finetune", "--embeddings", str(embedded), "--embedding", key, "--labels",
                 str(COHORT / "labels.csv"), "--task", "survival", "--folds", "3", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n_patients"] == n
    assert all(0 <= f["c_index"] <= 1 for f in result["methods"]["linear_probe"]["folds"])


@pytest.mark.integration
def test_kinds_and_value_types_from_the_config(tmp_path: Path) -> None:
    """A manifest without kind / value_type columns: ``data.kinds`` and ``data.value_types`` give them."""
    _write(_manifest().drop(columns=["kind", "value_type"]), tmp_path)
    config = CONFIG.read_text().replace("max_steps: 4", "max_steps: 1") + (
        "  kinds: {t1: volume, t2: volume, rna: table, cnv: table, mut: table}\n"
        "  value_types: {rna: continuous, cnv: categorical, mut: binary}\n")
    (tmp_path / "tiny.yaml").write_text(config)
    assert _pretrain(tmp_path / "tiny.yaml", tmp_path / "manifest.csv", tmp_path) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


# -- bad inputs: exit 2, a line naming the row or the key --------------------------------------------------
def test_unknown_kind_names_the_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = _manifest()
    bad = df["modality"] == "t1"
    df.loc[bad.idxmax(), "kind"] = "scan"
    assert _cli(["cohort", str(_write(df, tmp_path))]) == 2
    _line(capsys.readouterr().err, f"row {_row(df, bad)}", "'scan'", "t1")


def test_one_name_with_two_kinds_names_both_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = _manifest()
    first = _row(df, df["modality"] == "t1")
    extra = pd.DataFrame([{"patient_id": df["patient_id"].iloc[1], "modality": "t1", "path": "rna.csv",
                           "kind": "table", "value_type": "continuous", "site": df["site"].iloc[1]}])
    df = pd.concat([df, extra], ignore_index=True)
    assert _cli(["cohort", str(_write(df, tmp_path))]) == 2
    line = _line(capsys.readouterr().err, f"row {len(df) + 1}", "'t1'")
    assert f"row {first}" in line and "volume" in line and "table" in line


@pytest.mark.parametrize(("modality", "declared", "words"), [
    ("rna", "counts", ("rna.csv", "counts", "negative")),
    ("cnv", "binary", ("cnv.csv", "binary", "0/1")),
])
def test_values_that_break_the_declared_value_type(tmp_path: Path, capsys: pytest.CaptureFixture[str], modality: str,
                                                   declared: str, words: tuple[str, ...]) -> None:
    df = _manifest()
    rows = df["modality"] == modality
    df.loc[rows, "value_type"] = declared
    assert _cli(["cohort", str(_write(df, tmp_path))]) == 2
    _line(capsys.readouterr().err, f"row {_row(df, rows)}", *words)


@pytest.mark.parametrize(("modality", "value_type", "words"), [
    ("rna", "ordinal", ("unknown value_type 'ordinal'", "counts")),
    ("t1", "continuous", ("'continuous'", "table modalities", "volume")),
])
def test_a_value_type_cell_that_cannot_be(tmp_path: Path, capsys: pytest.CaptureFixture[str], modality: str,
                                          value_type: str, words: tuple[str, ...]) -> None:
    df = _manifest()
    rows = df["modality"] == modality
    df.loc[rows.idxmax(), "value_type"] = value_type
    assert _cli(["cohort", str(_write(df, tmp_path))]) == 2
    _line(capsys.readouterr().err, f"row {_row(df, rows)}", *words)


def test_value_type_from_the_config_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _write(_manifest().drop(columns=["value_type"]), tmp_path)
    config = CONFIG.read_text() + "  value_types: {rna: counts, cnv: categorical, mut: binary}\n"
    (tmp_path / "tiny.yaml").write_text(config)
    assert _pretrain(tmp_path / "tiny.yaml", manifest, tmp_path) == 2
    _line(capsys.readouterr().err, "rna.csv", "counts", "negative")
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(("extra", "words"), [
    ("  kinds: {t1: scan}\n", ("'scan'", "t1")),
    ("  kinds: {t1: table}\n", ("t1", "table", "volume")),
    ("  value_types: {rna: binary}\n", ("rna", "binary", "continuous")),
])
def test_config_kinds_that_contradict_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str,
                                                   words: tuple[str, ...]) -> None:
    (tmp_path / "tiny.yaml").write_text(CONFIG.read_text().replace("max_steps: 4", "max_steps: 1") + extra)
    assert _pretrain(tmp_path / "tiny.yaml", MANIFEST, tmp_path) == 2
    _line(capsys.readouterr().err, *words)


def test_config_modality_missing_from_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = CONFIG.read_text().replace(
        "    mut: {encoder: table/mlp, embed_dim: 32, depth: 1}\n",
        "    mut: {encoder: table/mlp, embed_dim: 32, depth: 1}\n"
        "    methylation: {encoder: table/mlp, embed_dim: 32, depth: 1}\n")
    assert "methylation" in config
    (tmp_path / "tiny.yaml").write_text(config)
    assert _pretrain(tmp_path / "tiny.yaml", MANIFEST, tmp_path) == 2
    _line(capsys.readouterr().err, "'methylation'", "model.modalities")
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_a_modality_with_no_kind_names_the_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ct`` is no legacy name: with no ``kind`` column (or an empty cell) and no ``data.kinds`` it has no kind."""
    scan = str((COHORT / "../volume/anatomical.nii").resolve())
    rows = pd.DataFrame({"patient_id": ["P1", "P1"], "modality": ["volume", "ct"], "path": [scan, scan]})
    rows.to_csv(tmp_path / "no_column.csv", index=False)
    assert _cli(["cohort", str(tmp_path / "no_column.csv")]) == 2
    _line(capsys.readouterr().err, "row 3", "'ct'", "kind")
    df = _manifest()
    extra = pd.DataFrame([{"patient_id": df["patient_id"].iloc[0], "modality": "ct", "path": "../volume/anatomical.nii",
                           "kind": "", "value_type": "", "site": df["site"].iloc[0]}])
    df = pd.concat([df, extra], ignore_index=True)
    assert _cli(["cohort", str(_write(df, tmp_path))]) == 2
    _line(capsys.readouterr().err, f"row {len(df) + 1}", "'ct'", "kind")


# -- several embeddings, several tables, retrieval (issue 14) ----------------------------------------------
@pytest.mark.integration
def test_finetune_probes_several_keys_and_files_on_the_same_folds(embedded: Path, tmp_path: Path) -> None:
    """Two ``--embeddings NAME=H5AD`` and ``--embedding KEY,NAME:KEY``: a probe per (file, key), one set of folds."""
    out = tmp_path / "r.json"
    code = _cli(["finetune", f"--embeddings=a={embedded}", f"--embeddings=b={embedded}",
                 "--embedding", "X_rna,b:X_cnv", "--labels", str(COHORT / "labels.csv"), "--task", "survival",
                 "--folds", "3", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"linear_probe:a:X_rna", "linear_probe:b:X_rna", "linear_probe:b:X_cnv"}
    assert result["n_patients"] == COUNTS["cnv"]  # the patients every probed embedding has
    same = [result["methods"][f"linear_probe:{n}:X_rna"]["summary"]["c_index"]["mean"] for n in "ab"]
    assert same[0] == same[1]  # the same file and key: the same folds give the same numbers
    assert [e["name"] for e in result["inputs"]["embeddings"]] == ["a", "b"]


@pytest.mark.integration
def test_finetune_baselines_on_several_tables(tmp_path: Path) -> None:
    """Repeated ``--baseline-features``: a PCA per table side by side, and the ridge on all of them (early fusion)."""
    out = tmp_path / "r.json"
    tables = [f"--baseline-features={COHORT / f'{m}.csv'}" for m in ("rna", "cnv", "mut")]
    code = _cli(["finetune", "--labels", str(COHORT / "labels.csv"), "--task", "survival", "--folds", "3",
                 *tables, "--baseline-components", "4,2,2", "--baseline-l2", "1", "--unknown-labels", "drop",
                 "--out", str(out)])
    assert code == 0  # 3 labelled patients have no CNV: dropped with a warning, as --unknown-labels drop says
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"pca4+2+2_cox", "linear_all_cox"}
    assert '"blocks": [40, 30, 30]' in json.dumps(result["methods"]["pca4+2+2_cox"])
    assert result["n_patients"] == COUNTS["cnv"]  # patients in every table


@pytest.mark.parametrize(("extra", "words"), [
    (["--baseline-components", "4,2"], ["--baseline-components", "one per"]),
    (["--embeddings", "x={emb}", "--embedding", "z:X_rna"], ["['z'] name no --embeddings"]),
    (["--embeddings", "x={emb}", "--embeddings", "x={emb}"], ["repeat"]),
    (["--embeddings", "{emb}", "--max-tiles", "4"], ["--max-tiles applies to", "biossl embed"]),
    (["--embeddings", "{emb}", "--embedding", "X_rna,X_cnv", "--mode", "probe,finetune", "--checkpoint", "c.ckpt",
      "--manifest", "m.csv"], ["train one embedding"]),
])
def test_finetune_several_inputs_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                             words: list[str]) -> None:
    tables = [f"--baseline-features={COHORT / f'{m}.csv'}" for m in ("rna", "cnv", "mut")]
    emb = tmp_path / "x.h5ad"
    ad.AnnData(obs=pd.DataFrame(index=["p1", "p2"]), obsm={"X_rna": np.zeros((2, 2))}).write_h5ad(emb)
    extra = [a.format(emb=emb) for a in extra]
    code = _cli(["finetune", "--labels", str(COHORT / "labels.csv"), "--task", "survival", "--folds", "3",
                 *tables, *extra, "--out", str(tmp_path / "r.json")])
    assert code == 2
    _line(capsys.readouterr().err, *words)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.integration
def test_retrieval_between_the_named_tables(embedded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "ret.json", tmp_path / "ret.png"
    assert _cli(["retrieval", "--embeddings", str(embedded), "--keys", "X_rna,X_cnv,X_mut", "--out", str(out),
                 "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    pairs = {(p["query"], p["target"]): p for p in result["pairs"]}
    assert len(pairs) == 6
    assert pairs[("X_rna", "X_cnv")]["n"] == COUNTS["cnv"] and pairs[("X_rna", "X_mut")]["n"] == COUNTS["mut"]
    for p in pairs.values():
        assert 0 <= p["recall"]["1"] <= p["recall"]["10"] <= 1
        assert p["chance"]["10"] == min(10, p["n"]) / p["n"]
    assert png.stat().st_size > 0
    assert "X_rna | X_cnv | 13" in capsys.readouterr().out
    # --patients: only those patients are candidates
    some = pd.read_csv(COHORT / "labels.csv")["patient_id"][:8]
    pd.DataFrame({"patient_id": some}).to_csv(tmp_path / "held.csv", index=False)
    assert _cli(["retrieval", "--embeddings", str(embedded), "--keys", "X_rna,X_mut", "--patients",
                 str(tmp_path / "held.csv"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {p["n"] for p in result["pairs"]} == {8}
    assert set(result["pairs"][0]["patients"]) == set(some)


@pytest.mark.integration
@pytest.mark.parametrize(("argv", "words"), [
    (["--keys", "X_rna,X_methylation"], ["X_methylation", "--keys"]),
    (["--keys", "X_rna"], ["two or more"]),
    (["--patients", "{nocol}"], ["no column", "--id-column"]),
    (["--patients", "{unknown}"], ["none of its", "patients"]),
    (["--k", "0,5"], ["--k"]),
])
def test_retrieval_bad_input(embedded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                             words: list[str]) -> None:
    pd.DataFrame({"case": ["TCGA-XF-A8HB"]}).to_csv(tmp_path / "nocol.csv", index=False)
    pd.DataFrame({"patient_id": ["NOBODY-1", "NOBODY-2"]}).to_csv(tmp_path / "unknown.csv", index=False)
    argv = [a.format(nocol=tmp_path / "nocol.csv", unknown=tmp_path / "unknown.csv") for a in argv]
    out = tmp_path / "ret.json"
    assert _cli(["retrieval", "--embeddings", str(embedded), *argv, "--out", str(out)]) == 2
    _line(capsys.readouterr().err, *words)
    assert not out.exists()


@pytest.mark.integration
def test_demo_retrieval_finds_tables_whose_kinds_the_config_gave(embedded: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's retrieval step reads the kinds the embeddings record, not the manifest's kind column."""
    from biossl.commands.demo import table_retrieval

    assert ad.read_h5ad(embedded).uns["biossl"]["kinds"] == {
        "t1": "volume", "t2": "volume", "rna": "table", "cnv": "table", "mut": "table"}
    bare = _write(_manifest().drop(columns=["kind", "value_type"]), tmp_path)  # kinds only in a config
    keys = list(ad.read_h5ad(embedded).obsm.keys())
    assert table_retrieval(embedded, keys, bare, tmp_path) == 0
    assert "no retrieval" not in capsys.readouterr().out
    assert sorted(json.loads((tmp_path / "retrieval.json").read_text())["keys"]) == ["X_cnv", "X_mut", "X_rna"]


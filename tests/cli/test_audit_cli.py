"""``biossl audit`` end to end: exit codes 0 / 1 / 2, files written, the verdict table printed.

Inputs: the demo cohort's embeddings (``embedded`` / ``pretrained`` fixtures of ``tests/conftest.py``) and
real profiles from scanpy's bundled ``pbmc68k_reduced`` with pseudo-sites, with and without a site signature.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from biossl.cli import main
from biossl.downstream.embed import write_embeddings

FAST = ["--permutations", "99", "--folds", "2"]


def _pbmc(tmp: Path, delta: float, name: str) -> Path:
    """300 real cells as patients, 3 pseudo-sites, a signature of ``delta`` sd on 50 genes of site 0."""
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()[:300]
    x = np.asarray(pbmc.X, dtype=np.float64)
    rng = np.random.default_rng(3)
    site = rng.permutation(300) % 3
    genes = rng.choice(x.shape[1], 50, replace=False)
    x[np.ix_(site == 0, genes)] += delta * x[:, genes].std(0)
    xc = x - x.mean(0)
    emb = (xc @ np.linalg.svd(xc, full_matrices=False)[2][:16].T).astype(np.float32)
    obs = pd.DataFrame({"site": [f"S{s}" for s in site], "one_class": "x", "empty": np.nan,
                        "subtype": pbmc.obs["bulk_labels"].astype(str).to_numpy()},
                       index=pd.Index([f"P{i:03d}" for i in range(300)], name="patient_id"))
    adata = ad.AnnData(X=emb, obs=obs)
    adata.obsm["X_fused"] = emb
    path = tmp / f"{name}.h5ad"
    write_embeddings(adata, path)
    return path


@pytest.fixture(scope="module")
def signature(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pbmc(tmp_path_factory.mktemp("audit"), 1.0, "signature")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pbmc(tmp_path_factory.mktemp("audit"), 0.0, "clean")


def test_a_site_signature_exits_1_and_clean_embeddings_exit_0(signature: Path, clean: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", "--embeddings", str(signature), "--columns", "site", "--label", "subtype",
                 "--permutations", "199", "--out", str(tmp_path / "sig")])
    out = capsys.readouterr().out
    assert code == 1
    assert "audit verdict: FAIL" in out and "site" in out and "subtype" in out
    result = json.loads((tmp_path / "sig" / "audit.json").read_text())
    assert result["verdict"] == "fail" and result["keys"][0]["columns"]["site"]["failed_probes"]
    assert (tmp_path / "sig" / "report.html").stat().st_size > 10_000
    code = main(["audit", "--embeddings", str(clean), "--columns", "site", "--permutations", "199",
                 "--out", str(tmp_path / "clean")])
    out = capsys.readouterr().out
    assert code == 0 and "audit verdict: PASS" in out
    # --max-excess 0 makes any significant signal fail; a tolerant threshold lets the signature pass.
    code = main(["audit", "--embeddings", str(signature), "--columns", "site", "--permutations", "199",
                 "--max-excess", "0.5", "--out", str(tmp_path / "tolerant")])
    assert code == 0


@pytest.mark.integration
def test_audit_of_the_demo_embeddings(embedded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", "--embeddings", str(embedded), "--columns", "site", "--label", "subtype", *FAST,
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "audit.json").read_text())
    assert code == (1 if result["verdict"] == "fail" else 0)
    assert [k["key"] for k in result["keys"]] == ["X_fused", "X_wsi", "X_volume", "X_expression", "X_sequence"]
    fused = result["keys"][0]
    # Sites with at least 2 patients: A3, B0, BP (3 each), 2Z, CJ, P4 (2 each).
    assert fused["columns"]["site"]["n_rows"] == 15 and len(fused["columns"]["site"]["classes"]) == 6
    assert fused["columns"]["site"]["dropped_classes"]["SX"] == 1
    assert fused["columns"]["subtype"]["verdict"] == "label"
    assert result["keys"][3]["dropped_no_embedding"] == 3  # 21 of 24 patients have expression
    assert "X_fused" in out and "audit verdict:" in out and "null mean" in out
    # The kNN probe on a few patients sits below 1 / classes by chance: the table shows its null mean beside it.
    knn = next(v for v in result["verdicts"] if v["key"] == "X_fused" and v["column"] == "site" and v["probe"] == "knn")
    assert knn["null_mean"] is not None and knn["null_mean"] < knn["chance"]


@pytest.mark.integration
def test_audit_from_a_checkpoint_and_manifest(pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path) -> None:
    checkpoint, work = pretrained
    code = main(["audit", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--labels", str(demo_cohort / "labels.csv"), "--work-dir", str(work), "--columns", "site",
                 "--label", "subtype", "--keys", "X_fused", *FAST, "--out", str(tmp_path)])
    result = json.loads((tmp_path / "audit.json").read_text())
    assert code in (0, 1) and code == (1 if result["verdict"] == "fail" else 0)
    assert result["input"]["provenance"]["checkpoint"] == "last.ckpt"
    assert [k["key"] for k in result["keys"]] == ["X_fused"]


@pytest.mark.integration
def test_audit_with_synthetic_artifacts_draws_their_curves(pretrained: tuple[Path, Path], demo_cohort: Path,
                                                           embedded: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from biossl.downstream import embed
    from biossl.encoders.patient import PatientEncoder

    opened = {"checkpoint": 0, "cohort": 0}
    load, open_cohort = PatientEncoder.from_checkpoint.__func__, embed.open_cohort

    def counting_load(cls: type, *args: object, **kwargs: object) -> object:
        opened["checkpoint"] += 1
        return load(cls, *args, **kwargs)

    def counting_open(*args: object, **kwargs: object) -> object:
        opened["cohort"] += 1
        return open_cohort(*args, **kwargs)

    monkeypatch.setattr(PatientEncoder, "from_checkpoint", classmethod(counting_load))
    monkeypatch.setattr(embed, "open_cohort", counting_open)
    checkpoint, work = pretrained
    code = main(["audit", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--labels", str(demo_cohort / "labels.csv"), "--work-dir", str(work), "--columns", "site",
                 "--label", "subtype", "--keys", "X_fused", *FAST, "--artifacts", "--out", str(tmp_path)])
    assert code in (0, 1)
    result = json.loads((tmp_path / "audit.json").read_text())
    records = result["artifacts"]
    assert records and {"modality", "artifact", "strength", "drift", "detectability", "stability"} <= set(records[0])
    assert {r["modality"] for r in records} == {"wsi", "volume", "expression", "sequence"}
    page = (tmp_path / "report.html").read_text()
    assert "drift by artifact strength" not in page  # (a matplotlib title: drawn in the PNG, not in the HTML)
    assert page.count('alt="drift curves ') == 4 and "not run" not in page
    # The checkpoint is loaded and the cohort opened once, for the embeddings and the artifact probes.
    assert opened == {"checkpoint": 1, "cohort": 1}
    # Auditing the same embeddings from `biossl embed` opens the cohort for the probes only: the same records.
    out = tmp_path / "from_embeddings"
    assert main(["audit", "--embeddings", str(embedded), "--checkpoint", str(checkpoint), "--manifest",
                 str(demo_cohort / "manifest.csv"), "--work-dir", str(work), "--columns", "site", "--label", "subtype",
                 "--keys", "X_fused", *FAST, "--artifacts", "--out", str(out)]) in (0, 1)
    assert opened == {"checkpoint": 2, "cohort": 2}
    assert json.loads((out / "audit.json").read_text())["artifacts"] == records


def test_artifacts_need_a_checkpoint(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--embeddings", str(clean), "--columns", "site", "--artifacts", "--out", str(tmp_path)]) == 2
    assert "--artifacts corrupts the cohort's inputs" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--columns", "hospital"], "column 'hospital' is not in the obs of"),
    (["--columns", "one_class"], "column 'one_class' of"),
    (["--columns", "empty"], "column 'empty' of"),
    (["--columns", "site", "--keys", "X_wsi"], "embedding 'X_wsi' is not in the obsm"),
    (["--columns", "site", "--folds", "301"], "300 patients, fewer than --folds 301"),
    (["--columns", "site", "--permutations", "10"], "--permutations 10 cannot reach --alpha 0.05"),
    (["--columns", "site", "--label", "site"], "--label 'site' is also in --columns"),
])
def test_bad_input_exits_2_with_one_line(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         argv: list[str], message: str) -> None:
    code = main(["audit", "--embeddings", str(clean), *argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("biossl audit: error: ") and message in err
    assert not (tmp_path / "audit.json").exists()


def test_bad_input_messages_say_what_to_do(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--embeddings", str(clean), "--columns", "hospital", "--out", str(tmp_path)]) == 2
    assert "available columns: site, one_class, empty, subtype" in capsys.readouterr().err
    assert main(["audit", "--embeddings", str(clean), "--columns", "one_class", "--out", str(tmp_path)]) == 2
    assert "a probe needs 2" in capsys.readouterr().err
    assert main(["audit", "--embeddings", str(clean), "--columns", "empty", "--out", str(tmp_path)]) == 2
    assert "has no value on any of its 300 rows" in capsys.readouterr().err
    assert main(["audit", "--columns", "site", "--out", str(tmp_path)]) == 2
    assert "give either --embeddings" in capsys.readouterr().err
    missing = tmp_path / "nope.h5ad"
    assert main(["audit", "--embeddings", str(missing), "--columns", "site", "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_labels_join_embeddings_that_lack_them(clean: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    obs = ad.read_h5ad(clean).obs
    labels = pd.DataFrame({"patient_id": obs.index, "grade": ["G1", "G2", "G3"] * 100})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    code = main(["audit", "--embeddings", str(clean), "--labels", str(tmp_path / "labels.csv"), "--columns", "site",
                 "--label", "grade", *FAST, "--out", str(tmp_path / "a")])
    assert code == 0
    result = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert "grade" in json.dumps(result["keys"][0])
    # A labels column that contradicts the embeddings' obs is an error, not a silent overwrite.
    pd.DataFrame({"patient_id": obs.index, "site": "S9"}).to_csv(tmp_path / "bad.csv", index=False)
    code = main(["audit", "--embeddings", str(clean), "--labels", str(tmp_path / "bad.csv"), "--columns", "site",
                 *FAST, "--out", str(tmp_path / "b")])
    assert code == 2 and "column 'site' is already in" in capsys.readouterr().err

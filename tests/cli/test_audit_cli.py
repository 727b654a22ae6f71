"""``biossl audit`` end to end: exit codes 0 / 1 / 2 / 3, files written, the verdict table printed.

Inputs: the demo cohort's embeddings (``embedded`` / ``pretrained`` fixtures of ``tests/conftest.py``) and
real profiles from scanpy's bundled ``pbmc68k_reduced`` with pseudo-sites, with and without a site signature.
Exit code 3 (``incomplete``): some embedding/column pair could not be tested and nothing fails.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
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
    # site cannot be tested on X_wsi (8 patients) nor X_volume (10): never a PASS, INCOMPLETE unless a probe fails.
    assert result["verdict"] in ("fail", "incomplete") and code == {"fail": 1, "incomplete": 3}[result["verdict"]]
    assert result["exit_code"] == code
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


# -- INCOMPLETE, power, margin over the permutation null, provenance (issue 16) -------------------------------------
def _verdict_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("audit verdict: "))


def _with_site_signature(embedded: Path, out: Path, strength: float, seed: int = 0) -> Path:
    """The demo embeddings with ``X_fused`` shifted along one random direction per site (``strength`` x its sd)."""
    adata = ad.read_h5ad(embedded)
    x = np.asarray(adata.obsm["X_fused"], dtype=np.float64)
    rng = np.random.default_rng(seed)
    direction = {s: rng.normal(size=x.shape[1]) for s in sorted(adata.obs["site"].unique())}
    adata.obsm["X_fused"] = x + strength * x.std() * np.stack([direction[s] for s in adata.obs["site"]])
    adata.write_h5ad(out)
    return out


@pytest.mark.integration
def test_untested_embeddings_make_the_demo_audit_incomplete_exit_3(embedded: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before: PASS (exit 0) although site could not be tested on 2 of the 5 embeddings."""
    code = main(["audit", "--embeddings", str(embedded), "--columns", "site", "--label", "subtype", "--folds", "2",
                 "--permutations", "199", "--out", str(tmp_path / "all")])
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "all" / "audit.json").read_text())
    assert code == 3 and result["verdict"] == "incomplete" and result["exit_code"] == 3
    assert _verdict_line(out).startswith("audit verdict: INCOMPLETE (2 of 5 embedding/column pair(s) not tested: "
                                         "site on X_wsi, site on X_volume; no tested column fails")
    untested = {(n["key"], n["column"]): n for n in result["not_tested"]}
    assert set(untested) == {("X_wsi", "site"), ("X_volume", "site")}
    assert all(n["affects_verdict"] and n["reason"] and "--keys" in n["what_to_do"] for n in untested.values())
    assert "not tested: site on X_wsi: column 'site' of X_wsi" in out and "  what to do: 8 row(s) have X_wsi" in out
    assert result["suggested_keys"] == ["X_fused", "X_expression", "X_sequence"]
    page = (tmp_path / "all" / "report.html").read_text()
    assert "Verdict: INCOMPLETE.</b> 2 of 5 embedding/column pair(s) could not be tested" in page
    assert page.count('<li class="not-tested">') == 2 and "<i>What to do:</i>" in page
    assert '<span class="badge incomplete">INCOMPLETE</span>' in page
    # What the verdict suggests: the testable keys alone get a PASS or a FAIL.
    code = main(["audit", "--embeddings", str(embedded), "--columns", "site", "--folds", "2", "--permutations", "199",
                 "--keys", ",".join(result["suggested_keys"]), "--out", str(tmp_path / "testable")])
    assert code in (0, 1) and not json.loads((tmp_path / "testable" / "audit.json").read_text())["not_tested"]


@pytest.mark.integration
def test_a_failing_column_beats_incomplete(embedded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emb = _with_site_signature(embedded, tmp_path / "sig.h5ad", 0.5)
    code = main(["audit", "--embeddings", str(emb), "--columns", "site", "--folds", "2", "--k", "2",
                 "--permutations", "199", "--out", str(tmp_path / "a")])
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert code == 1 and result["verdict"] == "fail" and result["exit_code"] == 1
    assert len(result["not_tested"]) == 2  # still listed
    assert result["keys"][0]["columns"]["site"]["verdict"] == "fail"
    assert "audit verdict: FAIL" in out and "not tested: site on X_wsi" in out


@pytest.mark.integration
def test_the_verdict_measures_the_excess_over_the_permutation_null(embedded: Path, tmp_path: Path) -> None:
    """A kNN signal 0.11 above 1/6 but 0.2 above its permutation null (0.06): it fails a 0.15 margin.

    Before (margin over 1 / values): 0.11 < 0.15, the audit passed.
    """
    emb = _with_site_signature(embedded, tmp_path / "sig.h5ad", 0.5)
    code = main(["audit", "--embeddings", str(emb), "--columns", "site", "--keys", "X_fused", "--folds", "2",
                 "--k", "5", "--permutations", "999", "--max-excess", "0.15", "--out", str(tmp_path / "a")])
    result = json.loads((tmp_path / "a" / "audit.json").read_text())
    knn = result["keys"][0]["columns"]["site"]["knn"]
    assert knn["null_mean"] < knn["chance"] - 0.05  # the kNN null sits far below 1 / values on 15 patients
    assert knn["excess_over_chance"] == pytest.approx(knn["balanced_accuracy"] - knn["chance"])
    assert knn["excess"] == knn["excess_over_null"] == pytest.approx(knn["balanced_accuracy"] - knn["null_mean"])
    assert knn["excess_over_chance"] < 0.15 < knn["excess"] and 2 * knn["p_value"] < 0.05
    assert code == 1 and result["verdict"] == "fail" and knn["verdict"] == "fail"
    row = next(v for v in result["verdicts"] if v["probe"] == "knn")
    assert row["excess"] == knn["excess"] and row["excess_over_chance"] == knn["excess_over_chance"]


@pytest.mark.parametrize("case", ["all-NaN key", "no value on the key's rows"])
def test_a_key_or_column_untestable_on_one_key_is_incomplete(case: str, clean: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    adata = ad.read_h5ad(clean)
    part = np.asarray(adata.obsm["X_fused"], dtype=np.float64).copy()
    if case == "all-NaN key":
        part[:] = np.nan
        columns = "site"
    else:  # scanner recorded only for the rows that lack the modality
        part[:150] = np.nan
        adata.obs["scanner"] = np.where(np.arange(300) < 150, np.array(["AT2", "GT450"])[np.arange(300) % 2], None)
        columns = "site,scanner"
    adata.obsm["X_part"] = part
    path = tmp_path / "e.h5ad"
    adata.write_h5ad(path)
    code = main(["audit", "--embeddings", str(path), "--columns", columns, *FAST, "--out", str(tmp_path / "a")])
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert code == 3 and result["verdict"] == "incomplete"
    untested = [(n["key"], n["column"]) for n in result["not_tested"]]
    if case == "all-NaN key":
        assert untested == [("X_part", "site")] and "leave X_part out of --keys" in out
        assert result["keys"][1]["status"] == "not tested"
    else:
        assert untested == [("X_part", "scanner")] and "fill in the column" in out
        assert result["keys"][1]["status"] == "partly tested"
    assert result["suggested_keys"] == ["X_fused"]


def test_the_power_statement_grows_as_the_cohort_shrinks(clean: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    adata = ad.read_h5ad(clean)
    small = tmp_path / "small.h5ad"
    adata[:30].copy().write_h5ad(small)
    mde = {}
    for name, path in (("300", clean), ("30", small)):
        code = main(["audit", "--embeddings", str(path), "--columns", "site", "--permutations", "199", "--folds", "3",
                     "--out", str(tmp_path / name)])
        out = capsys.readouterr().out
        result = json.loads((tmp_path / name / "audit.json").read_text())
        entry = result["keys"][0]["columns"]["site"]
        assert code == 0 and result["verdict"] == "pass"
        for probe in ("linear", "knn"):
            p = entry[probe]
            assert p["min_detectable_excess"] == pytest.approx(p["null_critical"] - p["null_mean"])
            assert p["min_detectable_excess"] > 0
        assert entry["min_detectable_excess"] == min(entry[p]["min_detectable_excess"] for p in ("linear", "knn"))
        assert result["power"]["columns"][0]["min_detectable_excess"] == entry["min_detectable_excess"]
        mde[name] = entry["min_detectable_excess"]
        page = (tmp_path / name / "report.html").read_text()
        assert f"the audit could only detect an excess of at least {mde[name]:.2f}" in page
        if name == "300":  # 300 patients: an excess of 0.1 is detectable
            assert mde[name] < 0.1 and not entry["underpowered"] and not result["power"]["underpowered"]
            assert _verdict_line(out).startswith("audit verdict: PASS (")
        else:  # 30 patients: a PASS means little, and says so
            assert mde[name] > 0.1 and entry["underpowered"] and result["power"]["underpowered"]
            assert _verdict_line(out).startswith("audit verdict: PASS, UNDERPOWERED (1 tested column(s)")
            assert f"power: site on X_fused (30 patients, 3 classes) can detect only an excess >= {mde[name]:.2f}" \
                in out
            assert "this test is underpowered" in page and "<b>Underpowered:</b>" in page
    assert mde["30"] > mde["300"]


def test_the_report_and_json_carry_command_date_version_and_checkpoint_hash(clean: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from biossl import __version__

    # The embeddings name their checkpoint; when that file lies beside them, the audit hashes it.
    adata = ad.read_h5ad(clean)
    adata.uns["biossl"] = {"checkpoint": "last.ckpt", "biossl_version": __version__}
    folder = tmp_path / "run"
    folder.mkdir()
    adata.write_h5ad(folder / "emb.h5ad")
    (folder / "last.ckpt").write_bytes(b"weights " * 1000)
    argv = ["audit", "--embeddings", str(folder / "emb.h5ad"), "--columns", "site", *FAST, "--out", str(tmp_path / "a")]
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/biossl", *argv])
    assert main(argv) == 0
    run = json.loads((tmp_path / "a" / "audit.json").read_text())["run"]
    assert run["command"] == "biossl " + " ".join(argv)
    assert run["date_utc"].endswith("Z") and run["date_utc"][:2] == "20" and run["biossl_version"] == __version__
    assert run["checkpoint"]["sha256"] == hashlib.sha256(b"weights " * 1000).hexdigest()
    assert run["checkpoint"]["name"] == "last.ckpt"
    assert run["checkpoint"]["path"] == str((folder / "last.ckpt").resolve())
    page = (tmp_path / "a" / "report.html").read_text()
    for field, value in (("command", run["command"]), ("date (UTC)", run["date_utc"]),
                         ("checkpoint SHA-256", run["checkpoint"]["sha256"])):
        assert f'<tr data-field="{field}"><th>{field}</th><td>{value}</td></tr>' in page
    # Without the file: what the provenance holds, and why there is no hash.
    (folder / "last.ckpt").unlink()
    assert main(argv) == 0
    ckpt = json.loads((tmp_path / "a" / "audit.json").read_text())["run"]["checkpoint"]
    assert ckpt["name"] == "last.ckpt" and ckpt["sha256"] is None and "not hashed" in ckpt["origin"]


@pytest.mark.integration
def test_audit_from_a_checkpoint_records_its_sha256(pretrained: tuple[Path, Path], demo_cohort: Path,
                                                    tmp_path: Path) -> None:
    checkpoint, work = pretrained
    copy = tmp_path / "model.ckpt"
    shutil.copyfile(checkpoint, copy)
    code = main(["audit", "--checkpoint", str(copy), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--labels", str(demo_cohort / "labels.csv"), "--work-dir", str(work), "--columns", "site",
                 "--keys", "X_fused", *FAST, "--out", str(tmp_path / "a")])
    assert code in (0, 1)
    run = json.loads((tmp_path / "a" / "audit.json").read_text())["run"]
    assert run["checkpoint"]["sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()


def test_the_probes_show_a_progress_bar(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from biossl.progress import set_progress

    set_progress(True)
    try:
        assert main(["audit", "--embeddings", str(clean), "--columns", "site", "--label", "subtype", *FAST,
                     "--out", str(tmp_path)]) == 0
    finally:
        set_progress(None)
    err = capsys.readouterr().err
    assert "audit: " in err and "/2 " in err and "column/s" in err  # 2 columns (site, subtype) x 1 key

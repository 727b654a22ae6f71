"""The public Python API (``biossl.embed``, ``evaluate``, ``audit``, ``retrieval``, ``patients_with``).

Pins the public names, and checks on the real demo cohort (``pretrained`` / ``embedded`` fixtures of
``tests/conftest.py``) that each call returns what the matching verb writes for the same inputs.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import biossl
from biossl.cli import main
from biossl.errors import InputError

PUBLIC = ["__version__", "audit", "embed", "evaluate", "patients_with", "retrieval"]
FAST = ["--permutations", "99", "--folds", "2"]


def test_the_public_names_are_pinned_callable_and_documented_with_an_example() -> None:
    assert biossl.__all__ == PUBLIC
    for name in PUBLIC[1:]:
        obj = getattr(biossl, name)
        assert callable(obj), name
        doc = inspect.getdoc(obj) or ""
        assert "Examples:" in doc and f"biossl.{name}(" in doc, f"biossl.{name} lacks a docstring with an example"
        assert inspect.signature(obj).parameters, name  # a real signature (biossl.audit: the function's)
    importlib.import_module("biossl.audit.run")
    assert biossl.audit.run.__name__ == "biossl.audit.run"  # and still the package of the audit modules
    assert callable(biossl.audit)


def test_import_biossl_is_light() -> None:
    code = ("import sys, biossl; assert 'torch' not in sys.modules, 'import biossl'; "
            "biossl.evaluate, biossl.audit, biossl.embed; assert 'torch' not in sys.modules, 'biossl.<name>'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.integration
def test_embed_equals_the_verb(pretrained: tuple[Path, Path], embedded: Path, demo_cohort: Path,
                               tmp_path: Path) -> None:
    checkpoint, work = pretrained
    labels = pd.read_csv(demo_cohort / "labels.csv")
    adata = biossl.embed(checkpoint, demo_cohort / "manifest.csv", labels=labels, work_dir=work,
                         out=tmp_path / "api.h5ad")
    cli = ad.read_h5ad(embedded)
    assert list(adata.obs_names) == list(cli.obs_names)
    assert set(adata.obsm) == set(cli.obsm)
    for key in cli.obsm:
        assert np.allclose(adata.obsm[key], cli.obsm[key], equal_nan=True, atol=1e-6), key
    assert adata.obs["subtype"].astype(str).tolist() == cli.obs["subtype"].astype(str).tolist()
    assert np.array_equal(ad.read_h5ad(tmp_path / "api.h5ad").obsm["X_fused"], adata.obsm["X_fused"])
    with pytest.raises(InputError, match="--max-tiles"):
        biossl.embed(checkpoint, demo_cohort / "manifest.csv", max_tiles=0)


@pytest.mark.integration
def test_evaluate_equals_the_finetune_json(embedded: Path, demo_cohort: Path, tmp_path: Path) -> None:
    labels = demo_cohort / "labels.csv"
    args = ["--embeddings", str(embedded), "--labels", str(labels), "--task", "subtype", "--label-column", "subtype",
            "--folds", "3", "--embedding", "X_fused,X_expression",
            "--baseline-features", str(demo_cohort / "expression.csv")]
    assert main(["finetune", *args, "--out", str(tmp_path / "cli.json")]) == 0
    written = json.loads((tmp_path / "cli.json").read_text())
    result = biossl.evaluate(embedded, labels, task="subtype", label_column="subtype", folds=3,
                             keys=["X_fused", "X_expression"], baseline_features=demo_cohort / "expression.csv",
                             out=tmp_path / "api.json")
    assert result == written
    assert json.loads((tmp_path / "api.json").read_text()) == written
    # An AnnData in memory and a labels DataFrame give the same scores (only the inputs' names differ).
    again = biossl.evaluate(ad.read_h5ad(embedded), pd.read_csv(labels), task="subtype", label_column="subtype",
                            folds=3, keys="X_fused,X_expression", baseline_features=[demo_cohort / "expression.csv"])
    assert again["methods"] == written["methods"] and again["folds"] == written["folds"]
    with pytest.raises(InputError, match="label-column"):
        biossl.evaluate(embedded, labels, task="subtype")


def _stable(result: dict[str, Any]) -> Any:
    """The audit result without what differs between two runs (timings, the command line and date)."""
    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in ("seconds", "run", "source")}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj
    return strip(result)


@pytest.mark.integration
def test_audit_equals_the_verb(embedded: Path, demo_cohort: Path, tmp_path: Path) -> None:
    code = main(["audit", "--embeddings", str(embedded), "--columns", "site", "--label", "subtype", *FAST,
                 "--out", str(tmp_path / "cli")])
    written = json.loads((tmp_path / "cli" / "audit.json").read_text())
    adata = ad.read_h5ad(embedded)
    result = biossl.audit(adata, ["site"], label="subtype", n_permutations=99, n_folds=2, out=tmp_path / "api")
    assert _stable(result) == _stable(written)
    assert (tmp_path / "api" / "report.html").is_file()
    from biossl.audit.run import exit_code

    assert exit_code(result) == code
    # Labels join a copy: the caller's AnnData is left as it was.
    labels = pd.read_csv(demo_cohort / "labels.csv").rename(columns={"subtype": "kind"})[["patient_id", "kind"]]
    joined = biossl.audit(adata, "site", label="kind", labels=labels, n_permutations=99, n_folds=2)
    assert "kind" not in adata.obs.columns and joined["label"] == "kind"


@pytest.mark.integration
def test_audit_from_a_checkpoint_embeds_on_the_given_device(pretrained: tuple[Path, Path], demo_cohort: Path) -> None:
    checkpoint, work = pretrained
    # The device is resolved before the checkpoint is read: a bad one fails with its name.
    with pytest.raises(InputError, match="not-a-device"):
        biossl.audit(None, "site", checkpoint=checkpoint, manifest=demo_cohort / "manifest.csv", work_dir=work,
                     device="not-a-device")
    result = biossl.audit(None, "site", checkpoint=checkpoint, manifest=demo_cohort / "manifest.csv", work_dir=work,
                          device="cpu", keys="X_fused", n_permutations=99, n_folds=2)
    assert [k["key"] for k in result["keys"]] == ["X_fused"]


@pytest.mark.integration
def test_retrieval_equals_the_verb(embedded: Path, tmp_path: Path) -> None:
    assert main(["retrieval", "--embeddings", str(embedded), "--k", "1,5", "--out", str(tmp_path / "cli.json")]) == 0
    written = json.loads((tmp_path / "cli.json").read_text())
    assert biossl.retrieval(embedded, k=[5, 1]) == written
    some = list(ad.read_h5ad(embedded).obs_names[:12])
    assert all(p["n"] <= 12 for p in biossl.retrieval(embedded, patients=some, k=1)["pairs"])


@pytest.mark.integration
def test_patients_with_gives_scanpy_the_patients_of_a_modality(embedded: Path) -> None:
    import scanpy as sc

    adata = ad.read_h5ad(embedded)
    with pytest.raises(ValueError):  # NaN rows of the patients without slides
        sc.pp.neighbors(adata.copy(), use_rep="X_wsi", n_neighbors=5)
    wsi = biossl.patients_with(adata, "wsi")
    assert wsi.n_obs == int(adata.obs["has_wsi"].sum()) == 8
    assert np.isfinite(wsi.obsm["X_wsi"]).all()
    sc.pp.neighbors(wsi, use_rep="X_wsi", n_neighbors=5)
    assert wsi.obsp["connectivities"].shape == (8, 8)
    assert "connectivities" not in adata.obsp  # a copy: the caller's AnnData is untouched
    assert list(biossl.patients_with(adata, "X_wsi").obs_names) == list(wsi.obs_names)
    assert biossl.patients_with(adata, "fused").n_obs == adata.n_obs
    with pytest.raises(InputError, match=r"'rna'.*available: .*expression.*wsi"):
        biossl.patients_with(adata, "rna")

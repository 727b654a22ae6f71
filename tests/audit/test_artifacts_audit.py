"""The synthetic-artifact audit on the demo cohort with the tiny pretraining checkpoint of ``tests/conftest.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from biossl.audit.artifacts import artifact_audit_from_checkpoint, detectability
from biossl.errors import InputError

STRENGTHS = (0.0, 0.25, 0.5, 1.0)
#: Artifacts whose change scales with the strength by construction (linear, or nested draws).
GROWING = {"wsi": ("blur", "stain", "pen", "fold"), "volume": ("noise", "ghosting"),
           "expression": ("library_size", "batch_shift"), "sequence": ("n_runs",)}


@pytest.fixture(scope="module")
def records(pretrained: tuple[Path, Path], demo_cohort: Path) -> list[dict[str, Any]]:
    checkpoint, work = pretrained
    return artifact_audit_from_checkpoint(checkpoint, demo_cohort / "manifest.csv", labels=demo_cohort / "labels.csv",
                                          work_dir=work, strengths=STRENGTHS)


def _by(records: list[dict[str, Any]]) -> dict[tuple[str, str, float], dict[str, Any]]:
    return {(r["modality"], r["artifact"], r["strength"]): r for r in records}


def test_records_cover_every_modality_artifact_and_strength(records: list[dict[str, Any]]) -> None:
    from biossl.transforms.artifacts import ARTIFACTS

    expected = [(m, a, s) for m in ("wsi", "volume", "expression", "sequence") for a in ARTIFACTS[m] for s in STRENGTHS]
    assert [(r["modality"], r["artifact"], r["strength"]) for r in records] == expected
    n = {r["modality"]: r["n_patients"] for r in records}
    assert n == {"wsi": 8, "volume": 10, "expression": 21, "sequence": 16}  # the demo README's counts
    assert json.loads(json.dumps(records, allow_nan=False)) == records  # JSON-safe, no NaN
    for r in records:
        assert {"drift", "detectability", "stability", "parameter", "drift_q90"} <= set(r)
        assert r["n_labelled"] == r["n_patients"]  # every demo patient has a subtype


def test_strength_zero_changes_nothing(records: list[dict[str, Any]]) -> None:
    for r in records:
        if r["strength"] == 0:
            assert r["drift"] == 0.0 and r["drift_q90"] == 0.0, r
            assert r["detectability"] == 0.5, r  # identical embeddings: exactly chance
            assert r["stability"] == 1.0 and r["accuracy_corrupted"] == r["accuracy_clean"], r
            assert r["parameter"] == "none"


def test_drift_grows_with_strength_and_strong_signatures_are_detected(records: list[dict[str, Any]]) -> None:
    by = _by(records)
    for m, names in GROWING.items():
        for a in names:
            drift = [by[(m, a, s)]["drift"] for s in STRENGTHS]
            assert drift[0] == 0 < drift[1] < drift[2] < drift[3], (m, a, drift)
    for r in records:
        if r["strength"] > 0:
            assert r["drift"] > 0 and 0.0 <= r["detectability"] <= 1.0 and 0.0 <= r["stability"] <= 1.0, r
    # A site-like signature (one direction for every patient) at full strength is found by a linear probe.
    assert by[("expression", "batch_shift", 1.0)]["detectability"] >= 0.8
    assert by[("wsi", "stain", 1.0)]["detectability"] >= 0.8
    # Shifting every gene by 2 z-units moves a profile further than the typical distance to another patient.
    assert by[("expression", "library_size", 1.0)]["drift"] > 1.0


def test_selected_artifacts_and_batch_size_do_not_change_the_records(records: list[dict[str, Any]],
                                                                     pretrained: tuple[Path, Path],
                                                                     demo_cohort: Path) -> None:
    # A patient's corruption depends on (seed, modality, artifact, patient, strength) only.
    checkpoint, work = pretrained
    subset = artifact_audit_from_checkpoint(checkpoint, demo_cohort / "manifest.csv", work_dir=work,
                                            modalities=["wsi", "expression"], artifacts=["pen", "batch_shift"],
                                            strengths=(0.5,), batch_size=3)
    by = _by(records)
    assert [(r["modality"], r["artifact"]) for r in subset] == [("wsi", "pen"), ("expression", "batch_shift")]
    for r in subset:
        full = by[(r["modality"], r["artifact"], 0.5)]
        assert math.isclose(r["drift"], full["drift"], rel_tol=1e-4), (r, full)
        assert math.isclose(r["detectability"], full["detectability"], abs_tol=1e-6)
        assert r["stability"] is None and "no labels" in r["stability_note"]


def test_bad_requests_are_input_errors(pretrained: tuple[Path, Path], demo_cohort: Path) -> None:
    checkpoint, work = pretrained
    manifest = demo_cohort / "manifest.csv"
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        artifact_audit_from_checkpoint(checkpoint, manifest, work_dir=work, strengths=(2.0,))
    with pytest.raises(InputError, match="unknown artifact.*slide: blur"):
        artifact_audit_from_checkpoint(checkpoint, manifest, work_dir=work, artifacts=["smudge"])
    with pytest.raises(InputError, match="no column 'grade'"):
        artifact_audit_from_checkpoint(checkpoint, manifest, work_dir=work, labels=demo_cohort / "labels.csv",
                                       label_column="grade")


def test_detectability_of_real_embedding_shifts(embedded: Path) -> None:
    import anndata as ad

    x = ad.read_h5ad(embedded).obsm["X_expression"]
    x = x[np.isfinite(x).all(1)]
    assert detectability(x, x.copy()) == 0.5
    rng = np.random.default_rng(0)
    direction = rng.normal(size=x.shape[1])
    spread = float(np.median(np.linalg.norm(x - x.mean(0), axis=1)))
    shifted = x + 0.5 * spread * direction / np.linalg.norm(direction)  # half a typical patient's distance
    assert detectability(x, shifted) > 0.9
    shuffled = x[rng.permutation(len(x))]  # other patients' clean embeddings: nothing systematic to find
    assert detectability(x, shuffled) < 0.75

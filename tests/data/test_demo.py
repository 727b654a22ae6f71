"""The bundled demo cohort is what its README says: real files, missing modalities, shared pairs."""

from __future__ import annotations

import itertools

import pandas as pd

from biossl import keys
from biossl.data.cohort import Cohort
from biossl.data.demo import DEMO_DIR, DEMO_LABELS, DEMO_MANIFEST


def test_demo_cohort_validates_with_real_readers() -> None:
    cohort = Cohort.from_manifest(DEMO_MANIFEST)  # probes every file with its modality's reader
    assert len(cohort.patients) == 24
    counts = cohort.table.groupby(keys.MODALITY)[keys.PATIENT_ID].nunique().to_dict()
    assert counts == {"expression": 21, "sequence": 16, "volume": 10, "wsi": 8}
    per_patient = [len(cohort.modalities_of(p)) for p in cohort.patients]
    assert min(per_patient) >= 1 and max(per_patient) == 4
    assert sum(n < 4 for n in per_patient) >= 12, "many patients must lack a modality"


def test_every_pair_of_modalities_shares_patients() -> None:
    m = pd.read_csv(DEMO_MANIFEST)
    sets = m.groupby("modality")["patient_id"].agg(set)
    for a, b in itertools.combinations(keys.MODALITIES, 2):
        assert len(sets[a] & sets[b]) >= 2, (a, b)


def test_labels_cover_every_patient_with_subtype_and_survival() -> None:
    labels = pd.read_csv(DEMO_LABELS)
    manifest = pd.read_csv(DEMO_MANIFEST)
    assert set(labels["patient_id"]) == set(manifest["patient_id"])
    assert set(labels["subtype"]) == {"CCRCC", "PRCC"}
    assert (labels["time"] > 0).all() and set(labels["event"]) <= {0, 1} and labels["event"].sum() > 0
    assert manifest.groupby("patient_id")["site"].nunique().max() == 1


def test_demo_is_small() -> None:
    total = sum(f.stat().st_size for f in DEMO_DIR.rglob("*") if f.is_file())
    assert total < 20 * 1024 * 1024

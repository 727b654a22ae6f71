"""Patient bags on the bundled (real) demo cohort: layout, masks, reproducible draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from biossl import keys
from biossl.data.bags import BagSampler, BagSpec, PatientBagDataset, collate_bags
from biossl.data.cohort import Cohort
from biossl.data.demo import DEMO_MANIFEST
from biossl.data.tiling import tile_slides

SPEC = BagSpec(tiles=3, tile_px=32, patches=1, patch_size=(16, 16, 16), windows=2, window_length=32)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cohort, Path]:
    cohort = Cohort.from_manifest(DEMO_MANIFEST)
    coords = tmp_path_factory.mktemp("tiles")
    slides = sorted({f for p in cohort.patients for f in cohort.files(p, keys.WSI)})
    tile_slides(slides, coords)
    return cohort, coords


@pytest.fixture(scope="module")
def dataset(demo: tuple[Cohort, Path]) -> PatientBagDataset:
    cohort, coords = demo
    return PatientBagDataset(cohort, spec=SPEC, coords_dir=coords, seed=0)


def test_batch_layout_and_presence_match_the_manifest(dataset: PatientBagDataset) -> None:
    manifest = pd.read_csv(DEMO_MANIFEST)
    has = manifest.groupby("modality")["patient_id"].agg(set).to_dict()
    items = [dataset[(i, 0)] for i in range(len(dataset))]
    batch = collate_bags(items)
    b = len(items)
    assert batch["patient_id"] == dataset.patients
    for m in keys.MODALITIES:
        entry = batch[m]
        expected = torch.tensor([p in has[m] for p in batch["patient_id"]])
        assert torch.equal(entry[keys.PRESENT], expected), m
        assert entry[keys.MASK].shape[0] == b
        # absent patients are all padding, and padding is zeros
        assert not entry[keys.MASK][~expected].any()
        assert (entry[keys.X][~entry[keys.MASK]] == 0).all()
    assert batch["wsi"][keys.X].shape[2:] == (3, 32, 32)
    assert batch["wsi"][keys.X].dtype == torch.float32
    assert float(batch["wsi"][keys.X].min()) >= 0.0 and float(batch["wsi"][keys.X].max()) <= 1.0
    assert batch["volume"][keys.X].shape[2:] == (1, 16, 16, 16)
    assert batch["expression"][keys.X].shape[-1] == len(dataset.vocabulary)
    assert batch["expression"][keys.GENE_MASK].shape == batch["expression"][keys.X].shape
    assert batch["sequence"][keys.X].dtype == torch.int64
    assert batch["metadata"]["site"][0] is not None


def test_expression_rows_are_the_patients_own(dataset: PatientBagDataset) -> None:
    table = pd.read_csv(DEMO_MANIFEST.parent / "expression.csv").set_index("patient_id")
    p = next(p for p in dataset.patients if p in table.index)
    item = dataset[(dataset.patients.index(p), 0)]
    genes = list(dataset.vocabulary.genes)
    np.testing.assert_allclose(item["expression"][keys.X][0].numpy(), table.loc[p, genes].to_numpy(), rtol=1e-5)


def test_draws_depend_on_seed_epoch_and_patient_only(demo: tuple[Cohort, Path]) -> None:
    cohort, coords = demo
    a = PatientBagDataset(cohort, spec=SPEC, coords_dir=coords, seed=0)
    b = PatientBagDataset(cohort, spec=SPEC, coords_dir=coords, seed=0)
    i = next(i for i, p in enumerate(a.patients) if keys.WSI in cohort.modalities_of(p))
    assert torch.equal(a[(i, 3)]["wsi"][keys.X], b[(i, 3)]["wsi"][keys.X])
    for m in keys.MODALITIES:
        if m in a[(i, 3)]:
            assert torch.equal(a[(i, 3)][m][keys.X], b[(i, 3)][m][keys.X]), m
    draws = {tuple(a[(i, e)]["wsi"][keys.X].flatten()[:64].tolist()) for e in range(6)}
    assert len(draws) > 1, "different epochs should draw different tiles"


def test_worker_count_does_not_change_batches(dataset: PatientBagDataset) -> None:
    def batches(workers: int) -> list[dict]:
        sampler = BagSampler(len(dataset), seed=1)
        sampler.set_epoch(2)
        dl = DataLoader(dataset, batch_size=6, sampler=sampler, collate_fn=collate_bags,  # type: ignore[arg-type]
                        num_workers=workers)
        return list(dl)

    serial, parallel = batches(0), batches(2)
    assert [b["patient_id"] for b in serial] == [b["patient_id"] for b in parallel]
    for s, p in zip(serial, parallel):
        for m in keys.MODALITIES:
            if m in s:
                assert torch.equal(s[m][keys.X], p[m][keys.X])


def test_sampler_resume_skips_only_in_its_epoch() -> None:
    s = BagSampler(10, seed=0)
    s.set_epoch(4)
    full = list(s)
    s.resume_from(4, 6)
    assert list(s) == full[6:]
    assert list(s) == full  # the skip applies once
    s.resume_from(4, 6)
    s.set_epoch(5)
    assert len(list(s)) == 10  # a new epoch is not skipped


def test_missing_coordinates_name_patient_and_slide(demo: tuple[Cohort, Path], tmp_path: Path) -> None:
    cohort, _ = demo
    from biossl.errors import InputError

    with pytest.raises(InputError, match=r"patient DEMO-\d+: no tile coordinates .*\.h5 for slide .*\.svs"):
        PatientBagDataset(cohort, spec=SPEC, coords_dir=tmp_path, seed=0)

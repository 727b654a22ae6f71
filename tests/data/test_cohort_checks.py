"""Where the voxels of a cohort's scans are read: once, by the full check, not whenever a cohort is opened.

Opening a cohort (``Cohort.from_manifest``, the data module as ``biossl embed`` opens it) probes headers
only; ``biossl cohort`` and ``BagDataModule.prepare_data`` under a trainer (once per pretraining run, on
each node's first process) read the voxels of floating-point NIfTI and stop at NaN. The other processes
of a DDP run take the rows that check rejected from its report, without reading voxels themselves.
Also :func:`~biossl.data.cohort.read_manifest` (what the Snakemake workflow plans with) against the cohort.
Scans: MONAI's real MRI (``tests/fixtures/volume/anatomical.nii``) saved as float32, one copy with NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel.arrayproxy import ArrayProxy

from biossl.cli import main
from biossl.data.bags import BagSpec
from biossl.data.cohort import Cohort, read_manifest
from biossl.errors import ManifestError
from biossl.modules.datamodule import BagDataModule

SPEC = BagSpec(patches=1, patch_size=(16, 16, 16), modalities=("volume",))


@pytest.fixture()
def cohort_dir(tmp_path: Path, fixtures: Path) -> Path:
    """Three patients with a float32 MRI each; P2's has 4 NaN voxels (manifest row 3)."""
    img = nib.Nifti1Image.from_filename(fixtures / "volume" / "anatomical.nii")
    data = np.asarray(img.get_fdata(), np.float32)
    for name in ("good1", "good3"):
        nib.save(nib.Nifti1Image(data, img.affine), tmp_path / f"{name}.nii.gz")
    bad = data.copy()
    bad[5:7, 5:7, 5] = np.nan
    nib.save(nib.Nifti1Image(bad, img.affine), tmp_path / "nan.nii.gz")
    pd.DataFrame({"patient_id": ["P1", "P2", "P3"], "modality": "volume",
                  "path": ["good1.nii.gz", "nan.nii.gz", "good3.nii.gz"]}).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path


@pytest.fixture()
def voxel_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The files whose voxel data nibabel reads (every full read goes through ``ArrayProxy.__array__``)."""
    reads: list[str] = []
    original = ArrayProxy.__array__

    def counting(self: ArrayProxy, *args: Any, **kwargs: Any) -> np.ndarray:
        reads.append(str(self.file_like))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ArrayProxy, "__array__", counting)
    yield reads


def _rank(local_rank: int) -> Any:
    """What the data module asks of the trainer Lightning attaches: which process of the node it runs in."""
    return SimpleNamespace(local_rank=local_rank)


def test_opening_a_cohort_reads_no_voxels(cohort_dir: Path, voxel_reads: list[str]) -> None:
    cohort = Cohort.from_manifest(cohort_dir / "m.csv")
    assert cohort.patients == ["P1", "P2", "P3"]  # the NaN scan's header is fine: it is not caught here
    # as biossl embed / audit / finetune open a cohort: prepare_data without a trainer, then setup
    dm = BagDataModule(cohort_dir / "m.csv", work_dir=cohort_dir / "work", spec=SPEC)
    dm.prepare_data()
    dm.setup("predict")
    assert dm.dataset is not None and dm.dataset.patients == ["P1", "P2", "P3"]
    assert voxel_reads == []


def test_the_full_check_reads_float_voxels_and_stops_at_nan(cohort_dir: Path, voxel_reads: list[str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ManifestError, match=r"row 3: patient 'P2', volume file nan\.nii\.gz: .*4 NaN and 0 infinite"):
        Cohort.from_manifest(cohort_dir / "m.csv", check_values=True)
    assert len(voxel_reads) == 3  # each scan read once
    assert main(["cohort", str(cohort_dir / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "row 3: patient 'P2'" in err and "4 NaN" in err
    assert main(["cohort", str(cohort_dir / "m.csv"), "--no-probe"]) == 0  # existence only


def test_prepare_data_under_a_trainer_checks_in_full_once(cohort_dir: Path, voxel_reads: list[str]) -> None:
    dm = BagDataModule(cohort_dir / "m.csv", work_dir=cohort_dir / "work", spec=SPEC)
    dm.trainer = _rank(0)
    with pytest.raises(ManifestError, match=r"listed in .*skipped_rows\.csv:\n  row 3: patient 'P2'.*4 NaN"):
        dm.prepare_data()
    skip = BagDataModule(cohort_dir / "m.csv", work_dir=cohort_dir / "work", spec=SPEC, skip_bad=True)
    skip.trainer = _rank(0)
    voxel_reads.clear()
    skip.prepare_data()
    skip.setup("fit")  # the cohort checked in prepare_data is reused: no second read
    assert skip.dataset is not None and skip.dataset.patients == ["P1", "P3"]
    assert len(voxel_reads) == 3
    report = pd.read_csv(skip.report_path)
    assert report["row"].tolist()[0] == 3 and "4 NaN" in report["reason"].iloc[0]


@pytest.mark.parametrize("skip_bad", [True, False])
def test_other_ranks_take_the_checked_rows_from_the_report(cohort_dir: Path, voxel_reads: list[str],
                                                           skip_bad: bool) -> None:
    """A DDP rank other than the node's first gets the same cohort as the first, reading no voxels."""
    first = BagDataModule(cohort_dir / "m.csv", work_dir=cohort_dir / "work", spec=SPEC, skip_bad=skip_bad)
    first.trainer = _rank(0)
    other = BagDataModule(cohort_dir / "m.csv", work_dir=cohort_dir / "work", spec=SPEC, skip_bad=skip_bad)
    other.trainer = _rank(1)
    if not skip_bad:
        with pytest.raises(ManifestError, match="4 NaN"):
            first.prepare_data()
        voxel_reads.clear()
        with pytest.raises(ManifestError, match=r"check of this run found problems, listed in .*skipped_rows"):
            other.setup("fit")
        assert voxel_reads == []
        return
    first.prepare_data()
    voxel_reads.clear()
    other.setup("fit")  # Lightning: prepare_data ran on local rank 0 only, setup runs everywhere
    assert voxel_reads == []
    assert first.cohort is not None and other.cohort is not None
    assert other.cohort.patients == first.cohort.patients == ["P1", "P3"]
    assert other.cohort.table.equals(first.cohort.table)


def test_read_manifest_reads_rows_as_the_cohort_does(cohort_dir: Path) -> None:
    """The reader the Snakemake workflow plans its jobs with: spaces, modality case, a blank line, relative paths."""
    (cohort_dir / "sub").mkdir()
    untidy = cohort_dir / "sub" / "untidy.csv"
    untidy.write_text("patient_id,modality,path,site\n P1 , VOLUME , ../good1.nii.gz ,A\n\n"
                      "P2,volume,/no/such.nii.gz,B\nP3,Volume,../good3.nii.gz,\n")
    rows = read_manifest(untidy)
    assert rows["patient_id"].tolist() == ["P1", "P2", "P3"] and rows["modality"].tolist() == ["volume"] * 3
    good1, good3 = str(cohort_dir / "good1.nii.gz"), str(cohort_dir / "good3.nii.gz")
    assert rows["path"].tolist() == [good1, "/no/such.nii.gz", good3]
    assert rows["manifest_row"].tolist() == [2, 4, 5]  # the blank line keeps its row number
    cohort = Cohort.from_manifest(untidy, skip_bad=True)  # P2's file is missing: skipped
    kept = rows[rows["patient_id"] != "P2"]
    table = cohort.table
    for col in ("patient_id", "modality", "path", "manifest_row"):
        assert table[col].tolist() == kept[col].tolist(), col

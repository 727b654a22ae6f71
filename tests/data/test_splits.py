from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from biossl.data.splits import check_splits, make_splits, read_splits, save_splits, train_test
from biossl.errors import InputError, ManifestError

CANCERS = ["blca", "brca", "coadread", "gbmlgg", "hnsc", "kirc", "kirp", "lihc"]


@pytest.fixture(scope="module")
def blca(shared_data: Path) -> pd.DataFrame:
    """TCGA-BLCA, one row per patient (the table has one per slide)."""
    table = pd.read_csv(shared_data / "tcga_porpoise" / "tcga_blca_all_clean.csv.zip",
                        usecols=["case_id", "site", "censorship", "oncotree_code"])
    return table.drop_duplicates("case_id").set_index("case_id")


def _patients(n: int) -> list[str]:
    return [f"P{i:03d}" for i in range(n)]


def test_each_patient_in_one_fold_balanced_and_reproducible():
    ids = _patients(23)
    splits = make_splits(ids, n_splits=5, seed=1)
    assert sorted(splits["patient_id"]) == ids and splits["patient_id"].is_unique
    assert sorted(splits["fold"].value_counts()) == [4, 4, 5, 5, 5]
    assert make_splits(list(reversed(ids)), n_splits=5, seed=1).equals(splits)
    assert not make_splits(ids, n_splits=5, seed=2).equals(splits)
    train, test = train_test(splits, 3)
    assert not set(train) & set(test) and sorted(train + test) == ids


def test_stratification_keeps_class_counts_within_one():
    ids = _patients(50)
    labels = {p: ("rare" if i % 5 == 0 else "common") for i, p in enumerate(ids)}  # 10 rare, 40 common
    splits = make_splits(ids, n_splits=5, labels=labels)
    per_fold = splits.assign(y=splits["patient_id"].map(labels)).groupby(["fold", "y"]).size().unstack()
    assert per_fold["rare"].tolist() == [2] * 5 and per_fold["common"].tolist() == [8] * 5


def test_stratified_on_real_blca_events(blca):
    event = 1 - blca["censorship"]
    splits = make_splits(list(blca.index), labels=event, seed=0)
    counts = splits.assign(e=splits["patient_id"].map(event)).groupby(["fold", "e"]).size().unstack()
    assert (counts.max() - counts.min()).max() <= 1


@pytest.mark.parametrize("stratify", [False, True])
def test_grouped_by_real_blca_site_keeps_sites_disjoint(blca, stratify):
    labels = (1 - blca["censorship"]) if stratify else None
    splits = make_splits(list(blca.index), groups=blca["site"], labels=labels, seed=0)
    assert splits.groupby(splits["patient_id"].map(blca["site"]))["fold"].nunique().max() == 1
    for fold in range(5):
        train, test = train_test(splits, fold)
        assert not set(blca.loc[train, "site"]) & set(blca.loc[test, "site"])
        assert len(test) > 20  # 33 sites, the largest with 49 patients: no fold is starved
    check_splits(splits, groups=blca["site"].to_dict())


def test_helpful_errors():
    ids = _patients(20)
    labels = {p: ("a" if i < 3 else "b") for i, p in enumerate(ids)}
    with pytest.raises(InputError, match=r"class 'a' has only 3 patients, fewer than n_splits=5"):
        make_splits(ids, labels=labels)
    groups = {p: f"site{i % 3}" for i, p in enumerate(ids)}
    with pytest.raises(InputError, match=r"only 3 groups .* for 5 folds"):
        make_splits(ids, groups=groups)
    with pytest.raises(InputError, match=r"1 patient\(s\) have no label, e.g. \['P019'\]"):
        make_splits(ids, labels={p: "a" for p in ids[:-1]})
    with pytest.raises(InputError, match=r"more than once: \['P000'\]"):
        make_splits([*ids, "P000"])
    with pytest.raises(InputError, match="n_splits=30 is invalid for 20 patients"):
        make_splits(ids, n_splits=30)
    with pytest.raises(InputError, match=r"fold 7 does not exist; the splits have folds \[0, 1, 2, 3, 4\]"):
        train_test(make_splits(ids), 7)


def test_long_table_read_save_roundtrip(tmp_path):
    splits = make_splits(_patients(12), n_splits=3)
    for name in ("s.csv", "s.parquet"):
        save_splits(splits, tmp_path / name)
        assert read_splits(tmp_path / name).equals(splits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.parquet"]  # no temp files left


def test_long_table_errors_name_the_patient(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("patient_id,fold\nA,0\nB,1\nA,1\n")
    with pytest.raises(ManifestError, match=r"A \(folds \[0, 1\]\)"):
        read_splits(path)
    path.write_text("patient_id,fold\nA,0\nB,2\n")
    with pytest.raises(ManifestError, match=r"folds in .* are \[0, 2\]"):
        read_splits(path)
    path.write_text("patient_id,fold\nA,0\nB,1\n")
    with pytest.raises(ManifestError, match=r"not in the cohort, e.g. \['B'\]"):
        read_splits(path, patients=["A"])


def _porpoise(folder: Path, folds: list[tuple[list[str], list[str]]]) -> Path:
    folder.mkdir()
    for k, (train, val) in enumerate(folds):
        n = max(len(train), len(val))
        pd.DataFrame({"train": train + [None] * (n - len(train)), "val": val + [None] * (n - len(val))}
                     ).to_csv(folder / f"splits_{k}.csv")
    return folder


def test_porpoise_layout_validation(tmp_path):
    good = _porpoise(tmp_path / "good", [(["C", "D"], ["A", "B"]), (["A", "B"], ["C", "D"])])
    assert read_splits(good).to_dict("list") == {"patient_id": ["A", "B", "C", "D"], "fold": [0, 0, 1, 1]}
    both = _porpoise(tmp_path / "both", [(["B", "C", "D"], ["A", "B"]), (["A", "B"], ["C", "D"])])
    with pytest.raises(ManifestError, match=r"splits_0.csv: patient B is in both train and val"):
        read_splits(both)
    twice = _porpoise(tmp_path / "twice", [(["C", "D"], ["A", "B"]), (["A"], ["B", "C", "D"])])
    with pytest.raises(ManifestError, match=r"B \(folds \[0, 1\]\)"):
        read_splits(twice)
    never = _porpoise(tmp_path / "never", [(["C", "D", "E"], ["A", "B"]), (["A", "B"], ["C", "D"])])
    with pytest.raises(ManifestError, match="patient E is in train but in no file's val"):
        read_splits(never)
    with pytest.raises(ManifestError, match="holds one fold"):
        read_splits(good / "splits_0.csv")


@pytest.mark.parametrize("cancer", CANCERS)
def test_real_porpoise_splits_load_and_match_files(shared_data, cancer):
    folder = shared_data / "tcga_porpoise" / "splits" / "5foldcv" / f"tcga_{cancer}"
    splits = read_splits(folder)
    assert sorted(set(splits["fold"])) == [0, 1, 2, 3, 4]
    for k in (0, 4):
        raw = pd.read_csv(folder / f"splits_{k}.csv")
        train, test = train_test(splits, k)
        assert set(test) == set(raw["val"].dropna()) and set(train) == set(raw["train"].dropna())

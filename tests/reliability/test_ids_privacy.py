"""Patient IDs stay text; pseudonymised exports hold no identifier; table headers and label columns fail early.

Issue 12: an expression table read ``0012`` and ``12`` as the number 12 (patient ``12`` drew ``0012``'s
profile); ``--pseudonymize`` kept ``slide_id = TCGA-...-01Z-00-DX1`` and other columns holding a patient ID
inside a longer text; ``Path`` beside ``path`` and a labels column ``_index`` crashed with tracebacks (the
latter after every embedding was computed); one ``NaN`` text in ``event`` was blamed on other patients.
Every case runs through the CLI on real files (the TCGA-KIRC extract, the demo cohort).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from biossl.cli import main

REPO = Path(__file__).resolve().parents[2]
KIRC = REPO / "tests" / "fixtures" / "expression" / "tcga_kirc_extract.csv"
SALT = "a-secret-salt-of-32-characters!!"
#: IDs that pandas would read as numbers or as missing values.
TRICKY_IDS = ["0012", "12", "NA", "1e5"]


def _one_line_exit_2(code: int, capsys: pytest.CaptureFixture[str], *phrases: str) -> str:
    """The error line (progress bars of the work before it may precede it on stderr)."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err, err
    err = err.splitlines()[-1]
    assert err.startswith("biossl "), err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    return err


# -- IDs are text -----------------------------------------------------------------------------------------
def _kirc_table(folder: Path, fmt: str) -> Path:
    """Four real TCGA-KIRC profiles (distinct rows of the extract) relabelled with :data:`TRICKY_IDS`."""
    df = pd.read_csv(KIRC).head(len(TRICKY_IDS)).drop(columns=["Unnamed: 0"])
    df["case_id"] = TRICKY_IDS
    path = folder / f"expression.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == "parquet":
        df.to_parquet(path, index=False)
    else:  # .h5ad: the ids are the obs names (no patient column), the genes the *_rnaseq columns
        genes = [c for c in df.columns if c.endswith("_rnaseq")]
        adata = ad.AnnData(X=df[genes].to_numpy(np.float32), obs=pd.DataFrame(index=pd.Index(TRICKY_IDS)),
                           var=pd.DataFrame(index=[g.removesuffix("_rnaseq") for g in genes]))
        adata.write_h5ad(path)
    return path


def _expression_manifest(folder: Path, table: Path, patients: list[str], name: str = "manifest.csv") -> Path:
    path = folder / name
    pd.DataFrame({"patient_id": patients, "modality": "expression", "path": str(table)}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "h5ad"])
def test_ids_that_look_like_numbers_keep_their_own_profile(fmt: str, pretrained: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``0012`` and ``12`` (and ``NA``, ``1e5``) are four patients, each embedded from its own row."""
    checkpoint, _ = pretrained
    table = _kirc_table(tmp_path, fmt)
    manifest = _expression_manifest(tmp_path, table, TRICKY_IDS)
    assert main(["cohort", str(manifest)]) == 0, capsys.readouterr().err
    out = tmp_path / "all.h5ad"
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(manifest), "--work-dir",
                 str(tmp_path / "work"), "--out", str(out)]) == 0
    emb = ad.read_h5ad(out)
    assert sorted(emb.obs_names) == sorted(TRICKY_IDS)
    x = pd.DataFrame(emb.obsm["X_expression"], index=emb.obs_names)
    assert len({tuple(np.round(x.loc[p], 5)) for p in TRICKY_IDS}) == len(TRICKY_IDS)  # four distinct profiles
    # Patient 12 alone, from a table that holds only its own row: the same embedding.
    alone = tmp_path / "alone"
    alone.mkdir()
    row = pd.read_csv(KIRC).drop(columns=["Unnamed: 0"]).iloc[[1]].assign(case_id="12")
    row.to_csv(alone / "expression.csv", index=False)
    single = alone / "single.h5ad"
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest",
                 str(_expression_manifest(alone, alone / "expression.csv", ["12"])), "--work-dir",
                 str(alone / "work"), "--out", str(single)]) == 0
    np.testing.assert_allclose(x.loc["12"].to_numpy(), ad.read_h5ad(single).obsm["X_expression"][0], rtol=1e-5,
                               atol=1e-6)


def test_parquet_ids_stored_as_numbers_read_as_the_manifest_writes_them(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A Parquet id column of floats (``12.0``, as pandas stores ints beside a gap) is patient ``12``, not ``12.0``."""
    df = pd.read_csv(KIRC).head(2).drop(columns=["Unnamed: 0"]).assign(case_id=[12.0, 7.0])
    df.to_parquet(tmp_path / "expression.parquet", index=False)
    manifest = _expression_manifest(tmp_path, tmp_path / "expression.parquet", ["12", "7"])
    assert main(["cohort", str(manifest)]) == 0, capsys.readouterr().err


def test_sequence_table_patient_column_is_found_whatever_its_case(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A ``Patient_ID`` column is the patient column: patient ``12`` does not get ``0012``'s sequences."""
    from biossl.data.sequence import patient_sequences

    table = tmp_path / "seqs.csv"
    table.write_text("Patient_ID,sequence\n0012,ACGTACGTAAAA\n12,TTTTGGGGCCCC\n")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"patient_id,modality,path\n0012,sequence,{table}\n12,sequence,{table}\n")
    assert main(["cohort", str(manifest)]) == 0
    assert [r.sequence for r in patient_sequences(table, "12")] == ["TTTTGGGGCCCC"]


# -- --pseudonymize ------------------------------------------------------------------------------------
def _porpoise_labels(demo_cohort: Path, path: Path) -> list[str]:
    """PORPOISE-style labels of the demo cohort: columns that identify patients beside real labels.

    Returns the identifying values written (none may appear in a pseudonymised export).
    """
    labels = pd.read_csv(demo_cohort / "labels.csv", dtype={"patient_id": str})
    cases = pd.read_csv(demo_cohort / "manifest.csv").groupby("patient_id")["tcga_case"].first()
    case = labels["patient_id"].map(cases)
    labels["case_id"] = case  # a copy of the TCGA case barcode
    labels["slide_id"] = case + "-01Z-00-DX1"  # the case barcode inside a longer barcode
    labels["sample"] = case.str.lower().str.replace("-", "_") + "_01a"  # other case, other separators
    labels["copy"] = labels["patient_id"].str.lower().str.replace("-", "_")  # the patient ID, rewritten
    labels["slide_path"] = "/data/slides/" + labels["patient_id"] + ".svs"  # a path naming the patient
    labels["grade"] = np.where(labels.index % 2 == 0, "G2", "G3")  # harmless
    labels["score_DEMO-03"] = 1.0  # a column whose name holds a patient ID
    labels.to_csv(path, index=False)
    return [*labels["patient_id"], *case, *labels["slide_id"], *labels["sample"], *labels["copy"],
            *labels["slide_path"], "DEMO-03"]


def test_pseudonymize_drops_every_column_holding_an_identifier(
    pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, work = pretrained
    labels = tmp_path / "labels.csv"
    secrets = _porpoise_labels(demo_cohort, labels)
    # The manifest's own name holds a patient ID (it is recorded in uns["biossl"]["manifest"]).
    manifest = pd.read_csv(demo_cohort / "manifest.csv")
    manifest["path"] = [str(demo_cohort / p) for p in manifest["path"]]
    named = tmp_path / "cohort_of_DEMO-04.csv"
    manifest.to_csv(named, index=False)
    monkeypatch.setenv("BIOSSL_SALT", SALT)
    out = tmp_path / "export" / "pseudo.h5ad"
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(named), "--labels", str(labels),
                 "--work-dir", str(work), "--out", str(out), "--pseudonymize"]) == 0
    printed = capsys.readouterr().out
    data = out.read_bytes()
    for value in {*secrets, *manifest["tcga_case"]}:
        assert value.encode() not in data, value
    pseudo = ad.read_h5ad(out)
    assert {"subtype", "time", "event", "grade", "site", "has_wsi"} <= set(pseudo.obs.columns)
    assert not {"case_id", "slide_id", "sample", "copy", "slide_path", "tcga_case"} & set(pseudo.obs.columns)
    said = pseudo.uns["biossl"]["pseudonymized"]
    dropped = list(said["dropped_columns"])
    assert {"case_id", "slide_id", "sample", "copy", "slide_path"} <= set(dropped)
    assert "<a column whose name holds a patient identifier>" in dropped  # named without the ID
    assert "identifiers" in said["dropped_because"]["slide_id"]
    assert "uns/biossl/manifest" in list(said["removed_uns"]) and "manifest" not in pseudo.uns["biossl"]
    assert "slide_id" in printed and "sample" in printed
    # Asking to keep an identifying column is refused with one line, nothing written.
    kept = tmp_path / "kept.h5ad"
    code = main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--labels", str(labels), "--work-dir", str(work), "--out", str(kept), "--pseudonymize",
                 "--keep-obs", "tcga_case"])
    _one_line_exit_2(code, capsys, "--keep-obs tcga_case", "holds patient identifiers")
    assert not kept.exists()


def test_pseudonymize_finds_tcga_patient_ids_inside_slide_barcodes_and_paths(embedded: Path) -> None:
    """Patients named by TCGA case barcodes: any text holding one, whatever its case and separators, is dropped."""
    from biossl.privacy import pseudonymize_obs

    adata = ad.read_h5ad(embedded)
    cases = [f"TCGA-2Z-A9{i:02d}" for i in range(adata.n_obs)]
    adata.obs_names = cases
    adata.obs["slide_id"] = [f"{c}-01Z-00-DX1" for c in cases]
    adata.obs["subtype"] = [f"{c.lower().replace('-', '_')}" for c in cases]  # a "label" that is an ID
    adata.obs["site"] = [f"/scans/{c.replace('-', '')}.svs" for c in cases]  # separators removed
    adata.obs["batch"] = "2Z"
    out = pseudonymize_obs(adata, SALT.encode())
    assert "batch" in out.obs.columns
    assert not {"slide_id", "subtype", "site"} & set(out.obs.columns)
    assert {"slide_id", "subtype", "site"} <= set(out.uns["biossl"]["pseudonymized"]["dropped_columns"])


def test_pseudonymize_keeps_numbers_that_only_equal_numeric_ids(embedded: Path) -> None:
    """Patients ``1``, ``2``, ...: an ``event`` 0/1 is a label, a column copying each row's ID is not."""
    from biossl.privacy import pseudonymize_obs

    adata = ad.read_h5ad(embedded)
    adata.obs_names = [str(i) for i in range(adata.n_obs)]
    adata.obs["event"] = [i % 2 for i in range(adata.n_obs)]
    adata.obs["site"] = np.arange(adata.n_obs)  # a copy of the (numeric) ID
    adata.obs["batch"] = [f"slides/{i}.svs" for i in range(adata.n_obs)]  # a path naming the patient
    adata.uns["biossl"]["label_columns"] = [*adata.uns["biossl"]["label_columns"], "event"]
    out = pseudonymize_obs(adata, SALT.encode())
    assert "event" in out.obs.columns and not {"site", "batch"} & set(out.obs.columns)


def test_pseudonymized_audit_refuses_a_column_holding_identifiers(
    embedded: Path, demo_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """``audit.json`` plots each patient's value of ``--columns``: a slide barcode there would leak."""
    labels = tmp_path / "labels.csv"
    _porpoise_labels(demo_cohort, labels)
    monkeypatch.setenv("BIOSSL_SALT", SALT)
    code = main(["audit", "--embeddings", str(embedded), "--labels", str(labels), "--columns", "slide_id",
                 "--pseudonymize", "--out", str(tmp_path / "audit")])
    _one_line_exit_2(code, capsys, "--columns slide_id", "holds patient identifiers")
    assert not (tmp_path / "audit").exists()


# -- headers that clash, names h5ad cannot store ------------------------------------------------------------
@pytest.mark.parametrize(("header", "shown"), [
    ("patient_id,modality,path,Path", "'path' and 'Path'"),
    ("patient_id,modality,path,site, SITE ", "'site' and ' SITE '"),
    ("patient_id,modality,path,site,site", "'site' and 'site'"),
    ("patient_id,modality,path,site,\ufeffsite", "'site' and '\\ufeffsite'"),  # the BOM shown
    ("patient_id,MODALITY,path,modality", "'MODALITY' and 'modality'"),
])
def test_manifest_columns_that_clash_stop_with_one_line(header: str, shown: str, demo_cohort: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "manifest.csv"
    n_extra = header.count(",") - 2
    row = f"DEMO-01,expression,{demo_cohort / 'expression.csv'}" + ",x" * n_extra
    manifest.write_text(f"{header}\n{row}\n", encoding="utf-8")
    err = _one_line_exit_2(main(["cohort", str(manifest)]), capsys, str(manifest), "same column once case")
    assert shown in err or shown.replace("'", '"') in err


def test_labels_columns_that_clash_stop_with_one_line(embedded: Path, demo_cohort: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    labels = pd.read_csv(demo_cohort / "labels.csv")
    labels["Subtype"] = labels["subtype"]
    labels.to_parquet(tmp_path / "labels.parquet")
    code = main(["finetune", "--embeddings", str(embedded), "--labels", str(tmp_path / "labels.parquet"),
                 "--task", "subtype", "--label-column", "subtype", "--out", str(tmp_path / "r.json")])
    _one_line_exit_2(code, capsys, "labels.parquet", "'subtype' and 'Subtype'")


@pytest.mark.parametrize(("where", "column"), [("labels", "_index"), ("labels", "stage/grade"),
                                               ("manifest", "_index")])
def test_columns_h5ad_cannot_store_stop_embed_before_any_work(
    where: str, column: str, pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import biossl.downstream.embed as embed

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("embeddings were computed before the column names were checked")

    monkeypatch.setattr(embed, "embed_dataset", no_work)
    checkpoint, work = pretrained
    labels = pd.read_csv(demo_cohort / "labels.csv")
    manifest = pd.read_csv(demo_cohort / "manifest.csv")
    manifest["path"] = [str(demo_cohort / p) for p in manifest["path"]]
    if where == "labels":
        labels[column] = "x"
    else:
        manifest[column] = "x"
    labels.to_csv(tmp_path / "labels.csv", index=False)
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "emb.h5ad"
    code = main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(tmp_path / "manifest.csv"), "--labels",
                 str(tmp_path / "labels.csv"), "--work-dir", str(work), "--out", str(out)])
    _one_line_exit_2(code, capsys, f"{where}", str(tmp_path / f"{where}.csv"), repr(column))
    assert not out.exists()


# -- labels: name the rows that are wrong -----------------------------------------------------------------
@pytest.mark.parametrize(("column", "value", "shown"), [("event", "NaN", "'NaN'"), ("event", "2", "2"),
                                                        ("time", "inf", "inf"), ("time", "soon", "'soon'")])
def test_a_bad_label_is_blamed_on_its_own_row(column: str, value: str, shown: str, embedded: Path, demo_cohort: Path,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = (demo_cohort / "labels.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[12].split(",")  # row 13 as a spreadsheet counts it (header = row 1)
    cells[header.index(column)] = value
    lines[12] = ",".join(cells)
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    code = main(["finetune", "--embeddings", str(embedded), "--labels", str(path), "--task", "survival",
                 "--out", str(tmp_path / "r.json")])
    err = _one_line_exit_2(code, capsys, str(path), f"column {column!r}", "1 row(s) are not",
                           f"row 13 (patient {cells[0]!r}) {shown}")
    others = [line.split(",")[0] for i, line in enumerate(lines[1:], start=2) if i != 13]
    assert not any(f"'{p}'" in err for p in others)
    assert not (tmp_path / "r.json").exists()


# -- review: variants of the above ------------------------------------------------------------------------
def _numbered(embedded: Path, folder: Path, ids: list[str]) -> Path:
    """The demo embeddings with patients renamed to ``ids`` (zero-padded numbers, as a registry writes them)."""
    adata = ad.read_h5ad(embedded)
    adata.obs_names = ids
    path = folder / "numbered.h5ad"
    adata.write_h5ad(path)
    return path


def test_labels_saved_by_a_spreadsheet_that_dropped_leading_zeros_are_named(
    embedded: Path, demo_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture
) -> None:
    """Patients ``0001 .. 0024``, labels ``1 .. 24``: the error says which ID looks like which.

    And the silent variant: patients ``0012`` and ``12`` both embedded, the labels hold ``12`` only (the row
    of ``0012`` once its zeros were dropped): a warning names ``0012``.
    """
    n = ad.read_h5ad(embedded).n_obs
    padded = [f"{i:04d}" for i in range(1, n + 1)]
    emb = _numbered(embedded, tmp_path, padded)
    labels = pd.read_csv(demo_cohort / "labels.csv").head(n)
    labels["patient_id"] = [str(int(p)) for p in padded]  # what a spreadsheet writes back
    labels.to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    code = main(["finetune", "--embeddings", str(emb), "--labels", str(tmp_path / "labels.tsv"), "--task", "subtype",
                 "--label-column", "subtype", "--out", str(tmp_path / "r.json")])
    _one_line_exit_2(code, capsys, "not in the embeddings", "'1' of the labels table looks like '0001'",
                     "leading zeros")
    # Both 0012 and 12 exist; the labels name 12 only: matched, with a warning naming 0012.
    ids = [*padded[:-1], "12"]
    emb = _numbered(embedded, tmp_path, ids)
    labels.head(n - 1).assign(patient_id=[p for p in ids if p != "0012"]).to_csv(tmp_path / "labels.csv", index=False)
    with caplog.at_level("WARNING"):
        assert main(["finetune", "--embeddings", str(emb), "--labels", str(tmp_path / "labels.csv"), "--task",
                     "subtype", "--label-column", "subtype", "--out", str(tmp_path / "r.json")]) == 0
    assert "'0012' (looks like the labelled patient '12')" in caplog.text


def test_split_file_ids_written_as_numbers_are_named(embedded: Path, demo_cohort: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A split file whose ``0012`` became ``12.0``: that patient is in no fold, and the warning says why."""
    n = ad.read_h5ad(embedded).n_obs
    padded = [f"{i:04d}" for i in range(1, n + 1)]
    emb = _numbered(embedded, tmp_path, padded)
    labels = pd.read_csv(demo_cohort / "labels.csv").head(n).assign(patient_id=padded)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    splits = pd.DataFrame({"patient_id": padded, "fold": [i % 2 for i in range(n)]})
    splits.loc[splits["patient_id"] == "0012", "patient_id"] = "12.0"
    splits.to_csv(tmp_path / "splits.csv", index=False)
    with caplog.at_level("WARNING"):
        assert main(["finetune", "--embeddings", str(emb), "--labels", str(tmp_path / "labels.csv"), "--task",
                     "subtype", "--label-column", "subtype", "--splits", str(tmp_path / "splits.csv"), "--out",
                     str(tmp_path / "r.json")]) == 0
    assert "'0012' (looks like the split patient '12.0')" in caplog.text


def test_labels_with_a_patient_id_column_beside_the_id_column_stop_with_one_line(
    embedded: Path, demo_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--id-column case_id`` and a ``patient_id`` column too: was an ``IndexError`` traceback."""
    labels = pd.read_csv(demo_cohort / "labels.csv")
    labels["case_id"] = labels["patient_id"]
    labels["patient_id"] = "P-" + labels["patient_id"]
    labels.to_csv(tmp_path / "labels.csv", index=False)
    code = main(["finetune", "--embeddings", str(embedded), "--labels", str(tmp_path / "labels.csv"), "--id-column",
                 "case_id", "--task", "subtype", "--label-column", "subtype", "--out", str(tmp_path / "r.json")])
    _one_line_exit_2(code, capsys, "'patient_id' column beside its patient column 'case_id'")


def test_pseudonymize_drops_barcode_parts_and_keeps_the_label_list(
    pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """``A3-3316`` (site + participant of TCGA-A3-3316) and ``3316`` name the patient; the kept labels stay listed."""
    checkpoint, work = pretrained
    labels = pd.read_csv(demo_cohort / "labels.csv")
    cases = pd.read_csv(demo_cohort / "manifest.csv").groupby("patient_id")["tcga_case"].first()
    case = labels["patient_id"].map(cases)
    labels["note"] = "seen at " + case.str[5:]  # without the TCGA- prefix
    labels["participant"] = ("#" + case.str[8:]).str[1:]  # the participant code alone, as text
    labels[labels["patient_id"][0]] = 1.0  # a label named after a patient
    labels.to_csv(tmp_path / "labels.csv", index=False)
    monkeypatch.setenv("BIOSSL_SALT", SALT)
    out = tmp_path / "pseudo.h5ad"
    assert main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--labels", str(tmp_path / "labels.csv"), "--work-dir", str(work), "--out", str(out),
                 "--pseudonymize"]) == 0
    data = out.read_bytes().lower()
    for value in case.dropna().str[5:]:  # (4 digits alone may occur by chance in the binary data)
        assert value.lower().encode() not in data, value
    pseudo = ad.read_h5ad(out)
    assert not {"note", "participant"} & set(pseudo.obs.columns)
    assert list(pseudo.uns["biossl"]["label_columns"]) == ["subtype", "time", "event"]


def test_pseudonymize_drops_copies_of_numeric_ids_whatever_their_type(embedded: Path) -> None:
    """Patients ``0012``-style: a text, categorical or number column copying each row's ID is dropped."""
    from biossl.privacy import pseudonymize_obs

    adata = ad.read_h5ad(embedded)
    ids = [f"{i:04d}" for i in range(adata.n_obs)]
    adata.obs_names = ids
    adata.obs["site"] = pd.Categorical(ids)  # the ids, as a categorical
    adata.obs["batch"] = [str(int(i)) for i in ids]  # the ids without their zeros
    adata.obs["scanner"] = [float(i) for i in ids]  # the ids as numbers
    adata.obs["intensity"] = ids  # the ids as text
    adata.obs["event"] = [i % 2 for i in range(adata.n_obs)]
    adata.uns["biossl"]["label_columns"] = [*adata.uns["biossl"]["label_columns"], "event"]
    out = pseudonymize_obs(adata, SALT.encode())
    assert "event" in out.obs.columns
    assert not {"site", "batch", "scanner", "intensity"} & set(out.obs.columns)


def test_pseudonymized_reports_hide_file_names_holding_an_id(
    embedded: Path, demo_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``finetune`` / ``audit --pseudonymize`` recorded input file names (``labels_DEMO-04.csv``) as given."""
    emb = tmp_path / "emb_of_DEMO-03.h5ad"
    shutil.copy(embedded, emb)
    labels = tmp_path / "labels_DEMO-04.csv"
    shutil.copy(demo_cohort / "labels.csv", labels)
    monkeypatch.setenv("BIOSSL_SALT", SALT)
    out = tmp_path / "r.json"
    assert main(["finetune", "--embeddings", str(emb), "--labels", str(labels), "--task", "subtype",
                 "--label-column", "subtype", "--pseudonymize", "--out", str(out)]) == 0
    audit = tmp_path / "audit"
    assert main(["audit", "--embeddings", str(emb), "--columns", "site", "--folds", "2", "--pseudonymize",
                 "--out", str(audit)]) in (0, 1, 3)
    for path in (out, audit / "audit.json", audit / "report.html"):
        data = path.read_bytes()
        assert b"DEMO-03" not in data and b"DEMO-04" not in data, path
    assert "/inputs/labels" in json.loads(out.read_text())["pseudonymized_hidden"]

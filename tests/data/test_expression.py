from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from biossl.data.cohort import Cohort
from biossl.data.expression import normalize_expression, probe, read_expression, table_patients
from biossl.errors import ExpressionError, ManifestError

KIRC = "expression/tcga_kirc_extract.csv"
COUNTS = "expression/pbmc68k_counts.h5ad"


@pytest.fixture()
def kirc(fixtures: Path) -> Path:
    return fixtures / KIRC


@pytest.fixture()
def kirc_df(kirc: Path) -> pd.DataFrame:
    return pd.read_csv(kirc)


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def test_tcga_extract_zscores_kept_and_metadata_in_obs(kirc: Path, kirc_df: pd.DataFrame) -> None:
    a = read_expression(kirc)
    rna = [c for c in kirc_df.columns if c.endswith("_rnaseq")]
    assert a.shape == (20, 200)
    assert list(a.var_names) == [c.removesuffix("_rnaseq") for c in rna]
    np.testing.assert_array_equal(a.X, kirc_df[rna].to_numpy(np.float32))  # z-scores not transformed
    assert a.uns["biossl"]["transform"] == "none"
    assert "negative values" in a.uns["biossl"]["detected"]
    for col in ("site", "oncotree_code", "survival_months", "censorship", "slide_id", "BAP1_mut"):
        assert col in a.obs.columns
    assert a.obs["site"].tolist() == kirc_df["site"].tolist()
    assert a.obs["patient_id"].tolist() == kirc_df["case_id"].tolist()
    assert a.obs_names.is_unique
    assert table_patients(kirc) == set(kirc_df["case_id"])


def test_aggregate_first_and_mean(kirc: Path, kirc_df: pd.DataFrame, tmp_path: Path) -> None:
    first = read_expression(kirc, aggregate="first")
    assert first.n_obs == kirc_df["case_id"].nunique() == 16
    assert first.obs.loc["TCGA-T7-A92I", "n_rows"] == 3
    assert first.obs.loc["TCGA-T7-A92I", "slide_id"] == kirc_df.loc[17, "slide_id"]
    # Make the two rows of TCGA-A3-3365 differ; "mean" must average them and "first" keep row one.
    df = kirc_df.copy()
    rows = df.index[df["case_id"] == "TCGA-A3-3365"]
    df.loc[rows[1], "AAK1_rnaseq"] = df.loc[rows[0], "AAK1_rnaseq"] + 2.0
    path = _write(df, tmp_path / "kirc.csv")
    mean = read_expression(path, aggregate="mean")
    first = read_expression(path, aggregate="first")
    expected = df.loc[rows, "AAK1_rnaseq"].mean()
    assert mean[["TCGA-A3-3365"], "AAK1"].X[0, 0] == pytest.approx(expected, abs=1e-5)
    assert first[["TCGA-A3-3365"], "AAK1"].X[0, 0] == pytest.approx(df.loc[rows[0], "AAK1_rnaseq"])
    single = mean.obs_names.get_loc("TCGA-3Z-A93Z")
    np.testing.assert_allclose(mean.X[single], first.X[single])


def test_raw_counts_normalised_once(fixtures: Path, tmp_path: Path) -> None:
    raw = ad.read_h5ad(fixtures / COUNTS)
    counts = raw.X.toarray()
    a = read_expression(fixtures / COUNTS)
    assert a.uns["biossl"]["detected"] == "raw counts"
    assert a.uns["biossl"]["transform"] == "normalize_total(1e4)+log1p"
    x = a.X.toarray() if sp.issparse(a.X) else a.X
    np.testing.assert_allclose(np.expm1(x).sum(axis=1), 1e4, rtol=1e-3)
    expected = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(a.layers["counts"].toarray(), counts)
    # A second pass, even one told the data are raw counts, must not normalise again.
    before = x.copy()
    normalize_expression(a, normalized=False)
    np.testing.assert_array_equal(a.X.toarray() if sp.issparse(a.X) else a.X, before)
    a.write_h5ad(tmp_path / "normalised.h5ad")
    again = read_expression(tmp_path / "normalised.h5ad", normalized=False)
    np.testing.assert_allclose(again.X.toarray() if sp.issparse(again.X) else again.X, before)


def test_declared_normalised_is_not_transformed(fixtures: Path) -> None:
    a = read_expression(fixtures / COUNTS, normalized=True)
    np.testing.assert_array_equal(a.X.toarray(), ad.read_h5ad(fixtures / COUNTS).X.toarray())
    assert a.uns["biossl"]["detected"] == "declared by user"


def test_highly_variable_genes_and_cell_patient_column(fixtures: Path) -> None:
    a = read_expression(fixtures / COUNTS, n_top_genes=100, patient_column="bulk_labels")
    assert a.n_vars == 100 and a.var["highly_variable"].all()
    groups = set(ad.read_h5ad(fixtures / COUNTS).obs["bulk_labels"].astype(str))
    assert table_patients(fixtures / COUNTS, patient_column="bulk_labels") == groups
    pseudo = read_expression(fixtures / COUNTS, patient_column="bulk_labels", aggregate="mean")
    assert set(pseudo.obs_names) == groups and pseudo.obs["n_rows"].sum() == 150


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*:anndata.OldFormatWarning")
def test_pbmc68k_reduced_scaled_is_recognised() -> None:
    path = Path(sc.__file__).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"
    assert path.is_file(), "pbmc68k_reduced ships inside scanpy and loads offline"
    a = read_expression(path)
    np.testing.assert_array_equal(a.X, sc.datasets.pbmc68k_reduced().X)
    assert a.uns["biossl"]["transform"] == "none"
    assert a.obs["patient_id"].tolist() == list(a.obs_names)


def test_other_formats_match_csv(kirc: Path, kirc_df: pd.DataFrame, tmp_path: Path) -> None:
    ref = read_expression(kirc)
    kirc_df.to_parquet(tmp_path / "k.parquet")
    kirc_df.to_csv(tmp_path / "k.tsv.gz", sep="\t", index=False)
    kirc_df.to_csv(
        tmp_path / "k.csv.zip", index=False, compression={"method": "zip", "archive_name": "x.csv.zip"}
    )
    for name in ("k.parquet", "k.tsv.gz", "k.csv.zip"):
        other = read_expression(tmp_path / name)
        np.testing.assert_array_equal(other.X, ref.X)
        assert list(other.obs["patient_id"]) == list(ref.obs["patient_id"])


def test_general_table_and_gene_column_override(kirc_df: pd.DataFrame, tmp_path: Path) -> None:
    genes = kirc_df[["case_id", "age", "site"] + [c for c in kirc_df.columns if c.endswith("_rnaseq")][:5]]
    plain = genes.rename(columns=lambda c: c.removesuffix("_rnaseq"))
    a = read_expression(_write(plain, tmp_path / "plain.csv"))
    assert list(a.var_names) == list(plain.columns[3:])  # age is metadata, site is text
    assert "age" in a.obs.columns
    cnv = read_expression(_write(kirc_df, tmp_path / "k.csv"), gene_columns="_cnv")
    assert cnv.n_vars == 5 and "CHL1" in cnv.var_names
    picked = read_expression(tmp_path / "k.csv", gene_columns=["AAK1_rnaseq", "BAP1_mut"])
    assert list(picked.var_names) == ["AAK1_rnaseq", "BAP1_mut"]
    regex = read_expression(tmp_path / "k.csv", gene_columns=r"^AB.*_rnaseq$")
    assert regex.n_vars > 0 and all(g.startswith("AB") for g in regex.var_names)


def test_cache_returns_copies_and_sees_new_mtime(kirc_df: pd.DataFrame, tmp_path: Path) -> None:
    path = _write(kirc_df, tmp_path / "k.csv")
    a = read_expression(path)
    a.X[:] = 0
    assert read_expression(path).X.any()
    df = kirc_df.copy()
    df["AAK1_rnaseq"] = 9.5
    _write(df, path)
    os.utime(path, ns=(1, 10**18))
    assert (read_expression(path)[:, "AAK1"].X == 9.5).all()


def test_nan_and_inf_name_count_gene_and_row(kirc_df: pd.DataFrame, tmp_path: Path) -> None:
    df = kirc_df.copy()
    df.loc[3, "ABCB1_rnaseq"] = np.nan
    df.loc[7, "AAK1_rnaseq"] = np.inf
    with pytest.raises(ExpressionError, match=r"bad\.csv: 2 NaN/inf .*gene 'ABCB1', row 'TCGA-A3-3311'"):
        read_expression(_write(df, tmp_path / "bad.csv"))


@pytest.mark.parametrize(
    ("edit", "kwargs", "pattern"),
    [
        ("negative", {"normalized": False}, r"raw counts but has negative values .*'AAK1'"),
        ("dup", {}, r"duplicate column names"),
        (
            "none",
            {"patient_column": "donor"},
            r"patient column 'donor' not found; columns are \['Unnamed: 0'",
        ),
        ("empty", {}, r"empty expression table"),
        ("text", {"gene_columns": ["site"]}, r"gene column 'site' is not numeric"),
    ],
)
def test_bad_tables(kirc_df: pd.DataFrame, tmp_path: Path, edit: str, kwargs: dict, pattern: str) -> None:
    df = kirc_df.iloc[:, :15].copy()
    path = tmp_path / "t.csv"
    if edit == "negative":
        df = df.drop(columns=[c for c in df.columns if c.endswith("_rnaseq") and c != "AAK1_rnaseq"])
        df["AAK1_rnaseq"] = -df["AAK1_rnaseq"].abs().round()
    elif edit == "empty":
        df = df.iloc[:0]
    _write(df, path)
    if edit == "dup":
        text = path.read_text().splitlines()
        path.write_text("\n".join([text[0] + ",AAK1_rnaseq"] + [t + ",1" for t in text[1:]]) + "\n")
    with pytest.raises(ExpressionError, match=pattern):
        read_expression(path, **kwargs)


def test_missing_empty_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(ExpressionError, match="not found"):
        probe(tmp_path / "nope.csv")
    (tmp_path / "zero.csv").write_text("")
    with pytest.raises(ExpressionError, match="zero.csv: empty"):
        probe(tmp_path / "zero.csv")
    (tmp_path / "x.xlsx").write_text("a")
    with pytest.raises(ExpressionError, match="unknown expression format"):
        probe(tmp_path / "x.xlsx")


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicate_genes_in_h5ad(fixtures: Path, tmp_path: Path) -> None:
    a = ad.read_h5ad(fixtures / COUNTS)[:, :4].copy()
    a.var_names = ["CD3E", "CD3E", "MS4A1", "LYZ"]
    a.write_h5ad(tmp_path / "dup.h5ad")
    with pytest.raises(ExpressionError, match=r"dup\.h5ad: duplicate gene names \['CD3E'\]"):
        read_expression(tmp_path / "dup.h5ad")


@pytest.mark.shared
@pytest.mark.parametrize("cancer", ["blca", "brca", "coadread", "gbmlgg", "hnsc", "kirc", "kirp", "lihc"])
def test_tcga_porpoise_tables(shared_data: Path, cancer: str) -> None:
    path = shared_data / "tcga_porpoise" / f"tcga_{cancer}_all_clean.csv.zip"
    raw = pd.read_csv(path, usecols=["case_id", "site", "survival_months", "censorship", "oncotree_code"])
    a = read_expression(path)
    assert 1500 < a.n_vars < 1600 and a.n_obs == len(raw)
    assert a.uns["biossl"]["transform"] == "none" and "negative" in a.uns["biossl"]["detected"]
    for col in ("site", "oncotree_code", "survival_months", "censorship"):
        assert a.obs[col].astype(str).tolist() == raw[col].astype(str).tolist()
    patients = table_patients(path)
    assert patients == set(raw["case_id"])
    assert read_expression(path, aggregate="first").n_obs == len(patients)


def test_sparse_nan_and_negative_are_located(fixtures: Path, tmp_path: Path) -> None:
    a = ad.read_h5ad(fixtures / COUNTS)
    coo = a.X.tocoo()
    row, col = int(coo.row[40]), int(coo.col[40])
    x = a.X.toarray()
    x[row, col] = np.nan
    a.X = sp.csr_matrix(x)
    a.write_h5ad(tmp_path / "nan.h5ad")
    gene, cell = a.var_names[col], a.obs_names[row]
    with pytest.raises(ExpressionError, match=rf"1 NaN/inf .*gene '{gene}', row '{cell}'"):
        read_expression(tmp_path / "nan.h5ad")
    x[row, col] = -3.0
    a.X = sp.csr_matrix(x)
    a.write_h5ad(tmp_path / "neg.h5ad")
    with pytest.raises(ExpressionError, match=rf"negative values \(first: gene '{gene}', row '{cell}'\)"):
        read_expression(tmp_path / "neg.h5ad", normalized=False)
    # undeclared, one negative whole number among counts is an error too; declared normalised, it is read as is
    with pytest.raises(ExpressionError, match=rf"1 value\(s\) are negative \(first: gene '{gene}', row '{cell}'\)"):
        read_expression(tmp_path / "neg.h5ad")
    assert read_expression(tmp_path / "neg.h5ad", normalized=True).uns["biossl"]["transform"] == "none"


def test_negative_counts_are_one_error_not_a_warning_then_an_error(
    fixtures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Real PBMC counts with one count set to -3: the cohort check and the reader raise the same error, and
    nothing is logged before it (it used to be a warning from the reader, then an error from the probe)."""
    a = ad.read_h5ad(fixtures / COUNTS)[:5, :40].copy()
    x = np.asarray(a.X.toarray())
    x[2, 3] = -3
    a.X = x
    a.write_h5ad(tmp_path / "counts.h5ad")
    expected = (rf"counts\.h5ad: looks like raw counts \(whole numbers\) but 1 value\(s\) are negative "
                rf"\(first: gene '{a.var_names[3]}', row '{a.obs_names[2]}'\); counts cannot be negative: "
                "fix or drop these entries")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ExpressionError, match=expected):
            probe(tmp_path / "counts.h5ad")
        with pytest.raises(ExpressionError, match=expected):
            read_expression(tmp_path / "counts.h5ad")
        pd.DataFrame({"patient_id": [a.obs_names[0]], "modality": ["expression"], "path": ["counts.h5ad"]}).to_csv(
            tmp_path / "m.csv", index=False)
        # The row names the file once (the reader's own path prefix is not repeated).
        in_row = expected.replace(r"counts\.h5ad: ", r"counts\.h5ad: unreadable expression file: ", 1)
        with pytest.raises(ManifestError, match="row 2: .*" + in_row) as info:
            Cohort.from_manifest(tmp_path / "m.csv")
    assert str(info.value).count("counts cannot be negative") == 1  # one problem line for the file
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # more negative whole numbers (copy-number calls, -2..2) are normalised integer data, not bad counts
    x[:, :] = np.tile([-2, -1, 0, 1, 2], 8)
    a.X = x
    cnv = normalize_expression(a.copy())
    assert cnv.uns["biossl"]["transform"] == "none" and "negative" in cnv.uns["biossl"]["detected"]


def test_top_genes_on_normalised_table_by_variance(kirc: Path, kirc_df: pd.DataFrame) -> None:
    a = read_expression(kirc, n_top_genes=7)
    rna = kirc_df[[c for c in kirc_df.columns if c.endswith("_rnaseq")]].astype(np.float32)
    top = set(rna.var(ddof=0).sort_values(ascending=False).index[:7].str.removesuffix("_rnaseq"))
    assert set(a.var_names) == top and a.uns["biossl"]["n_top_genes"] == 7


def test_h5ad_missing_patient_column_lists_obs(fixtures: Path) -> None:
    with pytest.raises(
        ExpressionError, match=r"patient column 'donor' not in obs; obs columns are \['bulk_labels'"
    ):
        table_patients(fixtures / COUNTS, patient_column="donor")

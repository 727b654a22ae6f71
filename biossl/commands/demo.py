"""``biossl demo``: run the chain on the bundled demo cohort and print what it did."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from biossl.data import keys

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's options."""
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--manifest", type=Path, default=None, help="another cohort's manifest (default: the demo)")


def run(args: argparse.Namespace) -> int:
    """Validate the demo cohort, tile its slides and print the cohort summary."""
    from biossl.data.cohort import Cohort
    from biossl.data.demo import DEMO_MANIFEST
    from biossl.data.tiling import tile_slides

    manifest = args.manifest or DEMO_MANIFEST
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cohort = Cohort.from_manifest(manifest)
    print(f"Cohort {manifest}: {len(cohort.patients)} patients, {len(cohort.table)} files\n")
    print(cohort.summary().to_string())

    slides = sorted({f for p in cohort.patients for f in cohort.files(p, keys.WSI)})
    results = tile_slides(slides, out / "tiles")
    rows = [{"slide": Path(r.slide).name, "tiles": r.n_tiles, "tissue_fraction": round(r.tissue_fraction, 3),
             "level": r.level} for r in results]
    print("\nTiles per slide (0.5 µm/px, 256 px; coordinates and thumbnails in " f"{out / 'tiles'}):")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0

"""``biossl tile``: detect tissue and write tile coordinates (HDF5) and a thumbnail per slide.

Reruns skip slides already tiled with the same options (a killed run is resumed by running it again);
``--overwrite`` tiles them again. A slide without tissue is skipped with a warning (an error when no
slide has tissue); ``--keep-empty`` writes it an ``.h5`` listing no tiles instead, as pretraining does.
"""

from __future__ import annotations

import argparse
import logging

from biossl.errors import SlideError

logger = logging.getLogger(__name__)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0 <= i < n) into ``(i, n)``."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants i/n such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n (for example 0/4 ... 3/4)")
    return i, n


def parse_mpp(text: str) -> float:
    """Parse a µm per pixel value; an implausible one (a value in mm, say) is refused before any work."""
    from biossl.data.wsi import mpp_problem  # openslide is loaded only when the option is used

    problem = mpp_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return float(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments to ``parser``."""
    from biossl.commands.options import add_shared

    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="whole-slide images (.svs, .tif, ...)")
    add_shared(parser, "out", required=("out",), help={"out": "output folder for .h5 and thumbnails"})
    parser.add_argument("--mpp", type=parse_mpp, default=0.5, metavar="X", help="target µm per pixel of tiles")
    parser.add_argument("--tile-size", type=int, default=256, metavar="PX", help="tile side in pixels")
    parser.add_argument(
        "--slide-mpp",
        type=parse_mpp,
        default=None,
        metavar="X",
        help="level-0 µm/px of the slides whose files do not record it (slides that record it keep their own)",
    )
    parser.add_argument(
        "--override-slide-mpp",
        type=parse_mpp,
        default=None,
        metavar="X",
        help="level-0 µm/px replacing what every slide's file records (each replacement is logged); "
        "only for files whose metadata is wrong",
    )
    parser.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        metavar="F",
        help="keep tiles with at least this tissue fraction",
    )
    parser.add_argument(
        "--keep-empty",
        action="store_true",
        help="for a slide without tissue, warn and write an .h5 listing no tiles (the slide then adds no tiles "
        "to training) instead of skipping it, and exit 0 even when no slide has tissue",
    )
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="i/n",
        help="process every n-th slide of the sorted list, starting at i (0-based)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="tile every slide again (default: skip slides whose .h5 exists and was made with the same options)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Tile every slide; print one line per slide and a total."""
    from biossl.data.tiling import select_shard, tile_slides

    if not select_shard(args.slides, args.shard):
        print(f"shard {args.shard[0]}/{args.shard[1]} of {len(args.slides)} slides is empty; nothing to do")
        return 0
    results = tile_slides(
        args.slides,
        args.out,
        shard=args.shard,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        mpp=args.mpp,
        tile_size=args.tile_size,
        slide_mpp=args.slide_mpp,
        override_slide_mpp=args.override_slide_mpp,
        min_tissue=args.min_tissue,
        keep_empty=args.keep_empty,
    )
    for r in results:
        note = (" (already tiled)" if r.reused else "") + (" (no tissue)" if r.n_tiles == 0 else "")
        print(
            f"{r.slide.name}: {r.n_tiles} tiles, tissue {r.tissue_fraction:.1%}, "
            f"level {r.level}, read {r.read_size} px -> {r.h5_path}{note}"
        )
    total = sum(r.n_tiles for r in results)
    print(f"total: {total} tiles from {len(results)} slides in {args.out}")
    if not results:  # every slide blank (--keep-empty) lands in results with 0 tiles
        raise SlideError("no slide produced tiles (see the warnings above); lower --min-tissue or check the slides")
    return 0

"""``biossl cache-features``: embed every tile once with a frozen encoder and write one HDF5 per slide.

Each features file has its coordinates file's name (``<stem>.<slide fingerprint>.h5``) and records the
slide's fingerprint, so pretraining and ``embed`` find a slide's features by its content, never those of
another slide of the same name.

The encoder is a pretraining checkpoint's wsi encoder (``--checkpoint``) or a registered image
encoder with fixed-seed random weights (``--encoder``, a baseline). Slides already cached with the
same encoder weights and tile size are skipped, so an interrupted run can be started again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from biossl import keys
from biossl.commands.tile import parse_shard
from biossl.errors import InputError

logger = logging.getLogger(__name__)


def parse_encoder_arg(text: str) -> tuple[str, Any]:
    """Parse ``k=v`` (``v`` read as YAML: ``64`` is an int, ``[8, 8]`` a list) into ``(k, v)``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--encoder-arg wants key=value such as img_size=64, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments to ``parser``."""
    from biossl.commands.options import add_shared

    parser.add_argument("coords_dir", type=Path, metavar="COORDS_DIR", help="folder of .h5 files from `biossl tile`")
    add_shared(parser, "out", required=("out",), help={"out": "output folder for feature .h5 files"})
    source = parser.add_mutually_exclusive_group(required=True)
    add_shared(source, "checkpoint", help={"checkpoint": "pretraining checkpoint with a slide encoder"})
    parser.add_argument("--modality", metavar="NAME", default=None,
                        help="the checkpoint's slide modality whose encoder embeds the tiles (needed only when it "
                             "has several, e.g. he and ihc)")
    source.add_argument("--encoder", metavar="NAME", help="registered image encoder (random weights, seed 0)")
    parser.add_argument("--encoder-arg", type=parse_encoder_arg, action="append", default=[], metavar="K=V",
                        help="keyword argument of --encoder (repeatable), e.g. img_size=64")
    parser.add_argument("--tile-px", type=int, default=None, metavar="PX",
                        help="tile edge fed to the encoder (default: the checkpoint's, else the encoder's img_size)")
    add_shared(parser, "batch_size", "num_workers", "device", default={"batch_size": 256, "num_workers": 4},
               help={"batch_size": "tiles per forward pass", "num_workers": "tile-reading worker processes"})
    parser.add_argument("--shard", type=parse_shard, default=None, metavar="i/n",
                        help="process every n-th coordinates file of the sorted list, starting at i")
    parser.add_argument("--overwrite", action="store_true", help="recompute files that already exist")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def load_checkpoint_encoder(path: Path, modality: str | None = None) -> tuple[torch.nn.Module, dict[str, Any],
                                                                              dict[str, Any]]:
    """Build a slide encoder of a pretraining checkpoint with its weights (the checkpoint read safely, once).

    Returns:
        ``(encoder, spec, bag_spec)``: the spec is ``{"encoder": name, **kwargs}``; ``bag_spec`` is the
        data's bag spec stored in the checkpoint (empty if absent).

    Raises:
        InputError: The file is not a usable biossl checkpoint (:func:`biossl.checkpoint.load_checkpoint`),
            has no slide encoder that reads pixels, several without ``modality`` naming one, or weights
            that do not fit its specs.
    """
    from biossl.checkpoint import load_checkpoint
    from biossl.encoders.patient import PatientEncoder

    ckpt = load_checkpoint(path)
    state = ckpt["biossl"]
    specs = state["modality_specs"]
    slides = [m for m, sp in specs.items() if (sp.get("kind") or keys.LEGACY_KINDS.get(m)) == keys.SLIDE]
    if modality is not None and modality not in slides:
        raise InputError(f"checkpoint {path} has no slide modality {modality!r} (its slide modalities: "
                         f"{', '.join(slides) or 'none'}); fix --modality")
    if not slides:
        raise InputError(
            f"checkpoint {path} has no slide encoder (its modalities: {', '.join(specs) or 'none'}); pass a "
            "checkpoint from a run on slides, or --encoder NAME"
        )
    if modality is None and len(slides) > 1:
        raise InputError(f"checkpoint {path} has several slide modalities ({', '.join(slides)}); pick one with "
                         "--modality NAME")
    name = modality or slides[0]
    if str(specs[name].get("encoder", "")).startswith("features/"):
        raise InputError(f"checkpoint {path}: its {name} encoder {specs[name]['encoder']} reads cached features, "
                         "not pixels")
    model = PatientEncoder.from_loaded(ckpt, path, modalities=[name])
    return model.encoders[name], model.modality_specs[name], dict(state.get("bag_spec") or {})


def _build_encoder(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    from biossl.encoders import ENCODERS

    try:
        factory = ENCODERS.get(name)
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            return factory(**kwargs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"--encoder {name} with {kwargs}: {exc}") from None


def _current(files: list[Path]) -> list[Path]:
    """``files`` less the coordinates files superseded by another one of the same slide file in the list.

    After a slide is re-scanned in place and tiled again, its folder holds the old content's file
    (``<stem>.<old fingerprint>.h5``) beside the new one; the old one is skipped with a warning. An old
    file without a new one is kept (reading it fails, saying to tile the slide again).
    """
    from biossl.data.identity import file_identity
    from biossl.data.tiling import read_params

    recorded: dict[Path, tuple[str, str]] = {}  # coordinates file -> (slide path, slide fingerprint)
    for h5 in files:
        try:
            attrs = read_params(h5)
        except OSError:
            continue  # reported when it is read
        if "slide_path" in attrs and "slide_fingerprint" in attrs:
            recorded[h5] = (str(Path(str(attrs["slide_path"])).resolve()), str(attrs["slide_fingerprint"]))
    now: dict[str, str | None] = {}
    for slide, _ in recorded.values():
        try:
            now.setdefault(slide, file_identity(slide).fingerprint)
        except OSError:
            now.setdefault(slide, None)
    has_current = {slide for slide, fp in recorded.values() if fp == now[slide]}
    kept = []
    for h5 in files:
        slide, fp = recorded.get(h5, ("", ""))
        if h5 in recorded and fp != now[slide] and slide in has_current:
            logger.warning("%s lists the tiles of slide %s as it was before it changed (re-scanned); another "
                           "coordinates file in %s is of its present content: skipped, delete it", h5, slide,
                           h5.parent)
            continue
        kept.append(h5)
    return kept


def run(args: argparse.Namespace) -> int:
    """Cache features of every coordinates file in ``COORDS_DIR``; print one line per slide and a total."""
    from biossl.data.features import SlideFeatures, encoder_fingerprint, encoder_input_px, write_tile_features
    from biossl.data.tiling import select_shard
    from biossl.device import resolve_device

    resolve_device(args.device)  # a bad --device stops here, before the encoder is built
    coords_dir: Path = args.coords_dir
    if not coords_dir.is_dir():
        raise InputError(f"coordinates folder {coords_dir} not found; pass the --out folder of `biossl tile`")
    if coords_dir.resolve() == Path(args.out).resolve():
        raise InputError(f"--out {args.out} is the coordinates folder; features need a folder of their own")
    files = sorted(coords_dir.glob("*.h5"))
    if not files:
        raise InputError(f"{coords_dir} has no .h5 coordinates files; run `biossl tile SLIDES --out {coords_dir}`")
    if args.batch_size < 1 or args.num_workers < 0:
        raise InputError(f"--batch-size must be >= 1 and --num-workers >= 0, got {args.batch_size}, {args.num_workers}")
    files = select_shard(_current(files), args.shard)
    if not files:
        print(f"shard {args.shard[0]}/{args.shard[1]} of the coordinates files is empty; nothing to do")
        return 0
    if args.checkpoint is not None:
        encoder, spec, bag_spec = load_checkpoint_encoder(args.checkpoint, args.modality)
        name, extra = spec["encoder"], {"encoder_checkpoint": str(args.checkpoint.resolve())}
        tile_px = args.tile_px or bag_spec.get("tile_px") or encoder_input_px(encoder)
    else:
        kwargs = dict(args.encoder_arg)
        encoder = _build_encoder(args.encoder, kwargs)
        name, extra = args.encoder, {"encoder_kwargs": yaml.safe_dump(kwargs, default_flow_style=True).strip()}
        tile_px = args.tile_px or encoder_input_px(encoder)
        logger.warning("--encoder %s has random weights (seed 0): these features are a baseline only", name)
    fingerprint = encoder_fingerprint(encoder)
    total = 0
    for h5 in files:
        try:
            out = write_tile_features(
                h5,
                encoder,
                args.out,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                tile_px=tile_px,
                device=args.device,
                encoder_name=name,
                fingerprint=fingerprint,
                extra_attrs=extra,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
        except InputError:
            raise
        except ValueError as exc:  # the encoder rejected the tiles (size, channels) or gave bad values
            raise InputError(f"{h5}: {exc}; check --tile-px and the encoder") from None
        feats = SlideFeatures(out)
        total += len(feats)
        print(f"{h5.stem}: {len(feats)} tiles x {feats.embed_dim} -> {out}")
    size = f"{tile_px} px" if tile_px else "tiler's size"
    print(f"total: {total} tiles from {len(files)} slides in {args.out} (encoder {name}, tiles at {size})")
    return 0

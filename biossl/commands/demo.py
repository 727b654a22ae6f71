"""``biossl demo``: run the chain on the bundled demo cohort and print what it did."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from biossl import keys

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "pretrain" / "demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's options."""
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--manifest", type=Path, default=None, help="another cohort's manifest (default: the demo)")
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="pretraining config")
    parser.add_argument("--max-steps", type=int, default=None, help="override the config's trainer.max_steps")
    parser.add_argument("--labels", type=Path, default=None,
                        help="labels for the embeddings and the audit (default: the demo's, with the demo cohort)")


def loss_table(metrics_csv: Path, *, window: int = 10) -> pd.DataFrame:
    """Mean of each logged loss term over the first and the last ``window`` steps."""
    m = pd.read_csv(metrics_csv)
    cols = [c for c in m.columns if c.startswith("train/") and c != "train/loss"] + ["train/loss"]
    rows = []
    for c in cols:
        s = m[["step", c]].dropna().groupby("step")[c].mean()
        if len(s) < 2:
            continue
        w = max(1, min(window, len(s) // 3))
        first, last = s.iloc[:w].mean(), s.iloc[-w:].mean()
        rows.append({"term": c.removeprefix("train/"), f"first {w} steps": round(first, 4),
                     f"last {w} steps": round(last, 4), "change": f"{100 * (last - first) / abs(first):+.0f}%"})
    return pd.DataFrame(rows)


def run(args: argparse.Namespace) -> int:
    """Validate the demo cohort, tile its slides, pretrain, print the summaries, embed, and audit the embeddings."""
    from biossl.commands import pretrain
    from biossl.data.cohort import Cohort
    from biossl.data.demo import DEMO_LABELS, DEMO_MANIFEST
    from biossl.data.tiling import tile_slides
    from biossl.errors import InputError

    manifest = (args.manifest or DEMO_MANIFEST).resolve()
    out: Path = args.out
    work = out / "work"
    out.mkdir(parents=True, exist_ok=True)
    if not args.config.is_file():
        raise InputError(f"pretraining config {args.config} not found; pass --config")

    cohort = Cohort.from_manifest(manifest)
    print(f"Cohort {manifest}: {len(cohort.patients)} patients, {len(cohort.table)} files\n")
    print(cohort.summary().to_string())

    slides = sorted({f for p in cohort.patients for m in cohort.of_kind(keys.SLIDE) for f in cohort.files(p, m)})
    results = tile_slides(slides, work / "tiles")
    rows = [{"slide": Path(r.slide).name, "tiles": r.n_tiles, "tissue_fraction": round(r.tissue_fraction, 3),
             "level": r.level} for r in results]
    print(f"\nTiles per slide (0.5 µm/px, 256 px; coordinates and thumbnails in {work / 'tiles'}):")
    print(pd.DataFrame(rows).to_string(index=False))

    root = out / "pretrain"
    argv = ["--config", str(args.config), "--data.manifest", str(manifest), "--data.work_dir", str(work),
            "--trainer.default_root_dir", str(root)]
    if args.max_steps is not None:
        argv += ["--trainer.max_steps", str(args.max_steps)]
    print(f"\nPretraining (config {args.config}) ...", flush=True)
    pretrain.main(argv)

    print(f"\nLoss terms (from {root / 'metrics.csv'}):")
    print(loss_table(root / "metrics.csv").to_string(index=False))
    print(f"\nCheckpoints: {root / 'checkpoints'}  (last.ckpt is the newest)")
    print(f"Resolved config: {root / 'config.yaml'}")
    labels = args.labels or (DEMO_LABELS if args.manifest is None else None)
    return embed_and_audit(root / "checkpoints" / "last.ckpt", manifest, labels, work, out)


def embed_and_audit(checkpoint: Path, manifest: Path, labels: Path | None, work: Path, out: Path) -> int:
    """``biossl embed`` of the cohort, then ``biossl audit`` of its ``site`` column, with the artifact probes.

    The label is ``subtype`` when the embeddings have it; the checkpoint's synthetic artifact probes run too.

    The audit's verdict is printed, never raised: a "fail" (exit code 1 of ``biossl audit``) is a finding of
    the demo, not an error of it. The demo's sites have at most 3 patients, hence 2 folds.

    Returns:
        0, or the exit code of the embedding or the audit when it failed otherwise (2 bad input, 74 an
        output that cannot be written), for the demo's own exit code.
    """
    from biossl.cli import main
    from biossl.downstream.embed import read_embeddings

    embeddings = out / "embeddings.h5ad"
    argv = ["embed", "--checkpoint", str(checkpoint), "--manifest", str(manifest), "--work-dir", str(work),
            "--out", str(embeddings)]
    if labels is not None:
        argv += ["--labels", str(labels)]
    print(f"\nbiossl {' '.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        print("embedding failed; no audit")
        return code
    obs = read_embeddings(embeddings).obs
    if "site" not in obs.columns:
        print("\nNo `site` column in the manifest: no audit.")
        return 0
    argv = ["audit", "--embeddings", str(embeddings), "--columns", "site", "--folds", "2", "--out", str(out / "audit"),
            "--artifacts", "--checkpoint", str(checkpoint), "--manifest", str(manifest), "--work-dir", str(work)]
    if "subtype" in obs.columns:
        argv += ["--label", "subtype"]
    if labels is not None:
        argv += ["--labels", str(labels)]
    print(f"\nbiossl {' '.join(argv)}", flush=True)
    code = main(argv)
    meaning = {0: "pass", 1: "fail: a site signature was found (a finding, not an error of the demo)",
               74: "the audit could not be written (see the error above)"}
    print(f"audit exit code {code} ({meaning.get(code, 'bad input')}); report: {out / 'audit' / 'report.html'}")
    return 0 if code in (0, 1) else code

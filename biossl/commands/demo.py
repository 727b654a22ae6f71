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
    from biossl.commands.options import add_shared

    add_shared(parser, "out", "manifest", default={"out": Path("demo_output")},
               help={"out": "output folder (pretrain/, work/, embeddings.h5ad, audit/, retrieval.json)",
                     "manifest": "another cohort's manifest (default: the demo cohort, biossl/demo_data)"})
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, metavar="YAML",
                        help="pretraining config (default: configs/pretrain/demo.yaml)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="override the config's trainer.max_steps")
    add_shared(parser, "labels",
               help={"labels": "labels for the embeddings and the audit (default: the demo's, with the demo cohort)"})


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
    """Validate the demo cohort, tile its slides, pretrain, print the summaries, embed, audit, and run retrieval."""
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
    """``biossl embed`` of the cohort, ``biossl audit`` of its ``site`` column, then ``biossl retrieval`` of its tables.

    The label is ``subtype`` when the embeddings have it; the checkpoint's synthetic artifact probes run too.

    The audit's verdict is printed, never raised: a "fail" (exit code 1 of ``biossl audit``) is a finding of
    the demo, not an error of it. The demo's sites have at most 3 patients, hence 2 folds. Cross-modal
    retrieval between the table modalities (:func:`table_retrieval`) runs after the audit, whatever its verdict.

    Returns:
        0, or the exit code of the embedding, the audit or the retrieval when it failed otherwise (2 bad input,
        74 an output that cannot be written), for the demo's own exit code.
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
    adata = read_embeddings(embeddings)
    obs = adata.obs
    if "site" not in obs.columns:
        print("\nNo `site` column in the manifest: no audit.")
        return table_retrieval(embeddings, list(adata.obsm.keys()), manifest, out)
    argv = ["audit", "--embeddings", str(embeddings), "--columns", "site", "--folds", "2", "--out", str(out / "audit"),
            "--artifacts", "--checkpoint", str(checkpoint), "--manifest", str(manifest), "--work-dir", str(work)]
    if "subtype" in obs.columns:
        argv += ["--label", "subtype"]
    if labels is not None:
        argv += ["--labels", str(labels)]
    print(f"\nbiossl {' '.join(argv)}", flush=True)
    code = main(argv)
    meaning = {0: "pass", 1: "fail: a site signature was found (a finding, not an error of the demo)",
               3: "incomplete: site could not be tested on some embeddings (too few patients; a finding, not an "
                  "error of the demo)",
               74: "the audit could not be written (see the error above)"}
    print(f"audit exit code {code} ({meaning.get(code, 'bad input')}); report: {out / 'audit' / 'report.html'}")
    audit_code = 0 if code in (0, 1, 3) else code
    retrieval_code = table_retrieval(embeddings, list(adata.obsm.keys()), manifest, out)
    return audit_code or retrieval_code


def table_modalities(manifest: Path) -> list[str]:
    """The manifest's modalities of kind ``table``: by its ``kind`` column, else the legacy names' own kinds.

    A modality whose kind only the config gives (``data.kinds``) is not found here: :func:`table_retrieval` reads
    the kinds the embeddings record (the checkpoint's) and falls back to this for older embeddings.
    """
    from biossl.data.cohort import read_manifest

    table = read_manifest(manifest)
    cells = (table[keys.KIND] if keys.KIND in table.columns else pd.Series("", index=table.index)).fillna("")
    found: dict[str, None] = {}
    for modality, cell in zip(table[keys.MODALITY], cells.astype(str).str.strip().str.lower()):
        if (cell or keys.LEGACY_KINDS.get(modality, "")) == keys.TABLE:
            found[modality] = None
    return list(found)


def table_retrieval(embeddings: Path, obsm_keys: list[str], manifest: Path, out: Path) -> int:
    """``biossl retrieval`` between the embeddings of the cohort's table modalities; prints its table.

    The demo's tables (expression, copy number, mutations) are the same TCGA cases', so retrieval between
    them can find the pairing that pretraining's CLIP terms were given; on the training patients this is a
    memorisation check, not held-out evidence. Fewer than two table embeddings: nothing to do. A failure is
    printed, never raised: the demo's other results are already written.

    Returns:
        0, or the retrieval's exit code when it failed (2 bad input, 74 an output that cannot be written; 1 an
        unexpected error, printed on one line).
    """
    from biossl.cli import main
    from biossl.downstream.embed import obsm_key, read_embeddings

    # The kinds the embeddings record (the checkpoint's: from a kind column or the config), and the manifest's
    # kind column (all there is for embeddings written before kinds were recorded).
    recorded = read_embeddings(embeddings).uns.get("biossl", {}).get("kinds") or {}
    names = [m for m, k in recorded.items() if k == keys.TABLE] + table_modalities(manifest)
    tables = {obsm_key(m) for m in names}
    chosen = [k for k in obsm_keys if k in tables]
    if len(chosen) < 2:
        print(f"\nCross-modal retrieval needs two table embeddings; the embeddings have {chosen or 'none'}: "
              "no retrieval.")
        return 0
    argv = ["retrieval", "--embeddings", str(embeddings), "--keys", ",".join(chosen),
            "--out", str(out / "retrieval.json"), "--plot", str(out / "retrieval.png")]
    print(f"\nbiossl {' '.join(argv)}", flush=True)
    try:
        code = main(argv)
    except Exception as exc:  # noqa: BLE001 - a report of the demo; the run's other results stand
        logger.debug("retrieval failed", exc_info=True)
        print(f"retrieval failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); the demo's other "
              "results stand")
        return 1
    if code == 0:
        print("Reading: retrieval on the demo's own training patients: memorisation check, not held-out evidence "
              "(compare each recall@k with its chance k/n)")
    else:
        print(f"retrieval exit code {code} ({'an output could not be written' if code == 74 else 'bad input'}; "
              "see the error above)")
    return code

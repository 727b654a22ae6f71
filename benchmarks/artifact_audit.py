"""Synthetic artifact audit of the bundled demo cohort: drift, detectability and stability per artifact.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/artifact_audit.py [--checkpoint CKPT] [--untrained]
        [--strengths 0.25,0.5,1] [--json out.json]

Without ``--checkpoint`` it pretrains ``configs/pretrain/demo.yaml`` (300 steps, ~12 min on 2 cores) into
``benchmarks/_work/artifact_audit/pretrain`` once and reuses it. ``--untrained`` also audits a 1-step run of
the same config (the encoders at initialisation), to see what pretraining changes. Labels: the demo's
``subtype`` (CCRCC / PRCC), for the stability column. Prints one markdown table per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import ROOT, run_biossl  # noqa: E402

from biossl.audit.artifacts import artifact_audit_from_checkpoint  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "artifact_audit"
DEMO = ROOT / "biossl" / "demo_data"


def pretrain(name: str, steps: int) -> Path:
    """``biossl pretrain`` of the demo config for ``steps`` steps (reused when its last.ckpt exists)."""
    run = WORK / name
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        run.mkdir(parents=True, exist_ok=True)
        seconds = run_biossl(["pretrain", "--config", "configs/pretrain/demo.yaml", "--trainer.max_steps", str(steps),
                              "--trainer.default_root_dir", str(run), "--data.work_dir", str(WORK / "work")],
                             run / "pretrain.log")
        print(f"pretrained {name} ({steps} steps) in {seconds:.0f} s", file=sys.stderr)
    return ckpt


def table(records: list[dict[str, Any]]) -> str:
    """Markdown table of the records."""
    def num(v: Any) -> str:
        return "–" if v is None else f"{v:.2f}"

    lines = ["| modality | artifact | strength | setting | drift | drift q90 | detectability | stability |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['modality']} | {r['artifact']} | {r['strength']:g} | {r['parameter']} | {num(r['drift'])} "
                     f"| {num(r['drift_q90'])} | {num(r['detectability'])} | {num(r['stability'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a demo-cohort pretraining checkpoint (default: pretrain one)")
    parser.add_argument("--untrained", action="store_true", help="also audit a 1-step run of the demo config")
    parser.add_argument("--strengths", default="0.25,0.5,1")
    parser.add_argument("--json", type=Path, help="write all records here")
    args = parser.parse_args()
    strengths = tuple(float(s) for s in args.strengths.split(","))
    checkpoints = {"pretrained": args.checkpoint or pretrain("pretrain", 300)}
    if args.untrained:
        checkpoints["untrained (1 step)"] = pretrain("untrained", 1)
    out: dict[str, Any] = {}
    for name, ckpt in checkpoints.items():
        t0 = time.perf_counter()
        records = artifact_audit_from_checkpoint(ckpt, DEMO / "manifest.csv", labels=DEMO / "labels.csv",
                                                 work_dir=WORK / "work", strengths=strengths)
        seconds = time.perf_counter() - t0
        print(f"\n### {name}: {ckpt} ({seconds:.0f} s)\n\n{table(records)}")
        out[name] = {"checkpoint": str(ckpt), "seconds": seconds, "records": records}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

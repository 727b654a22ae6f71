"""DNA promoters (GUE): masked-nucleotide pretraining, then a frozen probe and fine-tuning (issue 5, benchmark 3).

    .venv/bin/python benchmarks/gue_promoters.py ../shared/data/dna_gue [--task prom_core_all|prom_300_tata|both]
        [--steps 3000] [--work DIR] [--config configs/pretrain/gue_dna.yaml] [--modes probe,finetune,scratch]
        [--epochs 2] [--batch-size 256]

Data: GUE's ``prom_prom_core_all`` (70 bp) and ``prom_prom_300_tata`` (300 bp) folders, each with
``train.csv``, ``dev.csv`` and ``test.csv`` (``sequence,label``). ``DATA_DIR`` is the folder holding
them (``../shared/data/dna_gue``) or its parent (``../shared/data``). Every sequence is one manifest
"patient" (``train-000000``, ``test-000000``, ...); all of a task's rows point to one table
``sequences.csv`` (``patient_id,sequence``), so each patient reads only its own row.

Per task, driving the documented CLI:

1. ``biossl pretrain`` on the TRAINING sequences only (``manifest_pretrain.csv``; no labels), with the
   sequence encoder's masked-nucleotide objective (``configs/pretrain/gue_dna.yaml``), window length =
   sequence length;
2. ``biossl embed`` of the training and test sequences (``manifest.csv``);
3. ``biossl finetune --task subtype --splits splits.csv`` where ``splits.csv`` is ``patient_id,split``
   with train/test: one held-out test set, as GUE defines it. Methods, all trained on the training
   set and scored once on the test set: a linear probe on the frozen ``X_sequence`` embedding,
   fine-tuning the pretrained encoder, the same architecture from scratch (``--modes``), and the
   4-mer logistic regression (``--baseline-kmer 4``).

The dev set is not used: no choice is tuned here (all settings are fixed in advance). Prints one
table with test AUROC per method next to the published references; JSON results and logs land in
``<work>/<task>/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli import run_biossl as run  # noqa: E402

TASKS = {"prom_core_all": "prom_prom_core_all", "prom_300_tata": "prom_prom_300_tata"}
#: Test AUROC references (``../shared/data/README.md``): 4-mer logistic regression on this split, and
#: the best published DNA foundation model with frozen embeddings (Caduceus-Ph / HyenaDNA).
REFERENCES = {"prom_core_all": {"kmer4_logreg (reference)": 0.862, "best DNA foundation model, frozen": 0.875},
              "prom_300_tata": {"kmer4_logreg (reference)": 0.751, "best DNA foundation model, frozen": 0.808}}




def task_folder(data: Path, task: str) -> Path:
    """The GUE folder of a task, under ``data`` or ``data/dna_gue``."""
    for base in (data, data / "dna_gue"):
        if (base / TASKS[task] / "train.csv").is_file():
            return base / TASKS[task]
    sys.exit(f"{data}: no {TASKS[task]}/train.csv (nor under dna_gue/); pass the GUE folder")


def write_inputs(folder: Path, out: Path) -> tuple[int, int]:
    """Sequence table, manifests (train only / train + test), labels and the held-out split; returns lengths."""
    parts = {}
    for split in ("train", "test"):
        df = pd.read_csv(folder / f"{split}.csv", dtype={"sequence": str})
        df.insert(0, "patient_id", [f"{split}-{i:06d}" for i in range(len(df))])
        df["split"] = split
        parts[split] = df
    table = pd.concat(parts.values(), ignore_index=True)
    table[["patient_id", "sequence"]].to_csv(out / "sequences.csv", index=False)
    rows = pd.DataFrame({"patient_id": table["patient_id"], "modality": "sequence", "path": "sequences.csv"})
    rows.to_csv(out / "manifest.csv", index=False)
    rows[table["split"] == "train"].to_csv(out / "manifest_pretrain.csv", index=False)
    table[["patient_id", "label"]].to_csv(out / "labels.csv", index=False)
    table[["patient_id", "split"]].to_csv(out / "splits.csv", index=False)
    lengths = table["sequence"].str.len()
    return int(lengths.min()), int(lengths.max())


def benchmark(task: str, data: Path, work: Path, args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    """Run one task; return (test AUROC per method, wall seconds per step)."""
    out = work / task
    (out / "logs").mkdir(parents=True, exist_ok=True)
    shortest, longest = write_inputs(task_folder(data, task), out)
    n = {s: int((pd.read_csv(out / "splits.csv")["split"] == s).sum()) for s in ("train", "test")}
    print(f"{task}: {n['train']} train / {n['test']} test sequences of {shortest}-{longest} bp", flush=True)
    times: dict[str, float] = {}
    ckpt = out / "pretrain" / "checkpoints" / "last.ckpt"
    times["pretrain"] = run(["pretrain", "--config", str(args.config), "--data.manifest",
                             str(out / "manifest_pretrain.csv"), "--data.work_dir", str(out / "work"),
                             "--trainer.default_root_dir", str(out / "pretrain"), "--trainer.max_steps",
                             str(args.steps), "--data.spec.window_length", str(longest)], out / "logs" / "pretrain.log")
    times["embed"] = run(["embed", "--checkpoint", str(ckpt), "--manifest", str(out / "manifest.csv"), "--work-dir",
                          str(out / "work"), "--batch-size", "256", "--device", "cpu", "--out",
                          str(out / "embeddings.h5ad")], out / "logs" / "embed.log")
    result = out / "promoter.json"
    modes = [m for m in args.modes.split(",") if m]
    argv = ["finetune", "--embeddings", str(out / "embeddings.h5ad"), "--embedding", "X_sequence", "--labels",
            str(out / "labels.csv"), "--task", "subtype", "--label-column", "label", "--splits",
            str(out / "splits.csv"), "--manifest", str(out / "manifest.csv"), "--baseline-kmer", "4",
            "--device", "cpu", "--out", str(result)]
    if modes:
        argv += ["--mode", ",".join(modes)]
    if {"finetune", "scratch"} & set(modes):
        argv += ["--checkpoint", str(ckpt), "--work-dir", str(out / "work"), "--epochs", str(args.epochs),
                 "--batch-size", str(args.batch_size)]
    times["finetune"] = run(argv, out / "logs" / "finetune.log")
    methods = json.loads(result.read_text())["methods"]
    scores = {name: float(entry["folds"][0]["macro_auroc"]) for name, entry in methods.items()}
    return scores, times


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the GUE folder (../shared/data/dna_gue) or its parent")
    parser.add_argument("--task", choices=(*TASKS, "both"), default="both")
    parser.add_argument("--steps", type=int, default=3000, help="pretraining steps (default 3000)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "gue")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "pretrain" / "gue_dna.yaml")
    parser.add_argument("--modes", default="probe,finetune,scratch",
                        help="biossl finetune --mode (default probe,finetune,scratch; 'probe' alone is fastest)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of finetune / scratch (default 2)")
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per finetune / scratch step")
    args = parser.parse_args()
    work = args.work.resolve()
    tasks = list(TASKS) if args.task == "both" else [args.task]
    rows = []
    for task in tasks:
        scores, times = benchmark(task, args.data, work, args)
        print(f"{task}: wall " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()), flush=True)
        for name, value in scores.items():
            rows.append((task, name, f"{value:.3f}"))
        for name, value in REFERENCES[task].items():
            rows.append((task, name, f"{value:.3f}"))
    print("| task | method | test AUROC |")
    print("|---|---|---|")
    for task, name, value in rows:
        print(f"| {task} | {name} | {value} |")


if __name__ == "__main__":
    main()

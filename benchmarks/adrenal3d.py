"""3D: AdrenalMNIST3D label efficiency, pretrained vs from scratch (issue 5, benchmark 4).

    .venv/bin/python benchmarks/adrenal3d.py ../shared/data [--steps 600] [--work DIR] [--fractions 0.1,1]

Data: ``adrenalmnist3d_64/adrenalmnist3d_64.npz`` (MedMNIST v2, CC BY 4.0): 1,188 train, 98 val and
298 test volumes of 64³ voxels with a binary label (normal adrenal / mass). The voxels are 0/255 shape
masks from CT segmentations, not intensities. Every case is written once as a NIfTI (1 mm isotropic,
identity affine) under ``<work>/nifti`` and is one manifest "patient" (intensity ``none``).

Through the CLI: ``biossl pretrain`` on the training volumes only (no labels;
``configs/pretrain/adrenal3d.yaml``: 3D ViT-tiny MAE on the whole volume resampled to 2 mm, i.e. 32³)
→ ``biossl finetune --task subtype --mode probe,finetune,scratch --label-fractions ...`` on the
official split (train = train + val, scored once on the 298 test volumes), so "10 % of the labels" is
10 % of the training cases. Prints test AUROC per method and fraction.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli import run_biossl as run  # noqa: E402


def write_cases(npz: Path, work: Path) -> pd.DataFrame:
    """One NIfTI per case (written once); a table of case, split, label, path."""
    data = np.load(npz)
    rows = []
    (work / "nifti").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"][:, 0]
        for i in range(len(images)):
            case = f"adrenal_{split}{i:04d}"
            path = work / "nifti" / f"{case}.nii.gz"
            if not path.exists():
                tmp = path.with_name(f".{path.name}")
                nib.save(nib.Nifti1Image(images[i].astype(np.uint8), np.eye(4)), tmp)
                tmp.rename(path)
            rows.append({"patient_id": case, "split": split, "label": int(labels[i]), "path": str(path)})
    return pd.DataFrame(rows)


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the shared data folder (holds adrenalmnist3d_64/)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "adrenal3d")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "pretrain" / "adrenal3d.yaml")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--fractions", default="0.1,1")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    cases = write_cases(args.data / "adrenalmnist3d_64" / "adrenalmnist3d_64.npz", work)
    manifest = pd.DataFrame({"patient_id": cases["patient_id"], "modality": "volume", "path": cases["path"],
                             "intensity": "none"})
    manifest.to_csv(work / "manifest.csv", index=False)
    manifest[cases["split"] == "train"].to_csv(work / "manifest_pretrain.csv", index=False)
    labels = cases[["patient_id", "label"]].assign(label=cases["label"].map({0: "normal", 1: "mass"}))
    labels.to_csv(work / "labels.csv", index=False)
    split = cases["split"].replace({"val": "train"})
    pd.DataFrame({"patient_id": cases["patient_id"], "split": split}).to_csv(work / "split.csv", index=False)
    print(f"{len(cases)} volumes: " + ", ".join(f"{k} {v}" for k, v in cases["split"].value_counts().items()),
          flush=True)

    ckpt = work / "pretrain" / "checkpoints" / "last.ckpt"
    run(["pretrain", "--config", str(args.config), "--data.manifest", str(work / "manifest_pretrain.csv"),
         "--data.work_dir", str(work / "work"), "--trainer.default_root_dir", str(work / "pretrain"),
         "--trainer.max_steps", str(args.steps)], work / "logs" / "pretrain.log")
    out = work / "label_efficiency.json"
    run(["finetune", "--checkpoint", str(ckpt), "--manifest", str(work / "manifest.csv"), "--work-dir",
         str(work / "work"), "--labels", str(work / "labels.csv"), "--task", "subtype", "--label-column", "label",
         "--embedding", "X_volume", "--splits", str(work / "split.csv"), "--mode", "probe,finetune,scratch",
         "--label-fractions", args.fractions, "--seeds", args.seeds, "--plot", str(work / "label_efficiency.png"),
         "--out", str(out)], work / "logs" / "finetune.log")
    section = json.loads(out.read_text())["label_efficiency"]
    fractions = section["fractions"]
    print("| method | " + " | ".join(f"{f:g} of labels" for f in fractions) + " |")
    print("|---|" + "---|" * len(fractions))
    for name, by_fraction in section["methods"].items():
        cells = []
        for f in fractions:
            s = by_fraction[f"{f:g}"]["summary"]["macro_auroc"] if f"{f:g}" in by_fraction else None
            cells.append("n/a" if not s or s["mean"] is None else f"{s['mean']:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""``biossl finetune`` modes end to end on the demo cohort: probe / finetune / scratch side by side, label
efficiency with its PNG, semi-supervised pseudo-labels, the k-mer baseline, and bad inputs.

The checkpoint is the one-step tiny pretraining of ``tests/conftest.py``; the numbers are noise at n = 24.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pandas as pd
import pytest

from biossl.cli import main


def _base(pretrained: tuple[Path, Path], demo_cohort: Path, labels: Path | None = None) -> list[str]:
    checkpoint, work = pretrained
    return ["finetune", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
            "--work-dir", str(work), "--labels", str(labels or demo_cohort / "labels.csv"), "--folds", "3",
            "--device", "cpu"]


def _run(args: list[str], out: Path) -> dict:
    assert main([*args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


@pytest.mark.integration
def test_three_modes_side_by_side_with_label_efficiency_and_plot(pretrained: tuple[Path, Path], demo_cohort: Path,
                                                                 tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    result = _run([*_base(pretrained, demo_cohort), "--task", "subtype", "--label-column", "subtype",
                   "--mode", "probe,finetune,scratch", "--epochs", "1", "--label-fractions", "1,0.25",
                   "--seeds", "0,1"], tmp_path / "r.json")
    assert result["modes"] == ["probe", "finetune", "scratch"]
    assert result["n_patients"] == 24 and result["inputs"]["embeddings"]["computed_from"] == "last.ckpt"
    assert list(result["methods"]) == ["linear_probe", "finetune", "scratch"]
    for method in result["methods"].values():  # same patients, same folds
        assert [(f["fold"], f["n_train"], f["n_test"]) for f in method["folds"]] == [(0, 16, 8), (1, 16, 8),
                                                                                     (2, 16, 8)]
        assert 0 <= method["summary"]["macro_auroc"]["mean"] <= 1
    assert result["methods"]["finetune"]["settings"]["encoder_lr"] == 1e-4
    assert result["methods"]["scratch"]["settings"]["lr (everything)"] == 1e-3
    efficiency = result["label_efficiency"]
    assert efficiency["fractions"] == [0.25, 1.0] and efficiency["seeds"] == [0, 1]
    for name in ("linear_probe", "finetune", "scratch"):
        quarter, full = efficiency["methods"][name]["0.25"], efficiency["methods"][name]["1"]
        assert quarter["n_train_labelled"] == [4, 4, 4] and full["n_train_labelled"] == [16, 16, 16]
        assert len(quarter["runs"]) == 6 and quarter["summary"]["macro_auroc"]["n"] <= 6
        # The main table is the full-label run of --seed 0.
        seed0 = [r["macro_auroc"] for r in full["runs"] if r["seed"] == 0]
        assert seed0 == [f["macro_auroc"] for f in result["methods"][name]["folds"]]
    assert efficiency["plot"] == "r.png"
    width, height = _png_size(tmp_path / "r.png")
    assert width > 600 and height > 300
    assert not list(tmp_path.glob(".*.tmp"))  # JSON and PNG written atomically
    out = capsys.readouterr().out
    assert "label efficiency, macro_auroc" in out and "finetune" in out and str(tmp_path / "r.png") in out


@pytest.mark.integration
def test_survival_finetune_and_scratch_with_probe_from_an_embeddings_file(
        pretrained: tuple[Path, Path], embedded: Path, demo_cohort: Path, tmp_path: Path) -> None:
    result = _run([*_base(pretrained, demo_cohort), "--embeddings", str(embedded), "--task", "survival",
                   "--survival-loss", "discrete", "--mode", "probe,finetune,scratch", "--epochs", "2",
                   "--embedding", "X_expression", "--label-fractions", "0.5", "--plot", str(tmp_path / "curve.png")],
                  tmp_path / "s.json")
    assert result["n_patients"] == 21 and result["inputs"]["embeddings"]["file"] == "demo.h5ad"
    for method in result["methods"].values():
        assert all(f["c_index"] is None or 0 <= f["c_index"] <= 1 for f in method["folds"])
    assert result["methods"]["finetune"]["settings"]["survival_loss"] == "discrete"
    assert result["methods"]["scratch"]["settings"]["modalities"] == ["expression"]
    # 21 patients in 3 folds: 14 training patients each, of which round(0.5 x 14) = 7 keep their label.
    assert result["label_efficiency"]["methods"]["finetune"]["0.5"]["n_train_labelled"] == [7, 7, 7]
    _png_size(tmp_path / "curve.png")
    assert not (tmp_path / "s.png").exists()


@pytest.mark.integration
def test_semi_supervised_uses_the_unlabelled_patients(pretrained: tuple[Path, Path], demo_cohort: Path,
                                                      tmp_path: Path) -> None:
    labels = pd.read_csv(demo_cohort / "labels.csv")
    hidden = ["DEMO-02", "DEMO-09", "DEMO-14", "DEMO-20"]
    labels.loc[labels["patient_id"].isin(hidden), "subtype"] = None
    labels.to_csv(tmp_path / "labels.csv", index=False)
    result = _run([*_base(pretrained, demo_cohort, tmp_path / "labels.csv"), "--task", "subtype", "--label-column",
                   "subtype", "--mode", "probe,finetune", "--epochs", "1", "--semi-supervised",
                   "--pseudo-threshold", "0"], tmp_path / "r.json")
    assert result["n_patients"] == 20 and result["unlabelled"]["patients"] == hidden
    assert list(result["methods"]) == ["linear_probe", "linear_probe+pl", "finetune", "finetune+pl"]
    for row in result["methods"]["finetune+pl"]["folds"]:
        assert row["fit"]["pseudo_label"]["n_unlabelled"] == 4 and row["fit"]["pseudo_label"]["used_fraction"] == 1.0
    for row in result["methods"]["linear_probe+pl"]["folds"]:
        assert row["fit"]["pseudo_label"]["n_unlabelled"] == 4
        assert row["fit"]["pseudo_label"]["used_fraction_per_round"] == [1.0, 1.0, 1.0]
    assert "fit" not in result["methods"]["linear_probe"]["folds"][0]


def test_kmer_baseline_alone_from_the_manifest(demo_cohort: Path, tmp_path: Path) -> None:
    result = _run(["finetune", "--manifest", str(demo_cohort / "manifest.csv"), "--labels",
                   str(demo_cohort / "labels.csv"), "--task", "subtype", "--label-column", "subtype", "--folds", "2",
                   "--baseline-kmer", "3", "--kmer-canonical"], tmp_path / "k.json")
    assert result["modes"] == [] and list(result["methods"]) == ["kmer3_logreg"]
    settings = result["methods"]["kmer3_logreg"]["settings"]
    assert settings["k"] == 3 and settings["canonical"] is True and settings["n_features"] == 32
    assert result["n_patients"] == 16 and result["excluded"]["no_input:kmer3_logreg"]["n"] == 8
    default = _run(["finetune", "--manifest", str(demo_cohort / "manifest.csv"), "--labels",
                    str(demo_cohort / "labels.csv"), "--task", "subtype", "--label-column", "subtype", "--folds", "2",
                    "--baseline-kmer"], tmp_path / "k4.json")
    assert default["methods"]["kmer4_logreg"]["settings"]["n_features"] == 256  # K = 4, strand-specific


def test_cli_defaults_are_the_library_defaults() -> None:
    import subprocess
    import sys

    from biossl.commands.finetune import D
    from biossl.downstream.finetuning import FinetuneSettings

    s = FinetuneSettings()
    assert (D.epochs, D.batch_size, D.lr, D.encoder_lr, D.weight_decay, D.pseudo_threshold, D.pseudo_weight) == (
        s.epochs, s.batch_size, s.lr, s.encoder_lr, s.weight_decay, s.pseudo_threshold, s.pseudo_weight)
    # The defaults come without torch, so that `biossl finetune --help` stays fast.
    code = "import sys, biossl.commands.finetune; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("extra", "message"), [
    (["--mode", "finetune"], "--mode finetune needs --checkpoint CKPT and --manifest MANIFEST: the pretraining "
                             "checkpoint whose architecture is fine-tuned"),
    (["--mode", "scratch", "--checkpoint", "x.ckpt"], "--mode scratch needs --manifest MANIFEST"),
    (["--mode", "probe,tune"], "--mode probe,tune: unknown mode(s) ['tune']; give one or more of probe, finetune, "
                               "scratch"),
    (["--mode", "probe"], "--mode probe needs --embeddings H5AD"),
    (["--embeddings", "e.h5ad", "--label-fractions", "0,0.5"], "--label-fractions: 0.0 is outside (0, 1]"),
    (["--embeddings", "e.h5ad", "--label-fractions", "1.5"], "--label-fractions: 1.5 is outside (0, 1]"),
    (["--embeddings", "e.h5ad", "--label-fractions", "half"], "--label-fractions: 'half' is not a number"),
    (["--embeddings", "e.h5ad", "--seeds", "0,1"], "--seeds repeats the label-efficiency runs: give --label-fractions"),
    (["--embeddings", "e.h5ad", "--plot", "p.png"], "--plot draws the label-efficiency curve"),
    (["--embeddings", "e.h5ad", "--semi-supervised", "--task-survival"], "--semi-supervised applies to --task "
                                                                          "subtype only"),
    (["--baseline-kmer", "4", "--task-survival"], "--baseline-kmer is a classification baseline"),
    (["--baseline-kmer", "4"], "--baseline-kmer needs --manifest MANIFEST"),
    (["--baseline-kmer", "9", "--manifest", "m.csv"], "--baseline-kmer must be between 1 and 8"),
])
def test_bad_mode_options_exit_2_naming_the_option(demo_cohort: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], extra: list[str],
                                                   message: str) -> None:
    task = ["--task", "survival"] if "--task-survival" in extra else ["--task", "subtype", "--label-column", "subtype"]
    extra = [e for e in extra if e != "--task-survival"]
    code = main(["finetune", "--labels", str(demo_cohort / "labels.csv"), *task, *extra,
                 "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_fraction_too_small_for_the_folds_fails_before_fitting(embedded: Path, demo_cohort: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["finetune", "--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--task",
                 "subtype", "--label-column", "subtype", "--folds", "3", "--label-fractions", "0.01,0.05,0.1,0.25,1",
                 "--out", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--label-fractions 0.01 keeps 0 of the 16 labelled training patients of fold 0" in err
    assert "fewer than one per class (2 classes); use fractions of at least 0.094" in err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.png").exists()

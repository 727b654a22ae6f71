"""``biossl pretrain`` end to end on the demo cohort: resolved config, metrics, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from biossl.cli import main
from biossl.data.demo import DEMO_MANIFEST
from biossl.modules.pretrain import PretrainModule

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "pretrain" / "demo.yaml"


def test_print_config_shows_the_resolved_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--config", str(CONFIG), "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "image/vit_tiny" in out and "expression/transformer" in out and "max_steps: 300" in out
    assert "table/mlp" in out


@pytest.mark.integration
def test_short_run_leaves_metrics_config_and_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "run"
    code = main(["pretrain", "--config", str(CONFIG), "--data.manifest", str(DEMO_MANIFEST),
                 "--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(root),
                 "--trainer.max_steps", "3", "--checkpoint-every", "2"])
    assert code == 0
    metrics = pd.read_csv(root / "metrics.csv")
    for term in ("train/loss", "train/masked/wsi", "train/masked/volume", "train/masked/expression",
                 "train/masked/sequence", "train/masked/cnv", "train/masked/mut", "train/contrastive"):
        assert term in metrics.columns, term
    assert (root / "config.yaml").is_file()
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert (root / "checkpoints" / "step000002.ckpt").is_file()
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert "image/vit_tiny" in ckpt["biossl"]["config"]
    assert ckpt["global_step"] == 3
    # LightningCLI adds its own keys to the saved hyper-parameters; loading must not trip on them.
    assert any(k.startswith("_") for k in ckpt["hyper_parameters"])
    loaded = PretrainModule.from_checkpoint(root / "checkpoints" / "last.ckpt")
    assert set(loaded.encoders) == {"wsi", "volume", "expression", "sequence", "cnv", "mut"}
    # Resume through the CLI (safe loading) from the step-2 checkpoint and run to step 4.
    code = main(["pretrain", "--config", str(CONFIG), "--data.manifest", str(DEMO_MANIFEST),
                 "--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(root),
                 "--trainer.max_steps", "4", "--checkpoint-every", "2",
                 "--ckpt_path", str(root / "checkpoints" / "step000002.ckpt")])
    assert code == 0
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    # Resuming the finished run (--resume last, at max_steps) trains nothing and leaves metrics.csv whole.
    before = (root / "metrics.csv").read_bytes()
    code = main(["pretrain", "--config", str(CONFIG), "--data.manifest", str(DEMO_MANIFEST),
                 "--data.work_dir", str(tmp_path / "work"), "--trainer.default_root_dir", str(root),
                 "--trainer.max_steps", "4", "--checkpoint-every", "2", "--resume", "last"])
    assert code == 0
    assert (root / "metrics.csv").read_bytes() == before
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_wrong_type_in_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--config", str(CONFIG), "--data.batch_size", "eight", "--print_config"])
    assert exc.value.code == 2
    assert "batch_size" in capsys.readouterr().err


def test_metrics_csv_survives_a_run_that_logs_nothing_and_merges_a_resumed_one(tmp_path: Path) -> None:
    from biossl.commands.pretrain import _ResumingWriter

    path = tmp_path / "metrics.csv"
    path.write_text("step,train/loss\n0,2.0\n1,1.5\n2,1.2\n")
    before = path.read_bytes()
    writer = _ResumingWriter(str(tmp_path))  # a run that starts here (resumed at its end, or killed early)
    writer.save()
    assert path.read_bytes() == before  # Lightning's writer deleted it on creation
    writer = _ResumingWriter(str(tmp_path))  # resumed from the step-2 checkpoint: steps 2 and 3 computed again
    writer.log_metrics({"train/loss": 1.1}, step=2)
    writer.log_metrics({"train/loss": 1.0}, step=3)
    writer.save()
    rows = pd.read_csv(path)
    assert rows["step"].tolist() == [0, 1, 2, 3]
    assert rows["train/loss"].tolist() == [2.0, 1.5, 1.1, 1.0]

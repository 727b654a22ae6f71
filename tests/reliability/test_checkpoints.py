"""Checkpoints that ``biossl embed`` cannot use: each is one clear line on stderr, exit code 2, no output.

Cases: a checkpoint written by an incompatible biossl version, one whose gene vocabulary shares no
gene with the cohort's expression, files that are not biossl checkpoints (a plain ``state_dict``,
another model's Lightning checkpoint, a pickled object, a text file), truncated and empty files, and
a checkpoint whose weights were damaged. The good checkpoint is the session's tiny pretraining of the
demo cohort (``pretrained`` in conftest).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from biossl.cli import main


def _embed_error(checkpoint: Path, manifest: Path, work: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(manifest), "--work-dir", str(work),
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("biossl embed: error:") and "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # no partial output
    return err


def _edited(source: Path, target: Path, edit: Callable[[dict], object]) -> Path:
    ckpt = torch.load(source, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, target)
    return target


def _state_dict(target: Path) -> Path:
    torch.save(torch.nn.Linear(4, 2).state_dict(), target)
    return target


def _lightning(target: Path) -> Path:
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.6",
                "state_dict": torch.nn.Linear(4, 2).state_dict(), "hyper_parameters": {"lr": 0.1}}, target)
    return target


def _pickled(target: Path) -> Path:
    torch.save({"args": argparse.Namespace(lr=0.1)}, target)
    return target


CASES: dict[str, tuple[str, ...]] = {
    "version": ("written by biossl 9.1.0", "incompatible with this biossl", "install biossl 9.1.0"),
    "no_biossl_section": ("not a biossl pretraining checkpoint", "biossl' section", "last.ckpt"),
    "state_dict": ("not a biossl pretraining checkpoint", "a plain state_dict", "last.ckpt"),
    "lightning": ("not a biossl pretraining checkpoint", "Lightning checkpoint of another model"),
    "pickled": ("not a readable checkpoint", "pickled argparse.Namespace", "did not write it"),
    "text": ("not a readable checkpoint", "not a PyTorch checkpoint file"),
    "truncated": ("not a readable checkpoint", "truncated or corrupt", "copy it again"),
    "empty": ("not a readable checkpoint", "truncated or corrupt"),
    "damaged_weights": ("does not rebuild its model", "Missing key(s)", "damaged"),
    "missing": ("not found", "last.ckpt"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unusable_checkpoint_is_one_clear_line(
    case: str, pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, work = pretrained
    bad = tmp_path / f"{case}.ckpt"
    if case == "version":
        _edited(good, bad, lambda c: c["biossl"].update(version="9.1.0"))
    elif case == "no_biossl_section":
        _edited(good, bad, lambda c: c.pop("biossl"))
    elif case == "state_dict":
        _state_dict(bad)
    elif case == "lightning":
        _lightning(bad)
    elif case == "pickled":
        _pickled(bad)
    elif case == "text":
        bad.write_text("model: resnet50\nweights: imagenet\n")
    elif case == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "damaged_weights":
        _edited(good, bad, lambda c: c["state_dict"].pop(next(iter(c["state_dict"]))))
    err = _embed_error(bad, demo_cohort / "manifest.csv", work, tmp_path / "out.h5ad", capsys)
    assert str(bad) in err
    for phrase in CASES[case]:
        assert phrase in err, (phrase, err)


def test_same_major_version_still_loads(pretrained: tuple[Path, Path], tmp_path: Path) -> None:
    from biossl import __version__
    from biossl.modules.pretrain import PretrainModule

    good, _ = pretrained
    major = __version__.split(".")[0]
    later = _edited(good, tmp_path / "later.ckpt", lambda c: c["biossl"].update(version=f"{major}.99.0"))
    module = PretrainModule.from_checkpoint(later)
    reference = PretrainModule.from_checkpoint(good)
    assert module.data_state["version"] == f"{major}.99.0"
    for k, v in reference.state_dict().items():
        assert torch.equal(module.state_dict()[k], v), k


def test_checkpoint_with_another_gene_vocabulary(
    pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's real expression, its genes renamed as another platform names them, cannot be embedded."""
    good, work = pretrained
    vocabulary = torch.load(good, weights_only=True)["biossl"]["vocabulary"]
    table = pd.read_csv(demo_cohort / "expression.csv")
    genes = [c for c in table.columns if c != "patient_id"]
    assert set(genes) == set(vocabulary)
    manifest = pd.read_csv(demo_cohort / "manifest.csv")
    rows = manifest[manifest["modality"] == "expression"].assign(path="expression.csv")

    # Every gene renamed (as if annotated with other identifiers): no gene in common -> a clear error.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    table.rename(columns={g: f"ID_{g}" for g in genes}).to_csv(renamed / "expression.csv", index=False)
    rows.to_csv(renamed / "manifest.csv", index=False)
    err = _embed_error(good, renamed / "manifest.csv", work, tmp_path / "out.h5ad", capsys)
    assert str(renamed / "expression.csv") in err and str(good) in err
    assert f"shares no feature with the {len(vocabulary)}-gene vocabulary" in err

    # Half of the genes in common: missing genes are masked, the cohort embeds (documented behaviour).
    half = tmp_path / "half"
    half.mkdir()
    table.rename(columns={g: f"ID_{g}" for g in genes[::2]}).to_csv(half / "expression.csv", index=False)
    rows.to_csv(half / "manifest.csv", index=False)
    out = tmp_path / "half.h5ad"
    assert main(["embed", "--checkpoint", str(good), "--manifest", str(half / "manifest.csv"), "--work-dir", str(work),
                 "--out", str(out)]) == 0
    assert out.is_file()


@pytest.mark.parametrize("case", ["missing", "truncated", "text", "foreign"])
def test_pretrain_resume_from_an_unusable_checkpoint_is_one_line(pretrained: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 case: str) -> None:
    from biossl.commands.pretrain import check_resume_checkpoint
    from biossl.errors import InputError

    good, _ = pretrained
    bad = tmp_path / "bad.ckpt"
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "text":
        bad.write_text("not a checkpoint\n")
    elif case == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, bad)
    with pytest.raises(InputError) as err:
        check_resume_checkpoint(bad)
    message = str(err.value)
    assert str(bad) in message and len(message.splitlines()) == 1
    assert {"missing": "no such file", "truncated": "truncated or corrupt", "text": "not a PyTorch checkpoint",
            "foreign": "not a checkpoint written by `biossl pretrain`"}[case] in message
    check_resume_checkpoint(good)  # a real one passes
    check_resume_checkpoint("last")  # Lightning's keyword is left to Lightning

"""``biossl export``: a modality's encoder as a state_dict + spec.json that rebuilds it through the registry.

The rebuilt encoder's instance embeddings equal the checkpoint's (``PatientEncoder``) on real data: the
demo cohort's TCGA expression rows aligned to the checkpoint's feature vocabulary, and DNA windows of its
FASTA files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from biossl import keys
from biossl.cli import main
from biossl.data.sequence import encode
from biossl.encoders import ENCODERS
from biossl.encoders.patient import PatientEncoder


def _expression(demo_cohort: Path, vocabulary: list[str]) -> torch.Tensor:
    """The demo cohort's real expression rows (z-scores, used as they are) on the checkpoint's vocabulary."""
    table = pd.read_csv(demo_cohort / "expression.csv", index_col=0).reindex(columns=vocabulary).fillna(0.0)
    return torch.from_numpy(table.to_numpy(np.float32)[:6])


def _windows(demo_cohort: Path, length: int) -> torch.Tensor:
    text = "".join(line.strip() for line in (demo_cohort / "sequences" / "DEMO-01.fasta").read_text().splitlines()
                   if not line.startswith(">")).upper()
    return torch.as_tensor(encode(text[: 4 * length])).long().reshape(4, length)


@pytest.mark.parametrize("modality", ["expression", "sequence"])
def test_an_exported_encoder_rebuilds_from_its_spec_with_the_same_embeddings(
        modality: str, pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, _ = pretrained
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(checkpoint), "--modality", modality, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "encoder.safetensors", "spec.json"]
    assert not list(tmp_path.glob(".exported*"))  # no temporary folder left
    spec = json.loads((out / "spec.json").read_text())
    assert spec["modality"] == modality and spec["format"] == "state_dict" and spec["biossl_version"]
    assert len(spec["checkpoint_sha256"]) == 64 and "ENCODERS.build" in (out / "README.md").read_text()

    encoder = ENCODERS.build(spec["encoder"], **spec["options"])
    encoder.load_state_dict(load_file(str(out / "encoder.safetensors")))
    encoder.eval()
    reference = PatientEncoder.from_checkpoint(checkpoint, modalities=[modality]).eval().encoders[modality]
    if modality == "expression":
        assert spec["kind"] == "table" and "value_type" in spec
        assert len(spec["vocabulary"]) == spec["options"]["n_genes"]
        x = _expression(demo_cohort, spec["vocabulary"])
    else:
        assert spec["kind"] == "sequence" and spec["data_state"]["tokeniser"]["alphabet"] == keys.NUCLEOTIDES
        x = _windows(demo_cohort, int(spec["data_state"]["window_length"]))
    with torch.inference_mode():
        z, want = encoder.embed(x), reference.embed(x)
    assert z.shape == (len(x), spec["embed_dim"])
    torch.testing.assert_close(z, want, rtol=0, atol=0)


def test_export_refuses_an_existing_folder_unless_overwrite(pretrained: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, _ = pretrained
    out = tmp_path / "exported"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    args = ["export", "--checkpoint", str(checkpoint), "--modality", "wsi", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists" in err and "--overwrite" in err
    assert (out / "mine.txt").read_text() == "keep"
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "mine.txt").exists() and (out / "spec.json").is_file()
    assert json.loads((out / "spec.json").read_text())["bag_spec"]["tile_px"] == 32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case, said", [
    ("modality", "has no modality 'rna' (its modalities: wsi, volume, expression, sequence)"),
    ("truncated", "is not a readable checkpoint"),
    ("missing", "not found"),
])
def test_export_bad_input_is_one_line(case: str, said: str, pretrained: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, _ = pretrained
    modality = "rna" if case == "modality" else "wsi"
    if case == "truncated":
        bad = tmp_path / "cut.ckpt"
        bad.write_bytes(checkpoint.read_bytes()[:4096])
        checkpoint = bad
    elif case == "missing":
        checkpoint = tmp_path / "nope.ckpt"
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(checkpoint), "--modality", modality, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err and not out.exists()
    assert not list(tmp_path.glob(".exported*"))

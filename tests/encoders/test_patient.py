"""The Lightning-free patient encoder of a checkpoint, and the one checkpoint loader every reader uses."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biossl import keys
from biossl.cli import main
from biossl.data.bags import collate_bags
from biossl.data.tiling import tile_slide
from biossl.encoders.patient import PARTS, PatientEncoder
from biossl.errors import InputError
from biossl.modules.pretrain import PretrainModule

PACKAGE = Path(__file__).resolve().parents[2] / "biossl"
VIT = {"encoder": "image/vit_tiny", "spatial_dims": 2, "in_channels": 3, "img_size": 64, "patch_size": 8}


def _edited_version(source: Path, target: Path, version: str) -> Path:
    ckpt = torch.load(source, weights_only=True)
    ckpt["biossl"]["version"] = version
    torch.save(ckpt, target)
    return target


def test_the_patient_encoder_embeds_as_the_pretraining_module(pretrained: tuple[Path, Path],
                                                               demo_cohort: Path) -> None:
    """The same pooled numbers, bit for bit, from only the encoders, projections and pools of the checkpoint."""
    from biossl.downstream.embed import open_cohort

    checkpoint, work = pretrained
    encoder = PatientEncoder.from_checkpoint(checkpoint).eval()
    module = PretrainModule.from_checkpoint(checkpoint).eval()
    assert {k.split(".")[0] for k in encoder.state_dict()} == set(PARTS)
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, module.state_dict()[k]), k
    assert encoder.modality_specs == module.modality_specs and encoder.embed_dim == module.embed_dim
    assert encoder.data_state == module.data_state
    assert [encoder.kind_of(m) for m in encoder.modality_specs] == [module.kind_of(m) for m in module.modality_specs]
    dataset, _, modalities, _ = open_cohort(encoder, checkpoint, demo_cohort / "manifest.csv", work_dir=work)
    batch = collate_bags([dataset[(i, 0)] for i in range(len(dataset))])
    with torch.no_grad():
        pooled, present, losses = encoder.encode_batch(batch)
        ref_pooled, ref_present, _ = module.encode_batch(batch, with_masked_loss=False)
    assert losses == {} and set(pooled) == set(ref_pooled) == set(modalities)
    for m in modalities:
        assert torch.equal(pooled[m], ref_pooled[m]) and torch.equal(present[m], ref_present[m]), m


def test_loading_the_patient_encoder_imports_no_lightning(pretrained: tuple[Path, Path]) -> None:
    checkpoint, _ = pretrained
    code = ("import sys\nfrom biossl.encoders.patient import PatientEncoder\n"
            f"PatientEncoder.from_checkpoint({str(checkpoint)!r})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning') "
            "or m.startswith('biossl.modules')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_only_the_one_loader_reads_checkpoints() -> None:
    """Every ``torch.load`` of the package is the one in :mod:`biossl.checkpoint` (safe loading, version, messages).

    The one other reader is of tile-feature tensors (CLAM / TRIDENT ``.pt`` files, :mod:`biossl.data.features`),
    and it loads safely (``weights_only=True``).
    """
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                where = str(path.relative_to(PACKAGE.parent))
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                found.append(where if where == "biossl/checkpoint.py" else (where, safe))
    assert found[0] == "biossl/checkpoint.py" and found.count("biossl/checkpoint.py") == 1
    assert set(found[1:]) <= {("biossl/data/features.py", True)}


def test_every_reader_refuses_another_major_version(pretrained: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``pretrain --ckpt_path`` and ``cache-features`` read through the one loader: its version check too."""
    from biossl.commands.pretrain import check_resume_checkpoint

    good, work = pretrained
    old = _edited_version(good, tmp_path / "old.ckpt", "9.1.0")
    with pytest.raises(InputError, match=r"cannot resume from it: .*written by biossl 9\.1\.0, incompatible"):
        check_resume_checkpoint(old)
    for load in (PatientEncoder.from_checkpoint, PretrainModule.from_checkpoint):
        with pytest.raises(InputError, match="install biossl 9.1.0"):
            load(old)
    out = tmp_path / "features"
    code = main(["cache-features", str(work / "tiles"), "--out", str(out), "--checkpoint", str(old),
                 "--num-workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "written by biossl 9.1.0" in err and str(old) in err
    assert not out.exists() or not any(out.iterdir())


def test_cache_features_from_a_checkpoint_with_chosen_slide_objectives(fixtures: Path, tmp_path: Path) -> None:
    """A slide encoder pretrained with named objectives (``objective: [mae, byol]``) caches features.

    The objective list is the pretraining engine's, not the encoder's: ``cache-features`` used to pass it
    to the encoder factory (a TypeError traceback).
    """
    coords = tmp_path / "coords"
    tile_slide(fixtures / "wsi" / "he_small.svs", coords)
    module = PretrainModule({keys.WSI: {**VIT, "objective": ["mae", "byol"]}}, embed_dim=16, seed=3)
    module.configure_model()
    module.data_state["bag_spec"] = {"tiles": 8, "tile_px": 64}
    ckpt: dict[str, object] = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "m.ckpt")
    out = tmp_path / "features"
    assert main(["cache-features", str(coords), "--out", str(out), "--checkpoint", str(tmp_path / "m.ckpt"),
                 "--num-workers", "0", "--no-progress"]) == 0
    (features,) = out.glob("he_small.*.h5")
    from biossl.data.features import SlideFeatures

    feats = SlideFeatures(features)
    assert len(feats) == 4 and np.isfinite(feats.read(range(len(feats)))).all()

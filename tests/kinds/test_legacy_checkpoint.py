"""A checkpoint written before kinds (no ``kind`` in its specs, one ``vocabulary``) still embeds the same."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import torch

from biossl.cli import main


def test_a_checkpoint_without_kinds_embeds_as_before(pretrained: tuple[Path, Path], embedded: Path,
                                                     demo_cohort: Path, tmp_path: Path) -> None:
    checkpoint, work = pretrained
    ckpt = torch.load(checkpoint, weights_only=True)
    state = ckpt["biossl"]
    assert state["modality_specs"]["wsi"]["kind"] == "slide" and "modalities" in state
    # What biossl wrote before kinds: specs without a kind, the one table's genes as data_state["vocabulary"].
    for spec in state["modality_specs"].values():
        del spec["kind"]
    for spec in ckpt["hyper_parameters"]["modalities"].values():
        spec.pop("kind", None)
    del state["modalities"]
    assert state["vocabulary"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)

    out = tmp_path / "old.h5ad"
    assert main(["embed", "--checkpoint", str(old), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--labels", str(demo_cohort / "labels.csv"), "--work-dir", str(work), "--out", str(out)]) == 0
    before, now = ad.read_h5ad(embedded), ad.read_h5ad(out)
    assert set(before.obsm) == set(now.obsm) == {"X_wsi", "X_volume", "X_expression", "X_sequence", "X_fused"}
    for key in before.obsm:
        np.testing.assert_allclose(now.obsm[key], before.obsm[key], rtol=1e-5, atol=1e-6, equal_nan=True)

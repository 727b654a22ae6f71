"""A user's encoder as a plug-in: ``--plugin FILE`` (before or after the verb), ``$BIOSSL_PLUGINS``, entry points.

The plug-in is a ``.py`` file written by the test, registering ``user/tiny_mlp`` (a one-layer wrapper of the
table MLP). It pretrains 2 steps on the demo cohort's real TCGA expression table; the checkpoint records the
plug-in, and ``biossl embed`` imports it again by name, or says which module is missing and how to fix it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from biossl import plugins
from biossl.cli import main
from biossl.encoders import ENCODERS

PLUGIN = '''\
"""A user's encoder: the table MLP with one layer, registered under a new name."""
from biossl.encoders import ENCODERS
from biossl.encoders.expression import table_mlp


@ENCODERS.register("user/tiny_mlp")
def tiny_mlp(*, n_genes: int, embed_dim: int = 16, mask_ratio: float = 0.15, dropout: float = 0.0,
             value_type: str = "continuous", n_categories: int = 0):
    return table_mlp(n_genes=n_genes, embed_dim=embed_dim, depth=1, mask_ratio=mask_ratio, dropout=dropout,
                     value_type=value_type, n_categories=n_categories)
'''

CONFIG = """\
seed_everything: 0
trainer: {max_steps: 2, enable_model_summary: false, enable_progress_bar: false}
model:
  modalities:
    expression: {encoder: user/tiny_mlp, embed_dim: 16}
  embed_dim: 16
  warmup_steps: 1
data: {batch_size: 6, spec: {modalities: [expression], profiles: 1}}
"""


@pytest.fixture
def plugin_file(tmp_path: Path) -> Iterator[Path]:
    """``my_tiny_plugin.py`` in its own folder; unloaded (module and registrations) after the test."""
    folder = tmp_path / "plugin_src"
    folder.mkdir()
    path = folder / "my_tiny_plugin.py"
    path.write_text(PLUGIN)
    yield path
    plugins.forget("my_tiny_plugin")
    ENCODERS.unregister("user/tiny_mlp")


def _pretrain(tmp_path: Path, demo_cohort: Path, *pre: str, post: tuple[str, ...] = ()) -> int:
    (tmp_path / "c.yaml").write_text(CONFIG)
    return main([*pre, "pretrain", "--config", str(tmp_path / "c.yaml"), "--data.manifest",
                 str(demo_cohort / "manifest.csv"), "--data.work_dir", str(tmp_path / "work"),
                 "--trainer.default_root_dir", str(tmp_path / "run"), *post])


def test_a_plugin_file_pretrains_and_its_checkpoint_embeds_with_the_plain_command(
        plugin_file: Path, tmp_path: Path, demo_cohort: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _pretrain(tmp_path, demo_cohort, "--plugin", str(plugin_file)) == 0
    capsys.readouterr()
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["biossl"]
    assert state["modality_specs"]["expression"]["encoder"] == "user/tiny_mlp"
    [rec] = [p for p in state["plugins"] if p["module"] == "my_tiny_plugin"]
    assert rec["via"] == "--plugin" and rec["path"] == str(plugin_file.resolve())
    assert rec["provides"] == ["encoder user/tiny_mlp"]

    # A fresh process would not have it: drop the module and its registration.
    plugins.forget("my_tiny_plugin")
    ENCODERS.unregister("user/tiny_mlp")
    out = tmp_path / "emb.h5ad"
    embed = ["embed", "--checkpoint", str(ckpt), "--manifest", str(demo_cohort / "manifest.csv"),
             "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    assert main(embed) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not out.exists()
    assert "plug-in module 'my_tiny_plugin'" in err and f"--plugin {plugin_file.resolve()}" in err
    assert "pip install" in err and "encoder user/tiny_mlp" in err

    # Importable from sys.path: the checkpoint's plug-in is imported by name, with no option.
    monkeypatch.syspath_prepend(str(plugin_file.parent))
    assert main(embed) == 0
    adata = ad.read_h5ad(out)
    assert adata.obsm["X_expression"].shape == (adata.n_obs, 16) and np.isfinite(adata.obsm["X_expression"]).all()
    assert "user/tiny_mlp" in ENCODERS
    first = adata.obsm["X_expression"].copy()

    # --plugin after the verb works as well (already loaded: the same module, no second registration).
    out.unlink()
    assert main([*embed, "--plugin", str(plugin_file)]) == 0
    np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_expression"], first, rtol=0, atol=1e-6)


def test_plugin_after_the_verb_and_in_the_environment(plugin_file: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["list", "encoders", f"--plugin={plugin_file}"]) == 0
    assert "user/tiny_mlp" in capsys.readouterr().out
    plugins.forget("my_tiny_plugin")
    ENCODERS.unregister("user/tiny_mlp")
    monkeypatch.syspath_prepend(str(plugin_file.parent))
    monkeypatch.setenv("BIOSSL_PLUGINS", " my_tiny_plugin , ")
    assert main(["list", "encoders"]) == 0
    assert "user/tiny_mlp" in capsys.readouterr().out
    assert [p.via for p in plugins.loaded() if p.module == "my_tiny_plugin"] == ["BIOSSL_PLUGINS"]


@pytest.mark.parametrize("given, said", [
    (["--plugin", "no_such_biossl_plugin_xyz"], "no module named 'no_such_biossl_plugin_xyz'"),
    (["--plugin", "missing/file.py"], "no such file"),
    (["--plugin"], "--plugin needs a module name"),
])
def test_a_plugin_that_does_not_import_is_one_line(given: list[str], said: str, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    assert main(["list", "encoders", *given]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err


def test_a_plugin_that_raises_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken_user_plugin.py"
    bad.write_text("import torch\nraise RuntimeError('weights folder /data/x not found')\n")
    assert main(["--plugin", str(bad), "list", "encoders"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken_user_plugin.py" in err and "weights folder /data/x" in err
    assert "broken_user_plugin" not in sys.modules


def test_a_package_entry_point_is_imported_by_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package (a real ``.dist-info`` with ``entry_points.txt`` on ``sys.path``) declares the plug-in."""
    site = tmp_path / "site"
    (site / "userpkg").mkdir(parents=True)
    (site / "userpkg" / "__init__.py").write_text("")
    (site / "userpkg" / "biossl_plugin.py").write_text(PLUGIN.replace("user/tiny_mlp", "user/ep_mlp"))
    info = site / "userpkg-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: userpkg\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[biossl.plugins]\nuserpkg = userpkg.biossl_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        assert main(["list", "encoders"]) == 0
        assert "user/ep_mlp" in capsys.readouterr().out
        [rec] = [p for p in plugins.records() if p["module"] == "userpkg.biossl_plugin"]
        assert rec["via"] == "entry point" and rec["distribution"] == "userpkg 0.3"
        assert rec["provides"] == ["encoder user/ep_mlp"]
    finally:
        plugins.forget("userpkg.biossl_plugin")
        sys.modules.pop("userpkg", None)
        ENCODERS.unregister("user/ep_mlp")


def test_a_broken_entry_point_warns_and_is_named_on_a_miss(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    info = site / "brokenpkg-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenpkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[biossl.plugins]\nbroken = brokenpkg_absent.plugin\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        assert main(["list", "encoders"]) == 0  # an unrelated broken package does not stop the command
        with pytest.raises(KeyError, match="brokenpkg_absent.plugin"):
            ENCODERS.get("user/not_there")
    finally:
        plugins._FAILED.clear()


def test_help_imports_no_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "exploding_plugin.py"
    bad.write_text("raise SystemExit('imported')\n")
    with pytest.raises(SystemExit) as stop:
        main(["--plugin", str(bad), "--help"])
    assert stop.value.code == 0 and "--plugin MODULE" in capsys.readouterr().out

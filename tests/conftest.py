"""Shared fixtures: paths to the in-repo fixtures and to ``../shared/data`` (skipped where absent), and a tiny
pretraining checkpoint of the demo cohort with its embeddings (for the ``embed`` / ``finetune`` tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """Folder of small real test files committed in the repo (``tests/fixtures``; sources in its READMEs)."""
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that use it skip with a message where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared real-data folder {SHARED} (present in CI, absent in a user's clone)")
    return SHARED


@pytest.fixture(scope="session")
def demo_cohort() -> Path:
    """The bundled demo cohort's folder."""
    return REPO / "biossl" / "demo_data"


#: A one-step pretraining of tiny encoders on the four legacy demo modalities (cnv and mut are left out of the
#: config, so pretraining leaves the manifest's rows of them unused): the checkpoint the downstream tests use.
TINY_PRETRAIN = """\
seed_everything: 0
trainer: {max_steps: 1, enable_model_summary: false, enable_progress_bar: false}
model:
  modalities:
    wsi: {encoder: image/vit_tiny, spatial_dims: 2, in_channels: 3, img_size: 32, patch_size: 8}
    volume: {encoder: image/vit_tiny, spatial_dims: 3, in_channels: 1, img_size: 16, patch_size: 8}
    expression: {encoder: expression/transformer, embed_dim: 32, depth: 1}
    sequence: {encoder: sequence/transformer, embed_dim: 32, depth: 1}
  embed_dim: 32
  warmup_steps: 1
data:
  batch_size: 12
  spec: {tiles: 2, tile_px: 32, patches: 1, patch_size: [16, 16, 16], windows: 2, window_length: 32}
"""


#: One-step pretraining of a tiny slide encoder only (cohorts of slides).
WSI_ONLY_PRETRAIN = """\
seed_everything: 0
trainer: {max_steps: 1, enable_model_summary: false, enable_progress_bar: false}
model:
  modalities:
    wsi: {encoder: image/vit_tiny, spatial_dims: 2, in_channels: 3, img_size: 32, patch_size: 8}
  embed_dim: 32
  warmup_steps: 1
data:
  batch_size: 2
  spec: {modalities: [wsi], tiles: 2, tile_px: 32}
"""

#: One-step pretraining of the slide modality on cached tile features (``--data.features_dir``).
FEATURES_PRETRAIN = (
    "trainer: {max_steps: 1, enable_progress_bar: false, enable_model_summary: false}\n"
    "model: {modalities: {wsi: {encoder: features/mlp, embed_dim: 16}}, embed_dim: 16, warmup_steps: 1}\n"
    "data: {batch_size: 2, spec: {tiles: 2, modalities: [wsi]}}\n"
)


@pytest.fixture(scope="session")
def wsi_only_config() -> str:
    """:data:`WSI_ONLY_PRETRAIN` as text."""
    return WSI_ONLY_PRETRAIN


@pytest.fixture(scope="session")
def features_config() -> str:
    """:data:`FEATURES_PRETRAIN` as text."""
    return FEATURES_PRETRAIN


@pytest.fixture(scope="session")
def tiny_pretrain_config() -> str:
    """:data:`TINY_PRETRAIN` as text, for tests that write their own variant (``str.replace`` a value)."""
    return TINY_PRETRAIN


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory: pytest.TempPathFactory, demo_cohort: Path) -> tuple[Path, Path]:
    """(checkpoint, work dir) of a one-step pretraining of tiny encoders on the demo cohort (~4 s)."""
    from biossl.cli import main

    root = tmp_path_factory.mktemp("pretrain")
    (root / "tiny.yaml").write_text(TINY_PRETRAIN)
    code = main(["pretrain", "--config", str(root / "tiny.yaml"), "--data.manifest", str(demo_cohort / "manifest.csv"),
                 "--data.work_dir", str(root / "work"), "--trainer.default_root_dir", str(root / "run")])
    assert code == 0
    return root / "run" / "checkpoints" / "last.ckpt", root / "work"


@pytest.fixture(scope="session")
def embedded(pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``biossl embed`` of the demo cohort (with its labels) from the ``pretrained`` checkpoint."""
    from biossl.cli import main

    checkpoint, work = pretrained
    out = tmp_path_factory.mktemp("embed") / "demo.h5ad"
    code = main(["embed", "--checkpoint", str(checkpoint), "--manifest", str(demo_cohort / "manifest.csv"),
                 "--labels", str(demo_cohort / "labels.csv"), "--work-dir", str(work), "--out", str(out)])
    assert code == 0
    return out


def run_two_processes(test_file: str, out: Path, *, timeout: float = 60.0) -> None:
    """Run ``worker(rank, init_file, out_dir)`` of ``test_file`` in 2 spawned processes (gloo) and wait.

    Spawned children unpickle ``worker`` by module name, so the test file's folder is put on
    ``sys.path`` while they start (they inherit it). Fails the test if they do not finish in time.
    """
    import importlib
    import sys
    import time

    import torch.multiprocessing as mp

    folder = str(Path(test_file).parent)
    sys.path.insert(0, folder)
    try:
        module = importlib.import_module(Path(test_file).stem)
        context = mp.spawn(module.worker, args=(str(out / "init"), str(out)), nprocs=2, join=False)
    finally:
        sys.path.remove(folder)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"2-process gloo run of {Path(test_file).name} did not finish in {timeout:.0f} s")


@pytest.fixture(scope="session")
def two_processes() -> object:
    """:func:`run_two_processes`, as a fixture (test files cannot import conftest under importlib mode)."""
    return run_two_processes

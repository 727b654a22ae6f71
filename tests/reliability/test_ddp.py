"""``biossl pretrain`` under Lightning DDP: 2 CPU processes on one machine, gloo, the real CLI.

A probe callback (added with ``--trainer.callbacks``, so the CLI's own callbacks must keep it) wraps
the gather that the CLIP loss calls and records, per rank, the rows each call receives and returns,
and the patients of each step. The run must finish, write one checkpoint, score each rank's patients
against the embeddings gathered from both ranks, and give the ranks disjoint patients.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STEPS = 3

PROBE = '''\
"""Records what the CLIP loss gathers across ranks (written by tests/reliability/test_ddp.py)."""
import json
from pathlib import Path

import lightning.pytorch as pl
import torch.distributed as dist


class GatherProbe(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.calls, self.patients = Path(out), [], []

    def on_fit_start(self, trainer, pl_module) -> None:
        import biossl.objectives.clip as clip

        original = clip.gather_with_grad

        def recording(x, *args, **kwargs):
            y = original(x, *args, **kwargs)
            self.calls.append([int(x.shape[0]), int(y.shape[0])])
            return y

        clip.gather_with_grad = recording

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.patients.append(list(batch["patient_id"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "backend": dist.get_backend() if dist.is_initialized() else None,
                  "strategy": type(trainer.strategy).__name__, "calls": self.calls, "patients": self.patients}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
'''

CONFIG = """\
seed_everything: 4  # with this draw, step 0 gives one rank slide patients and the other none (the case that hung)
trainer:
  max_steps: {steps}
  enable_model_summary: false
  enable_progress_bar: false
  callbacks:
    - class_path: gather_probe.GatherProbe
      init_args: {{out: {out}}}
model:
  modalities:
    wsi: {{encoder: image/vit_tiny, spatial_dims: 2, in_channels: 3, img_size: 32, patch_size: 8}}
    expression: {{encoder: expression/transformer, embed_dim: 32, depth: 1}}
    sequence: {{encoder: sequence/transformer, embed_dim: 32, depth: 1}}
  embed_dim: 32
  warmup_steps: 1
data:
  batch_size: 6
  spec: {{modalities: [wsi, expression, sequence], tiles: 2, tile_px: 32, windows: 2, window_length: 32}}
"""


@pytest.mark.integration
def test_ddp_two_cpu_processes_gather_embeddings_and_write_one_checkpoint(
    pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path
) -> None:
    _, work = pretrained  # the demo slides already tiled (session fixture)
    (tmp_path / "gather_probe.py").write_text(PROBE)
    (tmp_path / "ddp.yaml").write_text(CONFIG.format(steps=STEPS, out=tmp_path / "probe"))
    root = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "biossl.cli", "pretrain", "--config", str(tmp_path / "ddp.yaml"),
           "--data.manifest", str(demo_cohort / "manifest.csv"), "--data.work_dir", str(work),
           "--trainer.default_root_dir", str(root), "--trainer.strategy", "ddp", "--trainer.devices", "2",
           "--trainer.accelerator", "cpu"]
    # Its own session, so that a hung run is killed with the rank Lightning started (a hang is a failure).
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail("the 2-process DDP run hung (killed after 240 s):\n" + log[-3000:])
    assert proc.returncode == 0, log[-3000:]

    # One checkpoint (max_steps < --checkpoint_every), written once by rank 0, at the last step.
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == STEPS
    assert len(pd.read_csv(root / "metrics.csv")) == STEPS

    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, record in enumerate(ranks):
        assert record["rank"] == r and record["world_size"] == 2
        assert record["backend"] == "gloo" and record["strategy"] == "DDPStrategy"
        assert len(record["patients"]) == STEPS
    # Each rank trains on its own patients ...
    for a, b in zip(ranks[0]["patients"], ranks[1]["patients"], strict=True):
        assert len(a) == len(b) == 6 and not set(a) & set(b), (a, b)
    # ... and in some step one rank has a patient with a slide and the other none: that rank's slide
    # encoder gets no gradient, which hung plain DDP before `allow_unused_parameters`.
    manifest = pd.read_csv(demo_cohort / "manifest.csv")
    with_slides = set(manifest.loc[manifest["modality"] == "wsi", "patient_id"])
    assert any(bool(set(a) & with_slides) != bool(set(b) & with_slides)
               for a, b in zip(ranks[0]["patients"], ranks[1]["patients"], strict=True))
    # ... and the CLIP loss scores them against the embeddings of both ranks: every gather returns the
    # rows of rank 0 and rank 1 together, on both ranks (3 modality pairs x 2 sides x STEPS calls at most).
    calls0, calls1 = ranks[0]["calls"], ranks[1]["calls"]
    assert calls0 and len(calls0) == len(calls1)
    for (local0, global0), (local1, global1) in zip(calls0, calls1, strict=True):
        assert global0 == global1 == local0 + local1 > max(local0, local1)


def test_ddp_strategies_tolerate_parameters_without_gradient() -> None:
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from biossl.commands.pretrain import allow_unused_parameters

    plain = DDPStrategy()
    assert allow_unused_parameters(plain) and plain._ddp_kwargs["find_unused_parameters"] is True
    told = DDPStrategy(find_unused_parameters=False)  # what `*_find_unused_parameters_false` gives
    assert not allow_unused_parameters(told) and told._ddp_kwargs["find_unused_parameters"] is False
    assert not allow_unused_parameters(SingleDeviceStrategy("cpu"))


RESUME = """\
seed_everything: 0
trainer: {max_steps: 5, enable_model_summary: false, enable_progress_bar: false}
model:
  modalities:
    wsi: {encoder: image/vit_tiny, spatial_dims: 2, in_channels: 3, img_size: 32, patch_size: 8}
    expression: {encoder: expression/transformer, embed_dim: 32, depth: 1}
    sequence: {encoder: sequence/transformer, embed_dim: 32, depth: 1}
  embed_dim: 32
  warmup_steps: 1
data:
  batch_size: 4
  spec: {modalities: [wsi, expression, sequence], tiles: 2, tile_px: 32, windows: 2, window_length: 32}
"""


@pytest.mark.slow
def test_ddp_resume_mid_epoch_is_exact(pretrained: tuple[Path, Path], demo_cohort: Path, tmp_path: Path) -> None:
    """12 patients per rank in batches of 4: 3 steps an epoch; resume at step 2 and run to step 5 (~45 s)."""
    _, work = pretrained
    (tmp_path / "r.yaml").write_text(RESUME)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def run(root: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "biossl.cli", "pretrain", "--config", str(tmp_path / "r.yaml"),
               "--data.manifest", str(demo_cohort / "manifest.csv"), "--data.work_dir", str(work),
               "--trainer.default_root_dir", str(root), "--trainer.strategy", "ddp", "--trainer.devices", "2",
               "--trainer.accelerator", "cpu", "--checkpoint_every", "2", *extra]
        done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    # The resumed run keeps max_steps (it sets the LR schedule): resume run a's mid-epoch step-2 checkpoint.
    run(tmp_path / "a")
    run(tmp_path / "b", "--ckpt_path", str(tmp_path / "a" / "checkpoints" / "step000002.ckpt"))
    la = pd.read_csv(tmp_path / "a" / "metrics.csv").set_index("step")["train/loss"]
    lb = pd.read_csv(tmp_path / "b" / "metrics.csv").set_index("step")["train/loss"]
    assert list(la.index) == list(range(5)) and list(lb.index) == [2, 3, 4]
    assert la.loc[[2, 3, 4]].to_list() == lb.to_list()  # step 3 is the first batch of epoch 1
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bag_sampler_shards_by_rank_and_resumes_each_rank_where_it_stopped() -> None:
    from biossl.data.bags import BagSampler

    one = BagSampler(10, seed=3)
    one.set_epoch(2)
    everything = [i for i, _ in one]
    shards = []
    for rank in range(3):
        s = BagSampler(10, seed=3, num_replicas=3, rank=rank)
        s.set_epoch(2)
        items = list(s)
        assert len(items) == len(s) == 4 and all(e == 2 for _, e in items)
        shards.append([i for i, _ in items])
    # The same permutation as one process, dealt round-robin, padded with its first patients (12 = 10 + 2).
    padded = everything + everything[:2]
    assert [padded[r::3] for r in range(3)] == shards
    assert set().union(*map(set, shards)) == set(range(10))
    # A mid-epoch resume skips only what this rank had consumed.
    s = BagSampler(10, seed=3, num_replicas=3, rank=1)
    s.resume_from(2, 2)
    assert [i for i, _ in s] == shards[1][2:]
    assert [i for i, _ in s] == shards[1]  # the skip applies once

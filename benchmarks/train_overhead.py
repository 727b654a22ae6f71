"""Step time of ``biossl pretrain`` (Lightning) against a bare PyTorch loop over the same model.

    .venv/bin/python benchmarks/train_overhead.py [--steps 20] [--warmup 3] [--repeats 3] [--tiny]
        [--ablate] [--device cpu|cuda] [--peak-tflops 989] [--threads N] [--json PATH]

Both sides train one :class:`PretrainModule` (demo config's model and bag spec, demo cohort; same
seed and initial weights, one state dict copied into every run) with ``configure_optimizers()``'s
AdamW + warm-up/cosine ``LambdaLR``. bare: ``encode_batch`` + ``training_step``'s loss sum, then
``loss.backward(); opt.step(); opt.zero_grad(); sched.step()``. biossl: ``Trainer.fit`` as
``biossl pretrain`` runs it (CSVLogger, ``log_every_n_steps=1``, the CLI's ``ModelCheckpoint`` every
50 steps + ``CheckpointOnInterrupt``), no progress bar. Data: ``memory`` = a fixed list of
pre-collated batches already on the device (neither side pays for loading); ``loader`` = both iterate
the demo ``DataLoader`` (loading included). Each run warms up, then times ``--steps`` steps; the order
alternates per repeat and medians are reported. A checkpoint write (step file + ``last.ckpt``) is
timed separately and amortised over 50 steps. CUDA: bf16 autocast on both sides (``bf16-mixed``), plus
tile-encoder images/s, data-wait share and model FLOP utilisation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from biossl import keys  # noqa: E402
from biossl.data.bags import BagSpec  # noqa: E402
from biossl.modules.callbacks import CheckpointOnInterrupt  # noqa: E402
from biossl.modules.datamodule import BagDataModule  # noqa: E402
from biossl.modules.pretrain import PretrainModule  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "train_overhead"
CONFIG = ROOT / "configs" / "pretrain" / "demo.yaml"
CHECKPOINT_EVERY = 50  # the CLI's --checkpoint_every default
TINY_VIT = {"hidden_size": 24, "depth": 1, "heads": 1, "decoder_dim": 24, "decoder_depth": 1, "decoder_heads": 1}


def load_setup(*, tiny: bool = False) -> tuple[dict[str, Any], BagDataModule]:
    """Model kwargs of the demo config and its prepared data module (tiled once into ``WORK``).

    ``tiny`` shrinks every encoder to width 16-24 and one layer (same data), so that the fixed
    per-step cost of the training loop, not the arithmetic, dominates the step.
    """
    cfg = yaml.safe_load(CONFIG.read_text())
    model = dict(cfg["model"], seed=cfg.get("seed_everything", 0))
    if tiny:
        small = {"embed_dim": 16, "depth": 1}
        model["modalities"] = {m: dict(s, **(TINY_VIT if s["encoder"].startswith("image/vit") else small))
                               for m, s in model["modalities"].items()}
        model["embed_dim"] = 16
    model["total_steps"] = cfg["trainer"]["max_steps"]  # what the trainer's estimate gives the CLI
    data = dict(cfg["data"])
    spec: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("spec").items()}
    data.update(manifest=ROOT / data["manifest"], work_dir=WORK / "data", spec=BagSpec(**spec), seed=model["seed"])
    dm = BagDataModule(**data)
    dm.prepare_data()
    dm.setup("fit")
    return model, dm


def build_module(model_kwargs: dict[str, Any], dm: BagDataModule, state: dict[str, torch.Tensor] | None,
                 cls: type[PretrainModule] = PretrainModule) -> PretrainModule:
    """A configured module with the data-derived sizes the trainer would fill in, and ``state`` loaded."""
    module = cls(**model_kwargs)
    genes = list(dm.vocabulary.genes)
    assert dm.cohort is not None
    module.data_state.update(vocabulary=genes, data_fingerprint=dm.cohort.fingerprint(), bag_spec=dict(vars(dm.spec)))
    if keys.EXPRESSION in module.modality_specs:
        module.modality_specs[keys.EXPRESSION].setdefault("n_genes", len(genes))
    if keys.SEQUENCE in module.modality_specs:
        module.modality_specs[keys.SEQUENCE].setdefault("max_len", dm.spec.window_length)
    module.data_state["modality_specs"] = {m: dict(s) for m, s in module.modality_specs.items()}
    module.configure_model()
    if state is not None:
        module.load_state_dict(state)
    return module


def bare_loss(module: PretrainModule, batch: dict[str, Any]) -> torch.Tensor:
    """The loss sum of ``PretrainModule.training_step``, without seeding and logging."""
    pooled, present, masked = module.encode_batch(batch)
    total = sum((module._task_weights[k] * v for k, v in masked.items()), torch.zeros((), device=module.device))
    if module.contrastive is not None:
        c_total, _ = module.contrastive(pooled, present)
        total = total + module.contrastive_weight * c_total
    return total


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor of a nested batch to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (Lightning's ``bf16-mixed``), nothing on CPU (``32-true``)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


class Batches(list[Any]):
    """A fixed list of batches that Lightning takes as one loader (it reads a plain list as several)."""


def loader_epochs(loader: Any) -> Iterator[Any]:
    """Batches of successive epochs, setting the sampler's epoch as Lightning does."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def run_bare(module: PretrainModule, batches: Iterator[Any], n_warm: int, n_steps: int,
             device: torch.device) -> tuple[float, float]:
    """Seconds for ``n_steps`` steps after ``n_warm``, and seconds of them spent waiting for batches."""
    module.to(device).train()
    cfg = module.configure_optimizers()
    opt, sched, wait, t0 = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"], 0.0, 0.0
    for step in range(n_warm + n_steps):
        if step == n_warm:
            sync(device)
            t0, wait = time.perf_counter(), 0.0
        tw = time.perf_counter()
        batch = next(batches)  # loading only: the copy below also waits for queued GPU work
        wait += time.perf_counter() - tw
        batch = to_device(batch, device)
        with autocast(device):
            loss = bare_loss(module, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    sync(device)
    return time.perf_counter() - t0, wait


class StepTimer(pl.Callback):
    """Times the steps ``n_warm + 1 .. n_warm + n_steps`` (runs before the checkpoint callback)."""

    def __init__(self, n_warm: int, n_steps: int, device: torch.device) -> None:
        self.marks, self.device = (n_warm, n_warm + n_steps), device
        self.times: dict[int, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """Take the clock at the end of the warm-up and of the last timed step."""
        if trainer.global_step in self.marks:
            sync(self.device)
            self.times[trainer.global_step] = time.perf_counter()


def run_lightning(module: PretrainModule, data: Any, n_warm: int, n_steps: int, device: torch.device, *,
                  checkpoint: bool = True, progress_bar: bool = False, log_every: int = 1) -> tuple[float, float]:
    """Seconds for ``n_steps`` of ``Trainer.fit`` after ``n_warm`` (``data``: a list or a data module).

    Also returns the seconds of one checkpoint write as ``ModelCheckpoint`` does it (step + last).
    """
    root = WORK / "runs"
    shutil.rmtree(root, ignore_errors=True)
    timer = StepTimer(n_warm, n_steps, device)
    callbacks: list[pl.Callback] = [timer, CheckpointOnInterrupt()]
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=CHECKPOINT_EVERY,
                                         save_last=True, save_top_k=-1, filename="step{step:06d}",
                                         auto_insert_metric_name=False))
    trainer = pl.Trainer(
        max_steps=n_warm + n_steps, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true", default_root_dir=root,
        logger=CSVLogger(save_dir=root, name="", version=""), callbacks=callbacks, enable_checkpointing=checkpoint,
        enable_progress_bar=progress_bar, enable_model_summary=False, log_every_n_steps=log_every,
    )
    if isinstance(data, BagDataModule):
        trainer.fit(module, datamodule=data)
    else:
        trainer.fit(module, train_dataloaders=Batches(data))
    t0 = time.perf_counter()
    for name in ("probe.ckpt", "probe-last.ckpt"):
        trainer.save_checkpoint(root / name)
    return timer.times[n_warm + n_steps] - timer.times[n_warm], time.perf_counter() - t0


class NoLogModule(PretrainModule):
    """Ablation: ``self.log`` does nothing."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        """Drop the metric."""


def compare(name: str, make_bare: Callable[[], float], make_biossl: Callable[[], tuple[float, float]],
            repeats: int, steps: int) -> dict[str, Any]:
    """Alternate the two sides ``repeats`` times; medians in ms/step and their ratio."""
    bare: list[float] = []
    ours: list[float] = []
    ckpt: list[float] = []

    def run_ours() -> None:
        secs, ckpt_secs = make_biossl()
        ours.append(1e3 * secs / steps)
        ckpt.append(1e3 * ckpt_secs)

    for r in range(repeats):
        order = [lambda: bare.append(1e3 * make_bare() / steps), run_ours]
        for fn in order if r % 2 == 0 else order[::-1]:
            fn()
    row: dict[str, Any] = {"variant": name, "bare_ms": statistics.median(bare), "biossl_ms": statistics.median(ours),
                           "bare_all": bare, "biossl_all": ours, "checkpoint_write_ms": statistics.median(ckpt)}
    row["ratio"] = row["biossl_ms"] / row["bare_ms"]
    # the timed window holds no checkpoint step unless it spans a multiple of CHECKPOINT_EVERY
    amortised = row["checkpoint_write_ms"] / CHECKPOINT_EVERY if steps < CHECKPOINT_EVERY else 0.0
    row["ratio_with_checkpoints"] = (row["biossl_ms"] + amortised) / row["bare_ms"]
    print(f"{name:>28}: bare {row['bare_ms']:8.1f} ms/step  biossl {row['biossl_ms']:8.1f} ms/step  ratio "
          f"{row['ratio']:.3f} ({row['ratio_with_checkpoints']:.3f} with a {row['checkpoint_write_ms']:.0f} ms "
          f"checkpoint per {CHECKPOINT_EVERY} steps)  rounds: {' '.join(f'{b:.0f}' for b in bare)} / "
          f"{' '.join(f'{o:.0f}' for o in ours)}", flush=True)
    return row


def tile_throughput(module: PretrainModule, batches: list[dict[str, Any]], device: torch.device,
                    n_images: int = 512, iters: int = 10) -> float:
    """Images/s of the slide-tile encoder's ``embed`` (inference, no grad) on the demo's real tiles."""
    tiles = torch.cat([b[keys.WSI][keys.X][b[keys.WSI][keys.MASK]] for b in batches if keys.WSI in b])
    tiles = tiles.repeat(-(-n_images // len(tiles)), *([1] * (tiles.ndim - 1)))[:n_images].to(device)
    enc: Any = module.encoders[keys.WSI].to(device).eval()
    with torch.no_grad(), autocast(device):
        enc.embed(tiles)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            enc.embed(tiles)
        sync(device)
    return n_images * iters / (time.perf_counter() - t0)


def compute_report(module: PretrainModule, batches: list[dict[str, Any]], rows: list[dict[str, Any]],
                   device: torch.device, peak_tflops: float) -> dict[str, Any]:
    """FLOPs per step (fwd + bwd, mean over ``batches``), achieved FLOP/s, MFU on CUDA, tile images/s.

    ``FlopCounterMode`` counts matmuls, convolutions and attention, the bulk of the arithmetic.
    """
    module.to(device).train()
    counter = FlopCounterMode(display=False)
    with counter:
        for b in batches:
            with autocast(device):
                loss = bare_loss(module, b)
            loss.backward()
    module.zero_grad(set_to_none=True)
    flops = counter.get_total_flops() / len(batches)
    out: dict[str, Any] = {"flops_per_step": flops, "tile_images_per_s": tile_throughput(module, batches, device)}
    print(f"FLOPs per step (fwd + bwd, mean of {len(batches)} batches): {flops / 1e9:.2f} GFLOP; "
          f"tile encoder embed: {out['tile_images_per_s']:.0f} images/s")
    for row in rows:
        for side in ("bare", "biossl"):
            row[f"tflops_{side}"] = flops / (row[f"{side}_ms"] / 1e3) / 1e12
            if device.type == "cuda":
                row[f"mfu_{side}"] = row[f"tflops_{side}"] / peak_tflops
        mfu = (f", MFU bare {100 * row['mfu_bare']:.2f}% biossl {100 * row['mfu_biossl']:.2f}% of {peak_tflops:g}"
               if device.type == "cuda" else "")
        print(f"{row['variant']:>28}: achieved TFLOP/s bare {row['tflops_bare']:.4f} "
              f"biossl {row['tflops_biossl']:.4f}{mfu}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--peak-tflops", type=float, default=989.0, help="device peak dense bf16 TFLOP/s")
    p.add_argument("--ablate", action="store_true", help="also time biossl without checkpoints/logging, with bar")
    p.add_argument("--tiny", action="store_true", help="width 16-24 one-layer encoders: measure the loop's fixed cost")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print (and optionally save) the table."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("lightning", "lightning.pytorch", "biossl.objectives.clip"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, device {device}{gpu}, threads {torch.get_num_threads()}, "
          f"model {'tiny' if args.tiny else 'demo config'}", flush=True)

    model_kwargs, dm = load_setup(tiny=args.tiny)
    init = {k: v.clone() for k, v in build_module(model_kwargs, dm, None).state_dict().items()}
    w, n, reps = args.warmup, args.steps, args.repeats
    loader = dm.train_dataloader()
    mem = [to_device(b, device) for _, b in zip(range(12), loader_epochs(loader), strict=False)]
    fixed = [mem[i % len(mem)] for i in range(w + n)]
    print(f"demo: {len(dm.dataset or [])} patients, batch {dm.batch_size}, {len(loader)} batches/epoch; "
          f"memory variant cycles {len(mem)} pre-collated batches", flush=True)

    def fresh(cls: type[PretrainModule] = PretrainModule) -> PretrainModule:
        torch.manual_seed(model_kwargs["seed"])
        return build_module(model_kwargs, dm, init, cls)

    def ours(data: Any, cls: type[PretrainModule] = PretrainModule, **kw: Any) -> Callable[[], tuple[float, float]]:
        return lambda: run_lightning(fresh(cls), data, w, n, device, **kw)

    waits: list[float] = []

    def bare_mem() -> float:
        return run_bare(fresh(), iter(fixed), w, n, device)[0]

    def bare_loader() -> float:
        secs, wait = run_bare(fresh(), loader_epochs(dm.train_dataloader()), w, n, device)
        waits.append(wait / secs)
        return secs

    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    rows.append(compare("memory (pre-collated)", bare_mem, ours(fixed), reps, n))
    rows.append(compare("loader (DataLoader)", bare_loader, ours(dm), reps, n))
    extra["data_wait_fraction"] = statistics.median(waits)
    print(f"bare loop, loader variant: {100 * extra['data_wait_fraction']:.1f}% of step time waiting for data")
    if args.ablate:
        rows.append(compare("memory, no checkpointing", bare_mem, ours(fixed, checkpoint=False), reps, n))
        rows.append(compare("memory, no self.log", bare_mem, ours(fixed, NoLogModule), reps, n))
        rows.append(compare("memory, log_every_n_steps=50", bare_mem, ours(fixed, log_every=50), reps, n))
        rows.append(compare("memory, progress bar on", bare_mem, ours(fixed, progress_bar=True), reps, n))
        t0 = time.perf_counter()
        _ = [torch.manual_seed(i) for i in range(1000)]
        extra["manual_seed_us"] = 1e3 * (time.perf_counter() - t0)
        print(f"torch.manual_seed: {extra['manual_seed_us']:.1f} us/call")
    extra.update(compute_report(fresh(), mem, rows, device, args.peak_tflops))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         **extra}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

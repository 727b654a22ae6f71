"""Memory per batch of every objective on every modality it applies to, on one demo-cohort batch.

    .venv/bin/python benchmarks/objective_memory.py [--device cpu|cuda] [--markdown]

For each (objective, modality) the demo config's encoder of that modality (configs/pretrain/demo.yaml:
ViT-tiny on 64 px tiles and 32^3 volume patches, 2-layer gene and nucleotide transformers) is trained
with that objective alone, at the objective's default (paper) sizes, on one batch of the demo
cohort (8 patients: 64 tiles, 16 volume patches, 8 expression profiles, 32 DNA windows of 64 bp).
Reported per row:

* ``activations``: bytes of the tensors autograd saves for the backward pass of that loss (counted
  with ``torch.autograd.graph.saved_tensors_hooks``, each storage once): the memory that grows with
  the batch, the same on CPU and GPU up to kernel choices;
* ``extra params``: parameters the objective adds (heads, projectors, prototypes, the masked
  objectives' decoders, and a momentum copy of the encoder where it needs one), in millions, and
  their bytes (fp32 weights, plus AdamW's two moments for the trainable ones);
* ``ms``: forward + backward wall time of that batch (median of 3, after one warm-up).
* On CUDA also ``peak``: ``torch.cuda.max_memory_allocated`` during forward + backward.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_overhead import build_module, load_setup, to_device  # noqa: E402

from biossl.keys import LEGACY_KINDS  # noqa: E402
from biossl.objectives import catalogue  # noqa: E402

#: Encoder parameters that only the encoder's masked objective uses (MAE decoder, LM/value heads).
MASKED_PARTS = ("objective.", "lm_head", "value_head", "mask_embedding", "decoder")


def saved_bytes(fn: Any) -> tuple[torch.Tensor, int]:
    """Run ``fn()`` and return its result and the bytes of distinct storages saved for backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # sparse / wrapper tensors
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def measure(model: dict[str, Any], dm: Any, modality: str, name: str, device: torch.device) -> dict[str, float]:
    """Activation bytes, extra parameters and timing of one objective on one modality."""
    kwargs = copy.deepcopy(model)
    kwargs["modalities"] = {modality: dict(kwargs["modalities"][modality], objective=name)}
    torch.manual_seed(0)
    module = build_module(kwargs, dm, None).to(device)
    module.train()
    batch = to_device(next(iter(dm.train_dataloader())), device)
    batch = {k: v for k, v in batch.items() if k in (modality, "patient_id")}

    def loss() -> torch.Tensor:
        _, _, losses = module.encode_batch(batch)
        total: torch.Tensor = sum(losses.values())  # type: ignore[assignment]
        return total

    # The masked objectives' decoders live inside the encoder: count them as the objective's too.
    own = [p for n, p in module.encoders.named_parameters() if any(k in n for k in MASKED_PARTS)]
    masked = catalogue()[name].contract == "masked"
    trainable_extra = sum(p.numel() for p in module.tasks.parameters() if p.requires_grad)
    trainable_extra += sum(p.numel() for p in own) if masked else 0
    extra = trainable_extra + sum(p.numel() for p in module.targets.parameters())
    loss().backward()  # warm-up (lazy buffers, k-means memories, queues)
    module.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out, act = saved_bytes(loss)
    out.backward()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else float("nan")
    times = []
    for _ in range(3):
        module.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t0))
    # fp32 weights + AdamW's two moments for trainable extras; weights only for frozen (momentum) copies.
    param_bytes = 4 * (extra - trainable_extra) + 12 * trainable_extra
    return {"activations": act, "extra": extra, "param_bytes": param_bytes, "ms": statistics.median(times),
            "peak": peak}


def main() -> None:
    """Measure every applicable (objective, modality) pair and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, dm = load_setup()
    rows = []
    for name, meta in catalogue().items():
        kinds = {m: s.get("kind") or LEGACY_KINDS.get(m) for m, s in model["modalities"].items()}
        for modality in (m for m, kind in kinds.items() if kind in meta.kinds):
            r = measure(model, dm, modality, name, device)
            rows.append((name, modality, r))
            print(f"{name:15s} {modality:10s} act {r['activations'] / 2**20:8.1f} MiB  extra "
                  f"{r['extra'] / 1e6:6.2f} M ({r['param_bytes'] / 2**20:6.1f} MiB)  {r['ms']:7.0f} ms", flush=True)
    print(f"\n| objective | modality | activations (MiB / batch) | extra params (M; MiB with AdamW) | "
          f"fwd+bwd ms ({device.type}) |")
    print("|---|---|---|---|---|")
    for name, modality, r in rows:
        print(f"| {name} | {modality} | {r['activations'] / 2**20:.1f} | {r['extra'] / 1e6:.2f}; "
              f"{r['param_bytes'] / 2**20:.1f} | {r['ms']:.0f} |")


if __name__ == "__main__":
    main()

"""Real 2-process (gloo, CPU) runs of the contrastive losses against one process.

Each process holds a slice of a fixed global batch, computes the loss, back-propagates, and averages
its parameter gradients over ranks as DistributedDataParallel does. Its loss value and averaged
gradients must equal one process on the whole global batch. All scenarios share one spawn.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from biossl.distributed import gather_with_grad
from biossl.objectives.clip import CLIPLoss, MultiModalCLIP
from biossl.objectives.infonce import NTXentLoss

N = 8
DIMS = {"wsi": 5, "expression": 6, "sequence": 3}
VALID = {  # invalid patients on both ranks; in "clip_unequal" rank 1 has no valid patient at all
    "clip": torch.tensor([1, 0, 1, 1, 1, 1, 0, 1], dtype=torch.bool),
    "clip_unequal": torch.tensor([1, 0, 1, 1, 1, 0, 0, 0], dtype=torch.bool),
}
PRESENT = {
    "wsi": torch.tensor([1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool),
    "expression": torch.tensor([1, 1, 1, 0, 1, 0, 1, 1], dtype=torch.bool),
    "sequence": torch.tensor([1, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool),  # none on rank 1
}
SPLITS = {"clip": [4, 4], "clip_unequal": [5, 3], "infonce": [4, 4], "infonce_unequal": [6, 2], "multimodal": [4, 4]}


class ClipModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc_a = nn.Linear(5, 4)
        self.enc_b = nn.Linear(6, 4)
        self.loss = CLIPLoss()

    def forward(self, xa: torch.Tensor, xb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.loss(self.enc_a(xa), self.enc_b(xb), valid)


class NTXentModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(5, 4)
        self.loss = NTXentLoss(temperature=0.2)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.loss(self.enc(x1), self.enc(x2))


class MultiModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.ModuleDict({m: nn.Linear(d, 4) for m, d in DIMS.items()})
        self.loss = MultiModalCLIP(list(DIMS))

    def forward(self, xs: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        total, _ = self.loss({m: self.enc[m](x) for m, x in xs.items()}, present)
        return total


def make(scenario: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model (same initial weights everywhere) and the fixed global batch of a scenario."""
    torch.manual_seed(0)
    model: nn.Module
    if scenario.startswith("clip"):
        model = ClipModel()
    else:
        model = NTXentModel() if scenario.startswith("infonce") else MultiModel()
    g = torch.Generator().manual_seed(1)
    data = {f"x_{m}": torch.randn(N, d, generator=g) for m, d in DIMS.items()}
    data["x_view2"] = data["x_wsi"] + 0.3 * torch.randn(N, 5, generator=g)
    return model.double(), {k: v.double() for k, v in data.items()}


def run(model: nn.Module, scenario: str, data: dict[str, torch.Tensor], rows: slice) -> torch.Tensor:
    if scenario.startswith("clip"):
        return model(data["x_wsi"][rows], data["x_expression"][rows], VALID[scenario][rows])
    if scenario.startswith("infonce"):
        return model(data["x_wsi"][rows], data["x_view2"][rows])
    present = {m: p[rows] for m, p in PRESENT.items() if p[rows].any()}  # absent modality: not in dict
    return model({m: data[f"x_{m}"][rows] for m in present}, present)


def worker(rank: int, init_file: str, out_dir: str) -> None:
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        for scenario, sizes in SPLITS.items():
            model, data = make(scenario)
            start = sum(sizes[:rank])
            loss = run(model, scenario, data, slice(start, start + sizes[rank]))
            loss.backward()
            # What DistributedDataParallel does (real DDP would import torch._dynamo, +5 s per
            # process): average every gradient over ranks; a parameter unused on a rank counts 0.
            grads = {}
            for name, p in model.named_parameters():
                grad = torch.zeros_like(p) if p.grad is None else p.grad.clone()
                dist.all_reduce(grad, op=dist.ReduceOp.SUM)
                grads[name] = grad / 2
            torch.save({"loss": loss.detach(), "grads": grads}, Path(out_dir) / f"{scenario}_{rank}.pt")
        try:  # trailing dimensions that differ between ranks must be a clear error, not a hang
            gather_with_grad(torch.zeros(2, 3 + rank))
            message = "no error"
        except ValueError as error:
            message = str(error)
        (Path(out_dir) / f"mismatch_{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory, two_processes: Any) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    two_processes(__file__, out)
    return out


@pytest.mark.parametrize("scenario", list(SPLITS))
def test_two_processes_equal_one_process(distributed_results: Path, scenario: str) -> None:
    model, data = make(scenario)
    loss = run(model, scenario, data, slice(None))
    loss.backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert len(expected) == len(list(model.parameters()))  # every parameter got a gradient
    for rank in range(2):
        got = torch.load(distributed_results / f"{scenario}_{rank}.pt")
        assert torch.allclose(got["loss"], loss.detach(), rtol=1e-10, atol=1e-12), (rank, got["loss"], loss)
        assert got["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            assert grad.abs().max() > 0, name  # a real gradient, not a trivially equal zero
            assert torch.allclose(got["grads"][name], grad, rtol=1e-9, atol=1e-12), (rank, name)


def test_shape_mismatch_between_ranks_is_a_clear_error(distributed_results: Path) -> None:
    for rank in range(2):
        message = (distributed_results / f"mismatch_{rank}.txt").read_text()
        assert "rank 0: (2, 3)" in message and "rank 1: (2, 4)" in message, message

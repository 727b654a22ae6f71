"""Collapse behaviour in a small real run: BYOL / DirectPred on PBMC expression with and without stop-gradient.

A tiny MLP encoder is trained for 200 steps on rows of scanpy's bundled ``pbmc68k_reduced`` (700 real
PBMC cells x 765 genes, z-scored), each seen in two noisy views (Gaussian noise + dropout). The
collapse diagnostic is Chen & He's: the mean per-dimension std of the L2-normalised projections of all
cells, ``~1/sqrt(D)`` when spread out and 0 when every cell maps to the same direction.

SimSiam is not run here: with its BatchNorm-ed projector output, the projections of a batch cannot
become constant, so this diagnostic does not show its (paper-reported) collapse at this scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import scanpy as sc
import torch
from torch import nn

from biossl.objectives._heads import make_target, momentum_update, normalised_std
from biossl.objectives.byol import BYOL
from biossl.objectives.directpred import DirectPred

PROJ_DIM = 32
HEALTHY = 1 / math.sqrt(PROJ_DIM)  # 0.177


@pytest.fixture(scope="module")
def cells() -> Iterator[torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and immune to a busy machine
    yield torch.tensor(sc.datasets.pbmc68k_reduced().X, dtype=torch.float32)
    torch.set_num_threads(threads)


def _views(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    def one() -> torch.Tensor:
        noisy = x + 0.5 * torch.randn(x.shape, generator=g)
        return noisy * (torch.rand(x.shape, generator=g) > 0.2) / 0.8

    return one(), one()


def train_and_measure(cells: torch.Tensor, model: BYOL, *, steps: int = 200, momentum: float = 0.99) -> float:
    """Train encoder + ``model`` with SGD; return the collapse diagnostic on all cells (eval mode)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    encoder = nn.Sequential(nn.Linear(cells.shape[1], 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 64))
    target = make_target(encoder)
    opt = torch.optim.SGD([*encoder.parameters(), *model.parameters()], lr=0.05, momentum=0.9, weight_decay=1e-4)
    for _ in range(steps):
        x1, x2 = _views(cells[torch.randint(0, cells.shape[0], (128,), generator=g)], g)
        y1, y2 = encoder(x1), encoder(x2)
        if model.stop_gradient:
            with torch.no_grad():
                t1, t2 = target(x1), target(x2)
            loss = model(y1, y2, t1, t2)
        else:  # the ablation: the "target" branch is the online network itself, with gradients
            loss = model(y1, y2, y1, y2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        momentum_update(encoder, target, momentum)
        model.update_target(momentum)
    encoder.eval()
    model.eval()
    with torch.no_grad():
        return float(normalised_std(model.projector(encoder(cells))))


def test_byol_stop_gradient_keeps_embeddings_spread(cells: torch.Tensor) -> None:
    torch.manual_seed(0)
    std = train_and_measure(cells, BYOL(64, proj_dim=PROJ_DIM, hidden_dim=128))
    assert std > 0.5 * HEALTHY  # measured 0.171


def test_byol_without_stop_gradient_collapses(cells: torch.Tensor) -> None:
    torch.manual_seed(0)
    std = train_and_measure(cells, BYOL(64, proj_dim=PROJ_DIM, hidden_dim=128, stop_gradient=False))
    assert std < 0.15 * HEALTHY  # measured 0.014


def test_directpred_set_predictor_keeps_embeddings_spread(cells: torch.Tensor) -> None:
    torch.manual_seed(0)
    std = train_and_measure(cells, DirectPred(64, proj_dim=PROJ_DIM, hidden_dim=128))
    assert std > 0.5 * HEALTHY  # measured 0.169

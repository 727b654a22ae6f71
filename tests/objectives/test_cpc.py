"""CPC against an explicit-loop InfoNCE reference, and a short real-data run on GUE promoters."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from biossl.data.sequence import encode, pad_batch
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.cpc import CPC


def _promoters(path: Path, n: int | None = None) -> torch.Tensor:
    with path.open() as fh:
        rows = [r["sequence"] for r in csv.DictReader(fh)][:n]
    return torch.from_numpy(pad_batch([encode(s) for s in rows], 70))


def _composition_latents(tokens: torch.Tensor, chunk: int) -> torch.Tensor:
    """Real latents: A/C/G/T/N frequencies of consecutive ``chunk``-bp pieces, ``[N, T, 5]``."""
    onehot = nn.functional.one_hot(tokens, 7)[..., 1:6].float()
    return onehot.reshape(tokens.shape[0], -1, chunk, 5).mean(dim=2)


def _reference(cpc: CPC, z: torch.Tensor, valid: torch.Tensor) -> float:
    n, t_len, _ = z.shape
    ctx = cpc.context(z)
    per_k = []
    for k in range(1, cpc.horizons + 1):
        terms = []
        for i in range(n):
            for t in range(t_len - k):
                if not (valid[i, t] and valid[i, t + k]):
                    continue
                pred = cpc.predictors[k - 1](ctx[i, t])
                scores = [float(z[m, s] @ pred) for m in range(n) for s in range(t_len) if valid[m, s]]
                pos = float(z[i, t + k] @ pred)
                terms.append(-pos + math.log(sum(math.exp(s) for s in scores)))
        if terms:
            per_k.append(sum(terms) / len(terms))
    return sum(per_k) / len(per_k)


def test_matches_explicit_loop_reference(fixtures: Path) -> None:
    torch.manual_seed(0)
    z = _composition_latents(_promoters(fixtures / "sequence" / "gue_prom_core_all_dev40.csv", 6), 10) * 3.0
    valid = torch.ones(6, 7, dtype=torch.bool)
    valid[1, 5:] = False  # shorter sequences: padding at the end
    valid[4, 2:] = False
    cpc = CPC(embed_dim=5, context_dim=8, horizons=3)
    with torch.no_grad():
        got = cpc(z, valid).item()
        want = _reference(cpc, z, valid)
    assert got == pytest.approx(want, rel=1e-5)
    with torch.no_grad():
        z2 = z.clone()
        z2[~valid] = 100.0  # padded latents are neither contexts nor candidates
        assert cpc(z2, valid).item() == pytest.approx(got, rel=1e-6)
        assert cpc(z, None).item() != pytest.approx(got, rel=1e-3)


def test_scores_layout_and_errors() -> None:
    torch.manual_seed(0)
    cpc = CPC(embed_dim=4, context_dim=6, horizons=2)
    z = torch.randn(3, 5, 4)  # shape test only
    s = cpc.scores(z, 2)
    assert s.shape == (3, 5, 15)
    pred = cpc.predictors[1](cpc.context(z))
    assert s[2, 1, 1 * 5 + 3].item() == pytest.approx(float(z[1, 3] @ pred[2, 1].detach()), rel=1e-5)
    with pytest.raises(ValueError, match="prefix"):
        cpc(z, torch.tensor([[1, 0, 1, 1, 1]] * 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[N, T, D\]"):
        cpc(z[0])
    with pytest.raises(InputError, match="horizons"):
        CPC(embed_dim=4, horizons=0)
    assert isinstance(OBJECTIVES.build("cpc", embed_dim=4), CPC)
    # nothing to score (every sequence a single step): 0, still differentiable
    loss = cpc(z, torch.tensor([[1, 0, 0, 0, 0]] * 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0


class _ChunkEncoder(nn.Module):
    """Nucleotide embedding + one strided conv: 70 bp -> 14 latents of 5 bp each."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 16, padding_idx=0)
        self.conv = nn.Conv1d(16, dim, kernel_size=5, stride=5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.conv(self.emb(tokens).transpose(1, 2)).transpose(1, 2)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small CPU models run far faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.shared
def test_loss_falls_on_held_out_real_promoters(shared_data: Path, one_thread: None) -> None:
    """80 steps on 5,120 fresh GUE promoters lower the CPC loss on 256 unseen ones."""
    torch.manual_seed(0)
    tokens = _promoters(shared_data / "dna_gue" / "prom_prom_core_all" / "train.csv", 5120 + 256)
    held = tokens[-256:]
    encoder, cpc = _ChunkEncoder(), CPC(embed_dim=32, context_dim=32, horizons=2)

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(np.mean([cpc(encoder(held[i : i + 64])).item() for i in range(0, 256, 64)]))

    before = held_out_loss()
    chance = math.log(64 * 14)  # uniform scores over the 64 x 14 candidates
    assert before == pytest.approx(chance, abs=0.2)
    opt = torch.optim.Adam([*encoder.parameters(), *cpc.parameters()], lr=3e-3)
    for step in range(80):
        loss = cpc(encoder(tokens[step * 64 : (step + 1) * 64]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < before - 0.1, (before, after)

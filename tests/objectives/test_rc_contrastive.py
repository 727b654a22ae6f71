"""Self-GenomeNet reverse-complement contrastive loss: strand symmetry, reference InfoNCE, real sequences."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from biossl.data.sequence import decode, encode, pad_batch, reverse_complement
from biossl.errors import InputError
from biossl.keys import PAD_TOKEN
from biossl.objectives import OBJECTIVES
from biossl.objectives.rc_contrastive import RCContrastive, reverse_complement_tokens, split_rows


def _promoters(fixtures: Path, lengths: list[int] | None = None) -> torch.Tensor:
    with (fixtures / "sequence" / "gue_prom_core_all_dev40.csv").open() as fh:
        rows = [encode(r["sequence"]) for r in csv.DictReader(fh)]
    if lengths is not None:  # shorten some rows: ragged batch, PAD at the end
        rows = [r[:n] for r, n in zip(rows, lengths)]
    return torch.from_numpy(pad_batch(rows, 70))


class _Embed(nn.Module):
    """Nucleotide conv + masked mean pooling; deliberately not reverse-complement equivariant."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 16, padding_idx=PAD_TOKEN)
        self.conv = nn.Conv1d(16, 32, kernel_size=5, padding=2)
        self.out = nn.Linear(32, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(self.emb(tokens).transpose(1, 2))).transpose(1, 2)
        keep = (tokens != PAD_TOKEN).unsqueeze(-1).float()
        return self.out((h * keep).sum(1) / keep.sum(1).clamp_min(1.0))


def test_torch_reverse_complement_matches_numpy(fixtures: Path) -> None:
    x = _promoters(fixtures, [70, 33, 2, 69, 50, 70] * 6 + [1, 70, 12, 5])
    got = reverse_complement_tokens(x)
    np.testing.assert_array_equal(got.numpy(), reverse_complement(x.numpy()))
    assert torch.equal(reverse_complement_tokens(got), x)


def test_split_rows_covers_each_sequence(fixtures: Path) -> None:
    x = _promoters(fixtures, [70, 33, 20, 69] * 10)
    cuts = torch.tensor([35, 1, 19, 60] * 10)
    left, right = split_rows(x, cuts)
    for i in range(40):
        whole = decode(x[i].numpy())
        assert decode(left[i].numpy()) == whole[: cuts[i]]
        assert decode(right[i].numpy()) == whole[cuts[i] :]


def test_loss_is_strand_symmetric(fixtures: Path) -> None:
    """(left, rc(right)) of x cut at c is (rc(right), left) of rc(x) cut at len - c: same loss."""
    torch.manual_seed(0)
    x = _promoters(fixtures, [70, 41, 70, 55] * 10)
    lengths = (x != PAD_TOKEN).sum(1)
    cuts = RCContrastive().sample_cuts(lengths)
    embed, obj = _Embed(), RCContrastive(temperature=0.2)
    with torch.no_grad():
        forward = obj(x, embed, cuts=cuts).item()
        mirrored = obj(reverse_complement_tokens(x), embed, cuts=lengths - cuts).item()
        other = obj(reverse_complement_tokens(x), embed, cuts=cuts).item()
        a, b = obj.pairs(x, cuts)
        b_rc, a_rc = obj.pairs(reverse_complement_tokens(x), lengths - cuts)
    assert torch.equal(a, a_rc) and torch.equal(b, b_rc)  # the pairs are swapped, token for token
    assert mirrored == pytest.approx(forward, rel=1e-5)
    assert abs(other - forward) > 1e-3  # the embedding itself is not strand-invariant
    self_pairs = RCContrastive(pairing="self")
    with torch.no_grad():
        assert self_pairs(reverse_complement_tokens(x), embed).item() == pytest.approx(
            self_pairs(x, embed).item(), rel=1e-5
        )


def _reference(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, tau: float) -> float:
    rows = [i for i in range(a.shape[0]) if valid[i]]
    total = 0.0
    for q, k in ((a, b), (b, a)):
        for i in rows:
            sims = {j: float(q[i] @ k[j] / (q[i].norm() * k[j].norm())) / tau for j in rows}
            total += -sims[i] + math.log(sum(math.exp(s) for s in sims.values()))
    return total / (2 * len(rows))


def test_pair_loss_matches_reference_and_skips_empty_rows(fixtures: Path) -> None:
    torch.manual_seed(0)
    x = _promoters(fixtures)[:12].clone()
    x[[3, 8]] = PAD_TOKEN  # padded bag slots
    x[5, 1:] = PAD_TOKEN  # a single nucleotide: cannot be cut
    obj, embed = RCContrastive(temperature=0.3), _Embed()
    lengths = (x != PAD_TOKEN).sum(1)
    cuts = obj.sample_cuts(lengths)
    with torch.no_grad():
        got = obj(x, embed, cuts=cuts).item()
        a_tok, b_tok = obj.pairs(x, cuts)
        a, b = embed(a_tok), embed(b_tok)
    assert got == pytest.approx(_reference(a, b, lengths >= 2, 0.3), rel=1e-5)
    with torch.no_grad():  # embeddings of skipped rows do not matter
        x2 = x.clone()
        x2[5, 0] = 3
        assert obj(x2, embed, cuts=cuts).item() == pytest.approx(got, rel=1e-6)


def test_options_and_errors(fixtures: Path) -> None:
    for bad in ({"temperature": 0.0}, {"cut_range": (0.0, 0.5)}, {"pairing": "strand"}):
        with pytest.raises(InputError):
            RCContrastive(**bad)
    obj = OBJECTIVES.build("rc_contrastive")
    assert isinstance(obj, RCContrastive)
    x = _promoters(fixtures)[:4]
    with pytest.raises(ValueError, match="int tokens"):
        obj(x.float(), _Embed())
    with pytest.raises(ValueError, match="embed must return"):
        obj(x, lambda t: torch.zeros(3, 4))
    cuts = obj.sample_cuts(torch.tensor([70, 2, 10, 100] * 50))
    assert (cuts >= 1).all() and (cuts <= torch.tensor([70, 1, 9, 99] * 50)).all()
    assert cuts[::4].min() >= 21 and cuts[::4].max() <= 49


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_loss_falls_on_real_promoters(fixtures: Path, one_thread: None) -> None:
    """40 real core promoters, a fresh random cut every step: matching strands becomes learnable."""
    torch.manual_seed(0)
    x = _promoters(fixtures)
    embed, obj = _Embed(32), RCContrastive(temperature=0.1)
    opt = torch.optim.Adam(embed.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = obj(x, embed)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[:3]) > math.log(40) - 0.5  # near chance among 40 candidates
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 1.0, losses

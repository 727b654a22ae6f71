"""Sequence models on real human core promoters (GUE prom_core_all, train.csv rows 1-8)."""

from __future__ import annotations

import pytest
import torch

from biossl.encoders import ENCODERS
from biossl.keys import NUCLEOTIDES, PAD_TOKEN

# First 8 sequences of ../shared/data/dna_gue/prom_prom_core_all/train.csv (GUE, Apache-2.0).
PROMOTERS = [
    "GCTAGCTCATCTTGCGGCTGGGCGGGGCCCAGGACTGCTGCTGCTGACCGCCTTGATAGGCTACACCGTG",
    "ATAAAGGGGGCATCTCGCAGCACCGGGGGCCCTAAGCAGCGAGACCTGAGGCCAGACGGAACTACAACAT",
    "GGGGAGCTCTGGGAACGGGGCCTGTGCGCACGCGCATCTGACGGTTGTCTCGGTTACTCATGTAAGCGGA",
    "GCCACCTGAGCGTAGGGCATACAGCCATTTTCTGGGCGGGGCGTGCAAGTGGGACGGCCGGACTCACGGG",
    "GGAAAGAGCAGACAAACAGGAACAGAAGTTCTCACTCTAGGTCACGGGTTTCATTTGGGACCAGTAGCCT",
    "GGAATAAAGGACCCGCGAGGAAGGGCCCGCGGATGGCGCGTCCCTGAGGGTCGTGGCGAGTTCGCGGAGC",
    "TTTACATAAGCCCACCTTCCCAGGCTCGGAGGGCCCCCACGCTGCCAAGCCTCCGTCAGCTATCAGTGAT",
    "TATATAAGGCCCTTCGGGGCCGGCCACCCTTTCACTACTTCTCCCCCGGACTCCTTGGTAGTCTGTTAGT",
]
NAMES = ["sequence/transformer", "sequence/dilated_cnn"]


def tokens(seqs: list[str], length: int) -> torch.Tensor:
    out = torch.full((len(seqs), length), PAD_TOKEN, dtype=torch.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor([NUCLEOTIDES.index(c) + 1 for c in s])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_embed_shape_and_pad_invariance(name: str) -> None:
    torch.manual_seed(0)
    model = ENCODERS.build(name, max_len=128, embed_dim=32, depth=2).eval()
    short = tokens(PROMOTERS[:4], 70)
    short[1, 50:] = PAD_TOKEN  # a shorter sequence inside the batch
    long = torch.cat([short, torch.zeros(4, 30, dtype=torch.int64)], dim=1)
    with torch.no_grad():
        a, b = model.embed(short), model.embed(long)
        empty = model.embed(torch.zeros(2, 70, dtype=torch.int64))
    assert a.shape == (4, 32)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(empty, torch.zeros_like(empty))
    with torch.no_grad():
        changed = short.clone()
        changed[0, 10] = 1 + (changed[0, 10] % 4)
        assert not torch.allclose(model.embed(changed)[0], a[0])


@pytest.mark.parametrize("name", NAMES)
def test_masked_loss_gradient_and_learning_on_real_promoters(name: str) -> None:
    torch.manual_seed(0)
    model = ENCODERS.build(name, max_len=80, embed_dim=32, depth=2, mask_ratio=0.3)
    x = tokens(PROMOTERS, 80)
    loss = model.masked_loss(x)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.token_embedding.weight.grad is not None
    assert model.token_embedding.weight.grad[1:6].abs().sum() > 0
    assert (model.token_embedding.weight.grad[PAD_TOKEN] == 0).all()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = model.masked_loss(x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses


def test_bad_tokens_raise() -> None:
    model = ENCODERS.build("sequence/transformer", max_len=16, embed_dim=16)
    with pytest.raises(ValueError, match="exceed max_len=16"):
        model.embed(torch.ones(1, 20, dtype=torch.int64))
    with pytest.raises(ValueError, match="token ids"):
        model.embed(torch.full((1, 8), 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        model.embed(torch.ones(1, 8))

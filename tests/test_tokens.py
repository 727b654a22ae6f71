"""The reverse complement of DNA tokens, defined once (``biossl.tokens``) and used by every layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biossl.data.sequence import decode, encode, pad_batch, read_sequences, reverse_complement
from biossl.downstream.kmers import _reverse_complement_index, kmer_names
from biossl.keys import MASK_TOKEN, NUCLEOTIDES, PAD_TOKEN
from biossl.objectives.rc_contrastive import reverse_complement_tokens as objective_rc
from biossl.tokens import COMPLEMENT, reverse_complement_tokens
from biossl.transforms.sequence_views import ReverseComplement

PAIRS = str.maketrans("ACGTN", "TGCAN")


def test_table_pairs_bases_and_keeps_pad_n_mask() -> None:
    assert len(COMPLEMENT) == len(NUCLEOTIDES) + 2
    assert COMPLEMENT[PAD_TOKEN] == PAD_TOKEN and COMPLEMENT[MASK_TOKEN] == MASK_TOKEN
    for i, base in enumerate(NUCLEOTIDES, start=1):
        assert NUCLEOTIDES[COMPLEMENT[i] - 1] == base.translate(PAIRS)


def test_every_layer_gives_the_same_reverse_complement(fixtures: Path) -> None:
    records = read_sequences(fixtures / "sequence" / "gue_prom_300_tata_dev12.fa")
    tokens = [encode(r.sequence[: 40 + 7 * i]) for i, r in enumerate(records[:6])]  # ragged: PAD tails differ
    batch = pad_batch(tokens, max(len(t) for t in tokens))
    batch[0, 3] = MASK_TOKEN
    x = torch.from_numpy(batch)
    rc = reverse_complement_tokens(x)
    assert torch.equal(objective_rc(x), rc)
    np.testing.assert_array_equal(reverse_complement(batch), rc.numpy())
    assert torch.equal(ReverseComplement(p=1.0)(x), rc)
    for i in range(1, 6):
        want = records[i].sequence[: 40 + 7 * i].upper().translate(PAIRS)[::-1]
        assert decode(rc[i].numpy()) == want
    assert torch.equal(reverse_complement_tokens(rc), x)


def test_kmer_reverse_complement_index_uses_the_same_pairs() -> None:
    for k in (1, 3):
        names = kmer_names(k)
        index = {n: i for i, n in enumerate(names)}
        assert _reverse_complement_index(k).tolist() == [index[n.translate(PAIRS)[::-1]] for n in names]

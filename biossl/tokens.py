"""DNA token ids and their reverse complement, defined once for every layer.

Token ids follow :mod:`biossl.keys`: PAD=0, A=1, C=2, G=3, T=4, N=5, MASK=6. :data:`COMPLEMENT` maps each
id to its complement's (A<->T, C<->G; PAD, N and MASK keep their ids), and :func:`reverse_complement_tokens`
is the one reverse complement of token rows: the data layer's numpy
:func:`biossl.data.sequence.reverse_complement`, the sequence views' ``ReverseComplement`` and the
Self-GenomeNet objective all call it, and the k-mer baseline derives its base complement from the table.

Rows are left-aligned (real tokens, then trailing PAD); only the real part is reversed, so PAD stays at
the end. Applying the reverse complement twice gives back the input. torch is imported on first use, so
this module stays cheap for the data layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from biossl.keys import MASK_TOKEN, NUCLEOTIDES, PAD_TOKEN

if TYPE_CHECKING:
    import torch

#: Token id of an unknown base.
N_TOKEN: Final = NUCLEOTIDES.index("N") + 1
#: Base letter -> its complement's letter (N is its own complement).
BASE_PAIRS: Final[dict[str, str]] = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
#: Complement per token id: PAD, A<->T, C<->G, N and MASK kept (index = token id).
COMPLEMENT: Final[tuple[int, ...]] = (
    PAD_TOKEN,
    *(NUCLEOTIDES.index(BASE_PAIRS[base]) + 1 for base in NUCLEOTIDES),
    MASK_TOKEN,
)


def real_length(tokens: torch.Tensor) -> torch.Tensor:
    """Per row of ``[N, L]`` tokens, the position after the last non-PAD token (0 for all-PAD rows)."""
    import torch

    real = tokens != PAD_TOKEN
    last = tokens.shape[1] - torch.argmax(real.flip(1).to(torch.uint8), dim=1)
    return torch.where(real.any(dim=1), last, torch.zeros_like(last))


def reverse_complement_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Reverse-complement ``[N, L]`` integer token rows; trailing PAD stays at the end.

    Args:
        tokens: Token ids ``[N, L]`` in ``0 .. len(COMPLEMENT) - 1``, left-aligned.

    Returns:
        ``int64 [N, L]``: each row's real part reversed and complemented, its PAD tail unchanged.
    """
    import torch

    tokens = tokens.long()
    length = real_length(tokens)[:, None]
    j = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    src = torch.where(j < length, length - 1 - j, j)
    table = torch.tensor(COMPLEMENT, dtype=torch.int64, device=tokens.device)
    return table[torch.gather(tokens, 1, src)]


__all__ = ["BASE_PAIRS", "COMPLEMENT", "N_TOKEN", "real_length", "reverse_complement_tokens"]

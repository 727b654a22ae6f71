"""Known-answer tests of the audit on real expression profiles (issue 6, validity).

The protocol is :mod:`biossl.audit.known_answer` (shared with ``benchmarks/audit_known_answer.py``,
which runs the power curve with more repeats): scanpy's bundled ``pbmc68k_reduced`` (700 real PBMC
profiles x 765 genes; no network) in 140 pseudo-donors, donors dealt into 3 pseudo-sites at random in
each repeat (without a signature the site is unrelated to the profiles); the signature adds ``delta``
x the gene's sd to a fresh random set of 50 genes in every cell of site 0. Embeddings: PCA(16) (seeded
randomized SVD), which a user could audit exactly so. Every repeat uses its own seed, so the measured
rates are deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest

from biossl.audit.known_answer import N_SITES, clopper_pearson, known_answer, load_pbmc

ALPHA, REPEATS, B, DELTA, GENES = 0.05, 100, 199, 0.5, 50


@pytest.fixture(scope="module")
def pbmc() -> tuple[np.ndarray, np.ndarray]:
    return load_pbmc()


@pytest.fixture()
def quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def test_false_positive_rate_without_a_signature_is_at_most_alpha(pbmc: tuple[np.ndarray, np.ndarray],
                                                                  quiet: None) -> None:
    x, donor = pbmc
    # No signature: the same embedding every repeat, only the sites change.
    res = known_answer(x, donor, delta=0.0, embedding="fixed", repeats=REPEATS, n_permutations=B, n_genes=GENES,
                       alpha=ALPHA)
    p_linear = np.array([e["linear"]["p_value"] for e in res.entries])
    lo, hi = clopper_pearson(res.significant, REPEATS)
    print(f"\nFPR over {REPEATS} signature-free repeats: verdict fail {res.flagged}/{REPEATS}, Bonferroni p < {ALPHA} "
          f"{res.significant}/{REPEATS} (95% CI {lo:.3f}-{hi:.3f}); mean linear p {p_linear.mean():.3f}")
    assert len(res.entries) == REPEATS
    assert res.flagged_rate <= ALPHA
    assert res.significant_rate <= ALPHA
    # The exact permutation p-value is uniform under the null: its mean is near 1/2, not piled up near 0.
    assert 0.4 < p_linear.mean() < 0.65  # ties and the +1 make it slightly conservative (above 1/2)
    assert (p_linear < ALPHA).mean() <= 2 * ALPHA
    # Chance is what the probes score without a signature.
    assert abs(res.mean("linear") - 1 / N_SITES) < 0.03


def test_power_at_the_chosen_effect_size_is_at_least_095(pbmc: tuple[np.ndarray, np.ndarray], quiet: None) -> None:
    x, donor = pbmc
    res = known_answer(x, donor, delta=DELTA, embedding="refit", repeats=REPEATS, n_permutations=B, n_genes=GENES,
                       alpha=ALPHA)
    lo, hi = clopper_pearson(res.flagged, REPEATS)
    excess = np.mean([e["max_excess"] for e in res.entries])
    print(f"\npower at delta {DELTA} sd on {GENES} genes: {res.flagged}/{REPEATS} (95% CI {lo:.3f}-{hi:.3f}); "
          f"mean excess over the permutation null {excess:.3f}")
    assert res.flagged_rate >= 0.95

"""Batch-mixing metrics: how much a nuisance column (site, batch) structures the embedding space.

All neighbourhoods are those of :func:`biossl.audit.probes.neighbours`: each row's ``k`` nearest rows
of *other* groups (patients) by cosine similarity of the centred embeddings.

- **Silhouette by batch** (Rousseeuw 1987; ``sklearn.metrics.silhouette_score``, cosine distance, on
  the embedding, with the batch as the cluster label), reported as is in ``[-1, 1]``: near 0 or
  below means the batches overlap, towards 1 means each batch forms its own cluster. On more than
  ``max_rows`` rows it is computed on a random sample of ``max_rows`` (seeded).
- **iLISI-style mixing** (after Korsunsky et al. 2019, Harmony): for each row, the inverse Simpson
  index ``1 / sum_b p_b²`` of the batch shares ``p_b`` among its ``k`` neighbours (unweighted, not
  LISI's perplexity-weighted neighbourhood), averaged over rows. It is 1 when every neighbourhood holds
  one batch and at most ``min(k, n_batches)``. ``ilisi_norm = (ilisi - 1) / (n_batches - 1)`` in
  ``[0, 1]``. ``ilisi_random`` is its value when batches are mixed at random: the mean over
  ``n_random`` permutations of the batch labels across groups with the same neighbour lists (so it
  reflects the batch proportions and the finite ``k``); ``ilisi_ratio = ilisi / ilisi_random``
  (1 = as mixed as chance, lower = batches cluster).
- **Robustness index**: for each row, the share of its ``k`` neighbours that have the same biology
  label (``label_share``) and the same batch (``batch_share``), averaged over rows that have both
  values. Each share is compared with its expectation under random neighbours,
  ``e = sum_c pi_c²`` (``pi_c`` = the class's share of rows), as a chance-corrected agreement
  ``kappa = (share - e) / (1 - e)`` (0 = chance, 1 = every neighbour agrees). The index is
  ``robustness = kappa_label - kappa_batch`` in ``[-2, 2]``: positive when neighbourhoods are
  organised by the biology more than by the batch, negative when the batch dominates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import silhouette_score

from biossl.audit.probes import Column


def silhouette_by_batch(x: np.ndarray, batch: np.ndarray, *, max_rows: int = 5000, seed: int = 0) -> float:
    """Cosine silhouette of the embedding with the batch as the cluster label; NaN with < 2 batches."""
    batch = np.asarray(batch)
    n_batches = len(np.unique(batch))
    if n_batches < 2 or n_batches >= len(batch):
        return float("nan")
    sample = min(max_rows, len(batch)) if len(batch) > max_rows else None
    xc = np.asarray(x, dtype=np.float64)
    xc = xc - xc.mean(axis=0)
    return float(silhouette_score(xc, batch, metric="cosine", sample_size=sample, random_state=seed))


def _inverse_simpson(neigh_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-row inverse Simpson index of ``[b, n, k]`` neighbour labels -> ``[b, n]``."""
    b, n, k = neigh_labels.shape
    key = (np.arange(b * n)[:, None] * n_classes + neigh_labels.reshape(b * n, k)).ravel()
    counts = np.bincount(key, minlength=b * n * n_classes).reshape(b, n, n_classes) / k
    return 1.0 / (counts ** 2).sum(axis=2)


def ilisi(idx: np.ndarray, column: Column, *, n_random: int = 50, seed: int = 0) -> dict[str, Any]:
    """iLISI-style batch mixing of neighbour lists ``idx`` (rows = the column's kept rows); see the module doc."""
    c = column.n_classes
    observed = float(_inverse_simpson(column.codes[idx][None], c).mean())
    rng = np.random.default_rng([seed, 2])
    glab, units = column.group_labels(), column.permutation_units()
    shuffled = np.stack([glab[rng.permutation(len(glab))][units] for _ in range(n_random)])
    random = float(_inverse_simpson(shuffled[:, idx], c).mean())
    return {"ilisi": observed, "ilisi_norm": (observed - 1.0) / (c - 1) if c > 1 else float("nan"),
            "ilisi_random": random, "ilisi_random_norm": (random - 1.0) / (c - 1) if c > 1 else float("nan"),
            "ilisi_ratio": observed / random, "n_batches": c, "k": int(idx.shape[1])}


def _kappa(share: float, expected: float) -> float:
    return (share - expected) / (1.0 - expected) if expected < 1.0 else float("nan")


def robustness_index(idx: np.ndarray, label: np.ndarray, batch: np.ndarray) -> dict[str, float]:
    """Robustness index of neighbour lists ``idx`` over rows with integer ``label`` and ``batch`` codes.

    ``label`` / ``batch`` hold ``-1`` where a row has no value; such rows are skipped as queries and
    their votes do not count as agreement. See the module docstring for the definition.
    """
    label, batch = np.asarray(label), np.asarray(batch)
    ok = (label >= 0) & (batch >= 0)
    rows = np.flatnonzero(ok)
    if len(rows) == 0:
        return {"label_share": float("nan"), "batch_share": float("nan"), "robustness": float("nan")}
    neigh = idx[rows]
    label_share = float((label[neigh] == label[rows, None]).mean())
    batch_share = float((batch[neigh] == batch[rows, None]).mean())
    pl = np.bincount(label[ok]) / ok.sum()
    pb = np.bincount(batch[ok]) / ok.sum()
    el, eb = float((pl ** 2).sum()), float((pb ** 2).sum())
    kl, kb = _kappa(label_share, el), _kappa(batch_share, eb)
    return {"label_share": label_share, "label_expected": el, "kappa_label": kl, "batch_share": batch_share,
            "batch_expected": eb, "kappa_batch": kb, "robustness": kl - kb, "n_rows": int(len(rows))}


__all__ = ["ilisi", "robustness_index", "silhouette_by_batch"]

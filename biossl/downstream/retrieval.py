"""Cross-modal retrieval: does a patient's embedding in one modality pick out the same patient in another.

The test of whether a cross-modal objective learned real pairing. For an ordered pair of embedding keys
(query ``X_rna``, target ``X_cnv``) and the patients that have both, every query embedding ranks all
target embeddings by cosine similarity (the geometry of CLIP, which scores L2-normalised patient
embeddings); the *rank* of the patient's own target is 1 when it is the most similar. Ties count half
(a constant embedding ranks in the middle, never first). Reported per pair:

- ``recall@k``: the share of patients whose own target ranks in the top ``k``; chance is ``k / n``;
- the median rank (chance ``(n + 1) / 2``) and the mean reciprocal rank;
- the recall curve ``recall@1 .. recall@n`` for plots.

With ``n`` candidates the numbers depend on ``n``: compare pairs and runs at the same ``n`` (the
same patients), and read ``recall@k`` against its chance column. Retrieval on the pretraining
patients measures memorisation as much as learning; held-out patients (``patients=``) are the test.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biossl.errors import InputError

logger = logging.getLogger(__name__)

#: The ``k`` of recall@k reported by default.
DEFAULT_KS = (1, 5, 10)


def retrieval_ranks(query: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The rank (1 = best) of each row's own target among all targets, by cosine similarity.

    Args:
        query: ``[n, d]`` embeddings of the query modality.
        target: ``[n, e]`` embeddings of the same ``n`` patients, same order, in the target modality
            (``d == e``: the shared space a cross-modal objective trains).

    Returns:
        ``float [n]`` ranks in ``1 .. n``; ties with the own target count half.
    """
    q = _unit(np.asarray(query, dtype=np.float64))
    t = _unit(np.asarray(target, dtype=np.float64))
    sim = q @ t.T
    own = np.diag(sim)[:, None]
    tol = 1e-9
    better = (sim > own + tol).sum(axis=1)
    ties = (np.abs(sim - own) <= tol).sum(axis=1) - 1  # minus the own target
    return np.asarray(1.0 + better + 0.5 * ties, dtype=np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.where(norm > 0, norm, 1.0))


def pair_summary(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Recall@k with its chance level, median rank and mean reciprocal rank, and the recall curve."""
    n = len(ranks)
    curve = [float(np.mean(ranks <= k)) for k in range(1, n + 1)]
    return {
        "n": n,
        "recall": {str(k): float(np.mean(ranks <= k)) for k in ks},
        "chance": {str(k): min(k, n) / n for k in ks},
        "median_rank": float(np.median(ranks)),
        "chance_median_rank": (n + 1) / 2,
        "mean_reciprocal_rank": float(np.mean(1.0 / ranks)),
        "curve": curve,
    }


def cross_modal_retrieval(embeddings: Mapping[str, np.ndarray], patients: Sequence[str], *,
                          ks: Sequence[int] = DEFAULT_KS, source: str = "embeddings") -> list[dict[str, Any]]:
    """Retrieval for every ordered pair of ``embeddings`` keys over the patients that have both.

    Args:
        embeddings: ``{key: [n_patients, d]}``; a patient lacking a modality has a NaN row (as in
            ``biossl embed``'s ``obsm``).
        patients: Patient IDs of the rows.
        ks: The ``k`` of recall@k.
        source: Where the embeddings came from, for messages.

    Returns:
        One entry per ordered pair (query, target) with at least two patients having both.

    Raises:
        InputError: fewer than two keys, embeddings of different widths, or no pair with two patients.
    """
    names = list(embeddings)
    if len(names) < 2:
        raise InputError(f"{source}: cross-modal retrieval needs two or more embedding keys; got {names}")
    widths = {k: int(np.asarray(v).shape[1]) for k, v in embeddings.items()}
    if len(set(widths.values())) > 1:
        raise InputError(f"{source}: the embeddings have different widths {widths}; retrieval compares embeddings "
                         "of one shared space (those of one `biossl pretrain` run)")
    present = {k: np.isfinite(np.asarray(v, dtype=np.float64)).all(axis=1) for k, v in embeddings.items()}
    out = []
    for a in names:
        for b in names:
            if a == b:
                continue
            both = present[a] & present[b]
            if both.sum() < 2:
                logger.warning("%s: %s -> %s skipped: %d patient(s) have both", source, a, b, int(both.sum()))
                continue
            ranks = retrieval_ranks(np.asarray(embeddings[a])[both], np.asarray(embeddings[b])[both])
            entry = {"query": a, "target": b, **pair_summary(ranks, ks)}
            entry["patients"] = [str(patients[int(i)]) for i in np.flatnonzero(both)]
            out.append(entry)
    if not out:
        raise InputError(f"{source}: no pair of {names} has two or more patients with both embeddings; "
                         "retrieval needs patients measured in both modalities")
    return out


def plot_retrieval(pairs: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Recall@k against k (log axis) for each pair, with the chance line ``k / n``; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from biossl.io import atomic_path

    fig = Figure(figsize=(7.0, 4.2), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n_max = 0
    for entry in pairs:
        curve = entry["curve"]
        ks = np.arange(1, len(curve) + 1)
        ax.plot(ks, curve, label=f"{entry['query']} → {entry['target']} (n={entry['n']})")
        n_max = max(n_max, len(curve))
    if n_max:
        ks = np.arange(1, n_max + 1)
        ax.plot(ks, ks / n_max, color="grey", linestyle=":", label=f"chance (n={n_max})")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k (own patient in the top k)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "cross-modal retrieval", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


__all__ = ["DEFAULT_KS", "cross_modal_retrieval", "pair_summary", "plot_retrieval", "retrieval_ranks"]

"""Clinical metrics: Harrell's c-index (lifelines), macro one-vs-rest AUROC and balanced accuracy (scikit-learn).

Every metric returns ``nan`` -- never raises -- when it is undefined on the given patients (a test fold
without an event, or with one class only); callers report such folds and leave them out of means.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np


def concordance_index(time: Sequence[float] | np.ndarray, risk: Sequence[float] | np.ndarray,
                      event: Sequence[float] | np.ndarray) -> float:
    """Harrell's c-index of a risk score: the fraction of comparable pairs ordered correctly.

    A pair is comparable when the patient with the shorter time had an event; it is concordant when that
    patient has the higher ``risk``. Ties in risk count one half (lifelines'
    :func:`lifelines.utils.concordance_index`, called with ``-risk`` since lifelines scores survival).

    Args:
        time: Follow-up times.
        risk: Predicted risk (higher = earlier event), for example a Cox linear predictor.
        event: 1 where the event was observed, 0 where censored.

    Returns:
        The c-index in [0, 1]; 0.5 is chance. ``nan`` when there is no comparable pair (no event).
    """
    from lifelines.utils import concordance_index as lifelines_cindex

    t = np.asarray(time, dtype=np.float64)
    r = np.asarray(risk, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    if not (len(t) == len(r) == len(e)):
        raise ValueError(f"time, risk and event differ in length: {len(t)}, {len(r)}, {len(e)}")
    if not np.isfinite(r).all():
        raise ValueError("risk scores hold NaN or inf")
    if len(t) < 2 or e.sum() == 0:
        return math.nan
    try:
        return float(lifelines_cindex(t, -r, e))
    except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset."
        return math.nan


def macro_auroc(y: Sequence[int] | np.ndarray, proba: np.ndarray) -> float:
    """Macro-averaged one-vs-rest AUROC over the classes present in ``y``.

    Args:
        y: True class indices ``[N]`` into the columns of ``proba``.
        proba: Class probabilities (or any scores) ``[N, C]``.

    Returns:
        The mean over classes ``c`` that have both positives and negatives in ``y`` of the AUROC of
        ``proba[:, c]`` for ``y == c``; classes absent from ``y`` are skipped. With two classes both
        one-vs-rest AUROCs equal the usual binary AUROC. ``nan`` when ``y`` holds a single class.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) != len(y):
        raise ValueError(f"proba must be [N, C] with N = len(y) = {len(y)}; got {proba.shape}")
    scores = [float(roc_auc_score(y == c, proba[:, c])) for c in range(proba.shape[1])
              if 0 < int((y == c).sum()) < len(y)]
    return float(np.mean(scores)) if scores else math.nan


def balanced_accuracy(y: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``).

    Returns ``nan`` for an empty ``y``.
    """
    from sklearn.metrics import balanced_accuracy_score

    y = np.asarray(y)
    if len(y) == 0:
        return math.nan
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected on small folds
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, np.asarray(predicted)))


__all__ = ["balanced_accuracy", "concordance_index", "macro_auroc"]

"""Clinical metrics: Harrell's c-index, macro AUROC, balanced accuracy, Uno's c-index, integrated Brier score.

Harrell's c-index comes from lifelines, macro one-vs-rest AUROC and balanced accuracy from scikit-learn,
and the two censoring-robust survival metrics from scikit-survival.

Every metric returns ``nan`` -- never raises -- when it is undefined on the given patients (a test fold
without an event, or with one class only); callers report such folds and leave them out of means.

**Censoring-robust survival metrics.** Harrell's c-index depends on the censoring pattern of the test
patients; Uno's c-index (:func:`uno_c_index`) and the Brier score reweight the test patients by the
inverse probability of being still uncensored, a Kaplan-Meier estimate of the censoring distribution
of the *training* patients (scikit-survival's ``concordance_index_ipcw`` and
``integrated_brier_score``). Both stop at a horizon where that estimate is still well supported:
:func:`survival_horizon`, the 80th percentile of the training patients' follow-up times. Uno's c-index
counts the pairs whose earlier time is before the horizon; the integrated Brier score averages the
Brier score of predicted survival curves over :data:`BRIER_POINTS` times evenly spaced from the 10th
percentile of the training follow-up to the horizon (:func:`brier_times`), keeping those inside the
test patients' follow-up. Lower is better; 0.25 is what a constant 0.5 prediction scores.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

#: Follow-up percentile of the training patients where the censoring-robust metrics stop.
HORIZON_PERCENTILE = 80.0
#: Follow-up percentile of the training patients where the integrated Brier score starts.
BRIER_START_PERCENTILE = 10.0
#: Time points of the integrated Brier score's grid (before those outside the test follow-up are dropped).
BRIER_POINTS = 20


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


def survival_horizon(train_time: Sequence[float] | np.ndarray) -> float:
    """Where the censoring-robust metrics stop: the :data:`HORIZON_PERCENTILE` th percentile of training follow-up."""
    return float(np.percentile(np.asarray(train_time, dtype=np.float64), HORIZON_PERCENTILE))


def brier_times(train_time: Sequence[float] | np.ndarray, test_time: Sequence[float] | np.ndarray) -> np.ndarray:
    """The integrated Brier score's time grid (see the module docstring); may hold fewer than 2 points.

    :data:`BRIER_POINTS` times evenly spaced from the :data:`BRIER_START_PERCENTILE` th percentile of the
    training follow-up to :func:`survival_horizon`, kept where ``min(test) <= t < max(test)`` and below
    the largest training time (where the censoring estimate ends).
    """
    train = np.asarray(train_time, dtype=np.float64)
    test = np.asarray(test_time, dtype=np.float64)
    grid = np.unique(np.linspace(np.percentile(train, BRIER_START_PERCENTILE), survival_horizon(train), BRIER_POINTS))
    keep = (grid >= test.min()) & (grid < min(test.max(), train.max()))
    return grid[keep]


def _surv(event: Sequence[float] | np.ndarray, time: Sequence[float] | np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event).astype(bool), time=np.asarray(time, dtype=np.float64))


def uno_c_index(train_time: Sequence[float] | np.ndarray, train_event: Sequence[float] | np.ndarray,
                time: Sequence[float] | np.ndarray, risk: Sequence[float] | np.ndarray,
                event: Sequence[float] | np.ndarray, *, tau: float | None = None) -> float:
    """Uno's IPCW c-index of a risk score on test patients, truncated at ``tau`` (scikit-survival).

    Args:
        train_time: Follow-up times of the training patients (they estimate the censoring distribution).
        train_event: Their events (1 = observed).
        time: Test follow-up times.
        risk: Predicted risk (higher = earlier event).
        event: Test events.
        tau: Truncation time; default :func:`survival_horizon` of the training times.

    Returns:
        The c-index in [0, 1]; ``nan`` when no comparable pair has its earlier time before ``tau``.
    """
    from sksurv.metrics import concordance_index_ipcw

    t, e, r = (np.asarray(v, dtype=np.float64) for v in (time, event, risk))
    if not (len(t) == len(r) == len(e)):
        raise ValueError(f"time, risk and event differ in length: {len(t)}, {len(r)}, {len(e)}")
    if not np.isfinite(r).all():
        raise ValueError("risk scores hold NaN or inf")
    tau = survival_horizon(train_time) if tau is None else float(tau)
    if len(t) < 2 or not (e[t < tau] > 0).any():
        return math.nan
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(concordance_index_ipcw(_surv(train_event, train_time), _surv(e, t), r, tau=tau)[0])
    except (ValueError, ZeroDivisionError):  # no admissible pair before tau, or no censoring support
        return math.nan
    return value if math.isfinite(value) else math.nan


class NonFiniteSurvival(ValueError):
    """A method's predicted survival curves hold NaN or inf (its fit diverged); the message says for how many."""


def integrated_brier_score(train_time: Sequence[float] | np.ndarray, train_event: Sequence[float] | np.ndarray,
                           time: Sequence[float] | np.ndarray, event: Sequence[float] | np.ndarray,
                           survival: Callable[[np.ndarray], np.ndarray]) -> float:
    """Integrated Brier score of predicted survival curves over :func:`brier_times` (scikit-survival).

    Test patients followed beyond the largest training time are given that time (they are still
    event-free at every grid time either way, so the score is unchanged; scikit-survival's censoring
    estimate ends there).

    Args:
        train_time: Follow-up times of the training patients (censoring distribution, time grid).
        train_event: Their events.
        time: Test follow-up times.
        event: Test events.
        survival: ``times [T] -> [n_test, T]``: each test patient's predicted probability of being
            event-free beyond each time.

    Returns:
        The score (lower is better); ``nan`` when fewer than 2 grid times fall in the test follow-up.
    """
    from sksurv.metrics import integrated_brier_score as sksurv_ibs

    train_t = np.asarray(train_time, dtype=np.float64)
    t, e = np.asarray(time, dtype=np.float64), np.asarray(event, dtype=np.float64)
    if len(t) < 2:
        return math.nan
    times = brier_times(train_t, t)
    if len(times) < 2:
        return math.nan
    estimate = np.asarray(survival(times), dtype=np.float64)
    if estimate.shape != (len(t), len(times)):
        raise ValueError(f"survival curves must be [n_test, n_times] = {(len(t), len(times))}; got {estimate.shape}")
    if not np.isfinite(estimate).all():
        bad = int((~np.isfinite(estimate)).any(axis=1).sum())
        raise NonFiniteSurvival(f"the method's survival curves are not finite for {bad} of {len(t)} test patient(s) "
                                "(a diverged fit): integrated Brier score undefined")
    clipped = np.minimum(t, train_t.max())
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(sksurv_ibs(_surv(train_event, train_t), _surv(e, clipped), estimate, times))
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


__all__ = ["BRIER_POINTS", "BRIER_START_PERCENTILE", "HORIZON_PERCENTILE", "NonFiniteSurvival", "balanced_accuracy",
           "brier_times", "concordance_index", "integrated_brier_score", "macro_auroc", "survival_horizon",
           "uno_c_index"]

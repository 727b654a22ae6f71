"""Clinical heads on patient embeddings, each with its loss.

* :class:`SubtypeHead`: multi-class logits; (class-weighted) cross-entropy.
* :class:`CoxHead`: one risk score; negative Cox partial log-likelihood with Breslow's handling of
  tied times (:func:`cox_ph_loss`).
* :class:`DiscreteTimeHead`: one hazard logit per time bin; negative log-likelihood of the
  discrete-time (logistic-hazard) model (:func:`discrete_time_nll`), with bins cut at quantiles of
  the *training* patients' event times (:func:`survival_bin_edges`).

A head is linear (``hidden=None``) or a one-hidden-layer MLP. Every head takes features ``[N, D]``
and a target mapping (``{"y"}`` for subtypes, ``{"time", "event"}`` for survival) and exposes
``loss(out, target)`` and ``predict(out)`` (class probabilities ``[N, C]`` or risk ``[N]``, higher =
earlier event), so a training loop never needs to know which head it drives.

Survival curves (for the integrated Brier score): :meth:`DiscreteTimeHead.survival` from the hazards
of the bins, and :func:`breslow_survival` for a Cox risk score, with Breslow's baseline hazard
estimated on the training patients.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biossl.errors import InputError

Target = Mapping[str, torch.Tensor]


# -- losses -----------------------------------------------------------------------------------------
def cox_ph_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), averaged over events.

    ``-(1 / n_events) * sum_{i: event_i} [risk_i - log sum_{j: time_j >= time_i} exp(risk_j)]``: every
    patient still at risk at ``time_i`` -- including those with the same time, events or not -- is in
    the risk set of an event at ``time_i`` (Breslow's approximation). O(N log N): times are sorted once
    and the risk-set sums are a cumulative log-sum-exp.

    Args:
        risk: ``[N]`` log-hazard ratios (the head's output).
        time: ``[N]`` follow-up times.
        event: ``[N]`` 1 = event observed, 0 = censored.

    Returns:
        A scalar; 0 (with zero gradient) when there is no event.
    """
    risk, time, event = risk.reshape(-1), time.reshape(-1), event.reshape(-1).to(risk.dtype)
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order], time[order], event[order]
    log_at_risk = torch.logcumsumexp(r, dim=0)
    # Within a run of equal times (descending order), every member's risk set ends at the run's last index.
    _, counts = torch.unique_consecutive(t, return_counts=True)
    last = torch.repeat_interleave(torch.cumsum(counts, 0) - 1, counts)
    log_lik = (r - log_at_risk[last]) * e
    return -log_lik.sum() / e.sum().clamp(min=1.0)


def discrete_time_nll(logits: torch.Tensor, bins: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the discrete-time (logistic-hazard) survival model, averaged over patients.

    With hazards ``h_j = sigmoid(logits_j)`` (probability of the event in bin ``j`` given survival to
    its start) and survival ``S_k = prod_{j <= k} (1 - h_j)``, a patient whose time falls in bin ``y``
    contributes ``-log(S_{y-1} h_y)`` if the event was observed there and ``-log S_y`` if censored
    there (censored patients are taken to survive their bin, as in MCAT/PORPOISE).

    Args:
        logits: ``[N, J]`` hazard logits.
        bins: ``[N]`` bin index (0..J-1) of each patient's time (:func:`to_bins`).
        event: ``[N]`` 1 = event observed, 0 = censored.
    """
    n, j = logits.shape
    bins = bins.reshape(-1).long()
    event = event.reshape(-1).to(logits.dtype)
    log_survive = -F.softplus(logits)  # log(1 - h)
    log_hazard = -F.softplus(-logits)  # log h
    upto = torch.arange(j, device=logits.device)[None, :]
    before = (upto < bins[:, None]).to(logits.dtype)  # bins survived before the patient's bin
    survive_before = (log_survive * before).sum(dim=1)
    own_survive = log_survive.gather(1, bins[:, None]).squeeze(1)
    own_hazard = log_hazard.gather(1, bins[:, None]).squeeze(1)
    log_lik = survive_before + event * own_hazard + (1.0 - event) * own_survive
    return -log_lik.mean() if n else logits.sum() * 0.0


def survival_bin_edges(time: np.ndarray, event: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior cut points of ``n_bins`` time bins at quantiles of the observed event times.

    Bin ``k`` holds times in ``[edge_{k-1}, edge_k)`` (the first from 0, the last to infinity). Call it
    on the training patients of a fold only. Repeated quantiles (few events) are merged, so fewer
    bins than asked may come back.

    Raises:
        InputError: no event among the patients, or ``n_bins < 1``.
    """
    if n_bins < 1:
        raise InputError(f"the discrete-time head needs at least 1 time bin; got {n_bins}")
    times = np.asarray(time, dtype=np.float64)[np.asarray(event).astype(bool)]
    if times.size == 0:
        raise InputError("no event among the training patients: discrete-time bins are cut at event times")
    inner = np.quantile(times, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    return np.unique(inner)


def to_bins(time: np.ndarray | torch.Tensor, edges: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Bin index of each time given the interior ``edges`` (a time equal to an edge opens the next bin)."""
    t = torch.as_tensor(np.asarray(time, dtype=np.float64))
    e = torch.as_tensor(np.asarray(edges, dtype=np.float64))
    return torch.searchsorted(e, t, right=True)


# -- heads ------------------------------------------------------------------------------------------
def _body(in_dim: int, out_dim: int, hidden: int | None, dropout: float) -> nn.Module:
    if hidden is None:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


class Head(nn.Module, abc.ABC):
    """A linear or one-hidden-layer MLP head; subclasses define the output, the loss and the prediction.

    Args:
        in_dim: Feature width ``D``.
        out_dim: Output width.
        hidden: Hidden width of an MLP head; ``None`` = linear.
        dropout: Dropout after the hidden layer (MLP only).
    """

    kind: str = ""

    def __init__(self, in_dim: int, out_dim: int, *, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        self.body = _body(in_dim, out_dim, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``[N, out_dim]``."""
        return self.body(x)

    def weights(self) -> list[torch.Tensor]:
        """The weight matrices (L2-penalised by the trainers; biases are not)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Linear)]

    @abc.abstractmethod
    def loss(self, out: torch.Tensor, target: Target) -> torch.Tensor:
        """Scalar training loss of the outputs against the target."""

    @abc.abstractmethod
    def predict(self, out: torch.Tensor) -> np.ndarray:
        """Class probabilities ``[N, C]`` or risk scores ``[N]`` (higher = earlier event)."""


class SubtypeHead(Head):
    """Multi-class logits over ``n_classes`` subtypes; (optionally class-weighted) cross-entropy.

    Args:
        in_dim: Feature width.
        n_classes: Number of classes (at least 2).
        class_weight: Per-class loss weights ``[C]`` (for example inverse training frequencies).
        hidden: MLP hidden width; ``None`` = linear.
        dropout: MLP dropout.
    """

    kind = "subtype"
    class_weight: torch.Tensor

    def __init__(self, in_dim: int, n_classes: int, *, class_weight: torch.Tensor | None = None,
                 hidden: int | None = None, dropout: float = 0.0) -> None:
        if n_classes < 2:
            raise InputError(f"a subtype head needs at least 2 classes; got {n_classes}")
        super().__init__(in_dim, n_classes, hidden=hidden, dropout=dropout)
        self.register_buffer("class_weight", class_weight if class_weight is not None else torch.ones(n_classes))

    def loss(self, out: torch.Tensor, target: Target) -> torch.Tensor:
        """Weighted mean cross-entropy (``target["y"]``: class indices)."""
        weight = self.class_weight.to(out.dtype)
        return F.cross_entropy(out, target["y"].long(), weight=weight)

    def predict(self, out: torch.Tensor) -> np.ndarray:
        """Softmax probabilities ``[N, C]``."""
        return torch.softmax(out.detach(), dim=1).cpu().double().numpy()


class CoxHead(Head):
    """One log-hazard ratio per patient, trained with :func:`cox_ph_loss` (Breslow ties)."""

    kind = "cox"

    def __init__(self, in_dim: int, *, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__(in_dim, 1, hidden=hidden, dropout=dropout)

    def loss(self, out: torch.Tensor, target: Target) -> torch.Tensor:
        """Negative partial log-likelihood per event (``target["time"]``, ``target["event"]``)."""
        return cox_ph_loss(out.squeeze(1), target["time"], target["event"])

    def predict(self, out: torch.Tensor) -> np.ndarray:
        """The log-hazard ratio ``[N]``."""
        return out.detach().squeeze(1).cpu().double().numpy()


class DiscreteTimeHead(Head):
    """Hazard logits over time bins, trained with :func:`discrete_time_nll`.

    Args:
        in_dim: Feature width.
        edges: Interior bin edges (:func:`survival_bin_edges` on the training patients); ``J = len + 1`` bins.
        hidden: MLP hidden width; ``None`` = linear.
        dropout: MLP dropout.
    """

    kind = "discrete"
    edges: torch.Tensor

    def __init__(self, in_dim: int, edges: Sequence[float] | np.ndarray, *, hidden: int | None = None,
                 dropout: float = 0.0) -> None:
        edges_t = torch.as_tensor(np.asarray(edges, dtype=np.float64))
        super().__init__(in_dim, len(edges_t) + 1, hidden=hidden, dropout=dropout)
        self.register_buffer("edges", edges_t)

    def loss(self, out: torch.Tensor, target: Target) -> torch.Tensor:
        """Discrete-time NLL with each patient's time binned by :attr:`edges`."""
        bins = to_bins(target["time"].detach().cpu().numpy(), self.edges.cpu().numpy()).to(out.device)
        return discrete_time_nll(out, bins, target["event"])

    def predict(self, out: torch.Tensor) -> np.ndarray:
        """Risk ``-sum_k S_k``: minus the expected number of bins survived (as MCAT scores its c-index)."""
        survival = torch.cumprod(torch.sigmoid(-out.detach()), dim=1)
        return (-survival.sum(dim=1)).cpu().double().numpy()

    def survival(self, out: torch.Tensor, times: np.ndarray) -> np.ndarray:
        """Probability ``[N, T]`` of being event-free beyond each of ``times``: the bins completed by then survived.

        A time in bin ``k`` gets ``S_{k-1} = prod_{j < k} (1 - h_j)`` (1 in the first bin): within a bin
        the model does not say when the event falls, and it is counted at the bin's end.
        """
        survive_bin = torch.sigmoid(-out.detach()).cpu().double().numpy()
        before = np.concatenate([np.ones((len(survive_bin), 1)), np.cumprod(survive_bin, axis=1)], axis=1)
        return before[:, to_bins(times, self.edges.cpu().numpy()).numpy()]


def breslow_survival(train_risk: np.ndarray, train_time: np.ndarray, train_event: np.ndarray, risk: np.ndarray,
                     times: np.ndarray) -> np.ndarray:
    """Cox survival curves ``S(t | x) = exp(-H0(t) exp(risk(x)))`` with Breslow's baseline ``H0`` from training.

    ``H0(t) = sum over event times s <= t of d(s) / sum_{j: t_j >= s} exp(risk_j)`` (``d(s)`` events at
    ``s``), on the training patients' risk scores, times and events.

    Returns:
        ``[len(risk), len(times)]`` survival probabilities.
    """
    r = np.asarray(train_risk, dtype=np.float64)
    t = np.asarray(train_time, dtype=np.float64)
    e = np.asarray(train_event, dtype=np.float64)
    shift = float(r.max()) if len(r) else 0.0  # exp of risks relative to the largest: no overflow
    w = np.exp(r - shift)
    event_times = np.unique(t[e > 0])
    at_risk = np.array([w[t >= s].sum() for s in event_times])
    deaths = np.array([e[t == s].sum() for s in event_times])
    cumulative = np.concatenate([[0.0], np.cumsum(deaths / at_risk)])
    h0 = cumulative[np.searchsorted(event_times, np.asarray(times, dtype=np.float64), side="right")]
    # exp(-H0(t) exp(r)) in log space: a test risk far above the training ones (a weak penalty) would give
    # exp(r) = inf and inf * 0 = NaN where H0 is still 0; here log 0 = -inf gives S = 1 there, as it should.
    log_relative = np.asarray(risk, dtype=np.float64) - shift
    with np.errstate(divide="ignore", over="ignore"):
        return np.exp(-np.exp(np.log(h0)[None, :] + log_relative[:, None]))


__all__ = ["CoxHead", "DiscreteTimeHead", "Head", "SubtypeHead", "Target", "breslow_survival", "cox_ph_loss",
           "discrete_time_nll", "survival_bin_edges", "to_bins"]

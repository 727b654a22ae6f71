"""What cross-validation evaluates on each fold: a :class:`Method` fits on training patients, predicts test ones.

Built here:

* :class:`LinearProbe`: a head (:mod:`biossl.downstream.heads`) on *frozen* patient features
  (embeddings from ``biossl embed``), standardised on the training fold and fitted full-batch with
  L-BFGS and an L2 penalty -- a convex problem for linear heads, so the fit is deterministic.
* :class:`PCABaseline`: standardise, PCA, then logistic regression (subtype) or a lifelines Cox model
  (survival) on raw features such as an expression table.
* :class:`AllFeaturesLinear`: the probe's own L2 head -- logistic regression (subtype) or Cox
  (survival) -- on *all* the standardised raw features, its penalty chosen by the inner CV of
  ``--l2 auto`` on each training fold: the strong simple baseline.

**Wide tables** (more features than training patients, linear heads): the head is fitted on the
training patients' coordinates in the row space of their standardised features, ``Z = X V`` with
``V`` the right singular vectors of ``X`` (from the eigenvectors of ``X X^T``: ``n x n``, whatever the
number of features). The penalised fit depends on ``W`` only through ``X W`` and ``||W||``, and its
optimum lies in that row space, so fitting ``Z`` with the same penalty gives the same predictions as
fitting ``X`` -- on ``n`` columns instead of ``p`` (measured in ``benchmarks/RESULTS.md``).

Elsewhere: fine-tuning the encoders end to end and the same architecture from scratch
(:class:`biossl.downstream.finetuning.EncoderFinetune`), and the DNA k-mer baseline
(:class:`biossl.downstream.kmers.KmerBaseline`). All receive the same
:class:`~biossl.downstream.tasks.Task` and fold indices, and return the same predictions.

**Semi-supervised probe** (``semi_supervised=True``, subtype only): self-training with
:class:`~biossl.objectives.pseudo_label.PseudoLabelLoss`. Round 0 is the plain probe on the labelled
training patients; each of the next ``pseudo_rounds`` rounds refits the head on ``labelled loss +
l2 + PseudoLabelLoss(unlabelled rows)`` where the pseudo-labels and their confidence come from the
previous round's head (passed as the loss's ``weak_logits``, so the objective is fixed during an
L-BFGS run). Unlabelled rows are standardised with the labelled training patients' statistics.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from biossl.downstream.finetune_settings import SurvivalLoss
from biossl.downstream.heads import CoxHead, DiscreteTimeHead, Head, SubtypeHead, breslow_survival, survival_bin_edges
from biossl.downstream.tasks import Task
from biossl.errors import InputError

logger = logging.getLogger(__name__)

#: Feature matrices up to this many values are fitted on one thread.
SMALL_PROBLEM = 4_000_000
SURVIVAL_PSEUDO_LABELS = ("--semi-supervised applies to --task subtype only: pseudo-labels are confident class "
                          "predictions, and a survival target (time, event) has no class to assign; drop "
                          "--semi-supervised for survival")


class Method(Protocol):
    """One way of predicting a task from a fold's training patients."""

    name: str

    def patients(self) -> set[str]:
        """Patients this method can score (those with its inputs)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings, for the JSON report."""
        ...

    def fit_predict(self, task: Task, train: np.ndarray, test: np.ndarray, *, seed: int,
                    unlabelled: Sequence[str] = ()) -> np.ndarray:
        """Fit on ``task`` patients at ``train``; return predictions for those at ``test``.

        ``unlabelled`` are patient IDs without a label for this fit (never test patients): semi-supervised
        methods train on them, the others ignore them. Predictions are class probabilities
        ``[n_test, C]`` in ``task.classes`` order (subtype) or risk scores ``[n_test]``, higher = earlier
        event (survival). A method may leave what it wants reported about the fit in ``last_fit``, and,
        for survival, the test patients' survival curves in ``last_survival`` (``times [T] -> [n_test, T]``,
        for the integrated Brier score).
        """
        ...


def feature_frame(values: np.ndarray, patients: list[str], *, what: str) -> pd.DataFrame:
    """Features as a DataFrame indexed by patient, without the rows that hold NaN (patients lacking them).

    Raises:
        InputError: duplicate patients, or no row left.
    """
    frame = pd.DataFrame(np.asarray(values, dtype=np.float64), index=pd.Index(patients, name="patient_id"))
    if frame.index.duplicated().any():
        dup = sorted(set(frame.index[frame.index.duplicated()]))
        raise InputError(f"{what}: patients {dup[:10]} appear more than once")
    complete = np.isfinite(frame.to_numpy()).all(axis=1)
    if not complete.any():
        raise InputError(f"{what}: no patient has these features (every row is NaN)")
    return frame[complete]


@contextlib.contextmanager
def one_thread_if_small(n_values: int) -> Iterator[None]:
    """Run torch and BLAS on one thread while fitting on at most :data:`SMALL_PROBLEM` feature values.

    On a few hundred patients, intra-op threads cost more than they save, and on a busy machine their
    spin-waiting makes small fits many times slower (measured: 5 s vs 29 s for the TCGA-BLCA baseline).
    """
    if n_values > SMALL_PROBLEM:
        yield
        return
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays standardised with the mean and sd of ``train`` (constant columns, sd < 1e-12: sd taken as 1)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std < 1e-12] = 1.0
    return (train - mean) / std, (test - mean) / std


def balanced_class_weight(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """``n / (C_present * n_c)`` per class present in ``y`` (scikit-learn's "balanced"), 0 for absent ones."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weight = np.zeros(n_classes)
    weight[present] = len(y) / (present.sum() * counts[present])
    return torch.as_tensor(weight)


def make_head(task: Task, train: np.ndarray, dim: int, *, hidden: int | None = None,
              survival_loss: SurvivalLoss = "cox", n_bins: int = 4, balanced: bool = True) -> Head:
    """The head for ``task`` on ``dim`` features, sized from the training patients at ``train``.

    Subtype: :class:`SubtypeHead` with balanced class weights of the training patients (or none).
    Survival: :class:`CoxHead`, or :class:`DiscreteTimeHead` with ``n_bins`` bins cut at the training
    patients' event-time quantiles.
    """
    if task.kind == "subtype":
        assert task.y is not None
        weight = balanced_class_weight(task.y[train], len(task.classes)) if balanced else None
        return SubtypeHead(dim, len(task.classes), class_weight=weight, hidden=hidden)
    if survival_loss == "cox":
        return CoxHead(dim, hidden=hidden)
    assert task.time is not None and task.event is not None
    return DiscreteTimeHead(dim, survival_bin_edges(task.time[train], task.event[train], n_bins), hidden=hidden)


def fit_head(head: Head, x: torch.Tensor, target: Mapping[str, torch.Tensor], *, l2: float,
             max_iter: int = 500, extra: Callable[[], torch.Tensor] | None = None,
             info: dict[str, Any] | None = None) -> float:
    """Fit a head full-batch with L-BFGS (strong-Wolfe line search) on ``loss + l2/2 * ||W||^2 (+ extra())``.

    Biases are not penalised. ``extra`` adds a term computed from the head (a pseudo-label loss on
    unlabelled rows). Returns the final objective; ``info``, if given, receives ``iterations`` and
    ``converged`` (stopped by its tolerances before ``max_iter``). Small problems run on one thread
    (:func:`one_thread_if_small`).
    """
    with one_thread_if_small(x.numel()):
        return _lbfgs(head, x, target, l2=l2, max_iter=max_iter, extra=extra, info=info)


def _lbfgs(head: Head, x: torch.Tensor, target: Mapping[str, torch.Tensor], *, l2: float, max_iter: int,
           extra: Callable[[], torch.Tensor] | None = None, info: dict[str, Any] | None = None) -> float:
    head.train()
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def value() -> torch.Tensor:
        loss = head.loss(head(x), target) + 0.5 * l2 * sum(w.pow(2).sum() for w in head.weights())
        return loss + extra() if extra is not None else loss

    def objective() -> torch.Tensor:
        opt.zero_grad()
        loss = value()
        loss.backward()
        return loss

    opt.step(objective)
    if info is not None:
        iterations = int(opt.state[next(iter(head.parameters()))].get("n_iter", 0))
        info.update(iterations=iterations, converged=iterations < max_iter)
    head.eval()
    with torch.no_grad():
        return float(value())


#: Inner folds that choose the probe's L2 penalty from a grid (``--l2 auto``).
INNER_FOLDS = 3
#: The grid of ``--l2 auto``: one penalty per decade, 1e-6 ... 1e3.
L2_GRID = tuple(float(f"1e{k}") for k in range(-6, 4))
#: Relative eigenvalue of ``X X^T`` below which a direction counts as outside the row space (see the module doc).
ROW_SPACE_RTOL = 1e-10

SurvivalCurves = Callable[[np.ndarray], np.ndarray]


def row_space(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x_train V, x_test V)``, ``V`` an orthonormal basis of the row space of ``x_train`` (see the module doc).

    ``V = X^T U / s`` from the eigendecomposition ``X X^T = U diag(s^2) U^T``, keeping eigenvalues above
    :data:`ROW_SPACE_RTOL` times the largest: ``O(n^2 p)`` for ``n`` rows and ``p`` columns.
    """
    gram = x_train @ x_train.T
    eigenvalues, u = np.linalg.eigh(gram)
    keep = eigenvalues > ROW_SPACE_RTOL * max(float(eigenvalues.max()), np.finfo(np.float64).tiny)
    basis = x_train.T @ (u[:, keep] / np.sqrt(eigenvalues[keep]))
    return x_train @ basis, x_test @ basis


class LinearProbe:
    """A head on frozen features: standardised per training fold, fitted by :func:`fit_head`.

    Args:
        features: Patients x features (rows with NaN already removed, see :func:`feature_frame`).
        name: Name in reports.
        hidden: ``None`` for a linear head, else the hidden width of an MLP head.
        survival_loss: ``"cox"`` (:class:`~biossl.downstream.heads.CoxHead`) or ``"discrete"``
            (:class:`~biossl.downstream.heads.DiscreteTimeHead`).
        n_bins: Time bins of the discrete-time head (quantiles of the training fold's event times).
        l2: L2 penalty on the weights (the loss is a mean per patient, or per event for Cox); or a grid
            of penalties, one of which is chosen in each training fold by an inner cross-validation
            on that fold's training patients only (:data:`INNER_FOLDS` folds stratified by class or
            event; the penalty with the best mean macro AUROC or c-index, ties to the larger one),
            then refitted on all of them. The chosen penalty is reported per fold.
        balanced: Weight subtype classes by inverse training frequency.
        semi_supervised: Self-train on the unlabelled patients with pseudo-labels (subtype only; see
            the module docstring).
        pseudo_threshold: Confidence ``tau`` of :class:`~biossl.objectives.pseudo_label.PseudoLabelLoss`.
        pseudo_weight: Weight ``lambda`` of the pseudo-label term.
        pseudo_rounds: Self-training rounds after the supervised fit.
        reduce: Fit a linear head on the row-space coordinates when there are more features than
            training patients (exact, see the module docstring); ``False`` always fits on the features.

    A chosen penalty at either end of the grid is flagged per fold (``last_fit["l2_at_edge"]``; the
    cross-validation logs a warning): the best penalty may lie beyond the grid.
    """

    #: The option that sets this method's penalty grid (named in the grid-edge warning).
    l2_option = "--l2"

    def __init__(self, features: pd.DataFrame, *, name: str = "linear_probe", hidden: int | None = None,
                 survival_loss: SurvivalLoss = "cox", n_bins: int = 4, l2: float | Sequence[float] = 1e-2,
                 balanced: bool = True, max_iter: int = 500, semi_supervised: bool = False,
                 pseudo_threshold: float = 0.95, pseudo_weight: float = 1.0, pseudo_rounds: int = 3,
                 reduce: bool = True) -> None:
        if survival_loss not in ("cox", "discrete"):
            raise InputError(f"survival loss must be 'cox' or 'discrete', not {survival_loss!r}")
        self.features, self.name, self.hidden = features, name, hidden
        grid = [float(v) for v in l2] if isinstance(l2, Sequence) else [float(l2)]
        if not grid or any(not v >= 0 for v in grid):
            raise InputError(f"the probe's L2 penalties must be >= 0; got {l2}")
        self.l2_grid = sorted(set(grid))
        self.survival_loss, self.n_bins, self.l2 = survival_loss, n_bins, self.l2_grid[0]
        self.balanced, self.max_iter = balanced, max_iter
        self.semi_supervised, self.pseudo_threshold = semi_supervised, pseudo_threshold
        self.pseudo_weight, self.pseudo_rounds = pseudo_weight, pseudo_rounds
        self.reduce = reduce
        #: What the last :meth:`fit_predict` reports (pseudo-label counts when semi-supervised).
        self.last_fit: dict[str, Any] = {}
        #: The last test patients' survival curves (survival tasks), see :class:`Method`.
        self.last_survival: SurvivalCurves | None = None

    def patients(self) -> set[str]:
        """Patients with features."""
        return set(map(str, self.features.index))

    def describe(self) -> dict[str, Any]:
        """Settings for the report."""
        return {"method": "linear probe on frozen features" if self.hidden is None else "MLP probe on frozen "
                "features", "head": "linear" if self.hidden is None else f"mlp({self.hidden})",
                "survival_loss": self.survival_loss, "n_bins": self.n_bins,
                "l2": self.l2 if len(self.l2_grid) == 1 else {
                    "grid": self.l2_grid, "selection": f"inner {INNER_FOLDS}-fold CV on each training fold "
                    "(macro AUROC / c-index), refit on the whole training fold"},
                "class_weight": "balanced" if self.balanced else "none", "optimiser": "L-BFGS, full batch",
                "n_features": int(self.features.shape[1]),
                **({"solved_on": "row-space coordinates of the training patients when features outnumber them "
                                 "(same predictions)"} if self._may_reduce() else {}),
                **({"semi_supervised": {"loss": "PseudoLabelLoss (self-training)", "threshold": self.pseudo_threshold,
                                        "weight": self.pseudo_weight, "rounds": self.pseudo_rounds}}
                   if self.semi_supervised else {})}

    def build_head(self, task: Task, train: np.ndarray, dim: int | None = None) -> Head:
        """The head for ``task`` on ``dim`` inputs (default: the feature count), sized from the training patients."""
        return make_head(task, train, self.features.shape[1] if dim is None else dim, hidden=self.hidden,
                         survival_loss=self.survival_loss, n_bins=self.n_bins, balanced=self.balanced)

    def _may_reduce(self) -> bool:
        """Row-space coordinates are exact for a linear head (self-training on a pool uses the features)."""
        return self.reduce and self.hidden is None

    def _inputs(self, x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardised inputs of the head: the features, or their row-space coordinates (module docstring)."""
        with one_thread_if_small(x_train.size + x_test.size):
            a, b = standardise(x_train, x_test)
            if self._may_reduce() and a.shape[1] > a.shape[0]:
                a, b = row_space(a, b)
        return a, b

    def fit_predict(self, task: Task, train: np.ndarray, test: np.ndarray, *, seed: int,
                    unlabelled: Sequence[str] = ()) -> np.ndarray:
        """Standardise on ``train``, fit the head (then self-train on ``unlabelled`` if asked), predict ``test``."""
        x = self.features.loc[task.patients].to_numpy(dtype=np.float64)
        self.last_fit = {}
        self.last_survival = None
        l2 = self.l2
        if len(self.l2_grid) > 1:
            l2, scores = self._select_l2(task, x, train, seed)
            edge = bool(scores) and l2 in (self.l2_grid[0], self.l2_grid[-1])
            self.last_fit = {"l2": l2, "l2_at_edge": edge, "inner_cv": scores}
        pool: list[str] = []
        if self.semi_supervised:
            if task.kind != "subtype":
                raise InputError(SURVIVAL_PSEUDO_LABELS)
            pool = [p for p in dict.fromkeys(unlabelled) if p in self.features.index]
        # Self-training on a pool needs the pool's rows in the head's input space: the features themselves.
        x_train, x_test = standardise(x[train], x[test]) if pool else self._inputs(x[train], x[test])
        solver: dict[str, Any] = {}
        head = self._fit(task, x_train, train, l2, seed, info=solver)
        if len(self.l2_grid) > 1:  # whether the chosen penalty's refit reached its tolerances (small ones may not)
            self.last_fit["converged"] = solver.get("converged")
        if task.kind == "survival":
            self.last_survival = self._curves(task, head, x_train, x_test, train)
        if self.semi_supervised:
            x_pool = (standardise(x[train], self.features.loc[pool].to_numpy(dtype=np.float64))[1] if pool
                      else np.zeros((0, x_train.shape[1])))
            self.last_fit.update(self._self_train(head, torch.from_numpy(x_train), task.target(train),
                                                  torch.from_numpy(x_pool)))
        with torch.no_grad():
            return head.predict(head(torch.from_numpy(x_test)))

    @staticmethod
    def _curves(task: Task, head: Head, x_train: np.ndarray, x_test: np.ndarray, train: np.ndarray) -> SurvivalCurves:
        """The test patients' survival curves: the discrete-time head's own, or Cox with a Breslow baseline."""
        assert task.time is not None and task.event is not None
        with torch.no_grad():
            out_test = head(torch.from_numpy(x_test))
            if isinstance(head, DiscreteTimeHead):
                return lambda times: head.survival(out_test, times)
            train_risk = head.predict(head(torch.from_numpy(x_train)))
        time, event, risk = task.time[train], task.event[train], head.predict(out_test)
        return lambda times: breslow_survival(train_risk, time, event, risk, times)

    def _fit(self, task: Task, x_train: np.ndarray, train: np.ndarray, l2: float, seed: int,
             info: dict[str, Any] | None = None) -> Head:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = self.build_head(task, train, x_train.shape[1]).double()
        fit_head(head, torch.from_numpy(x_train), task.target(train), l2=l2, max_iter=self.max_iter, info=info)
        return head

    def _select_l2(self, task: Task, x: np.ndarray, train: np.ndarray, seed: int) -> tuple[float, dict[str, float]]:
        """The grid's penalty with the best inner-CV score on the training patients (see the class docstring)."""
        from biossl.data.splits import fold_rows, kfold

        strata = task.strata().to_numpy()[train]
        n_splits = min(INNER_FOLDS, int(pd.Series(strata).value_counts().min()))
        if n_splits < 2:
            logger.warning("%s: a class (or the events) of a training fold has fewer than 2 patients; no inner CV, "
                           "L2 %g used", self.name, self.l2_grid[len(self.l2_grid) // 2])
            return self.l2_grid[len(self.l2_grid) // 2], {}
        metric = "c_index" if task.kind == "survival" else "macro_auroc"
        folds = fold_rows(kfold(len(train), n_splits, labels=strata, seed=seed))
        values: dict[float, list[float]] = {l2: [] for l2 in self.l2_grid}
        for inner_train, inner_val in folds:
            a, b = train[inner_train], train[inner_val]
            xa, xb = self._inputs(x[a], x[b])  # once per inner fold, shared by the grid
            for l2 in self.l2_grid:
                head = self._fit(task, xa, a, l2, seed)
                with torch.no_grad():
                    values[l2].append(task.score(b, head.predict(head(torch.from_numpy(xb))))[metric])
        scores = {f"{l2:g}": float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan")
                  for l2, v in values.items()}
        best = max(self.l2_grid, key=lambda v: (np.nan_to_num(scores[f"{v:g}"], nan=-np.inf), v))
        return best, scores

    def _self_train(self, head: Head, x: torch.Tensor, target: Mapping[str, torch.Tensor],
                    x_pool: torch.Tensor) -> dict[str, Any]:
        from biossl.objectives.pseudo_label import PseudoLabelLoss

        pseudo = PseudoLabelLoss(threshold=self.pseudo_threshold, weight=self.pseudo_weight)
        none = torch.full((len(x_pool),), pseudo.unlabelled, dtype=torch.long)
        used: list[float] = []
        unsupervised = 0.0
        for _ in range(self.pseudo_rounds if len(x_pool) else 0):
            with torch.no_grad():
                weak = head(x_pool)  # the previous round's predictions give the pseudo-labels

            def term(weak: torch.Tensor = weak) -> torch.Tensor:
                return pseudo(head(x_pool), none, weak)

            fit_head(head, x, target, l2=self.last_fit.get("l2", self.l2), max_iter=self.max_iter, extra=term)
            with torch.no_grad():
                pseudo(head(x_pool), none, weak)
            used.append(float(pseudo.diagnostics["pseudo_label/used_fraction"]))
            unsupervised = float(pseudo.diagnostics["pseudo_label/unsupervised"])
        return {"pseudo_label": {"n_unlabelled": len(x_pool), "threshold": self.pseudo_threshold,
                                 "used_fraction_per_round": used, "unsupervised_loss": unsupervised}}


class AllFeaturesLinear(LinearProbe):
    """The probe's L2 head on *all* standardised raw features: logistic regression (subtype) or Cox (survival).

    The strong simple baseline beside :class:`PCABaseline`: same folds, patients and head machinery as
    the probe (:func:`fit_head`, balanced class weights, Cox partial likelihood with Breslow ties), its
    penalty chosen on each training fold by the inner CV of ``--l2 auto`` over ``l2`` (default
    :data:`L2_GRID`) and reported per fold. Wide tables are solved on row-space coordinates (module
    docstring). In scikit-learn terms the subtype fit is ``LogisticRegression(C=1 / (n * l2),
    class_weight="balanced")`` for ``n`` training patients and 3+ classes (``C = 2 / (n * l2)`` for two:
    the head's two weight rows share the penalty of scikit-learn's one).

    Args:
        features: Patients x raw features (for example an expression table).
        name: Name in reports (the CLI uses ``linear_all_logreg`` / ``linear_all_cox``).
        source: Where the features came from, for the report.
        l2: One penalty, or the grid the inner CV chooses from.
        max_iter: L-BFGS iterations per fit.
    """

    l2_option = "--baseline-l2"

    def __init__(self, features: pd.DataFrame, *, name: str = "linear_all", source: str = "",
                 l2: float | Sequence[float] = L2_GRID, max_iter: int = 500) -> None:
        super().__init__(features, name=name, survival_loss="cox", l2=l2, max_iter=max_iter)
        self.source = source

    def describe(self) -> dict[str, Any]:
        """Settings for the report."""
        return {**super().describe(), "method": "penalised linear model on all standardised raw features "
                "(logistic regression | Cox), the probe's L2 head", "features": self.source}


def balanced_logreg(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, *, c: float,
                    seed: int) -> np.ndarray:
    """Class probabilities ``[n_test, n_classes]`` of scikit-learn's L2 logistic regression (``C = c``).

    Balanced class weights, ``max_iter`` 5000, ``random_state`` ``seed``; ``y_train`` holds class indices
    ``0..n_classes-1``, and a class absent from the training rows gets probability 0.
    """
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    model.fit(x_train, y_train)
    proba = np.zeros((len(x_test), n_classes))
    proba[:, model.classes_] = model.predict_proba(x_test)
    return proba


class PCABaseline:
    """Standardise, PCA, then logistic regression (subtype) or a penalised Cox model (survival).

    Everything is fitted on the training fold only. The Cox model is lifelines' ``CoxPHFitter``
    (Efron ties, ``penalizer`` on the L2 norm); logistic regression is scikit-learn's with balanced
    class weights.

    Args:
        features: Patients x raw features (for example an expression table).
        n_components: PCA components (capped at the training patients - 1 and the feature count); with
            ``blocks``, one number per block.
        penalizer: lifelines ``CoxPHFitter(penalizer=...)``.
        c: Inverse L2 strength of the logistic regression.
        name: Name in reports (the CLI uses ``pca<n>_cox`` / ``pca<n>_logreg``, ``pca16+8+8_cox`` for blocks).
        source: Where the features came from, for the report.
        blocks: Feature count of each block of columns (for example RNA, CNV, mutations side by side): each
            block is standardised and reduced by its own PCA, and the components are concatenated. ``None``:
            one block.

    Raises:
        InputError: ``blocks`` and ``n_components`` of different lengths, or blocks that do not cover the columns.
    """

    def __init__(self, features: pd.DataFrame, *, n_components: int | Sequence[int] = 16, penalizer: float = 1.0,
                 c: float = 1.0, name: str = "pca_baseline", source: str = "",
                 blocks: Sequence[int] | None = None) -> None:
        comps = [int(n_components)] if isinstance(n_components, int) else [int(n) for n in n_components]
        widths = [int(features.shape[1])] if blocks is None else [int(b) for b in blocks]
        if len(comps) != len(widths) or sum(widths) != features.shape[1] or min(comps) < 1:
            raise InputError(f"PCA baseline: {len(widths)} feature block(s) {widths} of {features.shape[1]} columns "
                             f"need as many positive component counts; got {comps}")
        self.features, self.n_components, self.penalizer, self.c = features, comps, penalizer, c
        self.blocks = widths
        self.name, self.source = name, source
        #: The last test patients' survival curves (Cox; lifelines' Breslow baseline), see :class:`Method`.
        self.last_survival: SurvivalCurves | None = None

    def patients(self) -> set[str]:
        """Patients with raw features."""
        return set(map(str, self.features.index))

    def describe(self) -> dict[str, Any]:
        """Settings for the report."""
        return {"method": "standardise + PCA + (Cox | logistic regression) on raw features",
                "features": self.source, "n_features": int(self.features.shape[1]),
                "n_components": self.n_components[0] if len(self.blocks) == 1 else self.n_components,
                **({} if len(self.blocks) == 1 else {"blocks": self.blocks}),
                "cox_penalizer": self.penalizer, "logreg_C": self.c}

    def fit_predict(self, task: Task, train: np.ndarray, test: np.ndarray, *, seed: int,
                    unlabelled: Sequence[str] = ()) -> np.ndarray:
        """Fit the pipeline on ``train``; class probabilities or Cox log partial hazards for ``test``."""
        from sklearn.decomposition import PCA

        x = self.features.loc[task.patients].to_numpy(dtype=np.float64)
        self.last_survival = None
        with one_thread_if_small(x.size):
            parts_train, parts_test = [], []
            start = 0
            for width, wanted in zip(self.blocks, self.n_components):
                x_train, x_test = standardise(x[train, start:start + width], x[test, start:start + width])
                start += width
                n = max(1, min(wanted, len(train) - 1, width))
                pca = PCA(n_components=n, svd_solver="full", random_state=seed).fit(x_train)
                parts_train.append(pca.transform(x_train))
                parts_test.append(pca.transform(x_test))
            z_train, z_test = np.concatenate(parts_train, axis=1), np.concatenate(parts_test, axis=1)
            if task.kind == "subtype":
                assert task.y is not None
                return balanced_logreg(z_train, task.y[train], z_test, len(task.classes), c=self.c, seed=seed)
            return self._cox(task, train, z_train, z_test)

    def _cox(self, task: Task, train: np.ndarray, z_train: np.ndarray, z_test: np.ndarray) -> np.ndarray:
        from lifelines import CoxPHFitter

        assert task.time is not None and task.event is not None
        cols = [f"pc{i}" for i in range(z_train.shape[1])]
        frame = pd.DataFrame(z_train, columns=cols)
        frame["time"], frame["event"] = task.time[train], task.event[train]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lifelines convergence chatter on small folds
            model = CoxPHFitter(penalizer=self.penalizer).fit(frame, duration_col="time", event_col="event")
        test_frame = pd.DataFrame(z_test, columns=cols)

        def curves(times: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict_survival_function(test_frame, times=times), dtype=np.float64).T

        self.last_survival = curves
        return np.asarray(model.predict_log_partial_hazard(test_frame), dtype=np.float64)


__all__ = ["L2_GRID", "SURVIVAL_PSEUDO_LABELS", "AllFeaturesLinear", "LinearProbe", "Method", "PCABaseline",
           "SurvivalCurves", "balanced_class_weight", "balanced_logreg", "feature_frame", "fit_head", "make_head",
           "row_space", "standardise"]

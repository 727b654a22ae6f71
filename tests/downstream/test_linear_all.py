"""The all-features baseline (``linear_all_<kind>``), the widened ``--l2 auto`` grid with its edge flag, and the
censoring-robust survival metrics (Uno's c-index, integrated Brier score), each against an independent reference."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from biossl.cli import main
from biossl.data.expression import read_expression
from biossl.data.labels import read_labels
from biossl.downstream.cv import cross_validate, fold_scores, folds_for
from biossl.downstream.heads import DiscreteTimeHead, breslow_survival
from biossl.downstream.methods import L2_GRID, AllFeaturesLinear, feature_frame, row_space, standardise
from biossl.downstream.metrics import brier_times, integrated_brier_score, survival_horizon, uno_c_index
from biossl.downstream.tasks import Task, subtype_task, survival_task

#: PBMC cell types with at least 10 cells in the fixture (5 classes, 133 cells).
PBMC_TYPES = ["Dendritic", "CD14+ Monocyte", "CD19+ B", "CD4+/CD25 T Reg", "CD8+ Cytotoxic T"]


@pytest.fixture(scope="module")
def demo(demo_cohort: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(expression: 21 patients x 256 real TCGA KIRC/KIRP genes, labels: subtype, time, event)."""
    adata = read_expression(demo_cohort / "expression.csv", aggregate="mean")
    x = feature_frame(np.asarray(adata.X), [str(p) for p in adata.obs["patient_id"]], what="demo expression")
    labels = read_labels(demo_cohort / "labels.csv", patients=list(x.index), unknown="drop")
    return x, labels.loc[[p for p in labels.index if p in x.index]]


@pytest.fixture(scope="module")
def pbmc(fixtures: Path) -> tuple[pd.DataFrame, Task]:
    """133 real PBMC cells x 765 genes (log1p counts), 5 cell types."""
    adata = ad.read_h5ad(fixtures / "expression" / "pbmc68k_counts.h5ad")
    keep = adata.obs["bulk_labels"].astype(str).isin(PBMC_TYPES).to_numpy()
    counts = np.asarray(adata.X[keep].toarray() if hasattr(adata.X, "toarray") else adata.X[keep])
    cells = [str(c) for c in adata.obs_names[keep]]
    x = feature_frame(np.log1p(counts), cells, what="pbmc")
    labels = pd.DataFrame({"cell_type": adata.obs["bulk_labels"].astype(str).to_numpy()[keep]}, index=cells)
    return x, subtype_task(labels, "cell_type")


def _split(task: Task, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(len(task))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _sklearn_proba(x: pd.DataFrame, task: Task, train: np.ndarray, test: np.ndarray, c: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    values = x.loc[task.patients].to_numpy(dtype=np.float64)
    a, b = standardise(values[train], values[test])
    assert task.y is not None
    model = LogisticRegression(C=c, class_weight="balanced", tol=1e-12, max_iter=20000).fit(a, task.y[train])
    return model.predict_proba(b)


@pytest.mark.parametrize("reduce", [True, False])
def test_multiclass_fit_matches_sklearn_logistic_regression(pbmc: tuple[pd.DataFrame, Task], reduce: bool) -> None:
    x, task = pbmc
    train, test = _split(task, 33)
    l2 = 0.05
    method = AllFeaturesLinear(x, l2=l2)
    method.reduce = reduce  # 765 genes > 100 training cells: row-space coordinates, or the genes themselves
    ours = method.fit_predict(task, train, test, seed=0)
    # Our loss is a (class-weighted) mean over the n training cells: C = 1 / (n * l2) in scikit-learn's terms.
    reference = _sklearn_proba(x, task, train, test, c=1.0 / (len(train) * l2))
    assert ours.shape == (33, 5)
    np.testing.assert_allclose(ours, reference, atol=2e-4)


def test_binary_fit_matches_sklearn_with_the_two_row_penalty(demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    x, labels = demo
    task = subtype_task(labels, "subtype")
    train, test = _split(task, 6)
    l2 = 0.1
    ours = AllFeaturesLinear(x, l2=l2).fit_predict(task, train, test, seed=0)
    # Two classes: the head's two weight rows w1 = -w2 = w/2 carry half of scikit-learn's one-vector penalty.
    reference = _sklearn_proba(x, task, train, test, c=2.0 / (len(train) * l2))
    np.testing.assert_allclose(ours, reference, atol=2e-4)


def _lifelines_cox(x: np.ndarray, time: np.ndarray, event: np.ndarray, penalizer: float) -> object:
    from lifelines import CoxPHFitter

    frame = pd.DataFrame(x, columns=[f"g{i}" for i in range(x.shape[1])]).assign(time=time, event=event)
    return CoxPHFitter(penalizer=penalizer).fit(frame, duration_col="time", event_col="event",
                                                fit_options={"precision": 1e-12, "max_steps": 500})


def test_cox_fit_matches_lifelines_with_the_equivalent_penalty(demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    x, labels = demo
    genes = x.iloc[:, :12]  # lifelines' Newton steps on 12 real genes; no tied event times in the demo
    task = survival_task(labels)
    train, test = _split(task, 6)
    assert task.time is not None and task.event is not None
    l2 = 0.1
    ours = AllFeaturesLinear(genes, l2=l2).fit_predict(task, train, test, seed=0)
    values = genes.loc[task.patients].to_numpy(dtype=np.float64)
    a, b = standardise(values[train], values[test])
    n, d = len(train), task.event[train].sum()
    # Ours: -loglik / d + l2/2 |b|^2. lifelines: -loglik + n * pen/2 |b'|^2 with b' on its own sd (ddof 1)
    # rescaling of our (ddof 0) standardised genes, |b'|^2 = n / (n - 1) |b|^2.
    model = _lifelines_cox(a, task.time[train], task.event[train], penalizer=l2 * d * (n - 1) / n**2)
    reference = np.asarray(model.predict_log_partial_hazard(pd.DataFrame(b, columns=model.params_.index)))
    np.testing.assert_allclose(ours - ours.mean(), reference - reference.mean(), atol=1e-4)


@pytest.mark.parametrize("kind", ["subtype", "survival"])
def test_row_space_fit_equals_the_fit_on_all_genes(demo: tuple[pd.DataFrame, pd.DataFrame], kind: str) -> None:
    x, labels = demo  # 256 genes, 15 training patients
    task = subtype_task(labels, "subtype") if kind == "subtype" else survival_task(labels)
    train, test = _split(task, 6)
    predictions = []
    for reduce in (True, False):
        method = AllFeaturesLinear(x, l2=0.1)
        method.reduce = reduce
        predictions.append(method.fit_predict(task, train, test, seed=0))
    if kind == "survival":
        predictions = [p - p.mean() for p in predictions]
    np.testing.assert_allclose(predictions[0], predictions[1], atol=1e-4)
    z_train, z_test = row_space(*standardise(x.to_numpy()[train], x.to_numpy()[test]))
    assert z_train.shape[1] <= len(train) and z_test.shape == (len(test), z_train.shape[1])


def _flagged(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith(f"{name}, fold ")]


def test_grid_edge_is_flagged_in_the_json_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    # Constructed: the outcome follows s; both features are a large common factor u (weakly tied to s) plus or
    # minus 0.03 s. Their difference -- a direction of tiny variance -- carries the signal, and every penalty
    # shrinks it away in favour of u: the smaller the penalty, the better, so the grid's smallest one wins.
    rng = np.random.default_rng(0)
    n = 90
    s = rng.standard_normal(n)
    outcome = s + 0.5 * rng.standard_normal(n)
    u = 0.3 * s + rng.standard_normal(n)
    patients = [f"P{i:02d}" for i in range(n)]
    x = pd.DataFrame({"plus": u + 0.03 * s, "minus": u - 0.03 * s}, index=patients)
    task = subtype_task(pd.DataFrame({"y": np.where(outcome > 0, "up", "down")}, index=patients), "y")
    task, folds = folds_for(task, n_folds=3, seed=0)
    grid = [1e-2, 1e-1, 1.0, 10.0]
    method = AllFeaturesLinear(x, name="linear_all_logreg", l2=grid)
    with caplog.at_level(logging.WARNING):
        rows = cross_validate(task, [method], folds, seed=0)["linear_all_logreg"]["folds"]
    for row in rows:
        scores = row["fit"]["inner_cv"]
        assert row["fit"]["l2"] == 1e-2 and row["fit"]["l2_at_edge"] is True
        assert scores["0.01"] > max(scores["0.1"], scores["1"], scores["10"])  # strictly best, not a tie
    warned = _flagged(caplog, "linear_all_logreg")
    assert len(warned) == 3
    assert warned[0].startswith("linear_all_logreg, fold 0: the inner CV chose L2 0.01, the smallest of the grid "
                                "0.01 ... 10;")
    assert "--baseline-l2" in warned[0] and "flat" not in warned[0]
    # The flag follows the chosen value's place in the grid, and only flagged folds are warned about.
    caplog.clear()
    wide = AllFeaturesLinear(x, name="wide", l2=L2_GRID)
    with caplog.at_level(logging.WARNING):
        rows = cross_validate(task, [wide], folds, seed=0)["wide"]["folds"]
    edges = [row["fit"]["l2"] in (L2_GRID[0], L2_GRID[-1]) for row in rows]
    assert [row["fit"]["l2_at_edge"] for row in rows] == edges
    assert len(_flagged(caplog, "wide")) == sum(edges)


def test_default_grid_spans_1e_minus_6_to_1e3_one_per_decade() -> None:
    assert L2_GRID == (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def _censoring_km(train_time: np.ndarray, train_event: np.ndarray):  # noqa: ANN202
    """Kaplan-Meier of the training censoring times, events first at tied times: ``t -> G(t)``."""
    times = np.unique(train_time)
    at_risk = np.array([(train_time >= u).sum() - ((train_time == u) & (train_event > 0)).sum() for u in times])
    censored = np.array([((train_time == u) & (train_event == 0)).sum() for u in times])
    g = np.cumprod(1.0 - np.divide(censored, at_risk, out=np.zeros(len(times)), where=at_risk > 0))
    return lambda t: np.concatenate([[1.0], g])[np.searchsorted(times, np.atleast_1d(t), side="right")]


def _uno_by_hand(train_time: np.ndarray, train_event: np.ndarray, time: np.ndarray, event: np.ndarray,
                 risk: np.ndarray, tau: float) -> float:
    """Uno et al. (2011): events before tau weighted by G(T_i)^-2; a censored patient at an event's time counts."""
    g = _censoring_km(train_time, train_event)
    num = den = 0.0
    for i in range(len(time)):
        if not event[i] or time[i] >= tau:
            continue
        weight = float(g(time[i])[0]) ** -2
        for j in range(len(time)):
            if time[j] > time[i] or (time[j] == time[i] and not event[j]):
                den += weight
                num += weight * (1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0)
    return num / den


def test_uno_c_matches_the_formula_on_the_demo_labels(demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    x, labels = demo
    task = survival_task(labels)
    assert task.time is not None and task.event is not None
    train, test = _split(task, 10)
    risk = x.loc[task.patients].iloc[:, 0].to_numpy()[test]  # one real gene as a risk score
    tau = survival_horizon(task.time[train])
    ours = uno_c_index(task.time[train], task.event[train], task.time[test], risk, task.event[test])
    by_hand = _uno_by_hand(task.time[train], task.event[train], task.time[test], task.event[test], risk, tau)
    assert ours == pytest.approx(by_hand, abs=1e-9)
    assert np.isnan(uno_c_index(task.time[train], task.event[train], task.time[test], risk, 0 * task.event[test]))


@pytest.mark.shared
def test_uno_c_and_brier_on_tcga_blca(shared_data: Path) -> None:
    rows = pd.read_csv(shared_data / "tcga_porpoise" / "tcga_blca_all_clean.csv.zip",
                       usecols=["case_id", "age", "survival_months", "censorship"]).drop_duplicates("case_id")
    rows = rows[rows["survival_months"] > 0].dropna()
    time, event, age = (rows[c].to_numpy(dtype=np.float64) for c in ("survival_months", "censorship", "age"))
    event = 1 - event
    order = np.random.default_rng(0).permutation(len(rows))
    train, test = order[100:], order[:100]
    tau = survival_horizon(time[train])
    ours = uno_c_index(time[train], event[train], time[test], age[test], event[test])
    assert ours == pytest.approx(_uno_by_hand(time[train], event[train], time[test], event[test], age[test], tau),
                                 abs=1e-9)
    assert 0.5 < ours < 0.75  # age is a known, modest risk factor in bladder cancer
    ibs = integrated_brier_score(time[train], event[train], time[test], event[test], _km_curves(time[train],
                                                                                               event[train], 100))
    assert ibs == pytest.approx(_ibs_by_hand(time[train], event[train], time[test], event[test],
                                             _km_curves(time[train], event[train], 100)), rel=1e-9)


def _km_curves(time: np.ndarray, event: np.ndarray, n: int):  # noqa: ANN202
    from lifelines import KaplanMeierFitter

    km = KaplanMeierFitter().fit(time, event)
    return lambda t: np.tile(km.survival_function_at_times(t).to_numpy(), (n, 1))


def _ibs_by_hand(train_time: np.ndarray, train_event: np.ndarray, time: np.ndarray, event: np.ndarray,
                 curves) -> float:  # noqa: ANN001
    """Graf et al. (1999): IPCW Brier score at each grid time, trapezoid-integrated over the grid's range."""
    g = _censoring_km(train_time, train_event)
    times = brier_times(train_time, time)
    surv = curves(times)
    g_t, g_y = g(times), g(time)
    scores = []
    for k, t in enumerate(times):
        case = (time <= t) & (event > 0)
        scores.append(np.mean(np.where(case, surv[:, k] ** 2 / np.where(case, g_y, 1.0), 0.0)
                              + np.where(time > t, (1 - surv[:, k]) ** 2 / g_t[k], 0.0)))
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))


def test_integrated_brier_matches_the_formula_on_the_demo_labels(demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, labels = demo
    task = survival_task(labels)
    assert task.time is not None and task.event is not None
    train, test = _split(task, 10)
    curves = _km_curves(task.time[train], task.event[train], len(test))
    ours = integrated_brier_score(task.time[train], task.event[train], task.time[test], task.event[test], curves)
    by_hand = _ibs_by_hand(task.time[train], task.event[train], task.time[test], task.event[test], curves)
    assert 0 < ours < 0.5 and ours == pytest.approx(by_hand, rel=1e-9)


def test_breslow_curves_match_lifelines(demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    x, labels = demo
    task = survival_task(labels)
    assert task.time is not None and task.event is not None
    train, test = _split(task, 6)
    a, b = standardise(*(x.loc[task.patients].iloc[:, :3].to_numpy()[i] for i in (train, test)))
    model = _lifelines_cox(a, task.time[train], task.event[train], penalizer=0.1)
    frame = {k: pd.DataFrame(v, columns=model.params_.index) for k, v in (("train", a), ("test", b))}
    risk = {k: np.asarray(model.predict_log_partial_hazard(v)) for k, v in frame.items()}
    times = np.quantile(task.time[train], [0.2, 0.5, 0.8])
    ours = breslow_survival(risk["train"], task.time[train], task.event[train], risk["test"], times)
    reference = np.asarray(model.predict_survival_function(frame["test"], times=times)).T
    np.testing.assert_allclose(ours, reference, atol=1e-8)


def test_breslow_curves_stay_finite_for_a_test_risk_far_above_training(demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    # A weakly penalised fit can give a test patient a risk hundreds of nats above every training one:
    # exp(risk) overflows, and inf * H0(t) = NaN where H0 is still 0 (seen on TCGA-HNSC site folds).
    _, labels = demo
    task = survival_task(labels)
    assert task.time is not None and task.event is not None
    train, _ = _split(task, 6)
    rng = np.random.default_rng(0)
    risk_train = rng.normal(size=len(train))
    times = np.concatenate([[0.0], np.quantile(task.time[train], [0.2, 0.5, 0.8])])
    curves = breslow_survival(risk_train, task.time[train], task.event[train], np.array([0.0, 800.0, -800.0]), times)
    assert np.isfinite(curves).all()
    np.testing.assert_allclose(curves[:, 0], 1.0)  # before the first event everyone survives
    np.testing.assert_allclose(curves[1, 1:], 0.0)  # the extreme risk: gone at the first event time
    np.testing.assert_allclose(curves[2], 1.0)


def test_diverged_survival_curves_leave_the_brier_score_undefined_with_a_reason(
        demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, labels = demo
    task = survival_task(labels)
    assert task.time is not None and task.event is not None
    train, test = _split(task, 10)
    curves = _km_curves(task.time[train], task.event[train], len(test))

    def diverged(times: np.ndarray) -> np.ndarray:
        out = np.array(curves(times), dtype=np.float64)
        out[0, :] = np.nan
        return out

    scores, why = fold_scores(task, train, test, np.zeros(len(test)), diverged)
    assert np.isnan(scores["integrated_brier"]) and "not finite for 1 of" in why["integrated_brier"]
    assert np.isfinite(scores["c_index"])


def test_discrete_time_curves_step_at_the_bin_edges() -> None:
    import torch

    head = DiscreteTimeHead(2, edges=[10.0, 20.0])
    out = torch.log(torch.tensor([[1.0, 1.0, 1.0]]))  # hazard 1/2 in each bin
    np.testing.assert_allclose(head.survival(out, np.array([0.0, 9.9, 10.0, 25.0])), [[1.0, 1.0, 0.5, 0.25]])


@pytest.mark.integration
def test_cli_reports_the_all_features_baseline_per_fold(embedded: Path, demo_cohort: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    args = ["finetune", "--embeddings", str(embedded), "--labels", str(demo_cohort / "labels.csv"), "--folds", "3",
            "--baseline-features", str(demo_cohort / "expression.csv"), "--out", str(out)]
    assert main([*args, "--task", "survival", "--l2", "auto"]) == 0
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"linear_probe", "pca16_cox", "linear_all_cox"}
    linear = result["methods"]["linear_all_cox"]
    assert linear["settings"]["l2"]["grid"] == list(L2_GRID) and linear["settings"]["n_features"] == 256
    assert linear["settings"]["features"] == "expression.csv"
    for name, method in result["methods"].items():
        assert [f["n_test"] for f in method["folds"]] == [f["n_test"] for f in linear["folds"]], name
        assert set(method["summary"]) == {"c_index", "uno_c", "integrated_brier"}
        for fold in method["folds"]:
            assert 0 <= fold["c_index"] <= 1 and 0 <= fold["uno_c"] <= 1 and 0 < fold["integrated_brier"] < 1
            if name != "pca16_cox":  # the inner CV of --l2 auto (probe) and of the baseline
                assert fold["fit"]["l2"] in L2_GRID and isinstance(fold["fit"]["l2_at_edge"], bool)
    printed = capsys.readouterr().out
    assert "linear_all_cox" in printed and "uno_c" in printed
    # Label fractions: the baseline is there too, its penalty per run.
    assert main([*args, "--task", "subtype", "--label-column", "subtype", "--label-fractions", "0.5,1",
                 "--baseline-l2", "0.01,1"]) == 0
    section = json.loads(out.read_text())["label_efficiency"]["methods"]
    assert set(section) == {"linear_probe", "pca16_logreg", "linear_all_logreg"}
    assert all(r["l2"] in (0.01, 1.0) for r in section["linear_all_logreg"]["0.5"]["runs"])
    assert main([*args, "--task", "subtype", "--label-column", "subtype", "--baseline-l2", "-1"]) == 2
    assert "--baseline-l2 '-1': penalties must be finite numbers >= 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.integration
def test_ridge_cox_on_all_blca_genes_with_inner_cv(shared_data: Path, tmp_path: Path) -> None:
    # The reference: a ridge Cox on all BLCA genes, penalty by inner CV, c-index 0.600 on PORPOISE's folds.
    table = shared_data / "tcga_porpoise" / "tcga_blca_all_clean.csv.zip"
    rows = pd.read_csv(table, usecols=["case_id", "survival_months", "censorship"]).drop_duplicates("case_id")
    pd.DataFrame({"case_id": rows["case_id"], "time": rows["survival_months"], "event": 1 - rows["censorship"]}
                 ).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "r.json"
    assert main(["finetune", "--labels", str(tmp_path / "labels.csv"), "--id-column", "case_id", "--task", "survival",
                 "--splits", str(shared_data / "tcga_porpoise" / "splits" / "5foldcv" / "tcga_blca"),
                 "--baseline-features", str(table), "--out", str(out)]) == 0
    linear = json.loads(out.read_text())["methods"]["linear_all_cox"]
    assert 0.55 < linear["summary"]["c_index"]["mean"] < 0.66
    assert 0.5 < linear["summary"]["uno_c"]["mean"] < 0.7 and linear["summary"]["integrated_brier"]["n_folds"] == 5

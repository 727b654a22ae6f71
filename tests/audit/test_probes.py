"""The grouped linear and kNN probes, their exact permutation p-values, and label cleaning.

Real data: scanpy's bundled ``pbmc68k_reduced`` (700 PBMC profiles; cell types in ``bulk_labels``).
"""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import NearestNeighbors

from biossl.audit import probes
from biossl.audit.probes import (
    KnnProbe,
    LinearProbe,
    ProbeCache,
    balanced_accuracy_many,
    critical_value,
    group_folds,
    neighbours,
    permutation_p,
    prepare_column,
    probe_column,
)
from biossl.errors import InputError


@pytest.fixture(scope="module")
def pbmc() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PCA(16) of 300 cells, cell type per cell, pseudo-donor of 3 cells per cell)."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    x = np.asarray(adata.X, dtype=np.float64)[:300]
    xc = x - x.mean(axis=0)
    emb = xc @ np.linalg.svd(xc, full_matrices=False)[2][:16].T
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()[:300]
    donor = np.arange(300) // 3
    return emb, labels, donor


def test_prepare_column_drops_missing_and_rare_classes_and_names_them(caplog: pytest.LogCaptureFixture) -> None:
    values = np.array(["a", "a", "b", "b", None, "c", "a", "b", "", "a"], dtype=object)
    groups = np.array(["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10"])
    with caplog.at_level(logging.WARNING):
        col = prepare_column(values, groups, column="site", min_groups=2)
    assert col.classes == ["a", "b"] and col.dropped_missing == 2 and col.dropped_classes == {"c": 1}
    assert col.rows.tolist() == [0, 1, 2, 3, 6, 7, 9]
    assert col.codes.tolist() == [0, 0, 1, 1, 0, 1, 0]
    assert "'c' (1)" in caplog.text and "2 of 10 rows have no value" in caplog.text
    assert col.summary()["classes"] == {"a": {"rows": 4, "groups": 4}, "b": {"rows": 3, "groups": 3}}


@pytest.mark.parametrize(("values", "message"), [
    (["a", "a", "a", "a"], "1 class(es) held by at least 2 patients"),
    ([None, None, None, None], "has no value on any of its 4 rows"),
    (["a", "b", "c", "d"], "0 class(es)"),
])
def test_prepare_column_refuses_columns_that_cannot_be_probed(values: list, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare_column(np.array(values, dtype=object), np.array(["p1", "p2", "p3", "p4"]), column="site", min_groups=2)


def test_a_nuisance_column_must_be_constant_within_a_patient_but_a_label_may_vary() -> None:
    values = np.array(["a", "b", "a", "b", "a", "b"], dtype=object)
    groups = np.array(["p1", "p1", "p2", "p2", "p3", "p3"])
    with pytest.raises(InputError, match="several values within one group"):
        prepare_column(values, groups, column="scanner", min_groups=2)
    col = prepare_column(values, groups, column="celltype", min_groups=2, allow_varying=True)
    assert col.varies_within_groups and col.permutation_units().tolist() == [0, 1, 2, 3, 4, 5]
    assert col.groups.tolist() == [0, 0, 1, 1, 2, 2]


def test_group_folds_keep_patients_whole_and_ignore_labels() -> None:
    groups = np.repeat(np.arange(12), 3)
    folds = group_folds(groups, 4, seed=3)
    for g in range(12):
        assert len(set(folds[groups == g])) == 1
    assert np.bincount(folds).tolist() == [9, 9, 9, 9]  # 3 patients per fold
    assert np.array_equal(folds, group_folds(groups, 4, seed=3))
    assert not np.array_equal(folds, group_folds(groups, 4, seed=4))
    with pytest.raises(InputError, match="3 patients for 5 folds"):
        group_folds(np.array([0, 1, 2]), 5, seed=0)


def test_balanced_accuracy_and_p_value_follow_their_definitions() -> None:
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, size=(4, 50)), rng.integers(0, 3, size=(4, 50))
    expected = [balanced_accuracy_score(a, b) for a, b in zip(y, pred)]
    assert np.allclose(balanced_accuracy_many(y, pred, 3), expected)
    assert permutation_p(0.7, np.array([0.5, 0.7, 0.8, 0.6])) == pytest.approx(3 / 5)
    assert permutation_p(0.9, np.zeros(199)) == pytest.approx(1 / 200)


def test_linear_probe_equals_a_ridge_fit_per_fold_for_observed_and_permuted_labels(
        pbmc: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    emb, labels, donor = pbmc
    col = prepare_column(labels, donor.astype(str), column="celltype", min_groups=5, allow_varying=True)
    x = emb[col.rows]
    probe = LinearProbe(x, col.groups, n_folds=5, seed=1, ridge=0.1)
    rng = np.random.default_rng(0)
    ys = np.stack([col.codes, rng.permutation(col.codes)])
    fast = probe.predict(ys, col.n_classes)
    for b, y in enumerate(ys):
        slow = np.empty(len(y), dtype=np.int64)
        for f in range(5):
            te, tr = probe.folds == f, probe.folds != f
            mu, sd = x[tr].mean(0), x[tr].std(0)
            onehot = np.eye(col.n_classes)[y[tr]]
            model = Ridge(alpha=0.1 * tr.sum()).fit((x[tr] - mu) / sd, onehot)
            freq = onehot.mean(0)
            posterior = model.predict((x[te] - mu) / sd)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(freq > 0, (posterior - freq) / freq, -np.inf)
            slow[te] = ratio.argmax(1)
        assert (fast[b] == slow).mean() > 0.995  # equal up to floating-point ties


def test_neighbours_come_from_other_patients_and_match_a_brute_force_search(
        pbmc: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    emb, _, donor = pbmc
    idx = neighbours(emb, donor, 10, block=64)
    assert idx.shape == (300, 10)
    assert not (donor[idx] == donor[:, None]).any()
    centred = emb - emb.mean(0)
    nn = NearestNeighbors(n_neighbors=13, metric="cosine").fit(centred)
    _, ref = nn.kneighbors(centred)
    for i in range(300):
        other = [j for j in ref[i] if donor[j] != donor[i]][:10]
        assert set(other[:8]) <= set(idx[i])  # the nearest agree (the last places may tie)


def test_knn_probe_votes_are_balanced_by_class_size_and_k_is_capped() -> None:
    rng = np.random.default_rng(0)
    probe = KnnProbe(rng.normal(size=(12, 3)), np.arange(12), k=15)
    assert probe.k == 5  # half of the 11 rows outside the largest group (one row)
    probe.idx, probe.k = np.tile([1, 2, 9], (12, 1)), 3  # hand-set neighbour lists: rows 1, 2, 9
    y = np.array([0] * 9 + [1] * 3)
    # Votes: class 0 twice (weight 1/9 each), class 1 once (weight 1/3): balanced voting picks class 1,
    # where a plain majority would pick class 0.
    assert probe.predict(y, 2)[0].tolist() == [1] * 12
    assert probe.predict(np.array([0] * 6 + [1] * 6), 2)[0].tolist() == [0] * 12  # 2/6 > 1/6


def test_a_real_biological_signal_is_found_and_a_permuted_one_is_not(
        pbmc: tuple[np.ndarray, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels, donor = pbmc
    col = prepare_column(labels, donor.astype(str), column="celltype", min_groups=5, allow_varying=True)
    res = probe_column(emb, col, n_permutations=99, seed=0)
    for r in res.values():
        assert r.balanced_accuracy > r.chance + 0.3 and r.p_value == pytest.approx(1 / 100)
        assert abs(r.null_mean - r.chance) < 0.05
    # The p-values do not depend on how permutations are chunked.
    monkeypatch.setattr(probes, "_CHUNK", 7)
    again = probe_column(emb, col, n_permutations=99, seed=0)
    assert {k: v.to_dict() for k, v in again.items()} == {k: v.to_dict() for k, v in res.items()}
    # Labels unrelated to the cells (pseudo-sites of whole donors): no signal.
    site = np.random.default_rng(1).permutation(100)[donor] % 3
    null = probe_column(emb, prepare_column(site, donor.astype(str), column="site", min_groups=5), n_permutations=99)
    for r in null.values():
        assert r.p_value > 0.05 and r.excess < 0.1  # (below chance happens: sd of a null BA here ~0.04)


def test_the_audit_builds_each_probe_once_per_row_subset_with_the_results_of_fresh_probes(
        pbmc: tuple[np.ndarray, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    from biossl.audit.run import audit_embeddings

    emb, labels, donor = pbmc
    rng = np.random.default_rng(2)
    site = (rng.permutation(100) % 3)[donor]
    scanner = (rng.permutation(100) % 2)[donor]
    batch = np.where(donor < 10, None, np.array(["b0", "b1"], dtype=object)[(rng.permutation(100) % 2)[donor]])
    obs = pd.DataFrame({"site": site.astype(str), "scanner": scanner.astype(str), "batch": batch,
                        "celltype": labels, "donor": donor.astype(str)}, index=[f"c{i}" for i in range(300)])
    adata = ad.AnnData(X=np.zeros((300, 1), dtype=np.float32), obs=obs)
    adata.obsm["X_fused"] = emb
    built = {"linear": 0, "knn": 0}
    for cls in (LinearProbe, KnnProbe):
        def counting(self: object, *args: object, _init: Any = cls.__init__, _name: str = cls.name,
                     **kwargs: object) -> None:
            built[_name] += 1
            _init(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__init__", counting)
    res = audit_embeddings(adata, ["site", "scanner", "batch"], label="celltype", group_column="donor",
                           n_permutations=49, seed=3)
    # site and scanner keep every row; batch drops the 30 cells of 10 donors; the cell type drops 2 rare
    # classes: 3 row subsets for 4 columns (the robustness index's neighbours of every row are site's).
    columns = {c: prepare_column(obs[c].to_numpy(), obs["donor"].to_numpy(), column=c, min_groups=5,
                                 allow_varying=c == "celltype") for c in ["site", "scanner", "batch", "celltype"]}
    assert len({tuple(c.rows) for c in columns.values()}) == 3
    assert columns["batch"].rows.tolist() == list(range(30, 300)) and len(columns["celltype"].rows) < 300
    assert built == {"linear": 3, "knn": 3}
    entries = res["keys"][0]["columns"]
    for name, col in columns.items():
        built = {"linear": 0, "knn": 0}
        fresh = probe_column(emb, col, n_permutations=49, seed=3)  # probes built for this column alone
        assert built == {"linear": 1, "knn": 1}
        for probe, result in fresh.items():
            assert {k: entries[name][probe][k] for k in result.to_dict()} == result.to_dict()
    assert "robustness" in res["keys"][0]["batch"]["site"]


def test_probe_cache_shares_probes_between_columns_with_the_same_rows(
        pbmc: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    emb, _, donor = pbmc
    groups = donor.astype(str)
    site = prepare_column(np.random.default_rng(0).permutation(100)[donor] % 3, groups, column="site", min_groups=5)
    scanner = prepare_column(np.random.default_rng(1).permutation(100)[donor] % 2, groups, column="scanner",
                             min_groups=5)
    values = (np.random.default_rng(2).permutation(100)[donor] % 2).astype(object)
    values[:6] = None
    batch = prepare_column(values, groups, column="batch", min_groups=5, log=False)
    cache = ProbeCache(emb, n_folds=5, k=10, seed=4)
    assert cache.probes(site)[0] is cache.probes(scanner)[0] and cache.probes(site)[1] is cache.probes(scanner)[1]
    assert cache.probes(batch)[0] is not cache.probes(site)[0]
    assert cache.built == {"linear": 2, "knn": 2}
    for col in (site, scanner, batch):
        cached = cache.probe_column(col, n_permutations=39)
        fresh = probe_column(emb, col, k=10, n_permutations=39, seed=4)
        assert {k: v.to_dict() for k, v in cached.items()} == {k: v.to_dict() for k, v in fresh.items()}
    assert cache.built == {"linear": 2, "knn": 2}


@pytest.mark.parametrize("b", [39, 40, 99, 199, 999])
def test_the_critical_value_is_the_smallest_significant_balanced_accuracy(b: int) -> None:
    """Every value above ``critical_value`` has ``p < level``; the critical value itself and below do not."""
    null = np.round(np.random.default_rng(b).beta(4, 8, size=b), 2)  # ties, as balanced accuracies have
    level = 0.025
    crit = critical_value(null, level)
    grid = np.round(np.linspace(0, 1, 101), 2)
    significant = [g for g in grid if permutation_p(g, null) < level]
    if b == 39:  # (1 + 0) / 40 = 0.025 is not below 0.025: nothing can be significant
        assert crit == float("inf") and not significant
        return
    assert permutation_p(crit, null) >= level and permutation_p(crit + 1e-9, null) < level
    assert min(significant) == pytest.approx(grid[grid > crit + 1e-12][0])


def test_the_excess_is_over_the_null_and_the_detectable_excess_over_its_mean(
        pbmc: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    emb, _, donor = pbmc
    site = np.random.default_rng(2).permutation(100)[donor] % 3
    col = prepare_column(site, donor.astype(str), column="site", min_groups=5)
    for r in probe_column(emb, col, n_permutations=199, seed=0).values():
        d = r.to_dict()
        assert d["excess"] == d["excess_over_null"] == pytest.approx(r.balanced_accuracy - r.null_mean)
        assert d["excess_over_chance"] == pytest.approx(r.balanced_accuracy - r.chance)
        assert d["min_detectable_excess"] == pytest.approx(r.null_critical - r.null_mean) and r.critical_level == 0.025
        assert 0 < d["min_detectable_excess"] < 0.2  # 100 donors, 3 sites

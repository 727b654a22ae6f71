"""DeepCluster: k-means against known clusters and a slow reference, empty clusters, the online loss."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from biossl.errors import InputError
from biossl.objectives.deepcluster import DeepCluster, kmeans

CENTRES = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])


def blobs(per: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    truth = torch.arange(3).repeat_interleave(per)
    return CENTRES[truth] + 0.5 * torch.randn(3 * per, 2, generator=g), truth


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if the labelings agree up to renaming the clusters."""
    return any(torch.equal(torch.tensor(p)[a], b) for p in itertools.permutations(range(3)))


def slow_lloyd(x: list[list[float]], centroids: list[list[float]], iters: int) -> list[list[float]]:
    """Plain Lloyd iterations (no empty cluster may occur for the data used)."""
    for _ in range(iters):
        groups: list[list[list[float]]] = [[] for _ in centroids]
        for p in x:
            d = [sum((pi - ci) ** 2 for pi, ci in zip(p, c)) for c in centroids]
            groups[d.index(min(d))].append(p)
        centroids = [[sum(col) / len(g) for col in zip(*g)] for g in groups]
    return centroids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_well_separated_clusters(seed: int) -> None:
    x, truth = blobs(seed=seed)
    centroids, labels, reseeded = kmeans(x, 3, seed=seed)
    assert same_partition(labels, truth)
    for c in range(3):
        assert torch.allclose(centroids[labels[truth == c][0]], x[truth == c].mean(0), atol=1e-5)
    again = kmeans(x, 3, seed=seed)
    assert torch.equal(again[0], centroids) and torch.equal(again[1], labels)  # seedable
    assert reseeded == 0


def test_kmeans_matches_slow_lloyd_from_given_start() -> None:
    x, _ = blobs(per=10)
    start = torch.tensor([[3.0, -1.0], [-1.0, 3.0], [-2.0, -2.0]])
    centroids, _, _ = kmeans(x, 3, iters=5, init=start)
    ref = torch.tensor(slow_lloyd(x.tolist(), start.tolist(), 5))
    assert torch.allclose(centroids, ref, atol=1e-5)
    noise = torch.randn(40, 3, generator=torch.Generator().manual_seed(5))  # no cluster structure
    for iters in (1, 2, 4):  # intermediate states too (no early stop within these)
        got, _, _ = kmeans(noise, 4, iters=iters, init=noise[:4])
        assert torch.allclose(got, torch.tensor(slow_lloyd(noise.tolist(), noise[:4].tolist(), iters)), atol=1e-5)


def test_kmeans_reseeds_an_empty_cluster() -> None:
    x, truth = blobs()
    # Centre 2 starts far from every point: empty after the first assignment, so it must be re-seeded.
    start = torch.tensor([[10.0, 0.0], [100.0, 100.0], [-10.0, -10.0]])
    centroids, labels, reseeded = kmeans(x, 3, init=start)
    assert reseeded >= 1
    assert torch.bincount(labels, minlength=3).min() > 0
    assert same_partition(labels, truth)
    assert torch.isfinite(centroids).all()


def test_kmeans_with_duplicate_points_and_bad_arguments() -> None:
    x = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    centroids, labels, _ = kmeans(x, 2, seed=4)
    assert torch.isfinite(centroids).all() and set(labels.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="1 <= k <= N"):
        kmeans(x, 11)


def test_online_loss_uses_nearest_centroid_labels_and_reinitialises_head() -> None:
    torch.manual_seed(0)
    x, truth = blobs(per=8)
    model = DeepCluster(2, n_clusters=3, memory_size=24, recluster_every=2, balance=False)
    y = x.clone().requires_grad_()
    zero = model(y[:2])  # memory holds 2 < 3 rows: no clustering yet
    assert zero.item() == 0.0 and model.n_clusterings == 0
    zero.backward()
    loss = model(y)  # memory now full enough: first clustering
    assert model.n_clusterings == 1
    z = F.normalize(x, dim=1)
    labels = torch.cdist(z, model.centroids).argmin(1)
    assert torch.allclose(loss, F.cross_entropy(model.head(x), labels))
    assert same_partition(labels, truth)
    head_before = model.head.weight.detach().clone()
    model(y)  # step 2: re-clusters, new head from the seeded generator
    assert model.n_clusterings == 2 and not torch.equal(head_before, model.head.weight)
    other = DeepCluster(2, n_clusters=3, memory_size=24, recluster_every=2, balance=False)
    other(y[:2]), other(y), other(y)
    assert torch.equal(other.head.weight, model.head.weight)  # same seed: same head on every rank


def test_balanced_weights_and_validation() -> None:
    x = torch.cat([blobs(per=4)[0], CENTRES[:1].repeat(12, 1)])  # cluster 0 three times larger
    model = DeepCluster(2, n_clusters=3, memory_size=24, recluster_every=5)
    loss = model(x)
    z = F.normalize(x, dim=1)
    labels = torch.cdist(z, model.centroids).argmin(1)
    counts = torch.bincount(labels, minlength=3).float()
    w = (1 / counts)[labels]
    ce = F.cross_entropy(model.head(x), labels, reduction="none")
    assert torch.allclose(loss, (ce * w).sum() / w.sum())
    for bad in ({"n_clusters": 0}, {"memory_size": 2}, {"recluster_every": 0}):
        with pytest.raises(InputError):
            DeepCluster(2, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        model(torch.randn(3, 5))

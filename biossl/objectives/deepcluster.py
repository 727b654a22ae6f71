"""DeepCluster: k-means pseudo-classes as classification targets (Caron et al. 2018).

Caron, Bojanowski, Joulin & Douze, "Deep Clustering for Unsupervised Learning of Visual Features",
ECCV 2018 (arXiv:1807.05520).

The paper clusters the features of the whole data set once per epoch and trains the network to
classify each image into its cluster, re-initialising the classifier after each re-clustering and
sampling clusters uniformly to avoid a degenerate solution. This online variant keeps a FIFO memory
of recent L2-normalised embeddings (the same on every rank: the memory is filled with the gathered
batch), runs k-means on it every ``recluster_every`` training steps, labels each batch row with its
nearest centroid, and weights the cross-entropy by the inverse cluster size in the memory (the
loss-side equivalent of uniform sampling over clusters).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from biossl.distributed import gather_no_grad, global_mean_value, is_distributed, world_size
from biossl.errors import InputError
from biossl.objectives import OBJECTIVES, VIEW_KINDS, ObjectiveInfo

logger = logging.getLogger(__name__)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with probability ~ D(x)^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen, device=gen.device))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        probs = d2 / total if total > 0 else torch.full_like(d2, 1.0 / n)  # all points coincide
        idx = int(torch.multinomial(probs, 1, generator=gen))
        centres.append(x[idx])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    return torch.stack(centres)


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd's k-means on ``x``'s device with k-means++ seeding and re-seeding of empty clusters.

    An empty cluster is re-seeded at the point farthest from its own centroid (which then leaves
    its old cluster), so every cluster ends non-empty whenever ``x`` holds ``k`` distinct points.

    Args:
        x: ``[N, D]`` points, ``N >= k``.
        k: Number of clusters.
        iters: Lloyd iterations (assignment + update); stops early once assignments are stable.
        seed: Seed of the k-means++ draws (same seed and data: same result).
        init: Optional ``[k, D]`` starting centroids instead of k-means++.

    Returns:
        ``(centroids [k, D], labels [N], n_reseeded)`` with ``n_reseeded`` the total number of
        empty clusters re-seeded over all iterations.

    Raises:
        ValueError: ``x`` is not 2-D, ``k`` is not in ``[1, N]`` or ``init`` has the wrong shape.
    """
    if x.ndim != 2 or not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans needs [N, D] points with 1 <= k <= N; got shape {tuple(x.shape)}, k={k}")
    x = x.float()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    if init is not None:
        if init.shape != (k, x.shape[1]):
            raise ValueError(f"kmeans init must be [{k}, {x.shape[1]}]; got {tuple(init.shape)}")
        centroids = init.to(x).clone()
    else:
        centroids = _kmeans_pp(x, k, gen)
    labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    n_reseeded = 0
    for _ in range(iters):
        dist_ = torch.cdist(x, centroids)
        new_labels = dist_.argmin(dim=1)
        counts = torch.bincount(new_labels, minlength=k)
        for empty in (counts == 0).nonzero().flatten().tolist():
            own = dist_[torch.arange(x.shape[0], device=x.device), new_labels]
            own[counts[new_labels] <= 1] = -1.0  # never empty another cluster
            far = int(own.argmax())
            counts[new_labels[far]] -= 1
            new_labels[far] = empty
            counts[empty] = 1
            n_reseeded += 1
        sums = torch.zeros_like(centroids).index_add_(0, new_labels, x)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centroids, labels, n_reseeded


@OBJECTIVES.register("deepcluster")
class DeepCluster(nn.Module):
    """DeepCluster loss: cross-entropy of a linear head against k-means pseudo-labels.

    Call contract (the caller owns the encoder)::

        loss = deepcluster(encoder(x))       # [B, dim]; training mode stores and re-clusters
        loss.backward(); optimizer.step()

    Until the first clustering (the memory needs ``n_clusters`` rows) the loss is an exact 0 that
    is still connected to the graph. After each re-clustering the classifier is re-initialised from
    a generator seeded by ``seed`` and the clustering count (so every rank gets the same weights);
    an optimiser with momentum keeps its old state for it, as in the paper's reference code.

    Args:
        dim: Width of the encoder embeddings.
        n_clusters: Number of k-means clusters (paper: 10000 on ImageNet; choose well below
            ``memory_size``).
        memory_size: Embeddings kept for clustering.
        recluster_every: Training steps between clusterings.
        kmeans_iters: Lloyd iterations per clustering.
        balance: Weight rows by the inverse size of their cluster in the memory.
        seed: Seed for k-means++ and the classifier re-initialisation.

    Attributes:
        centroids: ``[n_clusters, dim]`` current centroids (zeros before the first clustering).
        n_clusterings: Clusterings run so far.
        diagnostics: Detached ``"deepcluster/acc"`` (head accuracy on the pseudo-labels) and
            ``"deepcluster/n_reseeded"`` (empty clusters re-seeded in the last clustering).

    Raises:
        InputError: An argument is not positive, or ``memory_size < n_clusters``.
    """

    info = ObjectiveInfo("one_view", kinds=VIEW_KINDS, paper="Caron et al. 2018, DeepCluster", dim_option="dim")

    memory: torch.Tensor
    memory_filled: torch.Tensor
    centroids: torch.Tensor
    cluster_weight: torch.Tensor
    step: torch.Tensor

    def __init__(
        self,
        dim: int,
        *,
        n_clusters: int = 100,
        memory_size: int = 4096,
        recluster_every: int = 100,
        kmeans_iters: int = 20,
        balance: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if min(dim, n_clusters, memory_size, recluster_every, kmeans_iters) < 1 or memory_size < n_clusters:
            raise InputError(
                f"deepcluster needs positive dim, n_clusters, memory_size, recluster_every and kmeans_iters, "
                f"with memory_size >= n_clusters; got dim={dim}, n_clusters={n_clusters}, memory_size={memory_size}, "
                f"recluster_every={recluster_every}, kmeans_iters={kmeans_iters}"
            )
        self.dim, self.n_clusters, self.recluster_every = dim, n_clusters, recluster_every
        self.kmeans_iters, self.balance, self.seed = kmeans_iters, balance, seed
        self.head = nn.Linear(dim, n_clusters)
        self.register_buffer("memory", torch.zeros(memory_size, dim))
        self.register_buffer("memory_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(n_clusters, dim))
        self.register_buffer("cluster_weight", torch.ones(n_clusters))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.n_clusterings = 0
        self.diagnostics: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _store(self, z: torch.Tensor) -> None:
        size = self.memory.shape[0]
        new = z.to(self.memory.dtype)[-size:]
        self.memory.copy_(torch.cat([new, self.memory[: size - new.shape[0]]]))
        self.memory_filled.fill_(min(size, int(self.memory_filled) + z.shape[0]))

    @torch.no_grad()
    def recluster(self) -> None:
        """Run k-means on the filled memory, refresh the cluster weights and re-initialise the head."""
        data = self.memory[: int(self.memory_filled)]
        centroids, labels, reseeded = kmeans(
            data, self.n_clusters, iters=self.kmeans_iters, seed=self.seed + self.n_clusterings
        )
        if is_distributed():  # k-means is deterministic, but make bitwise sure every rank agrees
            dist.broadcast(centroids, src=0)
            labels = torch.cdist(data, centroids).argmin(dim=1)
        counts = torch.bincount(labels, minlength=self.n_clusters).to(self.cluster_weight.dtype)
        weight = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), torch.zeros_like(counts))
        self.cluster_weight.copy_(weight * self.n_clusters / weight.sum())
        self.centroids.copy_(centroids)
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 7919 * (self.n_clusterings + 1))
        fresh = nn.Linear(self.dim, self.n_clusters)
        nn.init.kaiming_uniform_(fresh.weight, a=5**0.5, generator=gen)
        bound = 1.0 / self.dim**0.5
        fresh.bias.uniform_(-bound, bound, generator=gen)
        self.head.weight.copy_(fresh.weight)
        self.head.bias.copy_(fresh.bias)
        self.n_clusterings += 1
        self.diagnostics["deepcluster/n_reseeded"] = torch.tensor(float(reseeded))
        logger.debug(
            "deepcluster: clustering %d on %d embeddings, %d re-seeded", self.n_clusterings, len(data), reseeded
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Return the (balanced) cross-entropy against the pseudo-labels (a scalar, global-batch value).

        Args:
            y: ``[B, dim]`` encoder embeddings.

        Raises:
            ValueError: ``y`` is not ``[B, dim]``.
        """
        if y.ndim != 2 or y.shape[1] != self.dim:
            raise ValueError(f"deepcluster needs [B, {self.dim}] embeddings; got {tuple(y.shape)}")
        z = F.normalize(y.detach().float(), dim=1)
        if self.training:
            self._store(gather_no_grad(z))
            if int(self.step) % self.recluster_every == 0 and int(self.memory_filled) >= self.n_clusters:
                self.recluster()
            elif self.n_clusterings == 0 and int(self.memory_filled) >= self.n_clusters:
                self.recluster()  # first clustering as soon as the memory allows it
            self.step += 1
        logits = self.head(y)
        if self.n_clusterings == 0:
            return logits[:0].sum() + y[:0].sum()
        labels = torch.cdist(z, self.centroids.float()).argmin(dim=1)
        weights = self.cluster_weight if self.balance else torch.ones_like(self.cluster_weight)
        row_w = weights[labels].to(logits.dtype)
        per_row = F.cross_entropy(logits, labels, reduction="none") * row_w
        total_w = gather_no_grad(row_w.detach()).sum()
        with torch.no_grad():
            self.diagnostics["deepcluster/acc"] = (logits.argmax(1) == labels).float().mean()
        return global_mean_value(per_row.sum() * (world_size() / total_w.clamp_min(1e-12)))

"""Rotation and jigsaw pretext tasks: exact transforms against slow references, and a real-data run."""

from __future__ import annotations

import itertools
import math

import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch import nn

from biossl.errors import InputError
from biossl.objectives import OBJECTIVES
from biossl.objectives.pretext import (
    JigsawPuzzle,
    RotationPrediction,
    hamming_permutations,
    rotate,
    rotation_set,
    shuffle_pieces,
)


def arange_like(*shape: int) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)  # every pixel distinct


def test_2d_rotation_by_slow_reference_and_four_quarter_turns_are_identity() -> None:
    x = arange_like(2, 3, 5, 5)
    once = rotate(x, 1, 2)
    for i, j in itertools.product(range(5), range(5)):  # 90 degrees counter-clockwise
        assert torch.equal(once[..., i, j], x[..., j, 4 - i])
    turned = x
    for _ in range(4):
        turned = rotate(turned, 1, 2)
    assert torch.equal(turned, x)
    assert torch.equal(rotate(x, 2, 2), rotate(once, 1, 2)) and torch.equal(rotate(x, 0, 2), x)


def test_3d_rotation_set_has_ten_distinct_proper_rotations() -> None:
    assert len(rotation_set(3)) == 10
    cube = arange_like(1, 1, 3, 3, 3)
    results = [rotate(cube, i, 3) for i in range(10)]
    assert len({tuple(r.flatten().tolist()) for r in results}) == 10  # no duplicates
    for i in range(1, 10):
        k, plane = rotation_set(3)[i]
        turned = cube
        for _ in range(4):  # a quarter turn about the same axis, four times: identity
            turned = torch.rot90(turned, 1, dims=plane)
        assert torch.equal(turned, cube)
    with pytest.raises(ValueError, match="2 or 3"):
        rotation_set(4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_rotation_inputs_and_labels_agree(spatial_dims: int) -> None:
    x = arange_like(3, 1, *([4] * spatial_dims))
    every = RotationPrediction(8, spatial_dims=spatial_dims)
    inputs, labels = every.make_inputs(x)
    assert inputs.shape[0] == 3 * every.n_classes
    for row in range(inputs.shape[0]):
        assert torch.equal(inputs[row], rotate(x[row % 3 : row % 3 + 1], int(labels[row]), spatial_dims)[0])
    one = RotationPrediction(8, spatial_dims=spatial_dims, all_rotations=False)
    inputs, labels = one.make_inputs(x)
    for row in range(3):
        assert torch.equal(inputs[row], rotate(x[row : row + 1], int(labels[row]), spatial_dims)[0])
    with pytest.raises(ValueError, match="square"):
        every.make_inputs(arange_like(1, 1, *([4] * (spatial_dims - 1)), 6))
    with pytest.raises(InputError):
        RotationPrediction(8, spatial_dims=1)


def slow_greedy(n: int, count: int, first: int) -> list[tuple[int, ...]]:
    every = list(itertools.permutations(range(n)))
    chosen = [every[first]]
    while len(chosen) < count:
        dists = [min(sum(a != b for a, b in zip(p, c)) for c in chosen) for p in every]
        chosen.append(every[dists.index(max(dists))])
    return chosen


@pytest.mark.parametrize(("n", "count"), [(4, 24), (4, 10), (5, 30)])
def test_hamming_permutations_match_slow_greedy(n: int, count: int) -> None:
    perms, min_d = hamming_permutations(n, count, seed=3)
    first = list(itertools.permutations(range(n))).index(tuple(perms[0].tolist()))
    assert [tuple(p) for p in perms.tolist()] == slow_greedy(n, count, first)
    assert len({tuple(p) for p in perms.tolist()}) == count
    brute = min(sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(perms.tolist(), 2))
    assert min_d == brute
    assert torch.equal(hamming_permutations(n, count, seed=3)[0], perms)  # deterministic


def test_jigsaw_default_sets_and_min_distance() -> None:
    assert JigsawPuzzle(4, grid=2).min_hamming == 2  # all 24 permutations of 4 pieces
    nine = JigsawPuzzle(4, grid=3)
    assert nine.perms.shape == (100, 9) and nine.min_hamming >= 6
    assert JigsawPuzzle(4, spatial_dims=3, grid=2).perms.shape == (100, 8)
    for bad in ({"grid": 4}, {"spatial_dims": 3, "grid": 3}, {"n_perms": 1}, {"grid": 2, "n_perms": 25}):
        with pytest.raises(InputError):
            JigsawPuzzle(4, **bad)


def slow_shuffle_2d(x: torch.Tensor, perm: list[int], grid: int) -> torch.Tensor:
    out = x.clone()
    ph, pw = x.shape[-2] // grid, x.shape[-1] // grid
    for cell, src in enumerate(perm):
        r, c = divmod(cell, grid)
        sr, sc = divmod(src, grid)
        src_cell = x[..., sr * ph : (sr + 1) * ph, sc * pw : (sc + 1) * pw]
        out[..., r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = src_cell
    return out


def test_shuffle_matches_slow_reference_and_unshuffle_is_identity() -> None:
    x = arange_like(2, 3, 20, 23)  # not multiples of 3: the last rows/columns stay in place
    perms = hamming_permutations(9, 5)[0][[1, 4]]
    shuffled = shuffle_pieces(x, perms, 3)
    for n in range(2):
        assert torch.equal(shuffled[n], slow_shuffle_2d(x[n], perms[n].tolist(), 3))
    assert not torch.equal(shuffled, x)
    assert torch.equal(shuffled[..., 18:, :], x[..., 18:, :]) and torch.equal(shuffled[..., 21:], x[..., 21:])
    assert torch.equal(shuffle_pieces(shuffled, perms, 3, inverse=True), x)
    cube = arange_like(3, 1, 4, 6, 5)
    p3 = hamming_permutations(8, 3)[0]
    shuffled3 = shuffle_pieces(cube, p3, 2)
    assert torch.equal(shuffled3[1, :, :2, 3:6, :2], cube[1, :, :2, 3:6, :2]) is (p3[1, 2].item() == 2)
    assert torch.equal(shuffle_pieces(shuffled3, p3, 2, inverse=True), cube)


def test_jigsaw_inputs_labels_gap_and_loss() -> None:
    jig = JigsawPuzzle(6, grid=2, gap=1)
    x = arange_like(4, 1, 8, 8) + 1
    inputs, labels = jig.make_inputs(x)
    for n in range(4):
        want = shuffle_pieces(x[n : n + 1], jig.perms[labels[n : n + 1]], 2)[0]
        want[:, [3, 7], :] = 0
        want[:, :, [3, 7]] = 0
        assert torch.equal(inputs[n], want)
    embed = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    loss = jig(x, embed)
    loss.backward()
    assert loss.ndim == 0 and jig.head.weight.grad is not None and 0 <= jig.diagnostics["jigsaw/acc"] <= 1
    assert isinstance(OBJECTIVES.build("jigsaw", dim=6, grid=2), JigsawPuzzle)


def ihc_crops(region: torch.Tensor, n: int, gen: torch.Generator, size: int = 32) -> torch.Tensor:
    ys = torch.randint(0, region.shape[1] - size + 1, (n,), generator=gen).tolist()
    xs = torch.randint(0, region.shape[2] - size + 1, (n,), generator=gen).tolist()
    return torch.stack([region[:, y : y + size, x : x + size] for y, x in zip(ys, xs)])


def test_rotation_pretext_learns_above_chance_on_real_ihc_tiles() -> None:
    """Tiny CNN on 32 px crops of skimage's real IHC image; held-out crops from a disjoint region."""
    torch.manual_seed(0)
    rgb = torch.from_numpy(skimage.data.immunohistochemistry()).permute(2, 0, 1).float() / 255
    image = F.avg_pool2d(rgb[None], 2)[0]  # 256 x 256
    image = (image - image.mean((1, 2), keepdim=True)) / image.std((1, 2), keepdim=True)
    train_region, test_region = image[:, :, :166], image[:, :, 166:]
    encoder = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU()
    )
    task = RotationPrediction(16 * 8 * 8)
    embed = nn.Sequential(encoder, nn.Flatten())
    held_out = ihc_crops(test_region, 128, torch.Generator().manual_seed(1))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead on a busy machine
    try:
        before, after = _train(task, embed, train_region, held_out)
    finally:
        torch.set_num_threads(threads)
    # Chance is 0.25; 512 held-out predictions give a binomial s.d. of 0.019. Seeds 0-3 reach 0.42-0.54.
    assert after > 0.35 and after > before + 0.08, (before, after)


def _train(
    task: RotationPrediction, embed: nn.Module, train_region: torch.Tensor, held_out: torch.Tensor
) -> tuple[float, float]:
    def accuracy() -> float:
        task.eval()
        with torch.no_grad():
            task(held_out, embed)
        task.train()
        return float(task.diagnostics["rotation/acc"])

    before = accuracy()
    opt = torch.optim.Adam([*embed.parameters(), *task.parameters()], lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(250):
        loss = task(ihc_crops(train_region, 16, gen), embed)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, accuracy()

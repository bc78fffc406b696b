"""Subdomain grids: partition of unity and point-to-subdomain lookup."""

import math

import pytest
import torch

from fbpinn.decomposition import Level
from fbpinn.domains import Box
from fbpinn.registry import names

CASES = [
    (Box([0.0], [1.0]), [7], 2.99),
    (Box([-1.0], [2.0]), [3], 1.3),
    (Box([0.0, -1.0], [1.0, 1.0]), [4, 3], 1.9),
    (Box([0.0, 0.0], [2.0, 1.0]), [1, 5], 2.5),
    (Box([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]), [3, 2, 4], 1.5),
]


def random_points(box, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(box.lo, dtype=torch.float64), torch.tensor(box.hi, dtype=torch.float64)
    x = lo + (hi - lo) * torch.rand(n, box.dim, generator=g, dtype=torch.float64)
    return torch.cat([x, lo[None], hi[None]])  # include the corners


@pytest.mark.parametrize("window", names("window"))
@pytest.mark.parametrize("box,shape,overlap", CASES)
def test_partition_of_unity(box, shape, overlap, window):
    level = Level(box, shape, overlap, window)
    x = random_points(box, 500)
    orders = [()] + [(d,) for d in range(box.dim)] + [(d, d) for d in range(box.dim)]
    point, sub, win = level.pairs(x, orders)
    sums = torch.zeros(len(orders), x.shape[0], dtype=torch.float64).index_add(1, point, win)
    assert torch.allclose(sums[0], torch.ones_like(sums[0]), atol=1e-13)
    # The derivatives of a constant sum vanish.
    assert sums[1:].abs().max() < 1e-9
    assert (win[0] >= 0).all()


@pytest.mark.parametrize("box,shape,overlap", CASES)
def test_lookup_matches_brute_force(box, shape, overlap):
    level = Level(box, shape, overlap)
    x = random_points(box, 400, seed=1)
    point, sub, _ = level.pairs(x, [()])
    found = set(zip(point.tolist(), sub.tolist()))
    centres, half = level.centres(), level.half_widths()
    per_axis = (x[:, None, :] - centres[None]).abs() < half[None]  # (N, J, d), brute force
    per_axis[:, :, [n == 1 for n in shape]] = True  # a single subdomain along an axis spans it whole
    expected = set(map(tuple, per_axis.all(-1).nonzero().tolist()))
    assert found == expected
    # Every point is covered, and no pair is listed twice.
    assert set(point.tolist()) == set(range(x.shape[0]))
    assert len(found) == len(point)


def test_centres_and_widths():
    level = Level(Box([0.0], [1.0]), [5], 2.99)
    assert torch.allclose(level.centres()[:, 0], torch.linspace(0, 1, 5, dtype=torch.float64))
    assert math.isclose(level.half_widths()[0, 0].item(), 0.5 * 2.99 * 0.25)
    single = Level(Box([-1.0, 0.0], [1.0, 4.0]), [1, 1], 1.0)
    assert single.centres().tolist() == [[0.0, 2.0]]
    assert single.half_widths().tolist() == [[1.0, 2.0]]


def test_lookup_cost_is_local():
    # With 200 subdomains each point has at most ceil(overlap)+1 candidates, not 200.
    level = Level(Box([0.0], [1.0]), [200], 2.99)
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)[:, None]
    point, _, _ = level.pairs(x, [()])
    assert torch.bincount(point).max() <= 3
    assert level.axes[0].n_candidates <= 4


def test_window_support():
    for name in names("window"):
        level = Level(Box([0.0], [1.0]), [3], 1.5, name)
        z = torch.tensor([-1.5, -1.0, 1.0, 1.2], dtype=torch.float64)
        phi, d1, d2 = level.window(z)
        assert (phi == 0).all() and (d1 == 0).all() and (d2 == 0).all()

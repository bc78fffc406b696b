"""Checks of the Cole–Hopf reference solution of viscous Burgers."""

import math

import numpy as np
import pytest

from fbpinn.reference.burgers import _default_nodes, solution

NU = 0.01 / math.pi


def _grid():
    x = np.linspace(-1.0, 1.0, 256)
    t = np.linspace(0.0, 1.0, 100)
    return np.meshgrid(x, t, indexing="ij")


def _ux0(t, h=1e-6):
    """u_x(0, t) by a central difference."""
    return (solution(h, t) - solution(-h, t)) / (2.0 * h)


def test_initial_condition_and_small_times():
    x = np.linspace(-1.0, 1.0, 201)
    np.testing.assert_array_equal(solution(x, 0.0), -np.sin(np.pi * x))
    # u - u0 = t u_t + O(t^2), |u_t| <= pi / 2 + nu pi^2
    for t, tol in [(1e-12, 1e-11), (1e-8, 2e-8), (1e-5, 2e-5)]:
        err = np.abs(solution(x, t) + np.sin(np.pi * x)).max()
        assert err <= tol, (t, err)
    # a mixed array keeps t = 0 exact
    u = solution(x, np.where(x > 0, 0.0, 0.5))
    np.testing.assert_array_equal(u[x > 0], -np.sin(np.pi * x[x > 0]))


def test_shapes_and_validation():
    assert solution(0.3, 0.2).shape == ()
    assert solution(np.zeros((3, 1)), np.linspace(0, 1, 4)).shape == (3, 4)
    assert solution(np.zeros(5), 0.5).dtype == np.float64
    with pytest.raises(ValueError):
        solution(0.0, -0.1)


def test_boundary_values():
    t = np.array([1e-3, 0.1, 0.3, 0.5, 0.8, 1.0, 2.0])
    for side in (-1.0, 1.0):
        assert np.abs(solution(side, t)).max() <= 1e-10


def test_odd_in_x():
    x, t = _grid()
    u, v = solution(x, t), solution(-x, t)
    assert np.abs(u + v).max() <= 1e-12


def test_pde_residual_away_from_shock():
    x = np.concatenate([np.linspace(-0.95, -0.25, 15), np.linspace(0.25, 0.95, 15)])
    x, t = np.meshgrid(x, np.linspace(0.05, 0.95, 10), indexing="ij")
    h = k = 1e-4
    u = solution(x, t)
    ux = (solution(x + h, t) - solution(x - h, t)) / (2 * h)
    uxx = (solution(x + h, t) - 2 * u + solution(x - h, t)) / h**2
    ut = (solution(x, t + k) - solution(x, t - k)) / (2 * k)
    terms = np.stack([np.abs(ut), np.abs(u * ux), np.abs(NU * uxx)]).max(axis=0)
    rel = np.abs(ut + u * ux - NU * uxx) / terms
    assert rel.max() <= 1e-5, rel.max()


def test_quadrature_converged():
    x, t = _grid()
    # add a fine band across the shock at x = 0
    xs, ts = np.meshgrid(np.linspace(-0.02, 0.02, 81), np.linspace(0.3, 1.0, 15), indexing="ij")
    x, t = np.concatenate([x.ravel(), xs.ravel()]), np.concatenate([t.ravel(), ts.ravel()])
    n = _default_nodes(NU, 1.0)
    u = solution(x, t)
    assert np.abs(u - solution(x, t, nodes=n)).max() == 0.0
    assert np.abs(u - solution(x, t, nodes=2 * n)).max() <= 1e-10
    assert np.abs(u - solution(x, t, nodes=4 * n)).max() <= 1e-10


def test_basdevant_steepest_gradient():
    # Basdevant et al. (1986): max_t |u_x(0, t)| = 152.00516 at t = 1.6037 / pi
    t_star = 1.6037 / math.pi
    peak = abs(_ux0(t_star))
    assert peak == pytest.approx(152.00516, rel=1e-6)
    for dt in (0.002, 0.01, 0.05):
        assert abs(_ux0(t_star - dt)) < peak
        assert abs(_ux0(t_star + dt)) < peak

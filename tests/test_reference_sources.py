"""Forced waves: the Ricker point source of fbpinn.sources through the FD reference solver.

Refinement in a smooth variable medium, and comparison with exact solutions for
constant speed: the 1-D Duhamel-d'Alembert integral (fbpinn.sources.exact_1d, also
with fixed ends by images) and the 2-D Hankel-transform integral.
"""

import math

import numpy as np
import pytest
import torch

from fbpinn import sources
from fbpinn.reference import wave
from fbpinn.sources import exact_1d, gaussian, imaged_profile, point_source, ricker

X1 = np.linspace(-1.0, 1.0, 41)
T1 = np.linspace(0.0, 1.2, 13)
X2 = np.linspace(-0.6, 0.6, 13)


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def successive_orders(solutions):
    """log2 of the ratios of successive max differences of solutions on halving grids."""
    d = [np.abs(a - b).max() for a, b in zip(solutions, solutions[1:])]
    return [math.log2(a / b) for a, b in zip(d, d[1:])]


def test_ricker_and_gaussian_formulas_on_numpy_and_torch():
    assert ricker(0.4, 3.0, 0.4) == 1.0
    a = (math.pi * 3.0 * 0.1) ** 2
    assert ricker(0.5, 3.0, 0.4) == pytest.approx((1 - 2 * a) * math.exp(-a), rel=1e-14)
    # the wavelet's zeros at t0 ± 1/(π f √2) and a quiet start for t0 = 1.2/f
    assert abs(ricker(0.4 + 1 / (math.pi * 3.0 * math.sqrt(2)), 3.0, 0.4)) < 1e-15
    assert 1.8e-5 < abs(ricker(0.0, 3.0, 1.2 / 3.0)) < 1.9e-5 and abs(ricker(0.0, 3.0, 1.5 / 3.0)) < 1.2e-8
    # unit integrals in 1-D and 2-D
    x = np.linspace(-1.0, 1.0, 2001)
    assert np.trapezoid(gaussian(x - 0.1, width=0.07), x) == pytest.approx(1.0, abs=1e-12)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    g2 = gaussian(xx + 0.2, yy - 0.1, width=0.05)
    assert np.trapezoid(np.trapezoid(g2, x), x) == pytest.approx(1.0, abs=1e-10)
    assert g2.max() == pytest.approx(1 / (2 * math.pi * 0.05**2), rel=1e-12)
    # one source, numpy and torch alike
    s = point_source((0.1, -0.2), frequency=2.0, delay=0.5, width=0.1, amplitude=3.0)
    pts = np.array([[0.1, -0.2], [0.3, 0.0], [-0.4, 0.25]])
    tv = np.array([0.5, 0.6, 0.2])
    ref = 3.0 * ricker(tv, 2.0, 0.5) * np.exp(-((pts[:, 0] - 0.1) ** 2 + (pts[:, 1] + 0.2) ** 2) / 0.02) / (
        2 * math.pi * 0.01)
    assert np.allclose(s(pts[:, 0], pts[:, 1], tv), ref, rtol=1e-13, atol=0)
    got = s(*(torch.tensor(v, dtype=torch.float64) for v in (pts[:, 0], pts[:, 1], tv)))
    assert isinstance(got, torch.Tensor) and np.allclose(got.numpy(), ref, rtol=1e-13, atol=0)
    assert s.describe()["position"] == [0.1, -0.2]
    with pytest.raises(ValueError, match="width must be positive"):
        point_source(0.0, frequency=2.0, delay=0.5, width=0.0)
    with pytest.raises(ValueError, match="needs 2 coordinates"):
        s.profile(pts[:, 0])


def test_unforced_default_and_quiet_start():
    speed = lambda x: 1.0 + 0.3 * np.exp(-((x - 0.3) ** 2) / 0.1)  # noqa: E731
    pulse = lambda x: np.exp(-(x / 0.15) ** 2)  # noqa: E731
    base = wave.solve([X1], T1, speed, pulse, max_h=0.02)
    assert np.array_equal(wave.solve([X1], T1, speed, pulse, max_h=0.02, forcing=None), base)
    assert not np.any(wave.solve([X1], T1, speed, None, max_h=0.02))  # nothing moves
    # the separable and the general forms agree; the forcing adds to the initial data
    s = point_source(-0.2, frequency=3.0, delay=0.4, width=0.08)
    sep = wave.solve([X1], T1, speed, None, max_h=0.02, forcing=s)
    assert np.abs(sep).max() > 5e-3
    assert np.array_equal(wave.solve([X1], T1, speed, None, max_h=0.02, forcing=(s.profile, s.wavelet)), sep)
    assert np.allclose(wave.solve([X1], T1, speed, None, max_h=0.02, forcing=s.__call__), sep, rtol=0, atol=1e-15)
    both = wave.solve([X1], T1, speed, pulse, max_h=0.02, forcing=s)
    assert np.abs(both - base - sep).max() < 1e-13  # linearity, to rounding
    with pytest.raises(ValueError, match="forcing must be None"):
        wave.solve([X1], T1, speed, None, max_h=0.02, forcing=3.0)
    with pytest.raises(ValueError, match="wavelet is nan"):
        wave.solve([X1], T1, speed, None, max_h=0.02, forcing=(s.profile, lambda t: float("nan")))


def test_cached_solve_with_a_source(tmp_path):
    s = point_source(0.2, frequency=3.0, delay=0.4, width=0.08)
    key = {"velocity": 1.2, "source": s.describe()}
    u = wave.cached_solve(key, tmp_path, [X1], T1, lambda x: 1.2, None, max_h=0.02, forcing=s)
    assert np.array_equal(u, wave.solve([X1], T1, lambda x: 1.2, None, max_h=0.02, forcing=s))
    # a forced run never shares a file with an unforced one under the same key
    forced, _ = wave.cache_path(key, tmp_path, [X1], T1, max_h=0.02, forced=True)
    plain, _ = wave.cache_path(key, tmp_path, [X1], T1, max_h=0.02)
    assert forced.exists() and not plain.exists()
    again = wave.cached_solve(key, tmp_path, [X1], T1, lambda x: 1.2, None, max_h=0.02,
                              forcing=(s.profile, lambda t: 1 / 0))  # read back, never evaluated
    assert np.array_equal(again, u)


def test_observed_order_in_a_variable_medium_1d():
    # c = 1 + 0.3 exp(-(x-0.3)^2/0.1), Courant number 0.52 at c_max = 1.3, h = 0.0125 / 2^i
    # (dt = 0.005 / 2^i), i = 0..3.  Measured: differences 2.44e-5, 6.42e-6, 1.62e-6
    # (max|u| = 0.0146), orders 1.93 and 1.98 (1.48 and 1.80 on two coarser grids, h = 0.05, 0.025)
    s = point_source(-0.2, frequency=3.0, delay=0.4, width=0.08)
    speed = lambda x: 1.0 + 0.3 * np.exp(-((x - 0.3) ** 2) / 0.1)  # noqa: E731
    us = [wave.solve([X1], T1, speed, None, max_h=0.05 / r, courant=0.52, c_max=1.3, forcing=s)
          for r in (4, 8, 16, 32)]
    assert wave.plan([X1], T1, speed, max_h=0.05 / 4, courant=0.52, c_max=1.3).dt == pytest.approx(0.005)
    orders = successive_orders(us)
    assert min(orders) >= 1.8 and max(orders) <= 2.3
    assert np.abs(us[-1] - us[-2]).max() < 2.5e-6 and np.abs(us[-1]).max() > 0.014


def test_observed_order_in_a_variable_medium_2d():
    # c = 1 + 0.3 exp(-((x-0.3)^2+y^2)/0.1), Courant 0.52 at c_max = 1.3, h = 0.025, 0.0125,
    # 0.00625.  Measured: differences 1.94e-4, 4.55e-5 (max|u| = 0.090), order 2.09
    s = point_source((-0.2, 0.1), frequency=3.0, delay=0.4, width=0.08)
    speed = lambda x, y: 1.0 + 0.3 * np.exp(-((x - 0.3) ** 2 + y**2) / 0.1)  # noqa: E731
    times = np.linspace(0.0, 1.0, 11)
    us = [wave.solve([X2, X2], times, speed, None, max_h=0.1 / r, courant=0.52, c_max=1.3, forcing=s)
          for r in (4, 8, 16)]
    (order,) = successive_orders(us)
    assert 1.8 <= order <= 2.3
    assert np.abs(us[2] - us[1]).max() < 6e-5 and np.abs(us[2]).max() > 0.08


def test_exact_1d_against_fd_unbounded():
    # c = 1.5, the pulse leaves [-1, 1] by t = 1.2.  Measured relative max errors
    # (Courant 0.25): 4.2e-4 at max_h = 0.01, 1.09e-4 at 0.005, 2.7e-5 at 0.0025
    s = point_source(0.1, frequency=3.0, delay=0.4, width=0.08)
    exact = exact_1d(*np.meshgrid(X1, T1, indexing="ij"), 1.5, s)
    assert 0.0115 < np.abs(exact).max() < 0.0120
    assert np.abs(exact - exact_1d(*np.meshgrid(X1, T1, indexing="ij"), 1.5, s, nodes=400)).max() < 1e-15
    errs = [rel_err(wave.solve([X1], T1, lambda x: 1.5, None, max_h=h, courant=0.25, forcing=s), exact)
            for h in (0.01, 0.005, 0.0025)]
    assert errs[2] < 4e-5 and min(math.log2(a / b) for a, b in zip(errs, errs[1:])) >= 1.9
    # a source already on at t = 0 (R(0) = -0.32) tests the first step: measured 1.44e-4, 3.8e-5
    early = point_source(0.1, frequency=3.0, delay=0.1, width=0.08)
    exact = exact_1d(*np.meshgrid(X1, T1, indexing="ij"), 1.5, early)
    errs = [rel_err(wave.solve([X1], T1, lambda x: 1.5, None, max_h=h, courant=0.25, forcing=early), exact)
            for h in (0.01, 0.005)]
    assert errs[1] < 5e-5 and errs[0] / errs[1] > 3.5
    # tensors in, tensor out, same numbers
    tx = torch.tensor([0.2, 0.3], dtype=torch.float64)
    assert np.allclose(exact_1d(tx, torch.tensor(1.0, dtype=torch.float64), 1.5, s).numpy(),
                       exact_1d(np.array([0.2, 0.3]), 1.0, 1.5, s), rtol=1e-14, atol=0)


def test_exact_1d_with_fixed_ends():
    s = point_source(0.6, frequency=3.0, delay=0.4, width=0.08, amplitude=2.0)
    c, times = 1.5, np.linspace(0.0, 2.0, 21)
    # zero on the walls at all times, the walls do matter, and the image sum is odd about each wall
    assert np.abs(exact_1d(np.array([-1.0, 1.0])[:, None], times, c, s, walls=True)).max() < 1e-15
    x, t = np.meshgrid(X1, times, indexing="ij")
    walled = exact_1d(x, t, c, s, walls=True)
    assert rel_err(exact_1d(x, t, c, s), walled) > 0.9
    assert np.abs(imaged_profile(np.array([-1.0, 1.0]), s)).max() < 1e-12
    assert np.abs(exact_1d(1.0 + 0.3, 1.3, c, s, walls=True) + exact_1d(1.0 - 0.3, 1.3, c, s, walls=True)) < 1e-15
    # the PDE u_tt = c^2 u_xx + A R(t) imaged_profile(x), by 4th-order differences of exact_1d itself:
    # measured relative residuals 1.09e-3, 7.1e-5, 4.5e-6 for steps 0.02, 0.01, 0.005 (order 4)
    x, t = np.meshgrid(np.linspace(-0.95, 0.95, 39), np.linspace(0.1, 1.9, 19), indexing="ij")
    forcing = s.wavelet(t) * imaged_profile(x, s)
    res = []
    for d in (0.01, 0.005):
        e = {(i, j): exact_1d(x + i * d, t + j * d, c, s, walls=True) for i, j in
             [(0, 0), (0, 1), (0, -1), (0, 2), (0, -2), (1, 0), (-1, 0), (2, 0), (-2, 0)]}
        utt = (-e[0, 2] + 16 * e[0, 1] - 30 * e[0, 0] + 16 * e[0, -1] - e[0, -2]) / (12 * d * d)
        uxx = (-e[2, 0] + 16 * e[1, 0] - 30 * e[0, 0] + 16 * e[-1, 0] - e[-2, 0]) / (12 * d * d)
        res.append(np.abs(utt - c * c * uxx - forcing).max() / np.abs(forcing).max())
    assert res[1] < 1e-5 and res[0] / res[1] > 12
    # and the FD solver with the imaged forcing on the unbounded line gives the walled solution:
    # measured relative errors 2.5e-3 at max_h = 0.01, 6.3e-4 at 0.005
    profile = lambda x: imaged_profile(x, s, reach=c * 2.0 + 0.5)  # noqa: E731
    errs = [rel_err(wave.solve([X1], times, lambda x: c, None, max_h=h, forcing=(profile, s.wavelet)), walled)
            for h in (0.01, 0.005)]
    assert errs[1] < 8e-4 and errs[0] / errs[1] > 3.5


def exact_2d(r, times, s, c, nk=400, nt=200):
    """u(r, t) for a Gaussian-in-space, Ricker-in-time source at rest in 2-D, constant c.

    u = ∫_0^∞ k/(2π) A exp(-k²w²/2) J0(kr) [∫_0^t R(τ) sin(ck(t-τ))/(ck) dτ] dk: Duhamel
    in time, mode by mode, and the Hankel transform of the unit Gaussian; Gauss-Legendre
    in k up to 9/w (exp(-40.5) beyond) and in τ over |τ - t0| ≤ 2.7/f."""
    j0 = pytest.importorskip("scipy.special").j0
    kmax = 9.0 / s.width
    zk, wk = np.polynomial.legendre.leggauss(nk)
    k, wk = kmax * (zk + 1) / 2, wk * kmax / 2
    zt, wt = np.polynomial.legendre.leggauss(nt)
    out = np.zeros((len(r), len(times)))
    for j, t in enumerate(times):
        lo, hi = max(0.0, s.delay - 2.7 / s.frequency), min(t, s.delay + 2.7 / s.frequency)
        if hi <= lo:
            continue
        tau, wtau = (lo + hi) / 2 + (hi - lo) / 2 * zt, wt * (hi - lo) / 2
        duhamel = (wtau * s.wavelet(tau) * np.sin(c * np.outer(k, t - tau))).sum(1) / (c * k)
        out[:, j] = j0(np.outer(r, k)) @ (wk * k / (2 * math.pi) * np.exp(-((k * s.width) ** 2) / 2)
                                           * s.amplitude * duhamel)
    return out


def test_2d_matches_the_hankel_integral():
    # receivers at r = 0, 0.3, 0.6, 0.85 from the source, t = 0, 0.2, ..., 1.2.  The integral
    # changes by 4e-14 with twice the nodes; FD relative max errors (Courant 0.25) measured
    # 4.6e-4 at max_h = 0.02, 1.02e-4 at 0.01 (and 2.5e-5 at 0.005, with Courant 0.5:
    # 1.6e-3, 3.9e-4, 9.8e-5), second order toward the integral
    s = point_source((0.0, 0.0), frequency=2.0, delay=0.5, width=0.1, amplitude=1.5)
    times = np.linspace(0.0, 1.2, 7)
    nodes = [(6, 6), (9, 6), (12, 6), (12, 12)]
    exact = exact_2d(np.hypot(X2[[i for i, _ in nodes]], X2[[j for _, j in nodes]]), times, s, 1.0)
    assert np.abs(exact - exact_2d(np.array([0.0, 0.3, 0.6, math.hypot(0.6, 0.6)]), times, s, 1.0,
                                   nk=800, nt=400)).max() < 1e-13
    assert 0.14 < np.abs(exact).max() < 0.15
    errs = []
    for h in (0.02, 0.01):
        u = wave.solve([X2, X2], times, lambda x, y: 1.0, None, max_h=h, courant=0.25, forcing=s)
        errs.append(rel_err(np.array([u[i, j] for i, j in nodes]), exact))
    assert errs[1] < 1.5e-4 and errs[0] / errs[1] > 3.5


def test_source_module_has_no_scipy():
    assert "scipy" not in open(sources.__file__).read()

"""The finite-difference wave solver: accuracy, convergence orders, checks, cache."""

import math

import h5py
import numpy as np
import pytest

from fbpinn.reference import wave

X1 = np.linspace(-1.0, 1.0, 51)
T1 = np.linspace(0.0, 1.0, 11)
XY = np.linspace(-1.0, 1.0, 21)


def pulse_1d(x, w=0.15):
    return np.exp(-((x / w) ** 2))


def dalembert(c):
    x, t = np.meshgrid(X1, T1, indexing="ij")
    return 0.5 * (pulse_1d(x - c * t) + pulse_1d(x + c * t))


def gaussian_mixture_speed(x, y):
    return (1.0 + 0.5 * np.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2) / 0.1)
            - 0.3 * np.exp(-((x + 0.4) ** 2 + (y - 0.5) ** 2) / 0.05))


def max_err(a, b):
    return float(np.abs(a - b).max())


def test_1d_matches_dalembert_at_second_order():
    # c = 2: both halves of the pulse leave [-1, 1] by t ~ 0.6, so any reflection
    # from the outer boundary would show in the error at later times
    exact = dalembert(2.0)
    errs = [max_err(wave.solve([X1], T1, lambda x: 2.0, pulse_1d, max_h=h), exact) for h in (0.02, 0.01, 0.005)]
    assert errs[1] < 1e-3 and errs[2] < 2e-4
    assert math.log2(errs[0] / errs[1]) >= 1.8 and math.log2(errs[1] / errs[2]) >= 1.9
    u = wave.solve([X1], T1, lambda x: 2.0, pulse_1d, max_h=0.01)
    assert u.shape == (51, 11) and np.abs(u[:, -1]).max() < 1e-4  # nothing came back


def test_1d_fourth_order_in_space():
    exact = dalembert(2.0)
    errs = [max_err(wave.solve([X1], T1, lambda x: 2.0, pulse_1d, max_h=h, courant=0.02), exact)
            for h in (0.04, 0.02, 0.01)]
    orders = [math.log2(errs[0] / errs[1]), math.log2(errs[1] / errs[2])]
    assert errs[2] < 2e-5 and min(orders) >= 3.7


def radial_exact(r, t, w, c=1.0):
    """u(r, t) for u0 = exp(-r^2/w^2) at rest in 2-D: the Hankel transform, mode by mode cos(ckt)."""
    j0 = pytest.importorskip("scipy.special").j0
    k = np.linspace(0.0, 14.0 / w, 4001)
    amp = 0.5 * w * w * np.exp(-((k * w / 2) ** 2)) * k
    return np.trapezoid(amp * np.cos(c * k * t) * j0(np.multiply.outer(r, k)), k, axis=-1)


def test_2d_constant_speed_exact_self_convergence_and_symmetry():
    w, times = 0.2, np.linspace(0.0, 1.0, 6)

    def u0(x, y):
        return np.exp(-(x * x + y * y) / w**2)

    sols = [wave.solve([XY, XY], times, lambda x, y: 1.0, u0, max_h=h) for h in (0.025, 0.0125, 0.00625)]
    assert sols[0].shape == (21, 21, 6)
    d1, d2 = max_err(sols[0], sols[1]), max_err(sols[1], sols[2])
    assert d2 < 3e-4 and math.log2(d1 / d2) >= 1.8

    x, y = np.meshgrid(XY, XY, indexing="ij")
    exact = np.stack([radial_exact(np.hypot(x, y), t, w) for t in times], axis=-1)
    assert max_err(exact[..., 0], u0(x, y)) < 1e-6  # the transform itself
    errs = [max_err(u, exact) for u in sols]
    assert errs[2] < 1e-4 and math.log2(errs[1] / errs[2]) >= 1.9

    fine = sols[2]
    assert max_err(fine, fine.transpose(1, 0, 2)) < 1e-14 and max_err(fine, fine[::-1]) < 1e-14
    i = {v: int(round((v + 1.0) / 0.1)) for v in (0.0, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)}
    for (a, b), (p, q) in [((0.5, 0.0), (0.3, 0.4)), ((1.0, 0.0), (0.6, 0.8))]:  # same radius, other direction
        assert np.abs(fine[i[a], i[b]]).max() > 0.1
        assert max_err(fine[i[a], i[b]], fine[i[p], i[q]]) < 1e-6


def test_2d_variable_speed_self_convergence():
    def u0(x, y):
        return np.exp(-((x + 0.1) ** 2 + (y - 0.1) ** 2) / 0.25**2)

    times = np.linspace(0.0, 1.0, 6)
    grid = wave.plan([XY, XY], times, gaussian_mixture_speed, max_h=0.025)
    assert grid.c_max == pytest.approx(1.5, abs=1e-6) and grid.refine == (4, 4)
    assert grid.extent[0][0] <= -1.0 - grid.c_max * 1.0 and grid.extent[1][1] >= 1.0 + grid.c_max * 1.0
    assert grid.dt * grid.substeps == pytest.approx(0.2, rel=1e-12) and grid.courant <= 0.5
    sols = [wave.solve([XY, XY], times, gaussian_mixture_speed, u0, max_h=h) for h in (0.025, 0.0125, 0.00625)]
    d1, d2 = max_err(sols[0], sols[1]), max_err(sols[1], sols[2])
    assert d2 < 2e-4 and math.log2(d1 / d2) >= 1.8


def test_grid_choice():
    g = wave.plan([X1], T1, lambda x: 1.0, max_h=0.015)  # test spacing 0.04 -> r = 3
    assert g.refine == (3,) and g.h[0] == pytest.approx(0.04 / 3)
    assert g.dt * g.substeps == pytest.approx(0.1) and g.courant <= 0.5 and g.steps == 10 * g.substeps
    g = wave.plan([X1, XY], T1, lambda x, y: 1.0, max_h=0.1)  # spacing 0.04 and 0.1: both fine as is
    assert g.refine == (1, 1) and g.h == pytest.approx((0.04, 0.1)) and g.courant <= 0.5
    assert wave.plan([X1], T1, lambda x: 1.0, max_h=0.01, c_max=3.0).pad[0] > g.pad[0]
    u = wave.solve([X1], np.array([0.0]), lambda x: 1.0, pulse_1d, max_h=0.01)
    assert u.shape == (51, 1) and max_err(u[:, 0], pulse_1d(X1)) == 0.0


def test_stability_limit_and_bad_input():
    assert wave.stability_limit(1) == pytest.approx(math.sqrt(3) / 2)
    with pytest.raises(ValueError, match=r"courant=0\.9.*0\.8660"):
        wave.solve([X1], T1, lambda x: 1.0, pulse_1d, max_h=0.02, courant=0.9)
    with pytest.raises(ValueError, match=r"courant=0\.7.*0\.6124"):
        wave.plan([XY, XY], T1, lambda x, y: 1.0, max_h=0.05, courant=0.7)
    wave.plan([X1], T1, lambda x: 1.0, max_h=0.02, courant=0.8)  # fine in 1-D
    with pytest.raises(ValueError, match="evenly spaced"):
        wave.plan([np.array([0.0, 0.1, 0.3])], T1, lambda x: 1.0, max_h=0.05)
    with pytest.raises(ValueError, match="evenly spaced"):
        wave.plan([X1], np.array([0.0, 0.1, 0.3]), lambda x: 1.0, max_h=0.05)
    with pytest.raises(ValueError, match="start at 0"):
        wave.plan([X1], T1 + 0.1, lambda x: 1.0, max_h=0.05)
    with pytest.raises(ValueError, match="above c_max"):
        wave.plan([X1], T1, lambda x: 1.0 + x * x, max_h=0.05, c_max=1.5)
    with pytest.raises(ValueError, match="c_max must be positive"):
        wave.plan([X1], T1, lambda x: 1.0, max_h=0.05, c_max=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        wave.plan([X1], T1, lambda x: x, max_h=0.05)


def test_cache(tmp_path, monkeypatch):
    calls = []

    def u0(x):
        calls.append(1)
        return pulse_1d(x)

    key = {"velocity": "constant 2", "initial": "gaussian 0.15"}
    args = (key, tmp_path, [X1], T1, lambda x: 2.0, u0)
    u = wave.cached_solve(*args, max_h=0.02)
    files = list(tmp_path.iterdir())
    assert len(calls) == 1 and [f.name for f in files] == [wave.cache_path(key, tmp_path, [X1], T1, max_h=0.02)[0].name]
    path = files[0]
    assert path.name.startswith("wave-") and path.suffix == ".h5"
    assert max_err(u, wave.solve([X1], T1, lambda x: 2.0, pulse_1d, max_h=0.02)) == 0.0
    with h5py.File(path, "r") as f:
        assert f.attrs["steps"] == 200 and f.attrs["dt"] == pytest.approx(0.005)
        assert f.attrs["h"].tolist() == pytest.approx([0.02])

    real_run = wave._run
    monkeypatch.setattr(wave, "_run", lambda *a: pytest.fail("solved although cached"))
    assert max_err(wave.cached_solve(*args, max_h=0.02), u) == 0.0 and len(calls) == 1
    monkeypatch.setattr(wave, "_run", real_run)

    # another setup (grid, key or solver version) is another file
    assert wave.cache_path(key, tmp_path, [X1], T1, max_h=0.01)[0] != path
    assert wave.cache_path({**key, "initial": "other"}, tmp_path, [X1], T1, max_h=0.02)[0] != path
    monkeypatch.setattr(wave, "SOLVER_VERSION", wave.SOLVER_VERSION + 1)
    assert wave.cache_path(key, tmp_path, [X1], T1, max_h=0.02)[0] != path
    monkeypatch.undo()

    path.write_bytes(b"not an HDF5 file")  # corrupted: recomputed and replaced
    assert max_err(wave.cached_solve(*args, max_h=0.02), u) == 0.0 and len(calls) == 2
    with h5py.File(path, "a") as f:  # a mismatched key: recomputed too
        f.attrs["key"] = "{}"
    assert max_err(wave.cached_solve(*args, max_h=0.02), u) == 0.0 and len(calls) == 3
    wave.cached_solve(*args, max_h=0.02)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == [path]  # no temporary files left

    monkeypatch.setenv("FBPINN_CACHE", str(tmp_path / "env"))
    assert wave.default_cache_dir() == tmp_path / "env"
    wave.cached_solve(key, None, [X1], T1, lambda x: 2.0, u0, max_h=0.02)
    assert len(list((tmp_path / "env").glob("wave-*.h5"))) == 1

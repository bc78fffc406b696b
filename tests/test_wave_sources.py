"""Point sources in the wave problems: a Ricker wavelet in time and a narrow Gaussian in space as
a forcing term, from rest; wave1d's exact solution and wave2d's finite-difference reference
take the same forcing; the options are validated, and a run is the same under MPI and resumed."""

import numpy as np
import pytest
import torch

import fbpinn
from fbpinn import registry, sources
from fbpinn.cli import main
from conftest import config_error
from fbpinn.reference import wave as fd
from test_checkpoint import resumed_equals_whole, same
from test_parallel import mpirun, needs_mpi, write_toml

SMALL = {"decomposition": {"subdomains": [3, 3], "overlap": 1.9}, "network": {"hidden": [8]},
         "training": {"steps": 30, "dtype": "float64", "points": [16, 12], "eval_every": 10},
         "test": {"points": [21, 11]}}
WAVE1D = {"problem": {"name": "wave1d", "source": "ricker", "frequency": 3.0, "x0": -0.2, "t_max": 1.0,
                      "sigma": 0.2}, **SMALL}
WAVE2D = {"problem": {"name": "wave2d", "source": "ricker", "frequency": 4.0, "x0": 0.1, "y0": -0.2,
                      "source_width": 0.1, "reference_h": 0.05, "t_max": 0.5, "velocity": "mixture"},
          "decomposition": {"subdomains": [2, 2, 2], "overlap": 1.9}, "network": {"hidden": [8]},
          "training": {"steps": 20, "dtype": "float64", "points": [6, 6, 6], "eval_every": 10},
          "test": {"points": [9, 9, 6]}}


def problem(data):
    cfg = fbpinn.load_config(data=data)
    return registry.get("problem", cfg.problem_name)(cfg.problem, torch.float64)


def test_wave1d_source_solves_its_equation_exactly():
    p = problem(WAVE1D)
    # The exact solution with fourth-order differences: u_tt - c^2 u_xx - f = 0 to their error.
    h = 2e-3
    x, t = np.meshgrid(np.linspace(-0.9, 0.9, 13), np.linspace(0.1, 0.95, 9), indexing="ij")
    pts = lambda dx, dt: torch.tensor(np.stack([(x + dx).ravel(), (t + dt).ravel()], 1))  # noqa: E731
    u = lambda dx=0.0, dt=0.0: p.exact(pts(dx, dt)).numpy()  # noqa: E731
    second = lambda f: (-f(2) + 16 * f(1) - 30 * f(0) + 16 * f(-1) - f(-2)) / (12 * h * h)  # noqa: E731
    d = {"u_tt": torch.tensor(second(lambda k: u(dt=k * h))), "u_xx": torch.tensor(second(lambda k: u(dx=k * h)))}
    r = p.residual(pts(0, 0), d).numpy()
    scale = np.abs(d["u_tt"].numpy()).max()
    assert scale > 1e-2 and np.abs(r).max() < 1e-6 * scale
    # A quiet start and fixed ends: the ansatz carries nothing and vanishes at the walls.
    A, B = p.constraint(torch.tensor([[0.3, 0.0], [1.0, 0.5], [-1.0, 0.7]], dtype=torch.float64))
    assert A.abs().max() == 0 and B[0] == 0 and B[1:].abs().max() < 1e-15
    assert np.abs(p.exact(torch.tensor([[1.0, 0.8], [-1.0, 0.6]], dtype=torch.float64)).numpy()).max() < 1e-15


def test_wave2d_source_reference_is_the_forced_solver():
    p = problem(WAVE2D)
    axes = p.domain.grid_axes([9, 9, 6])
    ref = p.reference(axes).numpy()
    src = sources.point_source((0.1, -0.2), 4.0, 1.5 / 4.0, 0.1)
    direct = fd.solve([a.numpy() for a in axes[:2]], axes[2].numpy(), p.speed, None, max_h=0.05, forcing=src)
    assert np.array_equal(ref, direct) and np.abs(ref).max() > 1e-3
    assert np.abs(ref[..., 0]).max() == 0  # from rest
    # The source is part of the cache key: another frequency is another reference.
    other = problem({**WAVE2D, "problem": {**WAVE2D["problem"], "frequency": 5.0}}).reference(axes).numpy()
    assert np.abs(other - ref).max() > 1e-3 * np.abs(ref).max()
    # The residual subtracts the forcing where the source is.
    x = torch.tensor([[0.1, -0.2, 1.5 / 4.0]], dtype=torch.float64)
    zero = {k: torch.zeros(1, dtype=torch.float64) for k in ("u_tt", "u_xx", "u_yy")}
    assert p.residual(x, zero).item() == pytest.approx(-1.0 / (2 * np.pi * 0.1**2), rel=1e-12)


@pytest.mark.parametrize("override,message", [
    ("problem.source='wavelet'", "problem.source: must be one of pulse, ricker, got 'wavelet'"),
    ("problem.frequency=0", "problem.frequency: must be positive"),
    ("problem.source_width=-1", "problem.source_width: must be positive"),
    ("problem.delay=-0.5", "problem.delay: must lie in [0, 1e+06], got -0.5"),
    ("problem.x0=0.8", "problem.x0: must keep the ricker clear of the walls: |x0| <= 1 - 6 source_width = 0.7, got 0.8"),
])
def test_source_options_are_validated(override, message):
    assert message in config_error(WAVE1D, override)


def test_wave1d_source_trains_and_resumes_exactly(tmp_path):
    whole = resumed_equals_whole(tmp_path, WAVE1D, 15)
    assert whole["solution"]["attrs"]["target"] == "exact" and np.isfinite(whole["training"]["rel_l2"]).all()


@needs_mpi
def test_wave2d_source_on_two_ranks_equals_serial(tmp_path):
    cfg = write_toml(WAVE2D, tmp_path / "c.toml")
    assert main(["train", str(cfg), "--out", str(tmp_path / "serial")]) == 0
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr
    serial, two = (fbpinn.load_results(tmp_path / d / "run.h5") for d in ("serial", "two"))
    same(serial, two, rtol=1e-9)
    assert np.array_equal(serial["solution"]["reference"], two["solution"]["reference"])

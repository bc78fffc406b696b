"""Media from data: gridded speed models read from .npy or HDF5, sampled smoothly (C1) the same
way by the PINN (torch) and the finite-difference reference (NumPy), checked on load."""

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import fbpinn
from fbpinn.cli import main
from fbpinn.config import ConfigError
from fbpinn.media import GriddedSpeed, MediumError, load
from test_parallel import write_toml

ROOT = Path(__file__).resolve().parents[1]


def quadratic(x, y):
    return 1 + 0.3 * x + 0.2 * y + 0.1 * x * x - 0.05 * x * y + 0.07 * y * y


def grid_model(f, nx=25, ny=31, lo=(-1.2, -1.1), hi=(1.2, 1.3)):
    x, y = np.linspace(lo[0], hi[0], nx), np.linspace(lo[1], hi[1], ny)
    X, Y = np.meshgrid(x, y, indexing="ij")
    return GriddedSpeed((x[0], y[0]), (x[1] - x[0], y[1] - y[0]), f(X, Y))


def make_velocity():
    spec = importlib.util.spec_from_file_location("make_velocity", ROOT / "scripts" / "make_velocity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- sampling
def test_cubic_convolution_is_exact_for_quadratics_and_the_same_in_torch():
    model = grid_model(quadratic)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.9, 0.9, 500), rng.uniform(-0.9, 1.0, 500)
    assert np.abs(model(x, y) - quadratic(x, y)).max() < 1e-12
    tx, ty = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    c = model(tx, ty)
    assert np.array_equal(c.detach().numpy(), model(x, y))
    gx, gy = torch.autograd.grad(c.sum(), (tx, ty))
    assert np.abs(gx.numpy() - (0.3 + 0.2 * x - 0.05 * y)).max() < 1e-12
    assert np.abs(gy.numpy() - (0.2 - 0.05 * x + 0.14 * y)).max() < 1e-12


def test_the_interpolant_passes_through_the_nodes_and_is_c1():
    rng = np.random.default_rng(1)
    values = 1 + rng.uniform(0, 1, (8, 9))
    model = GriddedSpeed((0.0, 0.0), (0.5, 0.25), values)
    X, Y = np.meshgrid(np.arange(8) * 0.5, np.arange(9) * 0.25, indexing="ij")
    assert np.abs(model(X, Y) - values).max() < 1e-12
    # The derivative along x is continuous across an interior node (the kernel is C1) ...
    eps, y = 1e-7, np.array([0.6])
    for node in (1.0, 1.5, 2.5):
        left = (model(np.array([node]), y) - model(np.array([node - eps]), y)) / eps
        right = (model(np.array([node + eps]), y) - model(np.array([node]), y)) / eps
        assert abs(left - right) < 1e-5
    # ... and beyond the grid the speed is the edge's, constant along the normal.
    assert np.array_equal(model(np.array([9.0, -3.0]), np.array([0.6, 0.6])),
                          model(np.array([3.5, 0.0]), np.array([0.6, 0.6])))


# ----------------------------------------------------------------------------- loading
def test_npy_and_hdf5_models_load_the_same(tmp_path):
    mv = make_velocity()
    mv.write(tmp_path / "m.npy", 41)
    mv.write(tmp_path / "m.h5", 41)
    a = load(str(tmp_path / "m.npy"), [[-1.0, 1.0], [-1.0, 1.0]], ((-1, -1), (1, 1)))
    b = load(f"{tmp_path / 'm.h5'}:/vp", None, ((-1, -1), (1, 1)))
    assert np.array_equal(a.values, b.values) and a.lo == b.lo == (-1.0, -1.0)
    assert a.step == pytest.approx(b.step, rel=1e-12) and a.step[0] == pytest.approx(0.05)
    x = np.linspace(-1, 1, 7)
    assert np.abs(a(x, x) - b(x, x)).max() < 1e-12
    assert len(a.sha256) == 64


def test_the_shipped_model_is_what_the_script_writes():
    x, y, c = make_velocity().model(201)
    # To rounding: exp and tanh may differ in the last bit from one machine's libm to another's.
    np.testing.assert_allclose(np.load(ROOT / "configs" / "layered.npy"), c, rtol=1e-14, atol=0)
    assert 0.97 < c.min() < 1.0 and c.max() == pytest.approx(1.5)


@pytest.mark.parametrize("setup,grid,message", [
    ("missing", [[-1, 1], [-1, 1]], "no such file"),
    ("txt", [[-1, 1], [-1, 1]], "a gridded model is a .npy file"),
    ("nogrid", None, "a .npy model needs its grid: problem.velocity_grid"),
    ("badgrid", [[1, -1], [-1, 1]], "problem.velocity_grid must hold 2 pairs [first, last] with first < last"),
    ("nan", [[-1, 1], [-1, 1]], "1 value(s) are not finite, the first at index (2, 3)"),
    ("negative", [[-1, 1], [-1, 1]], "the speed must be positive; -1 at index (0, 0)"),
    ("1d", [[-1, 1]], "a gridded model is a 2-D array"),
    ("small", [[-1, 1], [-1, 1]], "needs 4 to"),
    ("narrow", [[-0.5, 1], [-1, 1]], "covers [-0.5, 1] along axis 0, which does not contain the domain's [-1, 1]"),
    ("noscales", None, "dimension 0 has no coordinates; attach an HDF5 dimension scale"),
    ("nodataset", None, "has no dataset /vq"),
])
def test_bad_models_are_named(tmp_path, setup, grid, message):
    values = np.ones((6, 6))
    spec = str(tmp_path / "m.npy")
    if setup == "txt":
        spec = str(tmp_path / "m.txt")
        Path(spec).write_text("1 2 3")
    elif setup == "nan":
        values[2, 3] = np.nan
    elif setup == "negative":
        values[0, 0] = -1
    elif setup == "1d":
        values = np.ones(6)
    elif setup == "small":
        values = np.ones((3, 6))
    elif setup in ("noscales", "nodataset"):
        with h5py.File(tmp_path / "m.h5", "w") as f:
            f["vp"] = values
        spec = f"{tmp_path / 'm.h5'}:/{'vp' if setup == 'noscales' else 'vq'}"
    if setup not in ("missing", "txt", "noscales", "nodataset"):
        np.save(spec, values)
    with pytest.raises(MediumError) as e:
        load(spec, grid, ((-1, -1), (1, 1)))
    assert message in str(e.value)


# ----------------------------------------------------------------------------- the wave problem
def wave_config(tmp_path, velocity="model.npy", **problem):
    make_velocity().write(tmp_path / "model.npy", 41)
    data = {"problem": {"name": "wave2d", "velocity": velocity, "velocity_grid": [[-1.0, 1.0], [-1.0, 1.0]],
                        "reference_h": 0.05, "t_max": 0.5, **problem},
            "decomposition": {"subdomains": [2, 2, 2], "overlap": 1.9}, "network": {"hidden": [8]},
            "training": {"steps": 4, "dtype": "float64", "points": [6, 6, 6]}, "test": {"points": [9, 9, 5]}}
    return write_toml(data, tmp_path / "c.toml")


def test_a_model_is_read_beside_the_config_and_recorded_by_hash(tmp_path, monkeypatch):
    path = wave_config(tmp_path)
    monkeypatch.chdir(ROOT)  # elsewhere: the model is found beside the config
    cfg = fbpinn.load_config(path)
    assert cfg.problem.velocity == str((tmp_path / "model.npy").resolve())
    assert cfg.problem.velocity_sha256 == fbpinn.media.sha256(tmp_path / "model.npy")
    problem = fbpinn.registry.get("problem", "wave2d")(cfg.problem)
    x = torch.tensor([[-0.35, -0.45], [0.0, 0.9]], dtype=torch.float64)
    mx, my, c = make_velocity().model(41)
    assert problem.speed(x[:, 0], x[:, 1]).numpy() == pytest.approx([c[13, 11], c[20, 38]], rel=1e-12)
    # A given hash is checked.
    with pytest.raises(ConfigError, match="problem.velocity_sha256: .* has SHA-256 .*, not 00: the model file changed"):
        fbpinn.load_config(path, overrides=["problem.velocity_sha256='00'"])
    with pytest.raises(ConfigError, match="problem.velocity_grid: is the grid of a gridded model"):
        fbpinn.load_config(path, overrides=["problem.velocity='constant'"])


def test_cli_refuses_a_bad_model_with_one_line(tmp_path, capsys):
    path = wave_config(tmp_path, velocity="nowhere.npy")
    assert main(["train", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fbpinn: error: config: problem.velocity: ") and "nowhere.npy: no such file" in err
    assert not (tmp_path / "r").exists()


def test_training_and_reference_in_a_gridded_medium(tmp_path, capsys):
    # The reference in a gridded model of the mixture medium equals the mixture medium's reference
    # to the sampling error of the model; training runs and a changed model refuses to resume.
    from fbpinn.problems.wave import Wave2d

    small = {"decomposition": {"subdomains": [2, 2, 2], "overlap": 1.9}, "training": {"points": [6, 6, 6]},
             "test": {"points": [9, 9, 5]}}
    mixture = fbpinn.load_config(data={"problem": {"name": "wave2d", "velocity": "mixture", "reference_h": 0.05,
                                                   "t_max": 0.5}, **small})
    speed = Wave2d(mixture.problem).speed
    x = np.linspace(-1.5, 1.5, 301)
    X, Y = np.meshgrid(x, x, indexing="ij")
    np.save(tmp_path / "mixture.npy", speed(X, Y))
    gridded = fbpinn.load_config(data={"problem": {"name": "wave2d", "velocity": str(tmp_path / "mixture.npy"),
                                                   "velocity_grid": [[-1.5, 1.5], [-1.5, 1.5]],
                                                   "reference_h": 0.05, "t_max": 0.5}, **small})
    axes = [torch.linspace(-1, 1, 11, dtype=torch.float64)] * 2 + [torch.linspace(0, 0.5, 6, dtype=torch.float64)]
    a = Wave2d(mixture.problem).reference(axes).numpy()
    b = Wave2d(gridded.problem).reference(axes).numpy()
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max() and not np.array_equal(a, b)

    path = wave_config(tmp_path)
    assert main(["train", str(path), "--out", str(tmp_path / "r")]) == 0
    data = fbpinn.load_results(tmp_path / "r" / "run.h5")
    assert data["solution"]["attrs"]["target"] == "reference" and np.isfinite(data["training"]["loss"]).all()
    make_velocity().write(tmp_path / "model.npy", 21)  # another model in the same file
    assert main(["train", str(path), "--out", str(tmp_path / "r"), "--resume", "--set", "training.steps=6"]) == 2
    assert "problem.velocity_sha256" in capsys.readouterr().err

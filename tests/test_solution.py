"""fbpinn.Solution and ``fbpinn eval``: the trained model rebuilt from a results file or a
checkpoint reproduces the stored solution, its derivatives equal autograd's, and the command
writes what it evaluates (HDF5, CSV) or one error line and nothing."""

import csv
import re

import h5py
import numpy as np
import pytest
import torch

import fbpinn
from fbpinn import checkpoint as ckpt
from fbpinn.cli import main
from fbpinn.io import read_results, read_snapshots
from test_fields import ACOUSTIC, split_run
from test_parallel import LAPLACE, WAVE_MARCH, needs_mpi

COS1D = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [6], "overlap": 2.5},
         "network": {"hidden": [8]}, "training": {"steps": 30, "dtype": "float64", "points": [100]},
         "test": {"points": [201]}}


def trained(data: dict, tmp_path, name="run", **training) -> tuple:
    """Train ``data`` (with ``training`` overrides) in-process; the path of its run.h5 and the Run."""
    cfg = fbpinn.load_config(data={**data, "training": {**data["training"], "log_every": 10**6, **training}})
    run = fbpinn.train(cfg)
    return fbpinn.save_results(tmp_path / name / "run.h5", run), run


def test_grid(data: dict) -> np.ndarray:
    """The stored test grid's points (N, d), first axis slowest, as the trainer makes them."""
    sol = data["solution"]
    axes = data["attrs"]["axes"].split(",")
    mesh = np.meshgrid(*[sol[f"axis_{a}"] for a in axes], indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


test_grid.__test__ = False  # a helper, not a test


def assert_reproduces(path, rtol: float, sol=None) -> fbpinn.Solution:
    """``Solution.load(path)`` on the stored test grid equals the stored solution of every field."""
    data = read_results(path)
    sol = sol or fbpinn.Solution.load(path)
    u = sol(test_grid(data))
    stored = np.stack([np.asarray(data["solution"][f if len(sol.fields) > 1 else "u"]).reshape(-1)
                       for f in sol.fields], axis=1)
    assert u.shape == stored.shape and u.dtype == np.float64
    assert np.abs(u - stored).max() <= rtol * np.abs(stored).max()
    return sol


# ----------------------------------------------------------------------------- Solution
def test_single_field_reproduces_run_and_derivatives_equal_autograd(tmp_path):
    path, run = trained(COS1D, tmp_path)
    sol = assert_reproduces(path, 1e-12)
    assert (sol.fields, sol.axes, sol.problem, sol.step) == (("u",), ("x",), "cos1d", 30)
    assert sol.domain == ([-2 * np.pi], [2 * np.pi]) and sol.source == path
    assert sol.config.training.steps == 30
    x = np.linspace(-2 * np.pi, 2 * np.pi, 37)[:, None]
    got = sol(x, "u_x", "u_xx", "u", chunk=5)  # several chunks
    ref = run.model.autograd(torch.from_numpy(x), [(0,), (0, 0)])
    assert got.shape == (37, 3)
    assert np.abs(got[:, 0] - ref[(0,)].detach().numpy()).max() <= 1e-10
    assert np.abs(got[:, 1] - ref[(0, 0)].detach().numpy()).max() <= 1e-9
    assert np.abs(got[:, 2] - sol(x)[:, 0]).max() <= 1e-15  # the value-only path, rounded differently
    assert np.array_equal(sol(torch.from_numpy(x)), sol(x))  # a tensor works as an array
    h = 1e-5  # central differences of the values, as an independent check
    fd = (sol(x[1:-1] + h) - sol(x[1:-1] - h))[:, 0] / (2 * h)
    assert np.abs(fd - got[1:-1, 0]).max() <= 1e-6 * np.abs(got[:, 0]).max()


def test_bad_names_and_points_are_value_errors(tmp_path):
    path, _ = trained(COS1D, tmp_path)
    sol = fbpinn.Solution.load(path)
    x = np.zeros((3, 1))
    with pytest.raises(ValueError, match="'w'"):
        sol(x, "w")
    with pytest.raises(ValueError, match="'u_t'"):
        sol(x, "u_t")
    with pytest.raises(ValueError, match="'u_xxxxxxx'.*order 7"):
        sol(x, "u_xxxxxxx")
    with pytest.raises(ValueError, match=r"2 of 3 point\(s\) lie outside the domain \[-6.28319, 6.28319\]"):
        sol(np.array([[0.0], [7.0], [-7.0]]))
    with pytest.raises(ValueError, match=r"\(N, 1\) array.*\(3, 2\)"):
        sol(np.zeros((3, 2)))


def test_two_dimensional_float32_run(tmp_path):
    path, run = trained(LAPLACE, tmp_path, dtype="float32", steps=20)
    sol = assert_reproduces(path, 1e-6)
    assert sol.model.dtype == torch.float32 and sol.axes == ("x", "y")
    x = torch.tensor([[0.3, 0.7], [0.55, 0.1]], dtype=torch.float64)
    ref = run.model.autograd(x, [(0,), (1, 1)])
    got = sol(x, "u_x", "u_yy")
    for c, o in enumerate([(0,), (1, 1)]):
        r = ref[o].detach().double().numpy()
        assert np.abs(got[:, c] - r).max() <= 1e-4 * max(np.abs(r).max(), 1.0)


def test_multilevel_run(tmp_path):
    data = {**LAPLACE, "decomposition": {"levels": [[1, 1], [3, 2]], "overlap": 1.9}}
    path, run = trained(data, tmp_path, steps=20)
    sol = assert_reproduces(path, 1e-12)
    assert len(sol.model.levels) == 2


def test_system_of_two_fields(tmp_path):
    path, run = trained(ACOUSTIC, tmp_path, steps=20)
    sol = assert_reproduces(path, 1e-12)
    assert sol.fields == ("p", "v") and sol.axes == ("x", "t")
    x = torch.tensor([[0.2, 0.3], [0.9, 0.6], [0.5, 1.0]], dtype=torch.float64)
    got = sol(x, "p_t", "v_x", "v")
    assert got.shape == (3, 3)
    p_t = run.model.autograd(x, [(1,)], field=0)[(1,)].detach().numpy()
    v_x = run.model.autograd(x, [(0,)], field=1)[(0,)].detach().numpy()
    assert np.abs(got[:, 0] - p_t).max() <= 1e-10 and np.abs(got[:, 1] - v_x).max() <= 1e-10
    assert np.abs(got[:, 2] - sol(x)[:, 1]).max() <= 1e-14


def test_learned_constants_are_set(tmp_path):
    data = {"problem": {"name": "harmonic_oscillator_inverse", "observations": 9},
            "decomposition": {"subdomains": [4]}, "network": {"hidden": [8]},
            "training": {"steps": 20, "dtype": "float64", "points": [40]}}
    path, run = trained(data, tmp_path)
    sol = fbpinn.Solution.load(path)
    stored = float(read_results(path)["learned"]["mu"])
    assert stored != run.cfg.problem.mu_init  # training moved it away from its initial guess
    assert float(sol.model.problem.parameters()["mu"].detach()) == stored
    assert_reproduces(path, 1e-12, sol)


def test_time_marching_checkpoint_equals_the_trainer_at_its_step(tmp_path):
    # A checkpoint in the middle of slab 2 (step 45 of slabs of 30 steps) evaluates as the trainer
    # did at step 45, with the later slabs still switched off: equal to the snapshot of the test-grid
    # fields written at that step.  The finished run has every slab on.
    cfg = fbpinn.load_config(data={**WAVE_MARCH, "training": {**WAVE_MARCH["training"], "log_every": 10**6},
                                   "output": {"snapshot_every": 45}})
    folder = tmp_path / "a" / "checkpoints"
    folder.mkdir(parents=True)
    run = fbpinn.train(cfg, None, ckpt.Checkpoints(folder, 45, 5))
    path = fbpinn.save_results(tmp_path / "a" / "run.h5", run)
    snap = read_snapshots(tmp_path / "a" / "snapshots.h5")
    assert snap["step"].tolist() == [45, 90]
    mesh = np.meshgrid(*snap["axes"].values(), indexing="ij")
    x = np.stack([m.reshape(-1) for m in mesh], axis=1)
    for i, step in enumerate((45, 90)):
        sol = fbpinn.Solution.load(ckpt.path_for(folder, step))
        assert sol.step == step
        stored = np.asarray(snap["fields"]["u"][i]).reshape(-1)
        assert np.abs(sol(x)[:, 0] - stored).max() <= 1e-12 * np.abs(stored).max()
    assert fbpinn.Solution.load(ckpt.path_for(folder, 45)).model.levels[0].axes[1].limit == 4  # of 6 t-centres
    sol = assert_reproduces(path, 1e-12)
    assert sol.model.levels[0].axes[1].limit == 6
    assert np.abs(fbpinn.Solution.load(ckpt.path_for(folder, 120))(x) - sol(x)).max() == 0


@needs_mpi
def test_per_rank_mpi_run(tmp_path):
    path = split_run(tmp_path, steps=5)
    with h5py.File(path) as f:
        assert f["solution/p"].is_virtual
    sol = assert_reproduces(path, 1e-12)
    assert sol.fields == ("p", "v") and sol.step == 5


# ----------------------------------------------------------------------------- fbpinn eval
@pytest.fixture(scope="module")
def cos_run(tmp_path_factory):
    """A small trained cos1d run (its run.h5 path)."""
    path, _ = trained(COS1D, tmp_path_factory.mktemp("cos"))
    return path


def test_eval_grid_to_hdf5(cos_run, tmp_path):
    out = tmp_path / "o" / "eval.h5"
    assert main(["eval", str(cos_run), "--grid", "11", "--derivatives", "u_x,u_xx", "--out", str(out)]) == 0
    sol = fbpinn.Solution.load(cos_run)
    with h5py.File(out) as f:
        x = f["x"][()]
        assert x.shape == (11, 1) and x[0, 0] == -2 * np.pi and x[-1, 0] == 2 * np.pi
        assert f.attrs["source"] == str(cos_run.absolute()) and f.attrs["step"] == 30
        assert f.attrs["axes"] == "x" and f.attrs["quantities"] == "u,u_x,u_xx"
        assert f.attrs["grid"].tolist() == [11]
        ref = sol(x, "u", "u_x", "u_xx")
        for c, name in enumerate(("u", "u_x", "u_xx")):
            assert np.array_equal(f[name][()], ref[:, c])


@pytest.mark.parametrize("kind", ["npy", "csv", "h5"])
def test_eval_points_to_csv(cos_run, tmp_path, kind):
    x = np.array([[-1.0], [0.25], [3.0]])
    if kind == "npy":
        np.save(tmp_path / "p.npy", x)
        spec = tmp_path / "p.npy"
    elif kind == "csv":  # a header of axis names is optional
        (tmp_path / "p.csv").write_text("x\n-1.0\n0.25\n3.0\n")
        spec = tmp_path / "p.csv"
    else:
        with h5py.File(tmp_path / "p.h5", "w") as f:
            f["g/pts"] = x
        spec = f"{tmp_path / 'p.h5'}:/g/pts"
    out = tmp_path / "e.csv"
    assert main(["eval", str(cos_run), "--points", str(spec), "--fields", "", "--derivatives", "u_x",
                 "--out", str(out)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["x", "u_x"]
    got = np.array(rows[1:], dtype=np.float64)
    assert np.array_equal(got[:, 0], x[:, 0])
    assert np.array_equal(got[:, 1], fbpinn.Solution.load(cos_run)(x, "u_x")[:, 0])  # 17 digits: exact


def test_eval_reads_its_own_csv_back(cos_run, tmp_path):
    # The CSV's header names the axis column, so it serves as points again (other columns ignored).
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["eval", str(cos_run), "--grid", "5", "--out", str(first)]) == 0
    assert main(["eval", str(cos_run), "--points", str(first), "--out", str(second)]) == 0
    assert np.array_equal(np.loadtxt(first, delimiter=",", skiprows=1), np.loadtxt(second, delimiter=",", skiprows=1))


def test_eval_checkpoint(tmp_path):
    cfg = fbpinn.load_config(data={**COS1D, "training": {**COS1D["training"], "log_every": 10**6}})
    fbpinn.train(cfg, None, ckpt.Checkpoints(tmp_path / "c", 10, 5))
    path = ckpt.path_for(tmp_path / "c", 20)
    out = tmp_path / "e.h5"
    assert main(["eval", str(path), "--grid", "7", "--out", str(out)]) == 0
    with h5py.File(out) as f:
        assert f.attrs["step"] == 20
        assert np.array_equal(f["u"][()], fbpinn.Solution.load(path)(f["x"][()])[:, 0])


@pytest.mark.parametrize("args, message", [
    (["--grid", "11", "--derivatives", "u_t"], "'u_t' names an axis"),
    (["--grid", "11", "--fields", "v"], "'v' is not a field"),
    (["--grid", "11,3"], "give 1 positive number"),
    (["--grid", "a"], "whole numbers"),
    (["--points", "{tmp}/missing.npy"], "no such file"),
    (["--points", "{tmp}/wide.npy"], r"\(N, 1\) array.*shape \(4, 2\)"),
    (["--points", "{tmp}/out.npy"], r"1 of 2 point\(s\) lie outside the domain"),
    (["--points", "{tmp}/p.txt"], "unknown extension .txt"),
    (["--points", "{tmp}/pts.h5:/nothing"], "has no dataset /nothing"),
    (["--points", "{tmp}/bad.csv"], "header y does not name the axes x"),
    (["--grid", "5", "--out", "{tmp}/out.txt"], "unknown extension .txt"),
    (["--grid", "5", "--device", "foo"], "not a torch device"),
])
def test_eval_bad_input_is_one_error_line(cos_run, tmp_path, capsys, args, message):
    np.save(tmp_path / "wide.npy", np.zeros((4, 2)))
    np.save(tmp_path / "out.npy", np.array([[0.0], [9.0]]))
    (tmp_path / "p.txt").write_text("0\n")
    (tmp_path / "bad.csv").write_text("y\n0\n")
    with h5py.File(tmp_path / "pts.h5", "w") as f:
        f["x"] = np.zeros((2, 1))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "e.h5")]
    capsys.readouterr()
    assert main(["eval", str(cos_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fbpinn: error: ")
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "e.h5").exists() and not (tmp_path / "out.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_eval_missing_or_foreign_run_file(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none.h5"), "--grid", "3", "--out", str(tmp_path / "e.h5")]) == 2
    assert "none.h5: no such file" in capsys.readouterr().err
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert main(["eval", str(tmp_path / "junk.h5"), "--grid", "3", "--out", str(tmp_path / "e.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "junk.h5" in err[0] and not (tmp_path / "e.h5").exists()

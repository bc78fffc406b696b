"""Receivers: traces u(r, t) at given positions, written beside the target's into /receivers,
equal under MPI to the serial run, drawn as a shot gather, and evaluated again by fbpinn eval."""

import h5py
import numpy as np
import pytest

import fbpinn
from fbpinn import sources
from fbpinn.cli import main
from fbpinn.config import ConfigError
from fbpinn.reference import wave as fd
from test_fields import run_cli
from test_parallel import mpirun, needs_mpi, write_toml
from test_wave_sources import WAVE1D, WAVE2D

RECEIVERS = [[-0.5], [0.0], [0.3], [1.0]]


def trained(tmp_path, data, name="r", *extra):
    cfg = write_toml(data, tmp_path / f"{name}.toml")
    assert main(["train", str(cfg), "--out", str(tmp_path / name), *extra]) == 0
    return tmp_path / name / "run.h5"


def test_traces_of_wave1d_against_the_exact_solution(tmp_path):
    data = {**WAVE1D, "output": {"receivers": RECEIVERS, "receiver_samples": 9}}
    path = trained(tmp_path, data)
    with h5py.File(path) as f:
        g = {k: v[()] for k, v in f["receivers"].items()}
        assert f["receivers"].attrs["target"] == "exact" and f["receivers/positions"].attrs["axes"] == "x"
    assert g["positions"].tolist() == RECEIVERS and np.allclose(g["t"], np.linspace(0, 1, 9), atol=1e-15)
    x = np.stack(np.meshgrid(np.array(RECEIVERS)[:, 0], g["t"], indexing="ij"), -1).reshape(-1, 2)
    # The model's traces are its values there, the target the exact solution, the error the difference.
    assert np.abs(g["u"].ravel() - fbpinn.Solution.load(path)(x)[:, 0]).max() < 1e-12
    src = sources.point_source((-0.2,), 3.0, 0.5, 0.05)
    exact = sources.exact_1d(x[:, 0], x[:, 1], 1.0, src, walls=True)
    assert np.abs(g["exact"].ravel() - exact).max() < 1e-14 and np.abs(exact).max() > 1e-4
    assert np.array_equal(g["error"], g["u"] - g["exact"])
    info = run_cli("info", path)
    err = np.sqrt((g["error"] ** 2).sum() / (g["exact"] ** 2).sum())
    assert f"receivers: 4 trace(s) of 9 samples, rel_l2 {err:.4e} against the exact" in info.stdout
    assert np.abs(g["u"][-1]).max() < 1e-12  # the receiver on the wall: the ansatz holds u = 0 there
    # Drawn as a shot gather; evaluated again at the same positions by fbpinn eval.
    assert main(["plot", str(path)]) == 0 and (path.parent / "receivers.png").stat().st_size > 0
    np.savetxt(tmp_path / "rec.csv", np.array(RECEIVERS), header="x", comments="")
    assert main(["eval", str(path), "--traces", str(tmp_path / "rec.csv"), "--samples", "9", "--derivatives", "u_t",
                 "--out", str(tmp_path / "tr.h5")]) == 0
    with h5py.File(tmp_path / "tr.h5") as f:
        assert np.array_equal(f["u"][()], g["u"]) and f["u_t"].shape == (4, 9)
        assert np.array_equal(f["t"][()], g["t"]) and f.attrs["traces"].tolist() == [4, 9]


def test_wave2d_reference_traces_are_the_finite_difference_solution(tmp_path):
    # Receivers on nodes of the test grid, sampled at the test times: the reference's traces are
    # the reference on the grid there (the interpolation reproduces nodes).
    axes = [np.linspace(-1, 1, 9), np.linspace(-1, 1, 9), np.linspace(0, 0.5, 6)]
    receivers = [[float(axes[0][2]), float(axes[1][5])], [float(axes[0][6]), float(axes[1][1])]]
    data = {**WAVE2D, "output": {"receivers": receivers, "receiver_samples": 6}}
    path = trained(tmp_path, data)
    run = fbpinn.load_results(path)
    rec, ref = run["receivers"], run["solution"]["reference"]
    assert rec["attrs"]["target"] == "reference"
    assert np.abs(rec["reference"][0] - ref[2, 5]).max() < 1e-12 and np.abs(rec["reference"][1] - ref[6, 1]).max() < 1e-12
    # Between nodes: fourth-order interpolation of the solver's grid, close to SciPy's cubic
    # interpolation of the same grid (both of fourth order; they differ by about 1e-4).
    interpolate = pytest.importorskip("scipy.interpolate")
    src = sources.point_source((0.1, -0.2), 4.0, 1.5 / 4.0, 0.1)
    speed = fbpinn.registry.get("problem", "wave2d")(fbpinn.load_config(data=WAVE2D).problem).speed
    grid, t = [np.linspace(-1, 1, 81)] * 2, np.linspace(0, 0.5, 6)
    off = np.array([[0.13, -0.27], [0.31, 0.07]])
    traces = fd.solve(grid, t, speed, None, max_h=0.025, forcing=src, points=off)
    u = fd.solve(grid, t, speed, None, max_h=0.025, forcing=src)
    for k in range(len(t)):
        cubic = interpolate.RegularGridInterpolator(grid, u[..., k], method="cubic")(off)
        assert np.abs(cubic - traces[:, k]).max() <= 2e-4 * np.abs(u).max()
    assert np.abs(traces).max() > 0.1 * np.abs(u).max()


@needs_mpi
@pytest.mark.parametrize("per_rank", [False, True])
def test_traces_on_two_ranks_equal_serial(tmp_path, per_rank):
    data = {**WAVE1D, "output": {"receivers": RECEIVERS, "receiver_samples": 7}}
    cfg = write_toml(data, tmp_path / "c.toml")
    serial = trained(tmp_path, data, "serial")
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "two"),
                      "--set", f"output.per_rank={str(per_rank).lower()}"])
    assert proc.returncode == 0, proc.stderr
    two = tmp_path / "two" / "run.h5"
    if per_rank:
        assert main(["merge", str(two), "-o", str(tmp_path / "merged.h5")]) == 0
        two = tmp_path / "merged.h5"
    a, b = fbpinn.load_results(serial)["receivers"], fbpinn.load_results(two)["receivers"]
    assert np.abs(a["u"] - b["u"]).max() < 1e-9 and np.array_equal(a["exact"], b["exact"])


@pytest.mark.parametrize("output,key,message", [
    ({"receivers": [[0.0, 1.0]]}, "output.receivers", "must list positions of 1 coordinate(s) (x)"),
    ({"receivers": [[1.5]]}, "output.receivers", "receiver 0 at [1.5] lies outside the domain [-1, 1] (x)"),
    ({"receivers": [[0.0]], "receivers_file": "r.csv"}, "output.receivers", "not both"),
    ({"receivers_file": "nowhere.npy"}, "output.receivers_file", "nowhere.npy: no such file"),
    ({"receivers": [[0.0]], "receiver_samples": 1}, "output.receiver_samples", "must lie in"),
])
def test_receiver_options_are_validated(tmp_path, output, key, message):
    with pytest.raises(ConfigError) as e:
        fbpinn.load_config(write_toml({**WAVE1D, "output": output}, tmp_path / "c.toml"))
    assert str(e.value).startswith(f"config: {key}: ") and message in str(e.value)


def test_receivers_file_is_read_beside_the_config(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    np.save(tmp_path / "cfg" / "rec.npy", np.array([[0.25], [-0.75]]))
    cfg_path = write_toml({**WAVE1D, "output": {"receivers_file": "rec.npy"}}, tmp_path / "cfg" / "c.toml")
    monkeypatch.chdir(tmp_path)
    cfg = fbpinn.load_config(cfg_path)
    assert cfg.output.receivers_file == str(tmp_path / "cfg" / "rec.npy")
    assert fbpinn.config.receiver_positions(cfg).tolist() == [[0.25], [-0.75]]
    with pytest.raises(ConfigError, match="traces u\\(r, t\\) need a problem whose last axis is t; 'cos1d'"):
        fbpinn.load_config(data={"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4]},
                                 "output": {"receivers": [[0.0]]}})


def test_eval_traces_errors(tmp_path, capsys):
    path = trained(tmp_path, WAVE1D)
    np.save(tmp_path / "bad.npy", np.zeros((3, 2)))
    assert main(["eval", str(path), "--traces", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o.h5")]) == 2
    assert "--traces" in capsys.readouterr().err and not (tmp_path / "o.h5").exists()
    assert main(["eval", str(path), "--grid", "5,5", "--samples", "5", "--out", str(tmp_path / "o.h5")]) == 2
    assert "--samples sets the times of --traces" in capsys.readouterr().err

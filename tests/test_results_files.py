"""Results as plain data: the trainer's state_dict and load_state_dict, the history defined once,
info and plot on checkpoints, provenance and dimension scales in snapshots files, XDMF of
snapshots read back with VTK."""

import io as pyio
import os

import h5py
import numpy as np
import pytest

import fbpinn
from fbpinn import checkpoint as ckpt
from fbpinn import history
from fbpinn.cli import main
from fbpinn.solution import checkpoint_results
from fbpinn.trainer import Trainer
from test_checkpoint import LAPLACE_SOBOL, train_cli
from test_fields import LOTKA, split_run
from test_parallel import INVERSE, WAVE_MARCH, needs_mpi, write_toml

COS1D = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [5], "overlap": 2.5},
         "network": {"hidden": [8]}, "training": {"steps": 40, "dtype": "float64", "points": [60], "eval_every": 20},
         "test": {"points": [101]}, "checkpoint": {"every": 20}, "output": {"snapshot_every": 10}}


def trained(tmp_path, data, name="r", *extra):
    cfg = write_toml(data, tmp_path / f"{name}.toml")
    assert train_cli(cfg, tmp_path / name, *extra) == 0
    return tmp_path / name


# ----------------------------------------------------------------------------- trainer state
def test_state_dict_round_trip_continues_the_run_exactly(tmp_path):
    # A trainer that loads another's state_dict holds the same state, and goes on as the other does.
    cfg = fbpinn.load_config(data={**LAPLACE_SOBOL, "training": {**LAPLACE_SOBOL["training"], "steps": 30}})
    a = Trainer(cfg)
    a.history, a.loss_per_step = history.empty(1), []
    for step in range(1, 11):
        a.loss_per_step.append(a.step(step)[0])
    state = a.state_dict(10)
    assert state["step"] == 10 and len(state["loss_per_step"]) == 10
    b = Trainer(cfg)
    b.load_state_dict(state)
    again = b.state_dict(10)
    for key, value in state["arrays"].items():
        assert np.array_equal(value, again["arrays"][key]), key
    assert again["adam_steps"] == state["adam_steps"] and again["loss_per_step"] == state["loss_per_step"]
    assert np.array_equal(again["sampler_state"], state["sampler_state"])
    assert b.first_step == 11
    # The next steps (with a resampling at step 14) are the same on both.
    for step in range(11, 16):
        assert b.step(step)[0] == pytest.approx(a.step(step)[0], rel=1e-12, abs=0)


def test_history_is_written_and_read_back_the_same_way_everywhere(tmp_path):
    h = history.empty(2)
    assert set(h) == {name for name, *_ in history.FIELDS} | {"rel_l2_fields"}
    history.record(h, 5, 1.5, [1.0, 0.5], [0.3, 0.2, 0.4], 2.0, 1e-3, 0)
    history.record(h, 10, 0.5, [0.25, 0.25], [0.1, 0.05, 0.15], 4.0, 1e-3, 1)
    with h5py.File(tmp_path / "h.h5", "w") as f:
        history.write(f.create_group("g"), h, [2.0, 1.5, 1.0], ["residual", "ic"], ("p", "v"))
        g = f["g"]
        assert g["loss_terms"].shape == (2, 2) and g["loss_terms"].attrs["names"] == "residual,ic"
        assert g["rel_l2_fields"].attrs["names"] == "p,v" and g["step"].dtype == np.int64
        back, per_step = history.read({k: v[()] for k, v in g.items()})
    assert back == h and per_step == [2.0, 1.5, 1.0]
    # The results reader checks every history dataset the writer makes, with its dimensions.
    schema = {entry[0]: entry for entry in history.schema("training")}
    assert schema["training/rel_l2_fields"][2] == ("E", "F") and schema["training/step"][3] is True
    assert all(f"training/{name}" in schema for name in back)


# ----------------------------------------------------------------------------- checkpoints
def test_info_on_a_checkpoint(tmp_path, capsys):
    out = trained(tmp_path, {**INVERSE, "checkpoint": {"every": 20, "keep": 10}})
    path = ckpt.path_for(out / "checkpoints", 20)
    assert main(["info", str(path), "--config"]) == 0
    text = capsys.readouterr().out
    assert f"{path}: checkpoint of problem harmonic_oscillator_inverse at step 20 of" in text
    assert "verified (sha256 " in text and "learned mu = " in text
    state = ckpt.read(path)
    assert f"final rel_l2 {state['history']['rel_l2'][-1]:.4e}" in text
    assert "segment 1: steps 1 .. 20 on 1 rank(s)" in text and 'name = "harmonic_oscillator_inverse"' in text
    # A damaged checkpoint is one error line.
    with h5py.File(path, "a") as f:
        f["parameters/level0/W0"][0, 0, 0] += 1.0
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fbpinn: error: {path}: ") and "Traceback" not in err


def test_plot_and_read_a_checkpoint_as_a_results_file(tmp_path):
    out = trained(tmp_path, COS1D)
    final = ckpt.path_for(out / "checkpoints", 40)
    data, run = checkpoint_results(final), fbpinn.load_results(out / "run.h5")
    # The last checkpoint's weights on the test grid give the run's final solution.
    assert np.abs(data["solution"]["u"] - run["solution"]["u"]).max() < 1e-12
    assert np.array_equal(data["solution"]["exact"], run["solution"]["exact"])
    assert np.array_equal(data["training"]["loss_per_step"], run["training"]["loss_per_step"])
    assert data["attrs"]["step"] == 40 and data["training"]["loss_terms.attrs"]["names"] == "physics"
    for i in range(len(run["decomposition"]["level0"]["centres"])):
        assert np.array_equal(data["decomposition"]["level0"]["centres"][i], run["decomposition"]["level0"]["centres"][i])
    # The half-way checkpoint: its own step's solution, drawn beside it.
    half = ckpt.path_for(out / "checkpoints", 20)
    u20 = fbpinn.Solution.load(half)(run["solution"]["axis_x"][:, None])[:, 0]
    assert np.array_equal(checkpoint_results(half)["solution"]["u"], u20)
    assert not np.allclose(u20, run["solution"]["u"])
    assert main(["plot", str(half)]) == 0
    folder = out / "checkpoints" / "step_000000020"
    assert sorted(p.name for p in folder.iterdir()) == ["decomposition.png", "error.png", "solution.png",
                                                         "training.png"]
    assert main(["plot", str(half), "--out-dir", str(tmp_path / "figs"), "--format", "pdf"]) == 0
    assert (tmp_path / "figs" / "solution.pdf").read_bytes()[:4] == b"%PDF"


def test_plot_of_a_damaged_checkpoint_is_one_error_line(tmp_path, capsys):
    out = trained(tmp_path, COS1D)
    path = ckpt.path_for(out / "checkpoints", 20)
    with h5py.File(path, "a") as f:
        f.attrs["step"] = 7
    assert main(["plot", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fbpinn: error: {path}: ") and not (out / "checkpoints" / "step_000000020").exists()


# ----------------------------------------------------------------------------- snapshots
def test_snapshots_carry_provenance_across_resumes_and_dimension_scales(tmp_path, capsys):
    cfg = write_toml(COS1D, tmp_path / "c.toml")
    out = tmp_path / "r"
    assert train_cli(cfg, out, "--set", "training.steps=20") == 0
    assert train_cli(cfg, out, "--resume") == 0
    data = fbpinn.io.read_snapshots(out / "snapshots.h5")
    assert data["step"].tolist() == [10, 20, 30, 40]
    segments = data["provenance"]["segments"]
    assert [(s["first_step"], s["last_step"]) for s in segments] == [(1, 20), (21, 40)]
    assert main(["info", str(out / "snapshots.h5")]) == 0
    text = capsys.readouterr().out
    assert "segment 1: steps 1 .. 20" in text and "segment 2: steps 21 .. 40" in text
    xarray = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xarray.open_dataset(out / "snapshots.h5", engine="h5netcdf", phony_dims="sort") as ds:
        assert ds["u"].dims == ("step", "axis_x") and ds["time"].dims == ("step",)
        assert ds["step"].values.tolist() == [10, 20, 30, 40]
        assert np.array_equal(ds["u"].values, data["fields"]["u"])
    assert set(fbpinn.io.read_snapshots(out / "snapshots.h5", values=False)["fields"]) == set()


xdmf2 = pytest.importorskip("vtkmodules.vtkIOXdmf2")
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline  # noqa: E402


def vtk_steps(path):
    """(reader, its time values) of an XDMF file opened with VTK."""
    reader = xdmf2.vtkXdmfReader()
    reader.SetFileName(str(path))
    reader.UpdateInformation()
    return reader, reader.GetOutputInformation(0).Get(vtkStreamingDemandDrivenPipeline.TIME_STEPS())


def vtk_array(reader, time, name):
    reader.UpdateTimeStep(time)
    out = reader.GetOutputDataObject(0)
    return vtk_to_numpy(out.GetPointData().GetArray(name)), out


def test_export_snapshots_of_a_problem_without_time(tmp_path, capsys):
    out = trained(tmp_path, COS1D)
    snap = fbpinn.io.read_snapshots(out / "snapshots.h5")
    assert main(["export", str(out / "snapshots.h5")]) == 0
    reader, times = vtk_steps(out / "snapshots.xdmf")
    assert list(times) == [10, 20, 30, 40]  # one time step per snapshot, at its training step
    for i, t in enumerate(times):
        values, grid = vtk_array(reader, t, "u")
        assert np.array_equal(values, snap["fields"]["u"][i])
        assert grid.GetBounds()[:2] == pytest.approx((snap["axes"]["x"][0], snap["axes"]["x"][-1]))
    assert main(["export", str(out / "snapshots.h5"), "--step", "20"]) == 2
    assert "axes (x) include no t, and every snapshot is exported" in capsys.readouterr().err


def test_export_a_snapshot_of_a_space_time_problem(tmp_path, capsys):
    data = {**WAVE_MARCH, "output": {"snapshot_every": 30}, "checkpoint": {"every": 0}}
    out = trained(tmp_path, data)
    snap = fbpinn.io.read_snapshots(out / "snapshots.h5")
    assert snap["step"].tolist() == [30, 60, 90, 120]
    for step, args in ((120, []), (60, ["--step", "60"])):
        assert main(["export", str(out / "snapshots.h5"), "--out", str(tmp_path / "x" / f"s{step}.xdmf"), *args]) == 0
        reader, times = vtk_steps(tmp_path / "x" / f"s{step}.xdmf")
        assert np.allclose(times, snap["axes"]["t"], rtol=0, atol=1e-12)
        i = snap["step"].tolist().index(step)
        for k, t in enumerate(times):
            values, _ = vtk_array(reader, t, "u")
            assert np.array_equal(values, snap["fields"]["u"][i, :, k]), (step, k)
    assert main(["export", str(out / "snapshots.h5"), "--step", "45"]) == 2
    assert "no snapshot of step 45; it holds steps 30 .. 120 every 30 (4 snapshots)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pipes
def test_info_into_a_closed_pipe_is_not_an_error(tmp_path, monkeypatch):
    out = trained(tmp_path, {**LOTKA, "training": {**LOTKA["training"], "steps": 5}})

    class Closed(pyio.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise pyio.UnsupportedOperation("no descriptor")

    monkeypatch.setattr("sys.stdout", Closed())
    assert main(["info", str(out / "run.h5")]) == 0
    assert os.path.exists(out / "run.h5")


# ----------------------------------------------------------------------------- out of core
@needs_mpi
def test_lazy_results_read_what_is_sliced_from_the_part_files(tmp_path):
    path = split_run(tmp_path)
    whole, lazy = fbpinn.load_results(path), fbpinn.load_results(path, lazy=True)
    assert set(lazy["solution"]) == set(whole["solution"])
    for name in ("p", "exact_v", "error_p"):
        stored, array = lazy["solution"][name], whole["solution"][name]
        assert isinstance(stored, fbpinn.io.Stored) and stored.shape == array.shape == (21, 11)
        assert np.array_equal(np.asarray(stored), array)
        for key in [(slice(None, None, 3), slice(1, None, 2)), 5, (..., -1), (slice(2, 17, 4), 3), (slice(7, 9),)]:
            assert np.array_equal(stored[key], array[key]), key
    with pytest.raises(IndexError):
        lazy["solution"]["p"][::-1]
    # A part file that disappears after the check is an error, never NaN.
    (path.parent / "run_p1.h5").unlink()
    with pytest.raises(fbpinn.ResultsError, match="run_p1.h5 is missing"):
        lazy["solution"]["p"][()]
    with pytest.raises(fbpinn.ResultsError, match="these are missing: run_p1.h5"):
        fbpinn.load_results(path, lazy=True)


def test_plot_reads_a_large_grid_with_a_stride(tmp_path, monkeypatch, capsys):
    import fbpinn.plotting as plotting

    out = trained(tmp_path, {**WAVE_MARCH, "test": {"points": [21, 11]}})
    data = fbpinn.load_results(out / "run.h5")
    lazy = fbpinn.load_results(out / "run.h5", lazy=True)
    assert plotting._decimated(lazy, out / "run.h5")["solution"]["u"].shape == (21, 11)  # read whole
    monkeypatch.setattr(plotting, "PLOT_AXIS_POINTS", 8)
    small = plotting._decimated(lazy, out / "run.h5")
    assert np.array_equal(small["solution"]["u"], data["solution"]["u"][::3, ::2])  # 7 x 6
    assert np.array_equal(small["solution"]["axis_t"], data["solution"]["axis_t"][::2])
    # A third axis is strided so that the total stays within PLOT_POINTS.
    monkeypatch.setattr(plotting, "PLOT_POINTS", 50)
    fake = {"attrs": {"axes": "x,y,t"}, "solution": {"axis_x": np.arange(8.0), "axis_y": np.arange(8.0),
                                                     "axis_t": np.arange(5.0)}}
    strided = plotting._decimated(fake, out / "run.h5")["solution"]
    assert strided["axis_t"].tolist() == [0.0] and strided["axis_x"].tolist() == [0.0, 2.0, 4.0, 6.0]
    capsys.readouterr()
    assert main(["plot", str(out / "run.h5")]) == 0
    assert "21x11 test points; the figures show one in 3, 2 along the axes (7x6)" in capsys.readouterr().out
    assert (out / "slices.png").stat().st_size > 0

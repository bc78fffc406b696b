"""fbpinn export --xdmf: XDMF descriptions of results files, read back with VTK's XDMF reader
(the reader ParaView uses)."""

import h5py
import numpy as np
import pytest

import fbpinn
from fbpinn.cli import main
from test_fields import ACOUSTIC, split_run
from test_parallel import needs_mpi

xdmf2 = pytest.importorskip("vtkmodules.vtkIOXdmf2")
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline  # noqa: E402

WAVE2D = {"problem": {"name": "wave2d", "velocity": "constant", "reference_h": 0.05},
          "decomposition": {"subdomains": [2, 2, 2], "overlap": 1.9}, "network": {"hidden": [4]},
          "training": {"steps": 2, "dtype": "float64", "points": [6, 6, 6]}, "test": {"points": [9, 7, 5]}}


def train(tmp_path, data, name="run"):
    path = tmp_path / name / "run.h5"
    path.parent.mkdir()
    fbpinn.save_results(path, fbpinn.train(fbpinn.load_config(data=data)))
    return path


def read_back(xdmf_path, h5_path, axes):
    """Open ``xdmf_path`` with VTK and check every time step's arrays and points against the file."""
    reader = xdmf2.vtkXdmfReader()
    reader.SetFileName(str(xdmf_path))
    reader.UpdateInformation()
    steps = reader.GetOutputInformation(0).Get(vtkStreamingDemandDrivenPipeline.TIME_STEPS())
    with h5py.File(h5_path) as f:
        sol = {k: v[()] for k, v in f["solution"].items()}
    timed = axes[-1] == "t" and len(axes) > 1
    if timed:
        assert np.allclose(steps, sol["axis_t"], rtol=0, atol=1e-12)
    else:
        assert steps is None
    names = [k for k in sol if not k.startswith("axis_")]
    space = axes[:-1] if timed else axes
    for k in (range(len(steps)) if timed else [None]):
        if timed:
            reader.UpdateTimeStep(steps[k])
        else:
            reader.Update()
        out = reader.GetOutputDataObject(0)
        n = int(np.prod([len(sol[f"axis_{a}"]) for a in space]))
        assert out.GetNumberOfPoints() == n
        data = out.GetPointData()
        assert sorted(data.GetArrayName(i) for i in range(data.GetNumberOfArrays())) == sorted(names)
        for name in names:
            want = sol[name][..., k] if timed else sol[name]
            assert np.array_equal(vtk_to_numpy(data.GetArray(name)), want.ravel()), (name, k)
        # Point coordinates: VTK's X is the last space axis (the fastest in the data).
        bounds = out.GetBounds()
        for d, a in enumerate(reversed(space)):
            assert bounds[2 * d] == pytest.approx(sol[f"axis_{a}"][0], abs=1e-6)
            assert bounds[2 * d + 1] == pytest.approx(sol[f"axis_{a}"][-1], abs=1e-6)
    return steps


@pytest.mark.parametrize("case", ["cos1d", "laplace2d", "acoustic_system", "wave2d"])
def test_xdmf_read_by_vtk_gives_the_datasets(tmp_path, case):
    data, axes = {
        "cos1d": ({"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4]}, "network": {"hidden": [4]},
                   "training": {"steps": 2, "dtype": "float64"}, "test": {"points": [40]}}, ["x"]),
        "laplace2d": ({"problem": {"name": "laplace2d_multiscale"}, "decomposition": {"subdomains": [2, 2]},
                       "network": {"hidden": [4]}, "training": {"steps": 2, "dtype": "float64", "points": [8, 8]},
                       "test": {"points": [11, 7]}}, ["x", "y"]),
        "acoustic_system": ({**ACOUSTIC, "training": {**ACOUSTIC["training"], "steps": 2}}, ["x", "t"]),
        "wave2d": (WAVE2D, ["x", "y", "t"]),
    }[case]
    path = train(tmp_path, data)
    assert main(["export", str(path), "--xdmf"]) == 0
    steps = read_back(path.with_suffix(".xdmf"), path, axes)
    if case == "wave2d":
        assert len(steps) == 5


@needs_mpi
def test_xdmf_of_a_split_solution_elsewhere(tmp_path):
    path = split_run(tmp_path, steps=2)
    out = tmp_path / "views" / "acoustic.xdmf"
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert "../p/run.h5:/solution/p" in out.read_text()  # relative to the XDMF file
    read_back(out, path, ["x", "t"])  # the virtual datasets, through the part files


def test_export_refuses_what_is_not_a_results_file(tmp_path, capsys):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5")
    assert main(["export", str(bad)]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err
    assert not (tmp_path / "x.xdmf").exists()

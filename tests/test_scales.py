"""Dimension scales: the results file's solution datasets read by netCDF tools (xarray with
h5netcdf) with their dimensions named by the test grid's axes."""

import h5py
import numpy as np
import pytest

import fbpinn
from fbpinn.io import read_results
from test_fields import run_cli, split_run
from test_parallel import needs_mpi

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")


def check_with_xarray(path, axes, names):
    """Open ``/solution`` of ``path`` with xarray and compare every dataset with h5py's reading."""
    with xr.open_dataset(path, engine="h5netcdf", group="solution") as ds, h5py.File(path) as f:
        assert tuple(ds.sizes) == tuple(f"axis_{a}" for a in axes)
        for a in axes:
            assert np.array_equal(ds[f"axis_{a}"].values, f[f"solution/axis_{a}"][()])
        for name in names:
            assert ds[name].dims == tuple(f"axis_{a}" for a in axes), name
            assert np.array_equal(ds[name].values, read_results(path)["solution"][name]), name


def test_one_field_file_names_its_dimensions(tmp_path):
    cfg = fbpinn.load_config(data={"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4]},
                                   "network": {"hidden": [4]}, "training": {"steps": 5, "dtype": "float64"},
                                   "test": {"points": [30]}})
    fbpinn.save_results(tmp_path / "run.h5", fbpinn.train(cfg))
    check_with_xarray(tmp_path / "run.h5", ["x"], ["u", "exact", "error"])


@needs_mpi
def test_system_split_over_ranks_and_merged_names_its_dimensions(tmp_path):
    split_run(tmp_path)
    names = ["p", "v", "exact_p", "exact_v", "error_p", "error_v"]
    with h5py.File(tmp_path / "p" / "run.h5") as f:
        assert f["solution/p"].is_virtual and f["solution/p"].dims[1].label == "t"
    check_with_xarray(tmp_path / "p" / "run.h5", ["x", "t"], names)  # HDF5 reads the part files
    merged = run_cli("merge", tmp_path / "p" / "run.h5")
    assert merged.returncode == 0, merged.stderr
    path = tmp_path / "p" / "run_merged.h5"
    with h5py.File(path) as f:
        assert not f["solution/p"].is_virtual
        assert f["solution/v"].dims[0][0] == f["solution/axis_x"]  # the scale itself, attached anew
    check_with_xarray(path, ["x", "t"], names)


@needs_mpi
def test_merge_reads_at_most_a_chunk_at_a_time(tmp_path, monkeypatch):
    # Out of core: every read merge makes holds at most `chunk` values, and the merged file holds
    # exactly what the split one reads as.
    import fbpinn.io as io

    path = split_run(tmp_path, steps=1)
    whole = read_results(path)
    sizes = []
    original = h5py.Dataset.__getitem__

    def counting(self, index):
        value = original(self, index)
        sizes.append(np.size(value))
        return value

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    out = io.merge(path, tmp_path / "m.h5", chunk=40)
    monkeypatch.undo()
    assert sizes and max(sizes) <= 40 and len(sizes) > 6 * (21 * 11) // 40
    merged = read_results(out)
    for name in ("p", "v", "exact_p", "error_v", "axis_x"):
        assert np.array_equal(merged["solution"][name], whole["solution"][name]), name
    assert np.array_equal(merged["parameters"]["level0"]["W0"], whole["parameters"]["level0"]["W0"])
    assert "parts" not in merged["solution"]["attrs"]

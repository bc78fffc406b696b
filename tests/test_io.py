"""Results files: written, read back, validated."""

import os

import h5py
import numpy as np
import pytest

import fbpinn
from conftest import make_config
from fbpinn.io import SCHEMA_VERSION, ResultsError, read_results, write_results


@pytest.fixture(scope="module")
def run():
    cfg = make_config({"name": "harmonic_oscillator_inverse", "observations": 6}, [4], steps=30, points=[40],
                      eval_every=10)
    return fbpinn.train(cfg)


def test_round_trip(run, tmp_path):
    path = write_results(tmp_path / "out" / "run.h5", run)
    data = read_results(path)
    a = data["attrs"]
    assert a["format"] == "fbpinn-results" and a["schema_version"] == SCHEMA_VERSION
    assert a["problem"] == "harmonic_oscillator_inverse" and a["n_ranks"] == 1
    assert fbpinn.load_config(data=__import__("tomllib").loads(a["config"])).training.steps == 30
    tr = data["training"]
    assert tr["step"].tolist() == [1, 10, 20, 30]
    assert np.array_equal(tr["loss_per_step"], np.asarray(run.loss_per_step))
    assert np.array_equal(tr["rel_l2"], np.asarray(run.history["rel_l2"]))
    assert tr["loss_terms"].shape == (4, 2) and tr["loss_terms.attrs"]["names"] == "physics,data"
    assert np.allclose(tr["loss_terms"].sum(1), tr["loss"], rtol=1e-12)
    sol = data["solution"]
    assert np.array_equal(sol["u"], run.u_test)
    assert np.allclose(sol["axis_t"], np.linspace(0, 1, 1000), rtol=0, atol=1e-15)
    assert np.allclose(sol["error"], sol["u"] - sol["exact"])
    rel = np.linalg.norm(sol["error"]) / np.linalg.norm(sol["exact"])
    assert rel == pytest.approx(tr["rel_l2"][-1], rel=1e-12)
    w = run.model.nets[0].weights[1].detach().numpy()
    assert np.array_equal(data["parameters"]["level0"]["W1"], w)
    assert data["decomposition"]["level0"]["centres"].shape == (4, 1)
    assert float(data["learned"]["mu"]) == pytest.approx(run.learned["mu"])
    assert data["observations"]["x"].shape == (6, 1)
    assert not list(tmp_path.joinpath("out").glob("*.tmp"))


def test_permissions_follow_umask(run, tmp_path):
    old = os.umask(0o022)
    try:
        path = write_results(tmp_path / "run.h5", run)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_is_atomic(run, tmp_path, monkeypatch):
    path = write_results(tmp_path / "run.h5", run)
    before = path.read_bytes()

    def broken(f, run, blocks=None, path=None):
        f["partial"] = np.zeros(3)
        raise RuntimeError("disk full")

    monkeypatch.setattr(fbpinn.io, "_fill", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_results(path, run)
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["run.h5"]  # no temporary left behind


def test_bad_files(tmp_path):
    with pytest.raises(ResultsError, match="no such file"):
        read_results(tmp_path / "none.h5")
    text = tmp_path / "x.h5"
    text.write_text("not hdf5")
    with pytest.raises(ResultsError, match="not a readable HDF5 file"):
        read_results(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["a"] = 1
    with pytest.raises(ResultsError, match="not an fbpinn results file"):
        read_results(other)
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "fbpinn-results"
        f.attrs["schema_version"] = 99
    with pytest.raises(ResultsError, match="schema version 99"):
        read_results(other)

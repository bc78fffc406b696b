"""Snapshots during training (output.snapshot_every): the fields on a grid every N steps in
snapshots.h5, readable while the run goes on, restart-safe and equal under MPI."""

import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from fbpinn.cli import main
from fbpinn.config import load_config
from fbpinn.io import Snapshots, read_results, read_snapshots
from fbpinn.trainer import build
from test_checkpoint import _train_process
from test_fields import ACOUSTIC, LOTKA, run_cli
from test_parallel import mpirun, needs_mpi, write_toml


def snapshots(folder) -> dict:
    with h5py.File(folder / "snapshots.h5") as f:
        return {k: v[()] for k, v in f.items() if isinstance(v, h5py.Dataset)} | {"attrs": dict(f.attrs)}


def test_snapshots_hold_the_fields_on_their_grid(tmp_path):
    cfg = write_toml({**LOTKA, "output": {"snapshot_every": 25}}, tmp_path / "c.toml")
    proc = run_cli("train", cfg, "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    snap, run = snapshots(tmp_path / "r"), read_results(tmp_path / "r" / "run.h5")
    assert snap["attrs"]["format"] == "fbpinn-snapshots" and snap["attrs"]["fields"] == "prey,predator"
    assert snap["step"].tolist() == [25, 50, 75, 100] and np.all(np.diff(snap["time"]) > 0)
    assert snap["prey"].shape == (4, 41)
    assert np.array_equal(snap["axis_t"], run["solution"]["axis_t"])
    # The last snapshot is the final solution (the same evaluation of the same model).
    assert np.array_equal(snap["predator"][-1], run["solution"]["predator"])
    # On a grid of their own: every second test point here.
    proc = run_cli("train", cfg, "--out", tmp_path / "g", "--set", "output.snapshot_points=[21]")
    assert proc.returncode == 0, proc.stderr
    snap = snapshots(tmp_path / "g")
    assert snap["prey"].shape == (4, 21) and np.array_equal(snap["axis_t"], run["solution"]["axis_t"][::2])
    assert np.abs(snap["prey"][-1] - run["solution"]["prey"][::2]).max() < 1e-12


def test_resumed_run_has_the_snapshots_of_the_uninterrupted_one(tmp_path):
    data = {**LOTKA, "output": {"snapshot_every": 20}, "checkpoint": {"every": 40}}
    cfg = write_toml(data, tmp_path / "c.toml")
    assert run_cli("train", cfg, "--out", tmp_path / "whole").returncode == 0
    part = run_cli("train", cfg, "--out", tmp_path / "part", "--set", "training.steps=70")
    assert part.returncode == 0, part.stderr
    assert snapshots(tmp_path / "part")["step"].tolist() == [20, 40, 60]
    # As if the run had died after step 60: its last checkpoint is that of step 40.
    (tmp_path / "part" / "checkpoints" / "step_000000070.h5").unlink()
    (tmp_path / "part" / "run.h5").unlink()
    resumed = run_cli("train", cfg, "--out", tmp_path / "part", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = snapshots(tmp_path / "whole"), snapshots(tmp_path / "part")
    assert b["step"].tolist() == [20, 40, 60, 80, 100]
    for name in ("prey", "predator"):
        assert np.array_equal(a[name], b[name])


@needs_mpi
def test_mpi_snapshots_equal_serial(tmp_path):
    cfg = write_toml({**ACOUSTIC, "output": {"snapshot_every": 50}}, tmp_path / "c.toml")
    assert run_cli("train", cfg, "--out", tmp_path / "s").returncode == 0
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "p")], timeout=300)
    assert proc.returncode == 0, proc.stderr
    a, b = snapshots(tmp_path / "s"), snapshots(tmp_path / "p")
    assert a["step"].tolist() == b["step"].tolist() == [50, 100]
    for name in ("p", "v"):
        assert np.abs(a[name] - b[name]).max() < 1e-9


def test_snapshots_can_be_read_while_the_run_goes_on(tmp_path):
    cfg = write_toml({**LOTKA, "output": {"snapshot_every": 50}, "checkpoint": {"every": 0},
                      "training": {**LOTKA["training"], "log_every": 50}}, tmp_path / "c.toml")
    proc = _train_process(cfg, tmp_path / "r", "--set", "training.steps=10000000")
    seen, deadline = [], time.time() + 120
    try:
        while time.time() < deadline and len(seen) < 3:
            assert proc.poll() is None, proc.stderr.read()
            try:  # close after write: between appends the file is closed; during one, HDF5 refuses to open it
                with h5py.File(tmp_path / "r" / "snapshots.h5", "r") as f:
                    steps, prey = f["step"][()], f["prey"][()]
            except (OSError, KeyError):
                time.sleep(0.05)
                continue
            if len(steps) and (not seen or steps[-1] != seen[-1][0][-1]):
                seen.append((steps, prey))
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert len(seen) == 3, "no three distinct readings while training"
    for steps, prey in seen:
        assert steps.tolist() == list(range(50, 50 * len(steps) + 1, 50))
        assert prey.shape == (len(steps), 41) and np.isfinite(prey).all()
    assert proc.returncode == 75  # stopped on the signal, after a checkpoint


@pytest.mark.parametrize("value,message", [("output.snapshot_every=-1", "output.snapshot_every"),
                                           ("output.snapshot_points=[5,5]", "must list 1 count(s) >= 2"),
                                           ("output.snapshot_points=[1]", "must list 1 count(s) >= 2")])
def test_bad_snapshot_settings_are_config_errors(tmp_path, capsys, value, message):
    cfg = write_toml(LOTKA, tmp_path / "c.toml")
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--set", value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("case", ["lotka", "acoustic"])
def test_snapshots_are_plotted_and_summarised(tmp_path, capsys, case):
    data = {"lotka": LOTKA, "acoustic": ACOUSTIC}[case]
    cfg = write_toml({**data, "output": {"snapshot_every": 20}}, tmp_path / "c.toml")
    assert run_cli("train", cfg, "--out", tmp_path / "r").returncode == 0
    path = tmp_path / "r" / "snapshots.h5"
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "5 snapshot(s)" in out and "steps 20 .. 100" in out
    assert main(["plot", str(path), "--out-dir", str(tmp_path / "figs")]) == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == (["snapshots.png"] if case == "lotka" else ["snapshots.gif", "snapshots.png"])
    if case == "acoustic":
        from PIL import Image

        with Image.open(tmp_path / "figs" / "snapshots.gif") as im:
            assert im.n_frames == 5


def test_damaged_snapshots_file_is_refused(tmp_path, capsys):
    cfg = write_toml({**LOTKA, "output": {"snapshot_every": 50}}, tmp_path / "c.toml")
    assert run_cli("train", cfg, "--out", tmp_path / "r").returncode == 0
    path = tmp_path / "r" / "snapshots.h5"
    with h5py.File(path, "a") as f:
        f["time"].resize(1, axis=0)
    for command in ("info", "plot"):
        assert main([command, str(path)]) == 2
        assert "/time has 1 entries, /step 2" in capsys.readouterr().err
    assert not (tmp_path / "r" / "snapshots.png").exists()


def _hold_open(path, seconds):
    """Another process that holds ``path`` open for reading (HDF5 locks it) for ``seconds``."""
    code = "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r'); print('open', flush=True); time.sleep(float(sys.argv[2]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_an_append_waits_for_a_reader_and_skips_past_one_that_stays(tmp_path, caplog):
    # A reader holding the file (a user's h5py session, ParaView) must never stop the training.
    cfg = load_config(data={**LOTKA, "output": {"snapshot_every": 50}})
    problem = build(cfg)[0]
    path = tmp_path / "snapshots.h5"
    snaps = Snapshots(path, problem, cfg, problem.domain.grid_axes([11]))
    u = np.ones((11, 2))
    reader = _hold_open(path, 1.0)
    snaps.append(1, 0.1, u)  # waits for the reader to let go
    assert reader.wait() == 0
    assert read_snapshots(path)["step"].tolist() == [1]
    snaps.LOCK_WAIT = 0.3
    reader = _hold_open(path, 60)
    try:
        with caplog.at_level("WARNING", logger="fbpinn"):
            snaps.append(2, 0.2, u)
        assert "snapshot of step 2 skipped" in caplog.text and "held open by another program" in caplog.text
    finally:
        reader.kill()
        reader.wait()
    snaps.append(3, 0.3, 3 * u)
    back = read_snapshots(path)
    assert back["step"].tolist() == [1, 3] and back["fields"]["predator"][1].tolist() == [3.0] * 11

"""Checkpoints and restarts: resumed runs equal uninterrupted ones, on any number of ranks;
stop signals, SIGKILL at random moments, and non-finite losses lose nothing."""

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import h5py
import numpy as np
import pytest

from fbpinn import checkpoint as ckpt
from fbpinn.cli import EXIT_STOPPED, main
from fbpinn.io import read_results
from conftest import blow_up_at
from test_parallel import INVERSE, LAPLACE, MPIEXEC, WAVE_MARCH, mpirun, needs_mpi, write_toml

# Random points, redrawn every 7 steps: a checkpoint between two redraws must bring them back.
LAPLACE_SOBOL = {**LAPLACE, "training": {**LAPLACE["training"], "sampler": "sobol", "resample_every": 7}}


def train_cli(cfg_path, out, *extra):
    return main(["train", str(cfg_path), "--out", str(out), *extra])


def resumed_equals_whole(tmp_path, data: dict, split: int) -> dict:
    """Train ``data`` whole, and again stopped after ``split`` steps then resumed; assert the two
    results agree (to 1e-12) and return the whole run's."""
    cfg = write_toml({**data, "checkpoint": {"every": split}}, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "whole") == 0
    assert train_cli(cfg, tmp_path / "part", "--set", f"training.steps={split}") == 0
    assert train_cli(cfg, tmp_path / "part", "--resume") == 0
    whole = read_results(tmp_path / "whole" / "run.h5")
    same(whole, read_results(tmp_path / "part" / "run.h5"), rtol=1e-12)
    return whole


def checkpoints_resume_exactly(tmp_path, data: dict, steps, every: int = 5) -> None:
    """Train ``data`` whole with a checkpoint every ``every`` steps; resume a copy of each checkpoint
    of ``steps`` alone, as after a crash, and assert it ends as the whole run did (loss of every
    step bit for bit, the rest to 1e-12)."""
    cfg = write_toml({**data, "checkpoint": {"every": every, "keep": 1000}}, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "whole") == 0
    whole = read_results(tmp_path / "whole" / "run.h5")
    for step in steps:
        out = tmp_path / f"from{step}"
        (out / "checkpoints").mkdir(parents=True)
        shutil.copy(ckpt.path_for(tmp_path / "whole" / "checkpoints", step), out / "checkpoints")
        assert train_cli(cfg, out, "--resume") == 0
        parts = read_results(out / "run.h5")
        same(whole, parts, rtol=1e-12)
        assert np.abs(whole["training"]["loss_per_step"] - parts["training"]["loss_per_step"]).max() == 0.0


def parallel_equals_serial(tmp_path, data: dict, ranks: int = 2, rtol: float = 1e-8) -> str:
    """Train ``data`` serially and on ``ranks`` MPI ranks; assert the results agree to ``rtol`` and
    return the parallel run's output."""
    cfg_path = write_toml(data, tmp_path / "c.toml")
    assert train_cli(cfg_path, tmp_path / "serial") == 0
    proc = mpirun(ranks, ["-m", "fbpinn", "train", str(cfg_path), "--out", str(tmp_path / "p")])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    same(read_results(tmp_path / "serial" / "run.h5"), read_results(tmp_path / "p" / "run.h5"), rtol=rtol)
    return proc.stdout


def same(a: dict, b: dict, rtol: float) -> None:
    """Loss history, parameters, learned constants and solution of two results files agree."""
    la, lb = a["training"]["loss_per_step"], b["training"]["loss_per_step"]
    assert len(la) == len(lb)
    assert np.abs(la - lb).max() <= rtol * np.abs(la).max()
    for level, group in a["parameters"].items():
        if level == "attrs":
            continue
        for key, arr in group.items():
            if key != "attrs":
                other = b["parameters"][level][key]
                assert np.abs(other - arr).max() <= rtol * max(np.abs(arr).max(), 1.0), f"{level}/{key}"
    for key, value in a.get("learned", {}).items():
        if key != "attrs":
            assert float(b["learned"][key]) == pytest.approx(float(value), rel=rtol)
    assert np.abs(a["solution"]["u"] - b["solution"]["u"]).max() <= rtol * 10
    # Evaluations at the same steps agree too (a resumed run also has one where it stopped).
    sa, sb = list(a["training"]["step"]), list(b["training"]["step"])
    common = [s for s in sa if s in sb]
    assert len(common) >= 2
    ea = a["training"]["rel_l2"][[sa.index(s) for s in common]]
    eb = b["training"]["rel_l2"][[sb.index(s) for s in common]]
    assert np.abs(ea - eb).max() <= rtol * 10


@pytest.mark.parametrize("case", ["laplace_sobol", "wave_march", "inverse"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, case):
    # The uninterrupted run writes a checkpoint midway; a run resumed from it alone (as
    # after a crash) must end the same.
    data = {"laplace_sobol": LAPLACE_SOBOL, "wave_march": WAVE_MARCH, "inverse": INVERSE}[case]
    total, half = {"wave_march": (120, 45)}.get(case, (100, 50))  # wave_march: stops inside slab 2
    cfg = write_toml({**data, "checkpoint": {"every": half, "keep": 5}}, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "whole", "--set", f"training.steps={total}") == 0
    midway = ckpt.path_for(tmp_path / "whole" / "checkpoints", half)
    (tmp_path / "parts" / "checkpoints").mkdir(parents=True)
    shutil.copy(midway, tmp_path / "parts" / "checkpoints")
    assert train_cli(cfg, tmp_path / "parts", "--resume", "--set", f"training.steps={total}") == 0
    whole, parts = read_results(tmp_path / "whole" / "run.h5"), read_results(tmp_path / "parts" / "run.h5")
    same(whole, parts, rtol=1e-12)
    np.testing.assert_array_equal(whole["training"]["step"], parts["training"]["step"])


def test_checkpoint_holds_the_whole_state(tmp_path):
    cfg = write_toml({**INVERSE, "checkpoint": {"every": 20, "keep": 2}}, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "r", "--set", "training.steps=70") == 0
    found = ckpt.listing(tmp_path / "r" / "checkpoints")
    assert [s for s, _ in found] == [70, 60]  # every 20 and the last step; the newest 2 kept
    state = ckpt.read(found[0][1])
    assert state["step"] == 70 and state["n_ranks"] == 1
    assert len(state["loss_per_step"]) == 70
    results = read_results(tmp_path / "r" / "run.h5")
    np.testing.assert_array_equal(state["arrays"]["parameters/level0/W0"], results["parameters"]["level0"]["W0"])
    assert float(state["arrays"]["parameters/problem/mu"]) == pytest.approx(float(results["learned"]["mu"]))
    assert state["adam_steps"]["level0/W0"] == 70.0
    assert state["arrays"]["exp_avg_sq/level0/W0"].shape == state["arrays"]["parameters/level0/W0"].shape
    with h5py.File(found[0][1]) as f:
        assert f.attrs["format"] == "fbpinn-checkpoint" and "rng/sampler" in f


def test_resume_refuses_what_does_not_fit(tmp_path, capsys):
    cfg = write_toml(LAPLACE, tmp_path / "c.toml")
    out = tmp_path / "r"
    assert train_cli(cfg, out, "--set", "training.steps=30") == 0
    capsys.readouterr()
    # Starting over a finished run needs --overwrite; over a folder with checkpoints it would mix two runs.
    assert train_cli(cfg, out) == 2
    assert "run.h5 holds a finished run" in capsys.readouterr().err
    (out / "run.h5").rename(tmp_path / "run.h5")
    assert train_cli(cfg, out) == 2
    assert "holds checkpoints of an earlier run (newest: step 30); continue it with --resume" in capsys.readouterr().err
    (tmp_path / "run.h5").rename(out / "run.h5")
    assert train_cli(cfg, out, "--resume", "--set", "network.hidden=[6]") == 2
    err = capsys.readouterr().err
    assert "was written with network.hidden = [8], this config has [6]" in err
    assert train_cli(cfg, out, "--resume", "--set", "training.steps=20") == 2
    assert "is at step 30, beyond training.steps = 20" in capsys.readouterr().err
    # An unreadable newest checkpoint is skipped for the one before it.
    (out / "checkpoints" / "step_000000040.h5").write_bytes(b"not hdf5")
    assert train_cli(cfg, out, "--resume", "--set", "training.steps=35") == 0
    assert read_results(out / "run.h5")["training"]["loss_per_step"].shape == (35,)


def test_resume_without_checkpoint_starts_at_step_one(tmp_path):
    cfg = write_toml(LAPLACE, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "r", "--resume", "--set", "training.steps=20") == 0
    assert read_results(tmp_path / "r" / "run.h5")["training"]["loss_per_step"].shape == (20,)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    blow_up_at(monkeypatch, 26)
    cfg = write_toml({**LAPLACE, "checkpoint": {"every": 10}}, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "r") == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 26" in err and "the last checkpoint is" in err and "step_000000020.h5" in err
    found = ckpt.listing(tmp_path / "r" / "checkpoints")
    assert [s for s, _ in found] == [20, 10]
    state = ckpt.read(found[0][1])
    assert all(np.isfinite(v).all() for v in state["arrays"].values())
    assert not (tmp_path / "r" / "run.h5").exists()


def _train_process(cfg_path, out, *extra, command=None):
    """``fbpinn train`` (or ``command``) in a subprocess; its stdout lines are collected as they come."""
    command = command or [sys.executable, "-m", "fbpinn", "train", str(cfg_path), "--out", str(out), *extra]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.lines = []
    threading.Thread(target=lambda: proc.lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc


def _wait_for_training(proc, timeout=90):
    """Wait until the run has logged a progress line."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(" loss " in line for line in proc.lines):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no progress line in time")


def _training_ranks(tmp_path, ranks: int = 2, steps: int = 10_000_000):
    """``fbpinn train`` of a run that would not end by itself on ``ranks`` ranks under mpiexec,
    once it trains: (the mpiexec process, the ranks' pids)."""
    cfg = write_toml({**LAPLACE, "training": {**LAPLACE["training"], "log_every": 10}, "checkpoint": {"every": 0}},
                     tmp_path / "c.toml")
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from mpi4py import MPI
        from fbpinn.cli import main
        Path({str(tmp_path)!r}, f"pid{{MPI.COMM_WORLD.Get_rank()}}").write_text(str(os.getpid()))
        sys.exit(main(["train", {str(cfg)!r}, "--out", {str(tmp_path / 'r')!r}, "--set", "training.steps={steps}"]))
    """))
    proc = _train_process(None, None, command=[MPIEXEC, "-n", str(ranks), sys.executable, str(script)])
    try:
        _wait_for_training(proc)
    except BaseException:
        proc.kill()
        raise
    return proc, [int((tmp_path / f"pid{r}").read_text()) for r in range(ranks)]


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_stop_signal_checkpoints_and_resume_equals_uninterrupted(tmp_path, signame):
    cfg = write_toml({**LAPLACE, "training": {**LAPLACE["training"], "log_every": 10}, "checkpoint": {"every": 0}},
                     tmp_path / "c.toml")
    out = tmp_path / "r"
    proc = _train_process(cfg, out, "--set", "training.steps=100000")
    try:
        _wait_for_training(proc)
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=60)
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert proc.returncode == EXIT_STOPPED, stderr
    found = ckpt.listing(out / "checkpoints")
    assert len(found) == 1
    stopped = found[0][0]
    assert f"stopped at step {stopped} of 100000 on {signame}" in stderr and "go on with --resume" in stderr
    assert not (out / "run.h5").exists()
    assert train_cli(cfg, out, "--resume", "--set", f"training.steps={stopped + 20}") == 0
    assert train_cli(cfg, tmp_path / "whole", "--set", f"training.steps={stopped + 20}") == 0
    same(read_results(tmp_path / "whole" / "run.h5"), read_results(out / "run.h5"), rtol=1e-12)


def test_killed_at_random_moments_always_resumes(tmp_path):
    # SIGKILL lands anywhere: during start-up, training, or the write of a checkpoint
    # (written every 2 steps, so often).  No file may be left unreadable, and the
    # finished run must equal an uninterrupted one.
    cfg = write_toml({**LAPLACE, "training": {**LAPLACE["training"], "steps": 400, "log_every": 50},
                      "checkpoint": {"every": 2, "keep": 3}}, tmp_path / "c.toml")
    out = tmp_path / "r"
    rng = random.Random(1)
    progress = []
    for _ in range(10):
        proc = _train_process(cfg, out, "--resume")
        try:
            time.sleep(rng.uniform(1.0, 6.0))  # start-up takes about 3 s, 400 steps about 7 s
        finally:
            proc.kill()
            proc.wait()
        for step, path in ckpt.listing(out / "checkpoints"):
            ckpt.read(path)  # raises if unreadable
        if (out / "run.h5").exists():
            read_results(out / "run.h5")
        progress.append(max([s for s, _ in ckpt.listing(out / "checkpoints")], default=0))
    assert progress[-1] > 0  # the kills did not all land before the first checkpoint
    assert progress == sorted(progress)  # a resume never goes back
    assert train_cli(cfg, out, "--resume") == 0
    assert not list(out.glob(".*.tmp")) and not list((out / "checkpoints").glob(".*.tmp"))
    assert train_cli(cfg, tmp_path / "whole") == 0
    same(read_results(tmp_path / "whole" / "run.h5"), read_results(out / "run.h5"), rtol=1e-12)


@needs_mpi
def test_mpi_resume_on_other_rank_counts(tmp_path):
    cfg = write_toml(LAPLACE, tmp_path / "c.toml")
    serial = tmp_path / "serial"
    assert train_cli(cfg, serial, "--set", "training.steps=100") == 0
    two = tmp_path / "two"
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(two), "--set", "training.steps=100"])
    assert proc.returncode == 0, proc.stderr
    # 2 ranks for 50 steps, then 2 ranks again: equal to the uninterrupted 2-rank run.
    again = tmp_path / "again"
    for n, extra in ((2, []), (2, ["--resume"])):
        steps = 50 if not extra else 100
        proc = mpirun(n, ["-m", "fbpinn", "train", str(cfg), "--out", str(again), "--set", f"training.steps={steps}",
                          *extra])
        assert proc.returncode == 0, proc.stderr
    same(read_results(two / "run.h5"), read_results(again / "run.h5"), rtol=1e-12)
    # 2 ranks for 50 steps, then 3, then 1: equal to the one-process run.
    other = tmp_path / "other"
    for n, steps, extra in ((2, 50, []), (3, 80, ["--resume"])):
        proc = mpirun(n, ["-m", "fbpinn", "train", str(cfg), "--out", str(other), "--set", f"training.steps={steps}",
                          *extra])
        assert proc.returncode == 0, proc.stderr
        assert "written by 2 rank(s)" in proc.stdout or not extra
    assert train_cli(cfg, other, "--resume", "--set", "training.steps=100") == 0
    same(read_results(serial / "run.h5"), read_results(other / "run.h5"), rtol=1e-9)


@needs_mpi
def test_mpi_stop_signal_to_one_rank_stops_all(tmp_path):
    proc, pids = _training_ranks(tmp_path, steps=1000000)
    cfg = tmp_path / "c.toml"  # the config _training_ranks wrote
    try:
        os.kill(pids[1], signal.SIGUSR1)
        proc.wait(timeout=60)
        stderr = proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == EXIT_STOPPED, stderr
    found = ckpt.listing(tmp_path / "r" / "checkpoints")
    assert len(found) == 1
    stopped = found[0][0]
    assert f"stopped at step {stopped} of 1000000 on a signal to another rank" in stderr
    out = tmp_path / "r"
    assert train_cli(cfg, out, "--resume", "--set", f"training.steps={stopped + 10}") == 0
    assert train_cli(cfg, tmp_path / "whole", "--set", f"training.steps={stopped + 10}") == 0
    same(read_results(tmp_path / "whole" / "run.h5"), read_results(out / "run.h5"), rtol=1e-9)


@pytest.mark.parametrize("override,message", [
    ("checkpoint.every=-1", "config: checkpoint.every: must be >= 0 (0: only at the end and on a stop signal), got -1"),
    ("checkpoint.keep=0", "config: checkpoint.keep: must be >= 1, got 0"),
    ("checkpoint.often=3", "config: checkpoint.often: unknown key; allowed: every, keep"),
])
def test_checkpoint_config_errors(tmp_path, capsys, override, message):
    cfg = write_toml(LAPLACE, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "r", "--set", override) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

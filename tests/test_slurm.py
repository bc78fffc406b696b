"""The Slurm templates on a real single-node Slurm (started for these tests and stopped after).

A chained training job reaches its time limit, is signalled, checkpoints, and is resumed by
the next job of the chain; the result equals an uninterrupted run.  Skipped where the local
Slurm tools (../shared/tools/start-local-slurm.sh) are not beside the repository or the tests
do not run as root.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fbpinn import checkpoint as ckpt
from fbpinn.io import read_results
from test_parallel import LAPLACE, mpirun, needs_mpi, write_toml

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(os.environ.get("FBPINN_SLURM_TOOLS", ROOT.parent / "shared" / "tools"))
START, STOP = TOOLS / "start-local-slurm.sh", TOOLS / "stop-local-slurm.sh"

pytestmark = pytest.mark.skipif(not START.is_file() or os.geteuid() != 0,
                                reason="needs root and the local Slurm tools in ../shared/tools")


@pytest.fixture(scope="module")
def slurm():
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"could not start the local Slurm:\n{proc.stderr[-2000:]}")
    yield
    subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=120)


def job_env(tmp_path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["FBPINN"] = f"{sys.executable} -m fbpinn"
    for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "PMI_"))]:
        del env[key]  # a test run inside a Slurm job must not pass its own job's settings on
    return env


def wait_for(job_ids, timeout):
    """Wait until none of the jobs is pending or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True,
                             text=True).stdout
        if not out.strip():
            return
        time.sleep(2)
    subprocess.run(["scancel", *job_ids])
    raise AssertionError(f"jobs {job_ids} still queued or running after {timeout} s")


@needs_mpi
def test_time_limit_signal_checkpoint_and_chained_restart(slurm, tmp_path):
    # About 50 s of training on 2 ranks (and 5 s of start-up); each job may run 1 minute and
    # is signalled 20 s ahead of its limit (Slurm checks time limits about every 30 s, so the
    # signal comes 10-40 s after the start).  The first job cannot finish; the chain resumes it.
    steps = 4500
    cfg = write_toml({**LAPLACE, "training": {**LAPLACE["training"], "steps": steps, "log_every": 200,
                                              "eval_every": 500},
                      "checkpoint": {"every": 500, "keep": 2}}, tmp_path / "c.toml")
    env = {**job_env(tmp_path), "FBPINN_OUT": str(tmp_path / "run")}
    # Restarts to spare: a job signalled early trains only a few seconds; the unused ones are
    # cancelled when the run finishes.
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "chain.sh"), "8", "--ntasks=2", "--cpus-per-task=1",
                           "--time=1", "--signal=USR1@20", f"--output={tmp_path}/job-%j.out", "--",
                           str(cfg)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.split()
    assert len(ids) == 9 and all(i.isdigit() for i in ids)
    wait_for(ids, timeout=600)
    logs = {i: (tmp_path / f"job-{i}.out").read_text() if (tmp_path / f"job-{i}.out").exists() else None
            for i in ids}
    first = logs[ids[0]]
    assert first is not None
    assert re.search(r"stopped at step \d+ of 4500 on SIGUSR1", first), first
    assert "stopped ahead of the time limit with a checkpoint" in first
    second = logs[ids[1]]
    assert second is not None and "resumed from" in second, second
    finished = [i for i in ids if logs[i] and "fbpinn: finished:" in logs[i]]
    assert len(finished) == 1, logs
    # The restarts after the one that finished never ran (their dependency cannot be met).
    assert all(logs[i] is None for i in ids[ids.index(finished[0]) + 1:])
    # The same 2 ranks without interruption (over thousands of steps, rounding differences between
    # rank counts grow past 1e-9: the one-process run is not the comparison here).
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "whole")], timeout=300)
    assert proc.returncode == 0, proc.stderr
    whole, chained = read_results(tmp_path / "whole" / "run.h5"), read_results(tmp_path / "run" / "run.h5")
    assert int(chained["attrs"]["n_ranks"]) == 2
    la, lb = whole["training"]["loss_per_step"], chained["training"]["loss_per_step"]
    assert len(lb) == steps
    assert np.abs(la - lb).max() <= 1e-12 * np.abs(la).max()
    w, c = whole["parameters"]["level0"]["W0"], chained["parameters"]["level0"]["W0"]
    assert np.abs(w - c).max() <= 1e-12 * np.abs(w).max()
    assert [s for s, _ in ckpt.listing(tmp_path / "run" / "checkpoints")][0] == steps


def test_srun_without_mpi_plugin_is_refused(slurm, tmp_path):
    cfg = write_toml(LAPLACE, tmp_path / "c.toml")
    proc = subprocess.run(["srun", "--ntasks=2", "--mpi=none", "--time=1", sys.executable, "-m", "fbpinn", "train",
                           str(cfg), "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=tmp_path,
                          env=job_env(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("(SLURM_STEP_NUM_TASKS=2) but MPI reports a job of 1 rank") == 2
    assert "use srun --mpi=pmi2" in proc.stderr
    assert not (tmp_path / "r" / "run.h5").exists()


def test_sweep_array_over_set_values(slurm, tmp_path):
    cfg = write_toml({**LAPLACE, "training": {**LAPLACE["training"], "steps": 20}}, tmp_path / "c.toml")
    env = {**job_env(tmp_path), "FBPINN_OUT": str(tmp_path / "sweep")}
    proc = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--time=1", f"--output={tmp_path}/s-%A_%a.out",
                           str(ROOT / "slurm" / "sweep.sbatch"), str(cfg), "--", "training.lr=1e-3",
                           "training.lr=1e-2"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    wait_for([proc.stdout.strip().split(";")[0]], timeout=180)
    runs = {lr: read_results(tmp_path / "sweep" / "c" / f"training.lr={lr}" / "run.h5") for lr in ("1e-3", "1e-2")}
    assert "lr = 0.01" in runs["1e-2"]["attrs"]["config"] and "lr = 0.001" in runs["1e-3"]["attrs"]["config"]
    assert not np.allclose(runs["1e-3"]["training"]["loss_per_step"], runs["1e-2"]["training"]["loss_per_step"])


def test_chain_rejects_bad_arguments(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "chain.sh"), "two", "--", "c.toml"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "N must be a number of restarts" in proc.stderr

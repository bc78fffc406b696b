"""The Slurm templates on a real single-node Slurm (started for these tests and stopped after).

A chained training job reaches its time limit, is signalled, checkpoints, and is resumed by
the next job of the chain; a job one of whose tasks is killed ends at once and the chain goes
on; in both, the result equals an uninterrupted run.  Skipped where the local
Slurm tools (../shared/tools/start-local-slurm.sh) are not beside the repository or the tests
do not run as root.
"""

import os
import re
import signal
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


def stale_mpich_segments() -> list[Path]:
    """MPICH's shared-memory segments in /dev/shm that no process has open or mapped.

    A rank killed outright (as several tests do) leaves its segment behind.  The local Slurm
    numbers jobs from 1 again each time it starts, and a new job step whose segment name
    matches a stale one attaches to it: MPI_Init then fails ("invalid bandwidth 0.00",
    "Message truncated") or hangs."""
    held = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            held.update(line.split()[-1] for line in (proc / "maps").read_text().splitlines()
                        if "/dev/shm/mpich_shm_" in line)
            held.update(os.readlink(fd) for fd in (proc / "fd").iterdir())
        except OSError:  # the process ended, or is not ours to read
            continue
    return [p for p in Path("/dev/shm").glob("mpich_shm_*") if str(p) not in held]


@pytest.fixture(scope="module")
def slurm():
    for segment in stale_mpich_segments():
        segment.unlink(missing_ok=True)
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


@pytest.fixture
def submitted():
    """Job ids the test submitted; those still queued (held restarts) are cancelled after it."""
    ids = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def chain(tmp_path, submitted, cfg, restarts: int, *sbatch_options) -> list[str]:
    """Submit a chain of 2-task jobs (slurm/chain.sh) and hold its restarts: the test lets them
    run (:func:`release`) once it has set the config's training.steps to a few steps past the
    checkpoint the first job left, so that no outcome depends on how fast the machine trains."""
    env = {**job_env(tmp_path), "FBPINN_OUT": str(tmp_path / "run")}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "chain.sh"), str(restarts), "--ntasks=2", "--cpus-per-task=1",
                           *sbatch_options, f"--output={tmp_path}/job-%j.out", "--", str(cfg)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.split()
    assert len(ids) == restarts + 1 and all(i.isdigit() for i in ids)
    submitted.extend(ids)
    subprocess.run(["scontrol", "hold", *ids[1:]], check=True, capture_output=True, timeout=30)
    return ids


def release(ids) -> None:
    subprocess.run(["scontrol", "release", *ids], check=True, capture_output=True, timeout=30)


def job_log(tmp_path, job_id) -> str | None:
    path = tmp_path / f"job-{job_id}.out"
    return path.read_text() if path.exists() else None


def laplace_config(tmp_path, steps: int, **checkpoint) -> Path:
    return write_toml({**LAPLACE, "training": {**LAPLACE["training"], "steps": steps, "log_every": 100,
                                               "eval_every": 500},
                       "checkpoint": {"every": 500, "keep": 2, **checkpoint}}, tmp_path / "c.toml")


def finish_like_an_uninterrupted_run(tmp_path, ids, stopped: int, more: int) -> None:
    """Let the held second job of the chain train from step ``stopped`` to ``stopped + more``;
    it must resume, finish, cancel the rest of the chain, and equal an uninterrupted 2-rank run."""
    steps = stopped + more
    cfg = laplace_config(tmp_path, steps)  # training.steps may change between the jobs of a run
    release(ids[1:2])
    wait_for(ids, timeout=300)
    second = job_log(tmp_path, ids[1])
    assert second is not None
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / f'step_{stopped:09d}.h5'} at step {stopped} of {steps}" \
        in second, second
    assert f"fbpinn: finished: {tmp_path / 'run'}/run.h5" in second, second
    assert all(job_log(tmp_path, i) is None for i in ids[2:])  # cancelled: the run had finished
    # The same 2 ranks without interruption (over thousands of steps, rounding differences between
    # rank counts grow past 1e-9: the one-process run is not the comparison here).
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "whole")], timeout=600)
    assert proc.returncode == 0, proc.stderr
    whole, chained = read_results(tmp_path / "whole" / "run.h5"), read_results(tmp_path / "run" / "run.h5")
    assert int(chained["attrs"]["n_ranks"]) == 2
    la, lb = whole["training"]["loss_per_step"], chained["training"]["loss_per_step"]
    assert len(lb) == steps
    assert np.abs(la - lb).max() <= 1e-12 * np.abs(la).max()
    w, c = whole["parameters"]["level0"]["W0"], chained["parameters"]["level0"]["W0"]
    assert np.abs(w - c).max() <= 1e-12 * np.abs(w).max()
    assert [s for s, _ in ckpt.listing(tmp_path / "run" / "checkpoints")][0] == steps


@needs_mpi
def test_time_limit_signal_checkpoint_and_chained_restart(slurm, tmp_path, submitted):
    # The first job could not finish 10 million steps on any machine: it is signalled 50 s ahead
    # of its 1-minute limit (Slurm checks time limits about every 30 s, so the signal comes
    # 10-40 s after the start, perhaps still during start-up), checkpoints and exits with 75.
    # The held restart then trains 300 steps more and finishes; the third job never runs.
    cfg = laplace_config(tmp_path, 10**7)
    ids = chain(tmp_path, submitted, cfg, 2, "--time=1", "--signal=USR1@50")
    wait_for(ids[:1], timeout=300)
    first = job_log(tmp_path, ids[0])
    assert first is not None
    found = re.search(r"fbpinn: stopped at step (\d+) of 10000000 on SIGUSR1; checkpoint (\S+); go on with --resume",
                      first)
    assert found, first
    assert "stopped ahead of the time limit with a checkpoint" in first
    stopped = int(found.group(1))
    assert ckpt.listing(tmp_path / "run" / "checkpoints")[0] == (stopped, Path(found.group(2)))
    finish_like_an_uninterrupted_run(tmp_path, ids, stopped, 300)


@needs_mpi
def test_killed_task_ends_the_job_and_the_chain_resumes(slurm, tmp_path, submitted):
    # SIGKILL of one of the two tasks: srun --kill-on-bad-exit ends the step (without it the
    # other rank waits for the dead one until the time limit), the job fails, and the next job
    # of the chain resumes from the newest checkpoint.
    cfg = laplace_config(tmp_path, 10**7, every=20)
    ids = chain(tmp_path, submitted, cfg, 2, "--time=10")
    deadline = time.time() + 300
    while not ckpt.listing(tmp_path / "run" / "checkpoints"):
        queued = subprocess.run(["squeue", "-h", "-j", ids[0]], capture_output=True, text=True).stdout.strip()
        assert queued and time.time() < deadline, f"the first job wrote no checkpoint:\n{job_log(tmp_path, ids[0])}"
        time.sleep(0.5)
    listing = subprocess.run(["scontrol", "listpids", ids[0]], capture_output=True, text=True, timeout=30).stdout
    task1 = [int(row.split()[0]) for row in listing.splitlines()[1:] if row.split()[2:5] == ["0", "1", "1"]]
    assert len(task1) == 1, listing
    os.kill(task1[0], signal.SIGKILL)
    wait_for(ids[:1], timeout=60)  # raises (and cancels the jobs) if the job outlives the dead task
    first = job_log(tmp_path, ids[0])
    assert re.search(r"fbpinn: failed with status \d+; the newest checkpoint in \S+ is kept", first), first
    assert "fbpinn: stopped" not in first
    stopped = ckpt.listing(tmp_path / "run" / "checkpoints")[0][0]
    assert stopped % 20 == 0
    finish_like_an_uninterrupted_run(tmp_path, ids, stopped, 40)


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
    # A limit far beyond the run: sweep.sbatch asks for SIGUSR1 180 s ahead of it, which with a
    # shorter limit would come at once and stop the runs after their first step.
    proc = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--time=10", f"--output={tmp_path}/s-%A_%a.out",
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

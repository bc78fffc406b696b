"""Stop signals at every moment: during start-up (before torch is imported), and under MPI
with a peer that is frozen or dead (the watchdog of fbpinn.signals aborts the job); the
Slurm batch scripts never evaluate their environment variables."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fbpinn import checkpoint as ckpt
from fbpinn import signals
from fbpinn.cli import EXIT_STOPPED, main
from test_checkpoint import _training_ranks
from test_parallel import LAPLACE, needs_mpi, write_toml

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_cli_imports_nothing_slow():
    code = ("import sys, fbpinn, fbpinn.cli, fbpinn.signals; "
            "print(sorted(m for m in ('torch', 'numpy', 'h5py', 'mpi4py') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    # The public names still import on first use.
    code = ("import fbpinn; from fbpinn import load_config, train, save_results, load_results, ConfigError; "
            "print(fbpinn.__version__, train.__module__, load_results.__name__, fbpinn.registry.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0.1.0", "fbpinn.trainer", "read_results", "fbpinn.registry"]
    proc = subprocess.run([sys.executable, "-c", "import fbpinn; fbpinn.no_such_name"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "AttributeError: module 'fbpinn' has no attribute 'no_such_name'" in proc.stderr
    # `fbpinn train` has its stop handlers in place before it imports torch.
    code = ("import signal, sys, fbpinn.cli as cli; "
            "cli._run = lambda args: print(signal.getsignal(signal.SIGTERM).__name__, "
            "signal.getsignal(signal.SIGUSR1).__name__, 'torch' in sys.modules) or 0; "
            "sys.exit(cli.main(['train', 'c.toml']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["_on_stop_signal", "_on_stop_signal", "False"]


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("delay", [0.0, 0.1, 0.3, 1.0])
def test_sigterm_during_start_up_stops_after_step_one(tmp_path, delay):
    # The handler is in place as soon as the command line is parsed, before torch is imported:
    # a SIGTERM from then on is kept, and a run signalled while it starts up stops after its
    # first step with a checkpoint, status 75; never status 143.
    cfg = write_toml({**LAPLACE, "training": {**LAPLACE["training"], "steps": 100000}, "checkpoint": {"every": 0}},
                     tmp_path / "c.toml")  # a run that cannot end before the signal
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "fbpinn", "train", str(cfg), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not _catches_sigterm(proc.pid):
            assert proc.poll() is None and time.time() < deadline, "no SIGTERM handler installed"
            time.sleep(0.002)
        time.sleep(delay)
        # Whether torch is loaded yet tells, whatever the machine's speed, that the signal came
        # during start-up; with no delay it always does (the handler comes before torch).
        starting = "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert starting or delay > 0
    assert proc.returncode == EXIT_STOPPED, stderr
    stopped = [s for s, _ in ckpt.listing(out / "checkpoints")]
    assert len(stopped) == 1 and (stopped[0] == 1 or not starting), (starting, stopped)
    assert f"fbpinn: stopped at step {stopped[0]} of 100000 on SIGTERM; checkpoint" in stderr
    assert not (out / "run.h5").exists()


def test_malformed_stop_timeout_is_an_error(tmp_path, monkeypatch, capsys):
    cfg = write_toml(LAPLACE, tmp_path / "c.toml")
    for value in ("abc", "0", "-5", "nan", "inf", "1e9"):
        monkeypatch.setenv("FBPINN_STOP_TIMEOUT", value)
        assert main(["train", str(cfg), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err == (f"fbpinn: error: FBPINN_STOP_TIMEOUT={value!r}: must be a number of seconds above 0 and at "
                       "most 86400 (default 60); set it so or unset it\n")
        assert not (tmp_path / "r").exists()
    assert signals.stop_timeout({}) == 60.0
    assert signals.stop_timeout({"FBPINN_STOP_TIMEOUT": " 2.5 "}) == 2.5


def _signal_quietly(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@needs_mpi
def test_rank_waiting_for_a_frozen_peer_aborts_after_the_stop_timeout(tmp_path, monkeypatch):
    # Rank 1 is frozen (SIGSTOP) and rank 0 is asked to stop: rank 0 waits for rank 1 in the
    # next exchange, and after FBPINN_STOP_TIMEOUT seconds it aborts the whole job instead of
    # waiting forever.  No checkpoint is written (the ranks never agreed on a stop).
    monkeypatch.setenv("FBPINN_STOP_TIMEOUT", "3")
    proc, pids = _training_ranks(tmp_path)
    try:
        os.kill(pids[1], signal.SIGSTOP)
        time.sleep(1.0)  # rank 0 is blocked in the next exchange, where Python runs no signal handler
        os.kill(pids[0], signal.SIGTERM)
        proc.wait(timeout=90)  # a hang guard only: the abort comes about 4 s after the signal
        stderr = proc.stderr.read()
    finally:
        for pid in pids:
            _signal_quietly(pid, signal.SIGCONT)
            _signal_quietly(pid, signal.SIGKILL)
        proc.kill()
    assert proc.returncode == signals.EXIT_STOP_TIMEOUT, stderr  # mpiexec passes the abort code on
    assert ("fbpinn: rank 0/2: stop requested by SIGTERM, but the other ranks did not answer within 3 s "
            "(FBPINN_STOP_TIMEOUT): a rank is dead or frozen; aborting the job (the newest checkpoint is kept)"
            in stderr), stderr
    assert ckpt.listing(tmp_path / "r" / "checkpoints") == []
    assert not (tmp_path / "r" / "run.h5").exists()


@pytest.mark.parametrize("script", ["train.sbatch", "sweep.sbatch"])
def test_batch_scripts_never_evaluate_their_variables(tmp_path, script):
    # The scripts run with bash outside Slurm, with a stub launcher that records its words:
    # command substitutions, separators, pipes and globs in FBPINN_LAUNCH and FBPINN are
    # passed on as words and never run; $SLURM_<NAME> words are replaced by their values.
    stub = tmp_path / "stub.sh"
    stub.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$STUB_ARGS"\n')
    stub.chmod(0o755)
    marks = [tmp_path / f"injected{i}" for i in range(6)]
    injected = (f"$(touch {marks[0]}) `touch {marks[1]}` ; touch {marks[2]} && touch {marks[3]} | "
                f"touch {marks[4]} ${{IFS}}$(touch${{IFS}}{marks[5]}) *")
    cfg = write_toml(LAPLACE, tmp_path / "c.toml")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "STUB_ARGS": str(tmp_path / "args"),
           "FBPINN_LAUNCH": f"{stub} -n $SLURM_NTASKS ${{SLURM_JOB_ID}} {injected}",
           "FBPINN": f"python -m fbpinn {injected}", "SLURM_NTASKS": "3", "SLURM_JOB_ID": "77",
           "SLURM_ARRAY_TASK_ID": "0", "FBPINN_OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / script), str(cfg)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not [m for m in marks if m.exists()]
    words = injected.split()
    out = tmp_path / "out" / "c" if script == "sweep.sbatch" else tmp_path / "out"
    assert (tmp_path / "args").read_text().splitlines() == [
        "-n", "3", "77", *words, "python", "-m", "fbpinn", *words, "train", str(cfg), "--out", str(out),
        "--resume"]
    # A $SLURM_ word naming a variable that is not set is an error, before anything runs.
    env["FBPINN_LAUNCH"] = f"{stub} -n $SLURM_NO_SUCH"
    (tmp_path / "args").unlink()
    proc = subprocess.run(["bash", str(ROOT / "slurm" / script), str(cfg)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 2
    assert f"{script}: $SLURM_NO_SUCH in FBPINN_LAUNCH or FBPINN is not set in this job" in proc.stderr
    assert not (tmp_path / "args").exists()


@needs_mpi
def test_killed_rank_ends_the_mpiexec_job(tmp_path):
    # mpiexec (MPICH's hydra) ends the whole job when one rank dies; the other rank is not
    # left waiting for it (the batch scripts' srun does the same with --kill-on-bad-exit).
    proc, pids = _training_ranks(tmp_path)
    try:
        os.kill(pids[1], signal.SIGKILL)
        proc.wait(timeout=60)  # a hang guard only: hydra ends the job at once
        deadline = time.time() + 30
        while _alive(pids[0]) and time.time() < deadline:
            time.sleep(0.1)
        survived = _alive(pids[0])
    finally:
        for pid in pids:
            _signal_quietly(pid, signal.SIGKILL)
        proc.kill()
    assert proc.returncode not in (0, EXIT_STOPPED)
    assert not survived
    assert not (tmp_path / "r" / "run.h5").exists()


def _alive(pid: int) -> bool:
    """Whether a process (not a zombie) with this pid exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False

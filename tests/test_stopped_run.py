"""A wave run on 2 ranks stopped half way by SIGUSR1, as a Slurm job at its time limit is: its
snapshots are drawn, its checkpoint is evaluated at new points, its snapshots and final file open
in VTK's XDMF reader, it resumes, and the final file records both run segments."""

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import fbpinn
from fbpinn import checkpoint as ckpt
from fbpinn.cli import EXIT_STOPPED
from test_checkpoint import _train_process
from test_fields import run_cli
from test_parallel import MPIEXEC, mpirun, needs_mpi

xdmf2 = pytest.importorskip("vtkmodules.vtkIOXdmf2")
from test_results_files import vtk_array, vtk_steps  # noqa: E402

CONFIG = Path(__file__).parent.parent / "configs" / "wave2d_small.toml"
STEPS = 400
SMALL = ["decomposition.subdomains=[2,2,4]", "network.hidden=[8]", "training.points=[8,8,8]",
         f"training.steps={STEPS}", f"training.decay_steps={STEPS}", "schedule.steps_per_slab=100",
         "training.lbfgs_steps=0",
         "training.compile=false", "training.threads=1", "training.log_every=5", "training.eval_every=50",
         "test.points=[11,11,9]", "output.snapshot_every=1", "output.snapshot_points=[6,6,5]",
         "output.per_rank=true", "checkpoint.every=0"]


def _wait_for_step(proc, step: int, timeout=300):
    """Wait until the run has logged a progress line at ``step`` or later."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [int(line.split("step", 1)[1].split("/")[0]) for line in list(proc.lines) if " loss " in line]
        if done and max(done) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no progress line at step {step} in time")


@needs_mpi
def test_stopped_wave_run_can_be_used_then_resumed(tmp_path):
    out = tmp_path / "r"
    overrides = [a for s in SMALL for a in ("--set", s)]
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from mpi4py import MPI
        from fbpinn.cli import main
        Path({str(tmp_path)!r}, f"pid{{MPI.COMM_WORLD.Get_rank()}}").write_text(str(os.getpid()))
        sys.exit(main(["train", {str(CONFIG)!r}, "--out", {str(out)!r}, *{overrides!r}]))
    """))
    proc = _train_process(None, None, command=[MPIEXEC, "-n", "2", sys.executable, str(script)])
    try:
        _wait_for_step(proc, STEPS // 2)
        for rank in range(2):  # as Slurm signals every task of the step
            os.kill(int((tmp_path / f"pid{rank}").read_text()), signal.SIGUSR1)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert proc.returncode == EXIT_STOPPED, stderr
    (stopped, path), = ckpt.listing(out / "checkpoints")
    assert STEPS // 2 <= stopped < STEPS and not (out / "run.h5").exists()

    # Looked at: its snapshots, one per step up to the stop.
    snap = fbpinn.io.read_snapshots(out / "snapshots.h5")
    assert snap["step"].tolist() == list(range(1, stopped + 1))
    assert run_cli("plot", out / "snapshots.h5").returncode == 0
    assert (out / "snapshots.png").stat().st_size > 0 and (out / "snapshots.gif").read_bytes()[:4] == b"GIF8"
    info = run_cli("info", out / "snapshots.h5")
    assert info.returncode == 0 and f"segment 1: steps 1 .. {stopped} on 2 rank(s)" in info.stdout

    # Evaluated at new points from its checkpoint: on the snapshot grid it gives the last snapshot.
    grid = np.stack(np.meshgrid(*snap["axes"].values(), indexing="ij"), -1).reshape(-1, 3)
    np.save(tmp_path / "points.npy", grid)
    done = run_cli("eval", path, "--points", tmp_path / "points.npy", "--out", tmp_path / "e.h5",
                   "--derivatives", "u_t")
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "e.h5") as f:
        u, u_t = f["u"][()], f["u_t"][()]
    last = snap["fields"]["u"][-1].reshape(-1)
    assert np.abs(u - last).max() <= 1e-6 * max(np.abs(last).max(), 1e-3)
    assert np.isfinite(u_t).all() and np.abs(u_t).max() > 0

    # Exported: VTK reads the newest snapshot, one time step per t of the snapshot grid.
    assert run_cli("export", out / "snapshots.h5").returncode == 0
    reader, times = vtk_steps(out / "snapshots.xdmf")
    assert np.allclose(times, snap["axes"]["t"], rtol=0, atol=1e-12)
    values, _ = vtk_array(reader, times[2], "u")
    assert np.array_equal(values, snap["fields"]["u"][-1, :, :, 2].ravel())

    # Resumed on 2 ranks: the final file (split over per-rank parts) carries both segments.
    done = mpirun(2, ["-m", "fbpinn", "train", str(CONFIG), "--out", str(out), *overrides, "--resume"], timeout=600)
    assert done.returncode == 0, done.stderr
    final = out / "run.h5"
    info = run_cli("info", final)
    assert f"segment 1: steps 1 .. {stopped} on 2 rank(s)" in info.stdout
    assert f"segment 2: steps {stopped + 1} .. {STEPS} on 2 rank(s)" in info.stdout
    assert fbpinn.io.read_snapshots(out / "snapshots.h5")["step"].tolist() == list(range(1, STEPS + 1))
    assert run_cli("export", final).returncode == 0
    reader, times = vtk_steps(out / "run.xdmf")
    data = fbpinn.load_results(final)
    assert np.allclose(times, data["solution"]["axis_t"], rtol=0, atol=1e-12)
    values, _ = vtk_array(reader, times[-1], "u")
    assert np.array_equal(values, data["solution"]["u"][..., -1].ravel())

"""The pre-flight of ``fbpinn train``: paths, memory, and the results folder it creates.

Every check runs before anything is created: a refused run leaves the file system as it was,
and a run that fails before writing anything removes the folder it made.
"""

import os
from pathlib import Path

import pytest
import torch

from fbpinn import preflight
from fbpinn.cli import main
from fbpinn.config import load_config
from fbpinn.io import new_folders
from fbpinn.parallel import Context
from conftest import blow_up_at
from test_parallel import COS1D, mpirun, needs_mpi, write_toml

ROOT = Path(__file__).resolve().parent.parent
TINY = {**COS1D, "training": {**COS1D["training"], "steps": 20, "eval_every": 10}}


def tree(path: Path) -> dict:
    """Every path below ``path`` with its size (folders: -1)."""
    return {str(p.relative_to(path)): (-1 if p.is_dir() else p.stat().st_size) for p in sorted(path.rglob("*"))}


@pytest.fixture
def cfg(tmp_path):
    return str(write_toml(TINY, tmp_path / "c.toml"))


def refused(args, capsys, *needles):
    """Run ``fbpinn`` with ``args``; assert exit 2 and one error line holding every needle."""
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fbpinn: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


@pytest.mark.parametrize("blocker,needle", [
    ("run.h5/", "run.h5 exists and is not a plain file"),
    ("checkpoints", "checkpoints exists and is not a folder"),
    ("run.h5", "holds a finished run"),
])
def test_blocked_results_paths_are_refused_before_training(tmp_path, cfg, capsys, blocker, needle):
    out = tmp_path / "out"
    out.mkdir()
    if blocker.endswith("/"):
        (out / blocker).mkdir()
    else:
        (out / blocker).write_bytes(b"the user's file")
    before = tree(tmp_path)
    refused(["train", cfg, "--out", str(out)], capsys, needle)
    assert tree(tmp_path) == before


def test_folder_that_cannot_be_created_is_refused_and_nothing_is_made(tmp_path, cfg, capsys):
    # /proc refuses new files even to root, so this holds whoever runs the tests.
    refused(["train", cfg, "--out", "/proc/fbpinn-test/out"], capsys, "cannot write results to /proc/fbpinn-test/out")
    assert not Path("/proc/fbpinn-test").exists()


def test_a_finished_run_is_replaced_only_with_overwrite(tmp_path, cfg, capsys):
    out = tmp_path / "out"
    assert main(["train", cfg, "--out", str(out)]) == 0
    first = (out / "run.h5").read_bytes()
    refused(["train", cfg, "--out", str(out)], capsys, f"{out / 'run.h5'} holds a finished run", "--overwrite")
    assert (out / "run.h5").read_bytes() == first
    # Without its checkpoints, --resume has nothing to go on from and must not start over either.
    for p in (out / "checkpoints").iterdir():
        p.rename(tmp_path / p.name)
    refused(["train", cfg, "--out", str(out), "--resume"], capsys, "holds a finished run", "no checkpoint")
    assert (out / "run.h5").read_bytes() == first
    for p in tmp_path.glob("step_*.h5"):
        p.rename(out / "checkpoints" / p.name)
    # --overwrite starts over and removes the replaced run's checkpoints (a later --resume
    # could otherwise pick one of them up).
    assert main(["train", cfg, "--out", str(out), "--overwrite", "--set", "training.steps=10",
                 "--set", "checkpoint.every=5"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000000005.h5", "step_000000010.h5"]
    assert "removed" in capsys.readouterr().out


def test_more_memory_than_the_node_has_is_refused_with_an_estimate(tmp_path, cfg, capsys):
    out = tmp_path / "out"
    line = refused(["train", cfg, "--out", str(out), "--set", "training.points=100000000000"], capsys,
                   "100,000,000,000 points", "GiB", "lower training.points")
    assert not out.exists()
    assert "available on this node" in line or "memory limit" in line


def test_nan_stop_before_the_first_checkpoint_leaves_no_folder(tmp_path, cfg, capsys, monkeypatch):
    blow_up_at(monkeypatch, 5)
    out = tmp_path / "a" / "b"
    assert main(["train", cfg, "--out", str(out), "--set", "checkpoint.every=0"]) == 1
    assert "training failed: loss became" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: training.device = 'cuda' is valid here")
def test_device_error_leaves_no_folder(tmp_path, cfg, capsys):
    refused(["train", cfg, "--out", str(tmp_path / "out"), "--set", "training.device=\"cuda\""], capsys,
            "training.device")
    assert not (tmp_path / "out").exists()


def test_out_of_memory_in_training_is_one_line_and_leaves_no_folder(tmp_path, cfg, capsys, monkeypatch):
    import fbpinn.trainer

    def exhausted(*a, **k):
        raise MemoryError("cannot allocate 12 GiB")

    monkeypatch.setattr(fbpinn.trainer, "train", exhausted)
    assert main(["train", cfg, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "ran out of memory (cannot allocate 12 GiB)" in err and "the estimate was" in err
    assert not (tmp_path / "out").exists()


def test_final_write_failure_names_the_checkpoint_that_holds_the_run(tmp_path, cfg, capsys, monkeypatch):
    import fbpinn.io

    def blocked(path, run, blocks=None):
        raise IsADirectoryError(21, "Is a directory")

    monkeypatch.setattr(fbpinn.io, "write_results", blocked)
    out = tmp_path / "out"
    assert main(["train", cfg, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "could not write the results" in err and "step_000000020.h5: --resume writes it" in err
    monkeypatch.undo()
    assert main(["train", cfg, "--out", str(out), "--resume"]) == 0  # the final checkpoint gives the results
    assert (out / "run.h5").is_file()


def held_bytes(trainer) -> int:
    """Bytes a training step must hold at once: the prepared batch and every tensor the forward
    pass saves for the backward pass (each storage counted once).  The real peak is higher
    (gradients, temporaries), so this is a lower bound that does not depend on the allocator."""
    import torch

    storages = {}

    def note(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for batch, _ in trainer.passes:
        for block in batch.blocks:
            for t in (block.t_in, block.win, block.index):
                note(t)
        for t in (batch.a, batch.b, batch.x, batch.fixed):
            if t is not None:
                note(t)
    with torch.autograd.graph.saved_tensors_hooks(note, lambda t: t):
        trainer._loss_impl()
    return sum(storages.values())


@pytest.mark.parametrize("config,points", [
    ("cos1d", "[20000]"), ("laplace2d_multiscale", "[150,150]"), ("burgers", "[100,100]"),
    ("harmonic_oscillator", "[5000]"), ("wave2d_small", "[20,20,20]"), ("acoustic1d", "[100,100]"),
    ("lotka_volterra", "[20000]"), ("beam", "[60,60]"),
])
def test_estimate_covers_what_a_step_holds(config, points):
    """The estimate is above what a step must hold (measured through the tensors it keeps) and
    not many times above it; its pair count bounds the prepared batch's, within the padding."""
    from fbpinn.trainer import Trainer

    dim = points.count(",") + 1
    overrides = [f"training.points={points}", f"test.points={[2] * dim}", "training.compile=false",
                 'schedule.kind="all_active"']  # time-marching is sized for its all-together phase
    cfg = load_config(ROOT / "configs" / f"{config}.toml", overrides)
    trainer = Trainer(cfg)
    est = preflight.estimate_memory(cfg, Context(None))
    held = held_bytes(trainer)
    assert held <= est.total <= 8 * held, (config, held, est.total)
    assert trainer.pairs() <= est.pairs <= 1.6 * trainer.pairs()


@needs_mpi
def test_part_path_blocked_on_one_rank_stops_every_rank_before_anything_is_made(tmp_path):
    cfg_path = write_toml(TINY, tmp_path / "c.toml")
    out = tmp_path / "out"
    (out / "run_p1.h5").mkdir(parents=True)
    before = tree(tmp_path)
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg_path), "--out", str(out), "--set", "output.per_rank=true"],
                  timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("run_p1.h5 exists and is not a plain file") == 1
    assert "Traceback" not in proc.stderr
    assert tree(tmp_path) == before


def test_results_folder_keeps_what_holds_files(tmp_path):
    out = tmp_path / "x" / "y"
    with pytest.raises(RuntimeError):
        with new_folders(out, inner=("checkpoints",)):
            (out / "checkpoints").mkdir()
            (out / "checkpoints" / "step_000000001.h5").write_bytes(b"kept")
            raise RuntimeError("stop")
    assert (out / "checkpoints" / "step_000000001.h5").read_bytes() == b"kept"
    with pytest.raises(RuntimeError):
        with new_folders(tmp_path / "p" / "q", inner=("checkpoints",)):
            raise RuntimeError("stop")
    assert not (tmp_path / "p").exists()
    with new_folders(tmp_path / "r"):  # success keeps the (empty) folder
        pass
    assert (tmp_path / "r").is_dir()
    assert os.listdir(tmp_path / "r") == []

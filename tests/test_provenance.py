"""Provenance of results files and checkpoints, and the progress lines of training."""

import hashlib
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import fbpinn
from fbpinn import checkpoint as ckpt
from fbpinn import provenance
from fbpinn.io import read_results
from fbpinn.trainer import Trainer, remaining_seconds
from test_parallel import mpirun, needs_mpi, write_toml
from test_schedulers import wave_config

COS1D = {"problem": {"name": "cos1d", "omega": 2.0}, "decomposition": {"subdomains": [3], "overlap": 2.9},
         "network": {"hidden": [8]},
         "training": {"steps": 20, "dtype": "float64", "points": [40], "eval_every": 10, "log_every": 10},
         "test": {"points": [21]}, "checkpoint": {"every": 5}}
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2", "SLURM_STEP_ID": "0"}
MAIN = str(Path(fbpinn.__file__).parent / "__main__.py")  # sys.argv[0] of python -m fbpinn


def cli(*args, env=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run([sys.executable, "-m", "fbpinn", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**environ, **(env or {})})


def git_head() -> str:
    out = subprocess.run(["git", "-C", str(Path(fbpinn.__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                         text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """A serial 20-step run in a (pretended) Slurm array job: (config path, out folder, process)."""
    tmp = tmp_path_factory.mktemp("serial")
    cfg = write_toml(COS1D, tmp / "c.toml")
    proc = cli("train", cfg, "--out", tmp / "out", env=SLURM)
    assert proc.returncode == 0, proc.stderr
    return cfg, tmp / "out", proc


def test_serial_run_records_its_provenance(serial):
    cfg, out, _ = serial
    data = read_results(out / "run.h5")
    a = data["provenance"]["attrs"]
    assert a["command"] == shlex.join([MAIN, "train", str(cfg), "--out", str(out)])
    assert a["config_path"] == str(cfg)
    assert a["config_sha256"] == hashlib.sha256(data["attrs"]["config"].encode()).hexdigest()
    assert a["fbpinn_version"] == fbpinn.__version__
    assert a["python_version"] == platform.python_version()
    assert a["torch_version"] == torch.__version__
    assert a["numpy_version"] == np.__version__
    assert (a["h5py_version"], a["hdf5_version"]) == (h5py.__version__, h5py.version.hdf5_version)
    assert a.get("cuda_version") == torch.version.cuda
    assert "mpi_library_version" not in a  # a serial run does not ask MPI
    assert a.get("git_commit", "") == git_head()
    record = provenance.read(data["provenance"])
    assert record["ranks"]["host"] == [platform.node()] and record["ranks"]["device"] == ["cpu"]
    assert len(record["ranks"]["threads"]) == 1 and record["ranks"]["threads"][0] >= 1
    [segment] = record["segments"]
    assert (segment["first_step"], segment["last_step"], segment["n_ranks"]) == (1, 20, 1)
    assert segment["start_time"] <= segment["end_time"]
    # The checkpoint of the last step carries the same record.
    state = ckpt.read(out / "checkpoints" / "step_000000020.h5")
    assert state["provenance"]["attrs"] == a and state["provenance"]["segments"][0]["last_step"] == 20


def test_slurm_ids_are_recorded(serial):
    a = read_results(serial[1] / "run.h5")["provenance"]["attrs"]
    assert {k: a[k] for k in ("slurm_job_id", "slurm_array_job_id", "slurm_array_task_id", "slurm_step_id")} == \
        {"slurm_job_id": "4242", "slurm_array_job_id": "4240", "slurm_array_task_id": "2", "slurm_step_id": "0"}


def test_info_prints_the_provenance(serial):
    _, out, _ = serial
    proc = cli("info", out / "run.h5")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"command: {MAIN} train" in text
    assert (f"git commit {git_head()}" if git_head() else "not from a git checkout") in text
    assert f"torch {torch.__version__}" in text and f"numpy {np.__version__}" in text
    assert f"1 rank(s): 1 on {platform.node()} (cpu, " in text
    assert "segment 1: steps 1 .. 20 on 1 rank(s)" in text
    assert "slurm: job_id 4242, array_job_id 4240, array_task_id 2, step_id 0" in text


def test_log_timestamps_carry_the_date(serial):
    lines = serial[2].stdout.strip().splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ", line) for line in lines), lines[:3]


def test_resumed_run_has_two_segments(tmp_path):
    cfg = write_toml(COS1D, tmp_path / "c.toml")
    first = cli("train", cfg, "--out", tmp_path / "out", "--set", "training.steps=10")
    assert first.returncode == 0, first.stderr
    second = cli("train", cfg, "--out", tmp_path / "out", "--resume")
    assert second.returncode == 0, second.stderr
    record = provenance.read(read_results(tmp_path / "out" / "run.h5")["provenance"])
    s1, s2 = record["segments"]
    assert [(s["first_step"], s["last_step"], s["n_ranks"]) for s in (s1, s2)] == [(1, 10, 1), (11, 20, 1)]
    assert s1["start_time"] <= s1["end_time"] <= s2["start_time"] <= s2["end_time"]
    assert record["attrs"]["command"].endswith("--resume")
    assert [s["last_step"] for s in ckpt.read(tmp_path / "out" / "checkpoints" / "step_000000020.h5")
            ["provenance"]["segments"]] == [10, 20]


@needs_mpi
def test_mpi_run_lists_every_rank(tmp_path):
    cfg = write_toml(COS1D, tmp_path / "c.toml")
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "p")], timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = read_results(tmp_path / "p" / "run.h5")
    record = provenance.read(data["provenance"])
    assert record["ranks"]["host"] == [platform.node()] * 2 and record["ranks"]["device"] == ["cpu", "cpu"]
    assert [s["n_ranks"] for s in record["segments"]] == [2]
    assert record["attrs"]["mpi_library_version"] and record["attrs"]["mpi4py_version"]
    assert len(ckpt.read(tmp_path / "p" / "checkpoints" / "step_000000020.h5")["provenance"]["ranks"]["host"]) == 2


@pytest.mark.parametrize("damage", ["attribute", "dataset", "removed"])
def test_checkpoint_with_damaged_provenance_is_refused(serial, tmp_path, damage):
    path = tmp_path / "step_000000020.h5"
    shutil.copy(serial[1] / "checkpoints" / "step_000000020.h5", path)
    with h5py.File(path, "r+") as f:
        if damage == "attribute":
            f["provenance"].attrs["command"] = "fbpinn train other.toml"
        elif damage == "dataset":
            f["provenance/segments/last_step"][0] = 19
        else:
            del f["provenance/ranks/threads"]
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.read(path)
    assert str(path) in str(e.value)
    assert {"attribute": "checksum of the stored state", "dataset": "checksum of provenance/segments/last_step",
            "removed": "dataset provenance/ranks/threads is missing"}[damage] in str(e.value)


def test_checkpoint_without_provenance_is_read_and_resumed_as_one_earlier_segment(serial, tmp_path):
    path = tmp_path / "step_000000020.h5"
    shutil.copy(serial[1] / "checkpoints" / "step_000000020.h5", path)
    with h5py.File(path, "r+") as f:  # as written before provenance was recorded
        del f["provenance"]
        ckpt._seal(f)
    state = ckpt.read(path)
    assert state["provenance"] is None
    [segment] = provenance.earlier_segments(state)
    assert (segment["first_step"], segment["last_step"], segment["n_ranks"]) == (1, 20, 1)
    assert np.isnan(segment["start_time"]) and np.isnan(segment["end_time"])


def test_results_file_without_provenance_is_read(serial, tmp_path):
    path = tmp_path / "run.h5"
    shutil.copy(serial[1] / "run.h5", path)
    with h5py.File(path, "r+") as f:
        del f["provenance"]
    assert "provenance" not in read_results(path)
    proc = cli("info", path)
    assert proc.returncode == 0 and "provenance" not in proc.stdout, proc.stderr


def test_git_commit_outside_a_checkout_is_empty(tmp_path):
    assert provenance.git_commit(tmp_path) == ""


# ----------------------------------------------------------------------------- progress
def test_eta_scales_later_stages_by_their_points():
    fake = SimpleNamespace(n_stages=3, stage_of=lambda step: min((step - 1) // 10, 2))
    points = [100, 200, 400]
    # Stage 0 at 10 steps/s: 5 steps left of it, 10 of stage 1 (twice the points), 10 of stage 2 (four times).
    assert remaining_seconds(fake, 5, 30, 10.0, points) == pytest.approx(0.5 + 2.0 + 4.0)
    assert remaining_seconds(fake, 15, 30, 10.0, points) == pytest.approx(0.5 + 2.0)  # stage 2: 2x stage 1
    assert remaining_seconds(fake, 25, 35, 10.0, points) == pytest.approx(1.0)  # the last stage runs on
    assert remaining_seconds(fake, 30, 30, 10.0, points) == 0.0
    assert remaining_seconds(fake, 5, 30, 0.0, points) == 0.0
    single = SimpleNamespace(n_stages=1, stage_of=lambda step: 0)
    assert remaining_seconds(single, 100, 1000, 50.0, [1234]) == pytest.approx(18.0)


def test_stage_points_count_each_slabs_loss_points():
    trainer = Trainer(wave_config())
    counts = trainer.stage_points()
    assert len(counts) == trainer.schedule.n_stages == 4
    for i, n in enumerate(counts):
        trainer._enter(i)
        trainer._prepare_terms()
        assert n == sum(t.x.shape[0] for t in trainer.terms), i
    assert counts[3] == sum(t.x.shape[0] for t in trainer.full_terms) > max(counts[:3])  # the last: every point


def test_compilation_is_announced_and_timed(monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda f, **options: f)  # stands in for the compiler: no C++ toolchain needed
    cfg = fbpinn.load_config(data={**{k: COS1D[k] for k in ("problem", "decomposition", "network", "test")},
                                   "training": {**COS1D["training"], "steps": 3, "compile": True}})
    with caplog.at_level(logging.INFO, logger="fbpinn"):
        fbpinn.train(cfg)
    messages = [r.getMessage() for r in caplog.records]
    start = messages.index("compiling the step (torch.compile); the first steps wait for it")
    assert re.fullmatch(r"compiled the step in \d+\.\d s", messages[start + 1]), messages[start + 1]
    assert sum(m.startswith("compiling the step") for m in messages) == 1

"""Provenance: where a results file or checkpoint came from.

A record holds what made the run: the command line, the config file and the SHA-256 of
the resolved config (the text stored in the file's ``config`` attribute), the versions of
fbpinn (and its git commit when it runs from a git checkout), Python, torch, CUDA, NumPy,
h5py, HDF5 and, in a parallel run, mpi4py and the MPI library; the Slurm job, array and step
ids when the run is a Slurm job; the host, device and torch thread count of every rank; and
one entry per run segment (a run that stopped and resumed has several), each with its wall
clock start and end, its first and last step and its rank count.

:func:`begin` collects a record when training starts (collective: every rank contributes its
host, device and threads), :func:`closed` ends its current segment at a step, and
:func:`write` / :func:`read` store it as the ``/provenance`` group of a results file or
checkpoint (docs/hdf5.md).  Nothing here fails a run: a git that is missing or slow just
leaves the commit out.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

GROUP = "provenance"
SEGMENT_FIELDS = (("start_time", np.float64), ("end_time", np.float64), ("first_step", np.int64),
                  ("last_step", np.int64), ("n_ranks", np.int64))
RANK_FIELDS = ("host", "device", "threads")
SLURM = {"slurm_job_id": "SLURM_JOB_ID", "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
         "slurm_array_task_id": "SLURM_ARRAY_TASK_ID", "slurm_step_id": "SLURM_STEP_ID"}
REQUIRED = ("command", "config_path", "config_sha256", "fbpinn_version", "python_version", "torch_version",
            "numpy_version", "h5py_version", "hdf5_version")  # attributes every /provenance group has
OPTIONAL = ("git_commit", "cuda_version", "mpi4py_version", "mpi_library_version", *SLURM)
GIT_TIMEOUT = 5.0  # seconds


def git_commit(folder=None) -> str:
    """The commit checked out where fbpinn's package lies (``git rev-parse HEAD``), or "" when
    it is not in a git checkout, git is missing, or git takes longer than ``GIT_TIMEOUT``."""
    folder = Path(folder or Path(__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ""
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) in (40, 64) else ""


def versions(parallel: bool) -> dict:
    """The versions of what the run used, by attribute name; mpi4py's and the MPI library's only
    when mpi4py is already imported and, for the library, the run is parallel (MPI is never
    imported here)."""
    import h5py
    import torch

    from . import __version__

    out = {"fbpinn_version": __version__, "python_version": platform.python_version(),
           "torch_version": torch.__version__, "numpy_version": np.__version__, "h5py_version": h5py.__version__,
           "hdf5_version": h5py.version.hdf5_version}
    if torch.version.cuda:
        out["cuda_version"] = torch.version.cuda
    mpi4py = sys.modules.get("mpi4py")
    if mpi4py is not None:
        out["mpi4py_version"] = getattr(mpi4py, "__version__", "")
        mpi = sys.modules.get("mpi4py.MPI")
        if parallel and mpi is not None:
            out["mpi_library_version"] = " ".join(mpi.Get_library_version().split("\n", 1)[0].split())
    return out


def slurm(environ=None) -> dict:
    """The Slurm job, array job, array task and step ids present in the environment."""
    environ = os.environ if environ is None else environ
    return {name: environ[var] for name, var in SLURM.items() if environ.get(var)}


def _rank_entry(device, threads: int) -> dict:
    return {"host": socket.gethostname(), "device": str(device), "threads": int(threads)}


def begin(ctx, cfg, device, threads: int, first_step: int, earlier=None) -> dict | None:
    """The record of a run segment that starts at ``first_step``, on rank 0 (None on the others).

    Collective: every rank passes its ``device`` and torch ``threads``.  ``earlier``: the
    segments of the run before this one (from the checkpoint it resumes), kept in order."""
    from .config import to_toml

    ranks = ctx.gather(_rank_entry(device, threads))
    if ctx.rank != 0:
        return None
    attrs = {"command": shlex.join(sys.argv), "config_path": cfg.source or "",
             "config_sha256": hashlib.sha256(to_toml(cfg).encode()).hexdigest(), **versions(ctx.parallel),
             **slurm()}
    commit = git_commit()
    if commit:
        attrs["git_commit"] = commit
    segment = {"start_time": time.time(), "end_time": math.nan, "first_step": int(first_step),
               "last_step": int(first_step) - 1, "n_ranks": ctx.size}
    return {"attrs": attrs, "ranks": {k: [r[k] for r in ranks] for k in RANK_FIELDS},
            "segments": [dict(s) for s in (earlier or [])] + [segment]}


def closed(record: dict | None, last_step: int, end=None) -> dict | None:
    """A copy of ``record`` whose current (last) segment ends now (or at ``end``) after ``last_step``."""
    if record is None:
        return None
    segments = [dict(s) for s in record["segments"]]
    segments[-1].update(last_step=int(last_step), end_time=time.time() if end is None else float(end))
    return {**record, "segments": segments}


def write(group: h5py.Group, record: dict) -> None:
    """Store ``record`` in ``group``: attributes, ``ranks/<host|device|threads>`` (one row per
    rank) and ``segments/<field>`` (one row per run segment).  Strings are fixed-length UTF-8
    bytes, so that their stored bytes (and checksums) do not depend on memory addresses."""
    for key, value in record["attrs"].items():
        group.attrs[key] = str(value)
    ranks = group.create_group("ranks")
    for key in RANK_FIELDS:
        values = record["ranks"][key]
        ranks[key] = np.asarray(values, dtype=np.int64) if key == "threads" else _strings(values)
    segments = group.create_group("segments")
    for key, dtype in SEGMENT_FIELDS:
        segments[key] = np.asarray([s[key] for s in record["segments"]], dtype=dtype)


def _strings(values) -> np.ndarray:
    encoded = [str(v).encode("utf-8") for v in values]
    return np.asarray(encoded, dtype=f"S{max([1, *map(len, encoded)])}")


def read(group) -> dict:
    """A record back from a group :func:`write` filled (an h5py group, or the nested dict that
    :func:`fbpinn.io.read_results` makes of it)."""
    attrs = group["attrs"] if isinstance(group, dict) else group.attrs
    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)  # noqa: E731
    rows = lambda g, k: np.asarray(g[k] if isinstance(g, dict) else g[k][()]).tolist()  # noqa: E731
    ranks = {k: [int(v) if k == "threads" else text(v) for v in rows(group["ranks"], k)] for k in RANK_FIELDS}
    columns = {k: rows(group["segments"], k) for k, _ in SEGMENT_FIELDS}
    segments = [{k: (float if dtype is np.float64 else int)(columns[k][i]) for k, dtype in SEGMENT_FIELDS}
                for i in range(len(columns["first_step"]))]
    return {"attrs": {k: text(v) for k, v in attrs.items()}, "ranks": ranks, "segments": segments}


def iso(t: float) -> str:
    """A time in seconds since the epoch as local ISO 8601 with its offset ("unknown" for NaN)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t)) if math.isfinite(t) else "unknown"


def describe(record: dict) -> list[str]:
    """Lines that ``fbpinn info`` prints about a record."""
    a = record["attrs"]
    lines = [f"  command: {a.get('command', '?')}",
             f"  config {a.get('config_path') or '(none)'} (resolved sha256 {a.get('config_sha256', '?')})",
             f"  fbpinn {a.get('fbpinn_version', '?')}" + (f", git commit {a['git_commit']}" if a.get("git_commit")
                                                          else ", not from a git checkout")]
    names = [("python", "python_version"), ("torch", "torch_version"), ("CUDA", "cuda_version"),
             ("numpy", "numpy_version"), ("h5py", "h5py_version"), ("HDF5", "hdf5_version"),
             ("mpi4py", "mpi4py_version"), ("MPI", "mpi_library_version")]
    lines.append("  versions: " + ", ".join(f"{label} {a[key]}" for label, key in names if a.get(key)))
    jobs = [f"{key[len('slurm_'):]} {a[key]}" for key in SLURM if a.get(key)]
    if jobs:
        lines.append("  slurm: " + ", ".join(jobs))
    r = record["ranks"]
    groups: dict = {}
    for host, device, threads in zip(r["host"], r["device"], r["threads"]):
        groups.setdefault((host, device, threads), 0)
        groups[(host, device, threads)] += 1
    lines.append(f"  {len(r['host'])} rank(s): " + "; ".join(
        f"{n} on {host} ({device}, {threads} thread(s))" for (host, device, threads), n in groups.items()))
    for i, s in enumerate(record["segments"], 1):
        lines.append(f"  segment {i}: steps {s['first_step']} .. {s['last_step']} on {s['n_ranks']} rank(s), "
                     f"{iso(s['start_time'])} .. {iso(s['end_time'])}")
    return lines


def earlier_segments(state: dict | None) -> list:
    """The segments a run resumed from checkpoint ``state`` (from :func:`fbpinn.checkpoint.read`)
    went through before: those the checkpoint stores, or, for a checkpoint written before
    provenance was recorded, one segment of unknown (NaN) times over its steps and ranks."""
    if state is None:
        return []
    if state.get("provenance"):
        return [dict(s) for s in state["provenance"]["segments"]]
    return [{"start_time": math.nan, "end_time": math.nan, "first_step": 1, "last_step": int(state["step"]),
             "n_ranks": int(state["n_ranks"])}]

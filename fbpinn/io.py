"""HDF5 results files: write a finished run, read one back.

The layout is documented in docs/hdf5.md (``SCHEMA_VERSION`` below).  Files are
written under a temporary name in the target folder and renamed into place, so a
run interrupted while writing never leaves a truncated ``run.h5``.  Reading checks
that the file is an fbpinn results file of a known schema and raises
:class:`ResultsError` naming the file and what is wrong otherwise.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .config import to_toml

SCHEMA_VERSION = 1


class ResultsError(ValueError):
    """A file that is not a readable fbpinn results file."""


def write_results(path, run) -> Path:
    """Write a :class:`fbpinn.trainer.Run` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            _fill(f, run)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fill(f: h5py.File, run) -> None:
    cfg, problem, model = run.cfg, run.problem, run.model
    f.attrs["format"] = "fbpinn-results"
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["fbpinn_version"] = __version__
    f.attrs["problem"] = cfg.problem_name
    f.attrs["axes"] = ",".join(problem.axes)
    f.attrs["n_ranks"] = run.n_ranks
    f.attrs["config"] = to_toml(cfg)
    f.attrs["start_time"] = _iso(run.start_time)
    f.attrs["end_time"] = _iso(time.time())
    f.attrs["wall_time"] = run.wall_time

    dec = f.create_group("decomposition")
    dec.attrs["n_levels"] = len(model.levels)
    dec.attrs["window"] = cfg.decomposition.window
    dec.attrs["overlap"] = cfg.decomposition.overlap
    dec.attrs["domain_lo"] = np.asarray(problem.domain.lo)
    dec.attrs["domain_hi"] = np.asarray(problem.domain.hi)
    for i, lv in enumerate(model.levels):
        g = dec.create_group(f"level{i}")
        g.attrs["shape"] = np.asarray(lv.shape)
        g["centres"] = lv.centres().numpy()
        g["half_widths"] = lv.half_widths().numpy()

    tr = f.create_group("training")
    h = run.history
    tr["step"] = np.asarray(h["step"], dtype=np.int64)
    tr["loss"] = np.asarray(h["loss"], dtype=np.float64)
    tr["rel_l2"] = np.asarray(h["rel_l2"], dtype=np.float64)
    tr["time"] = np.asarray(h["time"], dtype=np.float64)
    tr["lr"] = np.asarray(h["lr"], dtype=np.float64)
    tr["loss_terms"] = np.asarray(h["loss_terms"], dtype=np.float64).reshape(len(h["step"]), len(run.term_names))
    tr["loss_terms"].attrs["names"] = ",".join(run.term_names)
    tr["loss_per_step"] = np.asarray(run.loss_per_step, dtype=np.float64)

    sol = f.create_group("solution")
    shape = tuple(cfg.test.points)
    for name, axis in zip(problem.axes, problem.domain.grid_axes(shape)):
        sol[f"axis_{name}"] = axis.numpy()
    sol["u"] = run.u_test.double().numpy().reshape(shape)
    if run.u_exact is not None:
        sol["exact"] = run.u_exact.numpy().reshape(shape)
        sol["error"] = sol["u"][()] - sol["exact"][()]
    obs = problem.observations()
    if obs is not None:
        data = f.create_group("observations")
        data["x"], data["u"] = obs[0].double().numpy(), obs[1].double().numpy()

    par = f.create_group("parameters")
    for name, arr in (run.parameters or model.parameter_arrays()).items():
        par[name] = arr
    if run.learned:
        learned = f.create_group("learned")
        for name, value in run.learned.items():
            learned[name] = value


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def read_results(path) -> dict:
    """Read a results file into nested dicts of numpy arrays and attributes.

    Raises :class:`ResultsError` if the file is missing, not HDF5, or not an
    fbpinn results file of a supported schema version."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ResultsError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if f.attrs.get("format") != "fbpinn-results":
            raise ResultsError(f"{path}: not an fbpinn results file (no format='fbpinn-results' attribute)")
        version = int(f.attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise ResultsError(f"{path}: schema version {version}; this fbpinn reads version {SCHEMA_VERSION}")
        for group in ("decomposition", "training", "solution", "parameters"):
            if group not in f:
                raise ResultsError(f"{path}: missing group /{group}")
        return _to_dict(f)


def _to_dict(g) -> dict:
    out = {"attrs": {k: _attr(v) for k, v in g.attrs.items()}}
    for name, item in g.items():
        if isinstance(item, h5py.Group):
            out[name] = _to_dict(item)
        else:
            out[name] = item[()]
            if item.attrs:
                out[name + ".attrs"] = {k: _attr(v) for k, v in item.attrs.items()}
    return out


def _attr(v):
    return v.decode() if isinstance(v, bytes) else v

"""HDF5 results files: write a finished run, read one back.

The layout is documented in docs/hdf5.md (``SCHEMA_VERSION`` below).  Files are
written under a temporary name in the target folder and renamed into place, so a
run interrupted while writing never leaves a truncated ``run.h5``.  Reading checks
that the file is an fbpinn results file of a known schema and raises
:class:`ResultsError` naming the file and what is wrong otherwise.
"""

from __future__ import annotations

import os
import re
import stat
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


# Temporary files are ``.<final name>.fbpinn-<pid>-<8 random characters>.tmp`` beside the file they
# become (mkstemp's random part: lower-case letters, digits and "_").  No user names a file so, and
# clean-up (:func:`remove_temporaries`) removes only names of exactly this form.
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.fbpinn-(?P<pid>\d+)-(?P<random>[a-z0-9_]{8})\.tmp$")


def temporary_file(path) -> Path:
    """Create an empty temporary file for ``path`` in its folder, named by :data:`TEMPORARY`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.fbpinn-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def remove_temporaries(folder) -> list[Path]:
    """Delete the temporary files that an interrupted fbpinn write left in ``folder``: regular
    files (not links or folders) whose names match :data:`TEMPORARY`, nothing else."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        try:
            if TEMPORARY.match(p.name) and stat.S_ISREG(p.lstat().st_mode):
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # gone meanwhile
            continue
    return removed


def write_atomic(path, fill) -> Path:
    """Create ``path`` by ``fill(h5py.File)`` on a temporary file (:func:`temporary_file`) renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_file(path)
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_results(path, run, blocks=None) -> Path:
    """Write a :class:`fbpinn.trainer.Run` to ``path`` atomically; returns the path.

    ``blocks``: the (offset, shape) of every rank's part file when the solution was
    written per rank (:func:`write_part`); the solution datasets are then virtual."""
    return write_atomic(path, lambda f: _fill(f, run, blocks, Path(path)))


def part_name(path, rank: int) -> str:
    """File name of rank ``rank``'s part beside the results file ``path``: run_p{rank}.h5."""
    path = Path(path)
    return f"{path.stem}_p{rank}{path.suffix}"


def write_part(path, block: dict) -> Path:
    """Write one rank's block of the test-grid solution beside ``path`` (atomically)."""
    def fill(f):
        f.attrs["format"] = "fbpinn-part"
        f.attrs["rank"] = block["rank"]
        f.attrs["offset"] = np.asarray(block["offset"])
        f["u"] = block["u"]
        if block["exact"] is not None:
            f[block.get("target", "exact")] = block["exact"]
            f["error"] = block["u"] - block["exact"]

    return write_atomic(Path(path).with_name(part_name(path, block["rank"])), fill)


def _virtual(group, name: str, shape, path, blocks) -> None:
    layout = h5py.VirtualLayout(shape=tuple(shape), dtype="f8")
    for rank, (offset, bshape) in enumerate(blocks):
        if 0 in bshape:
            continue
        source = h5py.VirtualSource(part_name(path, rank), name, shape=tuple(bshape))
        layout[tuple(slice(o, o + n) for o, n in zip(offset, bshape))] = source
    group.create_virtual_dataset(name, layout, fillvalue=np.nan)


def _fill(f: h5py.File, run, blocks=None, path=None) -> None:
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
    tr["stage"] = np.asarray(h.get("stage", [0] * len(h["step"])), dtype=np.int64)
    tr["loss_terms"] = np.asarray(h["loss_terms"], dtype=np.float64).reshape(len(h["step"]), len(run.term_names))
    tr["loss_terms"].attrs["names"] = ",".join(run.term_names)
    tr["loss_per_step"] = np.asarray(run.loss_per_step, dtype=np.float64)

    sol = f.create_group("solution")
    shape = tuple(cfg.test.points)
    for name, axis in zip(problem.axes, problem.domain.grid_axes(shape)):
        sol[f"axis_{name}"] = axis.numpy()
    if run.has_exact:
        sol.attrs["target"] = run.target  # "exact" or "reference": the dataset the error is measured against
        if run.target == "reference":
            sol.attrs["reference_method"] = problem.reference_name
    if blocks is not None:
        sol.attrs["parts"] = len(blocks)
        for name in ("u", run.target, "error") if run.has_exact else ("u",):
            _virtual(sol, name, shape, path, blocks)
    else:
        sol["u"] = run.u_test.double().numpy().reshape(shape)
        if run.u_exact is not None:
            sol[run.target] = run.u_exact.numpy().reshape(shape)
            sol["error"] = sol["u"][()] - sol[run.target][()]
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
        missing = missing_parts(f, path)
        if missing:
            raise ResultsError(f"{path}: its solution is split over per-rank files and these are missing: "
                               f"{', '.join(missing)}")
        return _to_dict(f)


def missing_parts(f: h5py.File, path) -> list[str]:
    """Names of per-rank part files that the virtual solution datasets of ``f`` need but are absent."""
    names = set()
    for ds in f["solution"].values():
        if isinstance(ds, h5py.Dataset) and ds.is_virtual:
            names.update(s.file_name for s in ds.virtual_sources())
    return sorted(n for n in names if not (Path(path).parent / n).is_file())


def merge(path, out=None) -> Path:
    """Copy a results file whose solution is split over per-rank files into one self-contained file."""
    path = Path(path)
    read_results(path)  # validates, and checks the part files are there
    out = Path(out) if out else path.with_name(f"{path.stem}_merged{path.suffix}")
    if out.resolve() == path.resolve():
        raise ResultsError(f"{out}: the merged file must differ from its source")

    def copy(dst_group, src_group):
        for k, v in src_group.attrs.items():
            dst_group.attrs[k] = v
        for name, item in src_group.items():
            if isinstance(item, h5py.Group):
                copy(dst_group.create_group(name), item)
            else:
                dst_group.create_dataset(name, data=item[()])  # virtual datasets are read through
                for k, v in item.attrs.items():
                    dst_group[name].attrs[k] = v

    def fill(dst):
        copy(dst, src)
        del dst["solution"].attrs["parts"]  # nothing is split any more

    with h5py.File(path, "r") as src:
        if "parts" not in src["solution"].attrs:
            raise ResultsError(f"{path}: already self-contained (its solution is not split over per-rank files)")
        return write_atomic(out, fill)


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

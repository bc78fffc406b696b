"""HDF5 results files: write a finished run, read one back.

The layout is documented in docs/hdf5.md (``SCHEMA_VERSION`` below).  Files are
written under a temporary name in the target folder and renamed into place, so a
run interrupted while writing never leaves a truncated ``run.h5``.  Reading checks
that the file is an fbpinn results file of a known schema and raises
:class:`ResultsError` naming the file and what is wrong otherwise.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tempfile
import time
import tomllib
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from . import __version__, history, provenance
from .config import to_toml

logger = logging.getLogger(__name__)

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


@contextmanager
def new_folders(folder, inner=()):
    """Create ``folder`` and any missing folders above it; if the block raises, remove again,
    deepest first, those created here that are still empty -- first the subfolders ``inner``
    of ``folder`` that the block may have made, when ``folder`` itself was created here."""
    folder = Path(folder)
    created = []
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        for p in reversed(created):
            p.mkdir()
        yield
    except BaseException:
        removable = [folder / name for name in inner] if folder in created else []
        for p in removable + created:  # deepest first
            try:
                p.rmdir()
            except OSError:  # not empty (or gone): keep it
                pass
        raise


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


@contextmanager
def staged():
    """Write files under temporary names and move them into place together.

    Yields ``stage(path)``, which creates a temporary file for ``path`` (:func:`temporary_file`)
    and returns its name.  When the block ends normally, every temporary gets the usual
    permissions (mkstemp makes it private) and replaces its target; when it raises, every
    temporary is removed and the targets are untouched."""
    pending = []

    def stage(path) -> Path:
        tmp = temporary_file(path)
        pending.append((tmp, Path(path)))
        return tmp

    try:
        yield stage
        umask = os.umask(0)
        os.umask(umask)
        for tmp, _ in pending:
            os.chmod(tmp, 0o666 & ~umask)
        for tmp, path in pending:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise


def write_atomic(path, fill) -> Path:
    """Create ``path`` by ``fill(h5py.File)`` on a temporary file (:func:`staged`) renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged() as stage, h5py.File(stage(path), "w") as f:
        fill(f)
    return path


def write_results(path, run, blocks=None) -> Path:
    """Write a :class:`fbpinn.trainer.Run` to ``path`` atomically; returns the path.

    ``blocks``: the (offset, shape) of every rank's part file when the solution was
    written per rank (:func:`write_part`); the solution datasets are then virtual."""
    return write_atomic(path, lambda f: _fill(f, run, blocks, Path(path)))


def field_names(attrs: dict) -> tuple:
    """The fields of a results file from its root attributes (``fields``; files of one field
    written before the attribute existed hold ``u``)."""
    return tuple(str(_attr(attrs.get("fields", "u"))).split(","))


def solution_names(fields, target=None) -> list[tuple[str, str, str | None, str | None]]:
    """``(field, dataset, target dataset, error dataset)`` for each field: the solution's
    datasets in a results or part file.  One field keeps the layout of single-field files
    (``u``, ``exact`` or ``reference``, ``error``); with several, field ``p`` has ``p``,
    ``<target>_p`` and ``error_p``.  ``target``: "exact", "reference" or None (no target)."""
    one = len(fields) == 1
    return [(f, f, None if not target else target if one else f"{target}_{f}",
             None if not target else "error" if one else f"error_{f}") for f in fields]


def solution_arrays(u: np.ndarray, exact, fields, target) -> dict:
    """Dataset name -> array for fields stacked on the last axis of ``u`` (and ``exact`` or None)."""
    out = {}
    for i, (_, name, target_name, error_name) in enumerate(solution_names(fields, target if exact is not None
                                                                          else None)):
        out[name] = u[..., i]
        if target_name:
            out[target_name] = exact[..., i]
            out[error_name] = u[..., i] - exact[..., i]
    return out


class Snapshots:
    """The snapshots file of a run (``output.snapshot_every``): the fields on a grid every N steps,
    appended as training goes.  Used by rank 0 of :class:`fbpinn.trainer.Trainer`.

    The file is created complete (under a temporary name, renamed) with no snapshot, and every
    :meth:`append` opens it, adds one row to each dataset, and closes it again ("close after
    write"): between appends it is an ordinary, closed HDF5 file that any reader opens; a reader
    that opens it while a snapshot is being written gets an error from HDF5's file locking and can
    try again a moment later, and an append waits while a reader holds the file (see :meth:`append`).  A run resumed from the checkpoint of step S drops the rows after S
    that the interrupted run had written, so that the file holds each step once.  Layout: see
    docs/hdf5.md, "Snapshots"."""

    FORMAT = "fbpinn-snapshots"
    LOCK_WAIT = 30.0  # seconds an append waits for readers to close the file before skipping the snapshot

    def __init__(self, path, problem, cfg, axes, after_step: int = 0):
        self.path = Path(path)
        self.axes = tuple(problem.axes)
        self.fields = tuple(problem.fields)
        self.shape = tuple(len(a) for a in axes)
        if after_step > 0 and self._matches():
            with self._open() as f:
                keep = int((f["step"][()] <= after_step).sum())
                for ds in [f["step"], f["time"], *(f[name] for name in self.fields)]:
                    ds.resize(keep, axis=0)
            return

        def fill(f):
            _header(f, self.FORMAT, cfg, problem)
            for name, axis in zip(problem.axes, axes):
                f[f"axis_{name}"] = np.asarray(axis, dtype=np.float64)
            f.create_dataset("step", shape=(0,), maxshape=(None,), dtype=np.int64)
            f.create_dataset("time", shape=(0,), maxshape=(None,), dtype=np.float64)
            for name in self.fields:
                f.create_dataset(name, shape=(0, *self.shape), maxshape=(None, *self.shape), dtype=np.float64,
                                 chunks=(1, *self.shape) if np.prod(self.shape) <= 2**22 else True)
            attach_scales(f, self.axes, leading="step")

        write_atomic(self.path, fill)

    def _open(self) -> h5py.File:
        """The file opened for appending, waiting (up to ``LOCK_WAIT`` seconds, backing off) while a
        reader holds HDF5's lock on it; BlockingIOError if it is still held then."""
        deadline, pause = time.monotonic() + self.LOCK_WAIT, 0.01
        while True:
            try:
                return h5py.File(self.path, "a")
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 0.5)

    def _matches(self) -> bool:
        """Whether the file exists and holds snapshots of these fields on this grid."""
        try:
            with h5py.File(self.path, "r") as f:
                return (f.attrs.get("format") == self.FORMAT and f.attrs.get("fields") == ",".join(self.fields)
                        and all(f[name].shape[1:] == self.shape for name in self.fields))
        except (OSError, KeyError):
            return False

    def append(self, step: int, elapsed: float, u: np.ndarray, record: dict | None = None) -> None:
        """Add the fields ``u`` (grid shape + (F,)) after ``step``, ``elapsed`` seconds into training;
        ``record``: the run's provenance up to ``step`` (:mod:`fbpinn.provenance`), which replaces
        the file's ``/provenance``.

        A reader holding the file open (HDF5 locks it) is waited for up to ``LOCK_WAIT`` seconds;
        after that this snapshot is skipped with a warning: a reader never stops the training."""
        try:
            f = self._open()
        except BlockingIOError:
            logger.warning("snapshot of step %d skipped: %s has been held open by another program for %g s "
                           "(HDF5 file lock); close it to let the next snapshots in", step, self.path, self.LOCK_WAIT)
            return
        with f:
            n = f["step"].shape[0]
            for name, value in [("step", step), ("time", elapsed)] + [(k, u[..., i]) for i, k in enumerate(self.fields)]:
                f[name].resize(n + 1, axis=0)
                f[name][n] = value
            if record:
                if provenance.GROUP in f:
                    del f[provenance.GROUP]
                provenance.write(f.create_group(provenance.GROUP), record)


def read_snapshots(path, values: bool = True) -> dict:
    """A snapshots file (:class:`Snapshots`) as ``{"attrs", "axes" (name -> coordinates),
    "step", "time", "fields" (name -> (S, *grid) array), "provenance" (where present)}``,
    checked: ResultsError naming the file and what is wrong for anything else, a damaged file
    included.  ``values=False`` checks the fields' shapes but leaves their values on disk
    (``"fields"`` is then empty)."""
    path = Path(path)
    with _opened(path, Snapshots.FORMAT, "snapshots") as f:
        _check_objects(f, path)
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        axes, fields = str(attrs.get("axes", "")).split(","), str(attrs.get("fields", "")).split(",")
        coords = {}
        for a in axes:
            ds = f.get(f"axis_{a}")
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or _kind(ds) not in ("int", "real"):
                raise ResultsError(f"{path}: dataset /axis_{a} (axis {a!r} of the axes attribute) is missing or not "
                                   "a vector of numbers")
            coords[a] = ds[()]
        grid = tuple(len(c) for c in coords.values())
        out = {"attrs": attrs, "axes": coords, "fields": {}}
        for name, kind in (("step", "int"), ("time", "real")):
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or _kind(ds) not in (kind, "int"):
                raise ResultsError(f"{path}: dataset /{name} is missing or not a vector of {kind} numbers")
            out[name] = ds[()]
        n = len(out["step"])
        if len(out["time"]) != n:
            raise ResultsError(f"{path}: /time has {len(out['time'])} entries, /step {n}")
        for name in fields:
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset) or ds.shape != (n, *grid) or _kind(ds) not in ("int", "real"):
                got = None if not isinstance(ds, h5py.Dataset) else ds.shape
                raise ResultsError(f"{path}: dataset /{name} (field of the fields attribute) has shape {got}, "
                                   f"expected {(n, *grid)}")
            if values:
                out["fields"][name] = ds[()]
        group = f.get(provenance.GROUP)
        if group is not None:  # the run's provenance up to the newest snapshot (none in older files)
            try:
                out["provenance"] = provenance.read(group)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ResultsError(f"{path}: damaged /provenance ({type(e).__name__}: {e})") from None
        return out


def file_format(path) -> str | None:
    """The ``format`` root attribute of an HDF5 file (``fbpinn-results``, ``fbpinn-part``,
    ``fbpinn-snapshots``, ``fbpinn-checkpoint``), or None for anything unreadable or without
    it; the readers then say what is wrong."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("format")
    except _DAMAGE:
        return None
    value = value.decode(errors="replace") if isinstance(value, bytes) else value
    return value if isinstance(value, str) else None


def is_snapshots(path) -> bool:
    """Whether ``path`` is a readable HDF5 file that says it is a snapshots file."""
    return file_format(path) == Snapshots.FORMAT


def part_name(path, rank: int) -> str:
    """File name of rank ``rank``'s part beside the results file ``path``: run_p{rank}.h5."""
    path = Path(path)
    return f"{path.stem}_p{rank}{path.suffix}"


def write_part(path, block: dict) -> Path:
    """Write one rank's block of the test-grid solution beside ``path`` (atomically).

    ``block``: as :meth:`fbpinn.trainer.Trainer.solution_block` makes it: ``u`` and ``exact``
    (or None) with the fields on their last axis, ``fields``, ``target``, ``rank``, ``offset``;
    without ``fields``, ``u`` and ``exact`` are of the one field u and have no such axis."""
    def fill(f):
        f.attrs["format"] = "fbpinn-part"
        f.attrs["rank"] = block["rank"]
        f.attrs["offset"] = np.asarray(block["offset"])
        u, exact, fields = block["u"], block["exact"], block.get("fields")
        if fields is None:  # one field u, without the trailing axis of fields
            u, exact, fields = u[..., None], None if exact is None else exact[..., None], ("u",)
        for name, arr in solution_arrays(u, exact, fields, block.get("target", "exact")).items():
            f[name] = arr

    return write_atomic(Path(path).with_name(part_name(path, block["rank"])), fill)


def _virtual(group, name: str, shape, path, blocks) -> None:
    layout = h5py.VirtualLayout(shape=tuple(shape), dtype="f8")
    for rank, (offset, bshape) in enumerate(blocks):
        if 0 in bshape:
            continue
        source = h5py.VirtualSource(part_name(path, rank), name, shape=tuple(bshape))
        layout[tuple(slice(o, o + n) for o, n in zip(offset, bshape))] = source
    group.create_virtual_dataset(name, layout, fillvalue=np.nan)


def _header(f: h5py.File, fmt: str, cfg, problem) -> None:
    """The root attributes that results and snapshots files share: what the file is, which
    fbpinn wrote it, the problem, its axes and fields (of ``problem``: a problem or a run), the
    resolved config, and the user's problem module with the SHA-256 of its source."""
    f.attrs["format"] = fmt
    f.attrs["fbpinn_version"] = __version__
    f.attrs["problem"] = cfg.problem_name
    f.attrs["axes"] = ",".join(problem.axes)
    f.attrs["fields"] = ",".join(problem.fields)
    f.attrs["config"] = to_toml(cfg)
    if cfg.problem_module:  # the user's own module: where it was, and the hash of the source that trained
        f.attrs["problem_module"] = cfg.problem_module
        f.attrs["problem_module_sha256"] = cfg.problem_module_sha256


def _fill(f: h5py.File, run, blocks=None, path=None) -> None:
    cfg = run.cfg
    _header(f, "fbpinn-results", cfg, run)
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["n_ranks"] = run.n_ranks
    f.attrs["start_time"] = _iso(run.start_time)
    f.attrs["end_time"] = _iso(time.time())
    f.attrs["wall_time"] = run.wall_time

    dec = f.create_group("decomposition")
    dec.attrs["n_levels"] = len(run.levels)
    dec.attrs["window"] = cfg.decomposition.window
    dec.attrs["overlap"] = cfg.decomposition.overlap
    dec.attrs["domain_lo"] = np.asarray(run.domain[0], dtype=np.float64)
    dec.attrs["domain_hi"] = np.asarray(run.domain[1], dtype=np.float64)
    for i, lv in enumerate(run.levels):
        g = dec.create_group(f"level{i}")
        g.attrs["shape"] = np.asarray(lv["shape"])
        g["centres"] = lv["centres"]
        g["half_widths"] = lv["half_widths"]

    history.write(f.create_group("training"), run.history, run.loss_per_step, run.term_names, run.fields)

    sol = f.create_group("solution")
    shape = tuple(len(a) for a in run.grid)
    for name, axis in zip(run.axes, run.grid):
        sol[f"axis_{name}"] = np.asarray(axis, dtype=np.float64)
    if run.has_exact:
        sol.attrs["target"] = run.target  # "exact" or "reference": the dataset the error is measured against
        if run.target == "reference":
            sol.attrs["reference_method"] = run.reference_method
    if blocks is not None:
        sol.attrs["parts"] = len(blocks)
        for _, *names in solution_names(run.fields, run.target if run.has_exact else None):
            for name in filter(None, names):
                _virtual(sol, name, shape, path, blocks)
    else:
        fields = (*shape, len(run.fields))
        exact = None if run.u_exact is None else np.asarray(run.u_exact, dtype=np.float64).reshape(fields)
        for name, arr in solution_arrays(np.asarray(run.u_test, dtype=np.float64).reshape(fields), exact,
                                          run.fields, run.target).items():
            sol[name] = arr
    attach_scales(sol, run.axes)
    if run.observations is not None:
        data = f.create_group("observations")
        data["x"], data["u"] = (np.asarray(a, dtype=np.float64) for a in run.observations)

    if run.receivers is not None:
        write_receivers(f.create_group("receivers"), run.receivers, run.fields, run.axes)

    par = f.create_group("parameters")
    for name, arr in run.parameters.items():
        par[name] = arr
    if run.learned:
        learned = f.create_group("learned")
        for name, value in run.learned.items():
            learned[name] = value
    if run.provenance:
        provenance.write(f.create_group(provenance.GROUP), run.provenance)


def write_receivers(group, traces: dict, fields, axes) -> None:
    """The traces of :meth:`fbpinn.trainer.Trainer.traces` in ``group``: ``positions`` (R, d - 1),
    ``t`` (T,), and per field its trace, its target's and the error, (R, T) each, named as the
    solution's datasets are (``u``, ``exact`` or ``reference``, ``error``; ``p``, ``exact_p``,
    ... for several fields)."""
    group["positions"] = np.asarray(traces["positions"], dtype=np.float64)
    group["positions"].attrs["axes"] = ",".join(axes[:-1])
    group["t"] = np.asarray(traces["t"], dtype=np.float64)
    target = traces["kind"] if traces["target"] is not None else None
    if target:
        group.attrs["target"] = target
        if target == "reference":
            group.attrs["reference_method"] = traces["method"]
    for name, arr in solution_arrays(traces["u"], traces["target"], fields, target).items():
        group[name] = arr


def trace_error(data: dict, i: int | None = None) -> tuple[str | None, float]:
    """``(target, relative L2 error)`` of the traces in ``data["receivers"]`` (as
    :func:`read_results` gives them) for field ``i``, or all fields when None; ``(None, nan)``
    without a target."""
    group = data["receivers"]
    target = group["attrs"].get("target")
    if not target:
        return None, float("nan")
    rows = solution_names(field_names(data["attrs"]), target)
    rows = rows if i is None else [rows[i]]
    num = sum(float(np.sum(np.asarray(group[e]) ** 2)) for _, _, _, e in rows)
    den = sum(float(np.sum(np.asarray(group[t]) ** 2)) for _, _, t, _ in rows)
    return target, float(np.sqrt(num / den)) if den > 0 else float("nan")


def _iso(t: float) -> str:
    return provenance.iso(t)


# ----------------------------------------------------------------------------- reading
# What fbpinn info, plot and merge read from a results file, checked against this description
# before any data is read (:func:`_check_entries`).  Each entry is (where, kind, shape, required):
# "group@name" is an attribute ("@name" one of the root), "group/name" a dataset; kinds are "str",
# "int" and "real" (an int or a float); a shape names its dimensions, and one name is one length
# throughout the file: d axes, E evaluation rows, T loss terms, S steps, J<i> subdomains of level i,
# n_<axis> test points along an axis, N observations; None: any shape.  An entry that is not
# required is checked where it is present.  :func:`_layout` adds the entries that depend on the
# file's axes and levels, :func:`_check_values` what a shape cannot say.
_ROOT = [
    ("@schema_version", "int", (), True),
    ("@fbpinn_version", "str", (), True),
    ("@problem", "str", (), True),
    ("@axes", "str", (), True),
    ("@fields", "str", (), False),
    ("@n_ranks", "int", (), True),
    ("@config", "str", (), True),
    ("@problem_module", "str", (), False),
    ("@problem_module_sha256", "str", (), False),
    ("@start_time", "str", (), True),
    ("@end_time", "str", (), True),
    ("@wall_time", "real", (), True),
]
_SCHEMA = [
    ("decomposition@n_levels", "int", (), True),
    ("decomposition@window", "str", (), True),
    ("decomposition@overlap", "real", (), True),
    ("decomposition@domain_lo", "real", ("d",), True),
    ("decomposition@domain_hi", "real", ("d",), True),
    *history.schema("training"),
    ("solution@target", "str", (), False),
    ("solution@reference_method", "str", (), False),
    ("solution@parts", "int", (), False),
    # /provenance (fbpinn.provenance; absent from files written before it was recorded): R ranks, G segments
    *((f"provenance@{name}", "str", (), False) for name in (*provenance.REQUIRED, *provenance.OPTIONAL)),
    ("provenance/ranks/host", "str", ("R",), False),
    ("provenance/ranks/device", "str", ("R",), False),
    ("provenance/ranks/threads", "int", ("R",), False),
    *((f"provenance/segments/{name}", "real" if dtype is np.float64 else "int", ("G",), False)
      for name, dtype in provenance.SEGMENT_FIELDS),
]
GROUPS = ("decomposition", "training", "solution", "parameters")  # required groups
MAX_DEPTH = 8  # groups nested deeper than this (fbpinn writes 3) are refused, so that a looped file ends
# What can go wrong inside h5py, HDF5 and numpy while a damaged file is read; each becomes a ResultsError.
_DAMAGE = (OSError, KeyError, TypeError, IndexError, ValueError, RuntimeError, ArithmeticError, MemoryError)


def read_results(path, lazy: bool = False) -> dict:
    """Read a results file into nested dicts of numpy arrays and attributes.

    ``lazy``: leave the solution's grid datasets (every field, target and error of /solution)
    on disk: each is then a :class:`Stored` that reads what is sliced from it, so that a
    solution larger than memory can be used piece by piece.  Everything is checked as without
    it, the part files of a split solution included (their data is not read).

    Raises :class:`ResultsError`, one line naming the file and the problem, if the file is
    missing, not HDF5, not an fbpinn results file of a supported schema version, does not hold
    what the schema above describes (groups, attributes, datasets, their kinds and shapes), holds
    links to other files (see :func:`_check_objects`), or is damaged in any way HDF5 notices."""
    path = Path(path)
    with _checked(path) as f:
        if not lazy:
            return _to_dict(f, _read_virtual(f, path))
        blocks = {}
        _read_virtual(f, path, copy=lambda name, box, ds: blocks.setdefault(name, []).append(
            (box, Path(ds.file.filename).name)))
        stored = {ds.name: Stored(path, ds.name, ds.shape, blocks.get(ds.name))
                  for ds in f["solution"].values() if isinstance(ds, h5py.Dataset) and not ds.name.split("/")[-1]
                  .startswith("axis_")}
        return _to_dict(f, stored)


class Stored:
    """A dataset of a results file left on disk (:func:`read_results` with ``lazy=True``):
    ``shape``, ``ndim``, ``size`` and ``dtype`` (float64) like an array; ``stored[key]`` reads
    the part that ``key`` (an index, slices with positive steps, or ``...``) selects, and
    ``numpy.asarray(stored)`` everything.  A solution split over per-rank files is read from
    the part files themselves, block by block, never through HDF5's virtual dataset (whose
    missing sources would read as NaN): a part file gone since the check is a ResultsError."""

    dtype = np.dtype(np.float64)

    def __init__(self, path, name: str, shape, blocks=None):
        self.path, self.name, self.shape = Path(path), name, tuple(int(n) for n in shape)
        self.blocks = blocks  # [(box of slices, part file name)] of a split solution; None: stored here

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        data = self[()]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"Stored({str(self.path)!r}, {self.name!r}, shape={self.shape})"

    def __getitem__(self, key):
        ranges, squeeze = self._ranges(key)
        out = np.empty(tuple(len(r) for r in ranges), dtype=np.float64)
        with _reading(self.path):
            if self.blocks is None:
                with h5py.File(self.path, "r") as f:
                    out[...] = f[self.name][tuple(slice(r.start, r.stop, r.step) for r in ranges)]
            else:
                for box, part in self.blocks:
                    self._read_block(out, ranges, box, part)
        return out.reshape([len(r) for r, sq in zip(ranges, squeeze) if not sq]) if any(squeeze) else out

    def _ranges(self, key):
        """The range of indices along each axis that ``key`` selects, and which axes an integer
        index drops."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim:
            raise IndexError(f"{len(key)} indices for the {self.ndim} axes of {self.name}")
        ranges, squeeze = [], []
        for k, n in zip(key, self.shape):
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if k < 0 else int(k)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} is out of range for an axis of length {n} of {self.name}")
                ranges.append(range(k, k + 1))
                squeeze.append(True)
            elif isinstance(k, slice) and (k.step or 1) > 0:
                ranges.append(range(*k.indices(n)))
                squeeze.append(False)
            else:
                raise IndexError(f"{self.name} is read with integers and slices of positive step, not {k!r}")
        return ranges, squeeze

    def _read_block(self, out, ranges, box, part) -> None:
        """Copy what ``ranges`` selects of one part file's block ``box`` into ``out``."""
        local, where = [], []
        for r, b in zip(ranges, box):
            first = max(r.start, b.start + (r.start - b.start) % r.step) if b.start > r.start else r.start
            stop = min(r.stop, b.stop)
            if first >= stop:
                return
            local.append(slice(first - b.start, stop - b.start, r.step))
            where.append(slice((first - r.start) // r.step, (first - r.start) // r.step + len(range(first, stop, r.step))))
        file = self.path.parent / part
        if not file.is_file():
            raise ResultsError(f"{self.path}: its solution is split over per-rank files and {part} is missing")
        with h5py.File(file, "r") as f:
            out[tuple(where)] = f[self.name.rsplit("/", 1)[1]][tuple(local)]


@contextmanager
def _opened(path: Path, fmt: str, what: str):
    """``path`` open for reading once it is an HDF5 file whose format attribute is ``fmt`` (an
    fbpinn ``what`` file); every failure inside the block becomes a ResultsError naming it."""
    if not path.is_file():
        raise ResultsError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except _DAMAGE as e:
        raise ResultsError(f"{path}: not a readable HDF5 file ({_one_line(e)})") from None
    with _reading(path), f:
        if f.attrs.get("format") != fmt:
            raise ResultsError(f"{path}: not an fbpinn {what} file (no format='{fmt}' attribute)")
        yield f


@contextmanager
def _checked(path: Path):
    """The results file ``path`` open for reading, once everything :func:`read_results` checks
    before it reads the data holds (the part files are checked when they are read); every
    failure inside the block becomes a ResultsError naming ``path``."""
    with _opened(path, "fbpinn-results", "results") as f:
        version = f.attrs.get("schema_version", -1)
        if not isinstance(version, (int, np.integer)) or version != SCHEMA_VERSION:
            shown = version if isinstance(version, (int, np.integer)) else repr(_attr(version))
            raise ResultsError(f"{path}: schema version {shown}; this fbpinn reads version {SCHEMA_VERSION}")
        _check_objects(f, path, virtual_in="/solution")
        for group in GROUPS:
            if not isinstance(f.get(group), h5py.Group):
                raise ResultsError(f"{path}: missing group /{group}")
        dims = {}
        _check_entries(f, path, _ROOT, dims)
        axes = str(_attr(f.attrs["axes"])).split(",")
        dims["d"] = (len(axes), "the axes attribute")
        dims["s"] = (len(axes) - 1, "the space axes (all axes but t)")
        fields = _fields(f, path)
        dims["F"] = (len(fields), "the fields attribute")
        levels = _levels(f, path)
        _check_entries(f, path, _SCHEMA + _layout(f, axes, levels, fields), dims)
        _check_values(f, path, axes, levels, dims, fields)
        yield f


@contextmanager
def _reading(path):
    """Turn what h5py, HDF5 or numpy raise on a damaged ``path`` into one-line ResultsError."""
    try:
        yield
    except ResultsError:
        raise
    except _DAMAGE as e:
        raise ResultsError(f"{path}: damaged or unreadable ({type(e).__name__}: {_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _check_objects(f: h5py.File, path, virtual_in=None) -> None:
    """Walk every link of ``f`` without following any, and refuse what fbpinn never writes and
    what would make HDF5 read another file or loop: external links, soft links, datasets whose
    data lies in external raw files, virtual datasets anywhere but directly in ``virtual_in``
    (their sources are checked by :func:`_read_virtual`), names that :func:`_to_dict` reserves,
    committed datatypes, groups nested deeper than ``MAX_DEPTH``, and datasets that claim more
    bytes than the file holds (a damaged dataspace)."""
    size = os.path.getsize(path)

    def walk(group, depth):
        for name in group:
            link = group.get(name, getlink=True)
            where = f"{group.name.rstrip('/')}/{name}"
            if isinstance(link, h5py.ExternalLink):
                raise ResultsError(f"{path}: {where} is an external link to {link.filename}:{link.path}; fbpinn "
                                   "follows no links to other files")
            if isinstance(link, h5py.SoftLink):
                raise ResultsError(f"{path}: {where} is a soft link to {link.path}; fbpinn writes none and "
                                   "follows none")
            if name == "attrs" or name.endswith(".attrs"):
                raise ResultsError(f"{path}: {where}: fbpinn writes no object of that name")
            item = group[name]
            if isinstance(item, h5py.Group):
                if depth >= MAX_DEPTH:
                    raise ResultsError(f"{path}: {where} is nested deeper than {MAX_DEPTH} groups (a looped file?)")
                walk(item, depth + 1)
            elif not isinstance(item, h5py.Dataset):
                raise ResultsError(f"{path}: {where} is a {type(item).__name__}; fbpinn writes only groups and "
                                   "datasets")
            elif item.external:
                raise ResultsError(f"{path}: {where} keeps its data in the external file(s) "
                                   f"{', '.join(str(e[0]) for e in item.external)}; fbpinn reads none")
            elif item.is_virtual:
                if group.name != virtual_in:
                    raise ResultsError(f"{path}: {where} is a virtual dataset; fbpinn follows virtual sources only "
                                       "from /solution of a results file to its part files")
            elif item.id.get_create_plist().get_nfilters() == 0 and item.nbytes > size:
                raise ResultsError(f"{path}: {where} claims {item.nbytes} bytes of data, more than the whole file "
                                   f"({size} bytes)")

    walk(f, 1)


def _levels(f: h5py.File, path) -> int:
    """The number of decomposition levels: groups level0 .. level<n-1>, n = the n_levels attribute."""
    dec = f["decomposition"]
    n = dec.attrs.get("n_levels")
    if n is None or not isinstance(n, (int, np.integer)):
        raise ResultsError(f"{path}: attribute n_levels of /decomposition is missing or not an integer")
    found = sorted(k for k in dec if k.startswith("level"))
    if int(n) < 1 or found != sorted(f"level{i}" for i in range(int(n))):
        raise ResultsError(f"{path}: /decomposition has n_levels = {n} and the groups [{', '.join(found)}]; "
                           "expected level0 .. level<n_levels - 1>, at least one")
    return int(n)


def _fields(f: h5py.File, path) -> tuple:
    """The file's fields (:func:`field_names`), checked to be distinct names without "_"."""
    fields = field_names(f.attrs)
    if len(set(fields)) != len(fields) or not all(n.isidentifier() and "_" not in n for n in fields) \
            or {"exact", "reference", "error"} & set(fields):
        raise ResultsError(f"{path}: the fields attribute {','.join(fields)!r} is not a list of distinct field names")
    return fields


def _layout(f: h5py.File, axes, levels: int, fields=("u",)) -> list:
    """Schema entries (as ``_SCHEMA``) that depend on the file's axes, levels, fields and optional groups."""
    grid = tuple(f"n_{a}" for a in axes)
    entries = []
    for i in range(levels):
        entries += [(f"decomposition/level{i}@shape", "int", ("d",), True),
                    (f"decomposition/level{i}/centres", "real", (f"J{i}", "d"), True),
                    (f"decomposition/level{i}/half_widths", "real", (f"J{i}", "d"), True)]
    entries += [(f"solution/axis_{a}", "real", (f"n_{a}",), True) for a in axes]
    entries += [(f"solution/{name}", "real", grid, True) for _, name, _, _ in solution_names(fields)]
    for target in ("exact", "reference"):
        entries += [(f"solution/{name}", "real", grid, False)
                    for _, _, *names in solution_names(fields, target) for name in names]
    if "observations" in f:
        entries += [("observations/x", "real", ("N", "d"), True),
                    ("observations/u", "real", ("N",) if len(fields) == 1 else ("N", "F"), True)]
    if "receivers" in f:  # traces u(r, t): Q receivers, S_r samples in time
        entries += [("receivers/positions", "real", ("Q", "s"), True), ("receivers/t", "real", ("S_r",), True),
                    ("receivers/positions@axes", "str", (), False), ("receivers@target", "str", (), False),
                    ("receivers@reference_method", "str", (), False)]
        entries += [(f"receivers/{name}", "real", ("Q", "S_r"), True) for _, name, _, _ in solution_names(fields)]
        for target in ("exact", "reference"):
            entries += [(f"receivers/{name}", "real", ("Q", "S_r"), False)
                        for _, _, *names in solution_names(fields, target) for name in names]
    if "learned" in f:
        entries += [(f"learned/{name}", "real", (), True) for name in f["learned"]]
    for name, level in f["parameters"].items():
        items = level.items() if isinstance(level, h5py.Group) else [("", level)]
        entries += [(f"parameters/{name}/{k}".rstrip("/"), "real", None, True) for k, _ in items]
    return entries


def _check_entries(f: h5py.File, path, entries, dims: dict) -> None:
    """Check ``entries`` (see ``_SCHEMA``) in ``f``; ``dims`` maps a dimension name to (length,
    where it was first seen) and grows as names are met."""
    for where, kind, shape, required in entries:
        group, at, name = where.rpartition("@") if "@" in where else where.rpartition("/")
        what = f"attribute {name} of /{group}" if at == "@" and group else f"root attribute {name}" if at == "@" \
            else f"dataset /{where}"
        holder = f.get(group) if group else f
        if at == "@":
            present = holder is not None and name in holder.attrs
            value = holder.attrs[name] if present else None
        else:
            value = holder.get(name) if isinstance(holder, h5py.Group) else None
            present = value is not None
        if not present:
            if required:
                raise ResultsError(f"{path}: {what} is missing")
            continue
        if at != "@" and not isinstance(value, h5py.Dataset):
            raise ResultsError(f"{path}: {what} is a {type(value).__name__}, not a dataset")
        got = _kind(value)
        strings = kind == "str" and isinstance(value, h5py.Dataset) and value.dtype.kind == "S"  # fixed-length
        if got != kind and not (kind == "real" and got == "int") and not strings:
            dtype = value.dtype if isinstance(value, h5py.Dataset) else np.asarray(value).dtype
            raise ResultsError(f"{path}: {what} holds {got or 'data of type ' + str(dtype)}, expected {kind}")
        if shape is not None:
            _check_shape(path, what, np.shape(value) if at == "@" else value.shape, shape, dims)


def _kind(value) -> str | None:
    """"str", "int" or "real" for an attribute value or a dataset, None for anything else."""
    if isinstance(value, (str, bytes)):
        if isinstance(value, bytes):
            value.decode()  # a UnicodeDecodeError is damage
        return "str"
    kind = value.dtype.kind if isinstance(value, h5py.Dataset) else np.asarray(value).dtype.kind
    return {"i": "int", "u": "int", "f": "real"}.get(kind)


def _check_shape(path, what, shape, expected, dims: dict) -> None:
    if len(shape) != len(expected):
        raise ResultsError(f"{path}: {what} has shape {shape}, expected ({', '.join(expected)})")
    for n, name in zip(shape, expected):
        if name not in dims:
            dims[name] = (n, what)
        elif dims[name][0] != n:
            raise ResultsError(f"{path}: {what} has shape {shape}, expected ({', '.join(expected)}) with "
                               f"{name} = {dims[name][0]} (from {dims[name][1]})")


def _check_values(f: h5py.File, path, axes, levels: int, dims: dict, fields=("u",)) -> None:
    """What the shapes leave open: axis names, at least one evaluation row, the subdomain counts,
    the loss term names, the target, and the stored config's test grid."""
    if len(set(axes)) != len(axes) or not all(a.isidentifier() for a in axes):
        raise ResultsError(f"{path}: the axes attribute {','.join(axes)!r} is not a list of distinct axis names")
    if dims["E"][0] < 1:
        raise ResultsError(f"{path}: /training/step is empty; a finished run has at least one evaluation")
    for i in range(levels):
        shape = np.asarray(f[f"decomposition/level{i}"].attrs["shape"])
        if (shape < 1).any() or int(np.prod(shape)) != dims[f"J{i}"][0]:
            raise ResultsError(f"{path}: /decomposition/level{i} has the subdomain grid {shape.tolist()} but "
                               f"{dims[f'J{i}'][0]} centres")
    tr = f["training"]
    if "loss_terms" in tr:
        names = str(_attr(tr["loss_terms"].attrs.get("names", "")))
        if len(names.split(",")) != dims["T"][0]:
            raise ResultsError(f"{path}: /training/loss_terms has {dims['T'][0]} column(s) but its names attribute "
                               f"lists {names!r}")
    sol = f["solution"]
    target = sol.attrs.get("target")
    if target is not None and (_attr(target) not in ("exact", "reference")
                               or solution_names(fields, _attr(target))[0][2] not in sol):
        raise ResultsError(f"{path}: /solution has target = {_attr(target)!r} but no dataset of that name")
    if "parts" in sol.attrs and int(sol.attrs["parts"]) < 1:
        raise ResultsError(f"{path}: /solution has parts = {sol.attrs['parts']}; expected at least 1")
    try:
        points = tomllib.loads(_attr(f.attrs["config"])).get("test", {}).get("points")
    except tomllib.TOMLDecodeError:
        points = None  # an unreadable config is shown as it is (fbpinn info --config) but not used here
    grid = tuple(dims[f"n_{a}"][0] for a in axes)
    if points is not None and tuple(np.atleast_1d(np.asarray(points, dtype=object)).tolist()) != grid:
        raise ResultsError(f"{path}: the test grid of the stored config, test.points = {points}, does not match "
                           f"the solution's shape {grid}")


def _read_virtual(f: h5py.File, path, copy=None) -> dict:
    """The virtual datasets of /solution, assembled here from the part files, by name.

    A source is accepted only if it names one of the part files fbpinn writes beside ``path``
    (:func:`part_name` of rank 0 .. parts - 1, no folder), a dataset of the same name, and a
    block of the virtual dataset; the part file must be a regular file (not a link) with
    format = 'fbpinn-part', links to nothing (:func:`_check_objects`) and hold that dataset
    with the block's shape.  The blocks must cover every point once.  HDF5 itself resolves
    no virtual source, so no other file is ever opened.

    ``copy(name, box, dataset)``: called with each checked block's open part dataset instead of
    reading it (out of core, :func:`merge`); nothing is assembled and {} is returned."""
    datasets = [ds for ds in f["solution"].values() if isinstance(ds, h5py.Dataset) and ds.is_virtual]
    if not datasets:
        return {}
    allowed = {part_name(path, r): r for r in range(int(f["solution"].attrs.get("parts", 0)))}
    sources = {ds.name: ds.virtual_sources() for ds in datasets}
    for name, maps in sources.items():
        for m in maps:
            if m.file_name not in allowed:
                raise ResultsError(f"{path}: {name} is a virtual dataset reading from {m.file_name!r}; fbpinn follows "
                                   "virtual sources only to the part files it writes beside the file "
                                   f"({part_name(path, 0)} .. as the parts attribute of /solution counts them)")
            if m.dset_name.lstrip("/") != name.rsplit("/", 1)[1]:
                raise ResultsError(f"{path}: {name} reads dataset {m.dset_name!r} of {m.file_name}; expected its "
                                   "own name")
    missing = sorted({m.file_name for maps in sources.values() for m in maps
                      if not (path.parent / m.file_name).is_file()})
    if missing:
        raise ResultsError(f"{path}: its solution is split over per-rank files and these are missing: "
                           f"{', '.join(missing)}")
    out = {}
    for name, maps in sources.items():
        shape = f[name].shape
        data, covered = None if copy else np.full(shape, np.nan), np.zeros(shape, dtype=bool)
        for m in maps:
            start, end = m.vspace.get_select_bounds()
            box = tuple(slice(s, e + 1) for s, e in zip(start, end))
            block = tuple(e - s + 1 for s, e in zip(start, end))
            if m.vspace.get_select_npoints() != int(np.prod(block)) or covered[box].any():
                raise ResultsError(f"{path}: {name} maps {m.file_name} onto a region that is not a box of its own")
            use = (lambda ds: ds[()]) if copy is None else (lambda ds, n=name, b=box: copy(n, b, ds))
            block_data = _part_block(path.parent / m.file_name, allowed[m.file_name], name.rsplit("/", 1)[1],
                                     block, tuple(start), path, use)
            if copy is None:
                data[box] = block_data
            covered[box] = True
        if not covered.all():
            raise ResultsError(f"{path}: the part files cover {int(covered.sum())} of the {covered.size} points "
                               f"of {name}")
        if copy is None:
            out[name] = data
    return out


def _part_block(part: Path, rank: int, name: str, shape, offset, path, use=lambda ds: ds[()]):
    """``use`` of dataset ``name`` of the part file ``part`` of rank ``rank`` (by default its
    data), checked to be the block of ``shape`` at ``offset`` that the results file ``path``
    maps from it."""
    if part.is_symlink():
        raise ResultsError(f"{part}: is a symbolic link; fbpinn reads part files only beside {path.name}")
    try:
        f = h5py.File(part, "r")
    except _DAMAGE as e:
        raise ResultsError(f"{part}: not a readable HDF5 file ({_one_line(e)}); {path} reads its solution from it") \
            from None
    with _reading(part), f:
        if f.attrs.get("format") != "fbpinn-part":
            raise ResultsError(f"{part}: not an fbpinn part file (no format='fbpinn-part' attribute); {path} reads "
                               "its solution from it")
        _check_objects(f, part)
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset) or _kind(ds) not in ("int", "real") or ds.shape != tuple(shape):
            got = "missing" if ds is None else \
                f"{getattr(ds, 'shape', None)} of {getattr(ds, 'dtype', type(ds).__name__)}"
            raise ResultsError(f"{part}: dataset /{name} is {got}; {path} maps a block of shape {tuple(shape)} "
                               "of real numbers from it")
        stored = f.attrs.get("offset")
        if stored is not None and np.asarray(stored).ravel().tolist() != list(offset):
            raise ResultsError(f"{part}: offset {np.asarray(stored).tolist()}, but {path} maps it at {list(offset)}")
        if int(f.attrs.get("rank", rank)) != rank:
            raise ResultsError(f"{part}: holds rank {f.attrs['rank']}'s block, expected rank {rank}'s")
        return use(ds)


MERGE_CHUNK = 2**20  # values (8 MiB of float64) that merge holds in memory at a time, per dataset


def merge(path, out=None, overwrite: bool = False, chunk: int = MERGE_CHUNK) -> Path:
    """Write a results file whose solution is split over per-rank files as one self-contained
    file (by default ``<name>_merged.h5`` beside it); returns its path.

    The source is checked as by :func:`read_results`, and copied dataset by dataset in slabs of
    at most ``chunk`` values along the first axis, so that memory stays bounded whatever the
    size of the solution.  Raises ResultsError for a bad source or an output that is the source
    or one of its part files, FileExistsError if ``out`` exists and ``overwrite`` is false,
    OSError naming ``out`` if it cannot be written."""
    path = Path(path)
    out = Path(out) if out else path.with_name(f"{path.stem}_merged{path.suffix}")
    with _checked(path) as src:
        _read_virtual(src, path, copy=lambda *block: None)  # every source and part file checked, nothing read
        sol = src["solution"]
        if "parts" not in sol.attrs:
            raise ResultsError(f"{path}: already self-contained (its solution is not split over per-rank files)")
        own = [path] + [path.with_name(part_name(path, r)) for r in range(int(sol.attrs["parts"]))]
        if out.resolve() in {p.resolve() for p in own}:
            raise ResultsError(f"{out}: the merged file must differ from its source and the source's part files")
        refused = out.exists() and not overwrite  # raised below: an OSError here would read as the source's damage

        def fill(f):
            _copy_group(src, f, chunk)
            del f["solution"].attrs["parts"]  # nothing is split any more
            merged = f["solution"]
            for name, ds in sol.items():
                if ds.is_virtual:
                    merged.create_dataset(name, shape=ds.shape, dtype="f8")
            _read_virtual(src, path, copy=lambda name, box, ds: _copy_slabs(ds, merged[name.rsplit("/", 1)[1]],
                                                                             chunk, box))
            attach_scales(merged, str(_attr(src.attrs["axes"])).split(","))  # scales are references: made anew

        try:
            if not refused:
                return write_atomic(out, fill)
        except OSError as e:  # the output's failure, not the source's damage (which _checked reports)
            failed = e
    if refused:
        raise FileExistsError(errno.EEXIST, "exists; merge replaces no file unless told to (--overwrite)", str(out))
    # Named for the file asked for, not the temporary one.
    raise OSError(failed.errno, failed.strerror or str(failed), str(out)) from None


def _copy_group(src, dst, chunk: int) -> None:
    """Copy group ``src`` into ``dst``: attributes (but the dimension-scale ones), subgroups and
    datasets, the latter in slabs (:func:`_copy_slabs`); virtual datasets are left out."""
    dst.attrs.update({k: v for k, v in src.attrs.items() if k not in SCALE_ATTRIBUTES})
    for name, item in src.items():
        if isinstance(item, h5py.Group):
            _copy_group(item, dst.create_group(name), chunk)
        elif not item.is_virtual:
            _copy_slabs(item, dst.create_dataset(name, shape=item.shape, dtype=item.dtype), chunk)
            dst[name].attrs.update({k: v for k, v in item.attrs.items() if k not in SCALE_ATTRIBUTES})


def _copy_slabs(src, dst, chunk: int, box=()) -> None:
    """Copy dataset ``src`` into the region ``box`` (a tuple of slices; all of it by default) of
    ``dst``, at most ``chunk`` values at a time, slab by slab along the first axis."""
    def read(index):  # the source's damage is a ResultsError naming it; the output's failures stay OSErrors
        with _reading(Path(src.file.filename)):
            return src[index]

    if src.ndim == 0 or src.size == 0:
        dst[box or ()] = read(())
        return
    rows = max(1, chunk // max(1, int(np.prod(src.shape[1:]))))
    start = box[0].start if box else 0
    for i in range(0, src.shape[0], rows):
        n = min(rows, src.shape[0] - i)
        target = (slice(start + i, start + i + n), *box[1:]) if box else (slice(i, i + n),)
        dst[target] = read(slice(i, i + n))


# The attributes by which HDF5 ties dimension scales to datasets (they hold object references into
# the file): not data, not copied by :func:`merge`, which attaches the scales anew.
SCALE_ATTRIBUTES = ("CLASS", "NAME", "REFERENCE_LIST", "DIMENSION_LIST", "DIMENSION_LABELS", "_Netcdf4Dimid",
                    "_Netcdf4Coordinates")


def attach_scales(sol, axes, leading: str | None = None) -> None:
    """Make ``axis_<a>`` the dimension scale of every grid dataset's axis ``a`` in group ``sol``,
    so that netCDF readers (xarray with h5netcdf) name the dimensions by axis.  ``leading``: the
    name of a vector dataset that is the scale of a first, extra dimension (``step`` in a
    snapshots file: its datasets are (S, *grid), its other vectors (S,))."""
    scales = [sol[f"axis_{a}"] for a in axes]
    for a, scale in zip(axes, scales):
        scale.make_scale(f"axis_{a}")
    first = None
    if leading is not None:
        first = sol[leading]
        first.make_scale(leading)
    for name, ds in sol.items():
        if not isinstance(ds, h5py.Dataset) or name.startswith("axis_") or name == leading:
            continue
        extra = int(first is not None and ds.ndim in (1, len(axes) + 1))
        if extra:
            ds.dims[0].attach_scale(first)
            ds.dims[0].label = leading
        if ds.ndim == len(axes) + extra:
            for d, (a, scale) in enumerate(zip(axes, scales), start=extra):
                ds.dims[d].attach_scale(scale)
                ds.dims[d].label = a


def _to_dict(g, virtual=None) -> dict:
    """Group ``g`` as nested dicts: "attrs" holds its attributes, each dataset its array (or what
    ``virtual`` holds under its full name: the assembled array of a virtual dataset, a
    :class:`Stored`) and "<name>.attrs" its attributes."""
    virtual = virtual or {}
    out = {"attrs": {k: _attr(v) for k, v in g.attrs.items() if k not in SCALE_ATTRIBUTES}}
    for name, item in g.items():
        if isinstance(item, h5py.Group):
            out[name] = _to_dict(item, virtual)
        else:
            out[name] = virtual[item.name] if item.name in virtual else item[()]
            if item.attrs:
                out[name + ".attrs"] = {k: _attr(v) for k, v in item.attrs.items() if k not in SCALE_ATTRIBUTES}
    return out


def _from_dict(g, data: dict) -> None:
    """Write nested dicts laid out as :func:`_to_dict` returns them into group ``g``."""
    g.attrs.update(data["attrs"])
    for name, item in data.items():
        if name == "attrs" or name.endswith(".attrs"):
            continue
        if isinstance(item, dict):
            _from_dict(g.create_group(name), item)
        else:
            g[name] = item
            g[name].attrs.update(data.get(name + ".attrs", {}))


def _attr(v):
    """An attribute's value with strings as str; one that is not valid UTF-8 raises UnicodeError."""
    if isinstance(v, str):
        v.encode()  # h5py keeps undecodable bytes as lone surrogates
    return v.decode() if isinstance(v, bytes) else v

"""Points from files: what ``fbpinn eval --points`` and ``output.receivers_file`` read.

:func:`read` takes ``FILE.npy`` (an (N, d) array), ``FILE.csv`` (one column per axis, or after a
header line naming the columns, the columns named by the axes in any order) or
``FILE.h5:/dataset`` (an (N, d) dataset), and checks the result's shape; anything else is a
:class:`PointsError` naming the file (and what asked for it) and the problem.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


class PointsError(ValueError):
    """Points that cannot be read."""


def read(spec: str, axes, what: str | None = None) -> np.ndarray:
    """The (N, len(axes)) float64 points of ``spec``; ``what`` prefixes the messages (default
    the file's name)."""
    import h5py

    what = what or str(spec)
    path, sep, dataset = str(spec).partition(":")
    suffix = Path(path).suffix.lower()
    if sep and suffix not in (".h5", ".hdf5"):
        path, dataset, suffix = str(spec), "", Path(spec).suffix.lower()
    if not Path(path).is_file():
        raise PointsError(f"{what}: {path}: no such file")
    try:
        if suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            x = _csv(Path(path), axes, what)
        elif suffix in (".h5", ".hdf5"):
            if not dataset:
                raise PointsError(f"{what}: name the dataset, e.g. {path}:/x")
            with h5py.File(path, "r") as f:
                item = f.get(dataset)
                if not isinstance(item, h5py.Dataset):
                    raise PointsError(f"{what}: {path} has no dataset {dataset}")
                x = item[()]
        else:
            raise PointsError(f"{what}: unknown extension {suffix or '(none)'}; use .npy, .csv or FILE.h5:/dataset")
    except PointsError:
        raise
    except (OSError, ValueError, TypeError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PointsError(f"{what}: cannot read points ({detail})") from None
    x = np.asarray(x)
    if x.ndim == 1 and len(axes) == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != len(axes) or not np.issubdtype(x.dtype, np.number):
        raise PointsError(f"{what}: points must be an (N, {len(axes)}) array of numbers (one column per axis "
                          f"{', '.join(axes)}), got {x.dtype} of shape {x.shape}")
    return x.astype(np.float64)


def _csv(path: Path, axes, what: str) -> np.ndarray:
    """A CSV file's points: one column per axis, or, after a first line naming the columns, the
    columns of the axis names (in any order; other columns are ignored)."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    order, named = list(range(len(axes))), False
    if rows:
        head = [c.strip() for c in rows[0]]
        try:
            [float(c) for c in head]
        except ValueError:
            if not set(axes) <= set(head):
                raise PointsError(f"{what}: header {','.join(head)} does not name the axes {','.join(axes)}") from None
            order, named = [head.index(a) for a in axes], True
            rows = rows[1:]
    try:
        x = np.array([[float(c) for c in r] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    except ValueError as e:
        raise PointsError(f"{what}: {e}") from None
    if x.shape[1] != len(axes) and not named:
        raise PointsError(f"{what}: {x.shape[1]} column(s), the problem has {len(axes)} axis/axes "
                          f"({', '.join(axes)})")
    return x[:, order]

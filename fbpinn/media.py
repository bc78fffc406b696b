"""Media from data: a wave speed given on a grid, read from a file and sampled smoothly.

A gridded model is a 2-D array ``values[i, j]``, the speed at ``(x_i, y_j)`` on an evenly
spaced grid (x along the first axis, as every grid of fbpinn).  It comes from

- a ``.npy`` file, its grid given beside it (``problem.velocity_grid = [[x_0, x_last],
  [y_0, y_last]]``: the coordinates of the first and last nodes along each axis), or
- an HDF5 dataset ``file.h5:/path/to/dataset`` whose axes are its HDF5 dimension scales
  (as netCDF and xarray write them, and ``scripts/make_velocity.py``): one increasing,
  evenly spaced coordinate vector per dimension.

:class:`GriddedSpeed` samples it with cubic convolution (Keys' kernel, a = -1/2): the
interpolant passes through the nodes, is continuously differentiable (C1), and reproduces
quadratics exactly, so the residual of a PINN sees a smooth medium and the finite-difference
reference, which samples the same interpolant on its own grid, solves in the same medium.
Beyond the grid's edges the speed is extended as constant along the normal (the nearest edge
value); the model must cover the problem's domain, the extension only serves the reference's
padding.  The same object works on torch tensors (differentiable) and on NumPy arrays.

:func:`load` checks what it reads: a readable file, a 2-D array of finite, positive numbers of
at least 4 nodes per axis, a valid grid, a model covering the domain; :class:`MediumError`
otherwise, naming the file and the problem.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

MIN_NODES = 4  # nodes per axis: cubic convolution reads 4
MAX_NODES = 10**8  # nodes in all: 0.8 GB of float64


class MediumError(ValueError):
    """A gridded medium that cannot be used (missing, unreadable, or with bad values)."""


def split_source(spec: str) -> tuple[Path, str | None]:
    """``(file, dataset)`` of ``"model.npy"`` (dataset None) or ``"model.h5:/vp"``."""
    path, sep, dataset = str(spec).partition(":/")
    return Path(path), ("/" + dataset) if sep else None


def sha256(path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _keys(s):
    """Keys' cubic convolution kernel (a = -1/2) at offsets ``s`` (any array or tensor)."""
    a = -0.5
    lib = torch if isinstance(s, torch.Tensor) else np
    s = lib.abs(s)
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    zero = s * 0
    return lib.where(s <= 1, near, lib.where(s < 2, far, zero))


@dataclass
class GriddedSpeed:
    """A speed on an evenly spaced grid, sampled by cubic convolution (see the module's text).

    ``lo`` and ``step`` hold the first node and the spacing per axis, ``values`` the nodes
    (float64); ``source`` and ``sha256`` say where the values came from."""

    lo: tuple
    step: tuple
    values: np.ndarray
    source: str = ""
    sha256: str = ""

    def __post_init__(self):
        # Two nodes of edge values on every side, so that the 4 nodes read are always on the array.
        self._padded = np.pad(np.asarray(self.values, dtype=np.float64), 2, mode="edge")
        self._tensors = {}

    @property
    def shape(self) -> tuple:
        return tuple(self.values.shape)

    @property
    def hi(self) -> tuple:
        return tuple(a + h * (n - 1) for a, h, n in zip(self.lo, self.step, self.shape))

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest speed of the model (the interpolant stays within about 6%
        beyond them between the nodes; :meth:`extremes` samples it)."""
        return float(self.values.min()), float(self.values.max())

    def extremes(self, refine: int = 4) -> tuple[float, float]:
        """The interpolant's smallest and largest value on a grid ``refine`` times finer than the
        model's (cubic convolution can overshoot the nodes' range a little near steps)."""
        axes = [np.linspace(a, b, (n - 1) * refine + 1) for a, b, n in zip(self.lo, self.hi, self.shape)]
        mesh = np.meshgrid(*axes, indexing="ij")
        v = self(*mesh)
        return float(v.min()), float(v.max())

    def __call__(self, *coords):
        """The speed at coordinates ``coords`` (one array or tensor per axis, of one shape)."""
        if isinstance(coords[0], torch.Tensor):
            return self._sample_torch(coords)
        return self._sample_numpy([np.asarray(c, dtype=np.float64) for c in coords])

    def _sample_numpy(self, coords):
        shape = np.broadcast(*coords).shape
        coords = [np.broadcast_to(c, shape).reshape(-1) for c in coords]
        base, weights = [], []
        for c, a, h, n in zip(coords, self.lo, self.step, self.shape):
            u = np.clip((c - a) / h, 0.0, n - 1.0)  # grid units, clamped: constant beyond the edges
            i = np.minimum(np.floor(u).astype(np.int64), n - 2)
            f = u - i
            base.append(i)
            weights.append([_keys(f + 1), _keys(f), _keys(f - 1), _keys(f - 2)])
        out = np.zeros(coords[0].shape)
        for (p, wx) in enumerate(weights[0]):
            for (q, wy) in enumerate(weights[1]):
                out += wx * wy * self._padded[base[0] + p + 1, base[1] + q + 1]
        return out.reshape(shape)

    def _sample_torch(self, coords):
        ref = coords[0]
        key = (ref.device, ref.dtype)
        if key not in self._tensors:
            self._tensors[key] = torch.as_tensor(self._padded, dtype=ref.dtype, device=ref.device)
        table = self._tensors[key]
        shape = torch.broadcast_shapes(*(c.shape for c in coords))
        coords = [c.expand(shape).reshape(-1) for c in coords]
        base, weights = [], []
        for c, a, h, n in zip(coords, self.lo, self.step, self.shape):
            u = ((c - a) / h).clamp(0.0, n - 1.0)
            i = torch.floor(u.detach()).long().clamp(max=n - 2)
            f = u - i.to(u.dtype)  # carries the gradient with respect to the coordinate
            base.append(i)
            weights.append([_keys(f + 1), _keys(f), _keys(f - 1), _keys(f - 2)])
        n1 = table.shape[1]
        flat = table.reshape(-1)
        out = torch.zeros_like(coords[0])
        for p, wx in enumerate(weights[0]):
            row = (base[0] + p + 1) * n1
            for q, wy in enumerate(weights[1]):
                out = out + wx * wy * flat[row + base[1] + q + 1]
        return out.reshape(shape)


def _even(coords: np.ndarray, what: str) -> tuple[float, float]:
    """``(first, step)`` of an increasing, evenly spaced coordinate vector; MediumError otherwise."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 1 or len(coords) < MIN_NODES or not np.isfinite(coords).all():
        raise MediumError(f"{what} must be a finite vector of at least {MIN_NODES} coordinates")
    step = (coords[-1] - coords[0]) / (len(coords) - 1)
    if not step > 0 or np.abs(np.diff(coords) - step).max() > 1e-6 * step:
        raise MediumError(f"{what} must be increasing and evenly spaced")
    return float(coords[0]), float(step)


def load(spec: str, grid=None, domain=None) -> GriddedSpeed:
    """The model ``spec`` names (``file.npy`` with ``grid`` = [[x_0, x_last], [y_0, y_last]], or
    ``file.h5:/dataset`` with dimension scales), checked, and checked to cover ``domain`` (a
    ``(lo, hi)`` pair of sequences) if given."""
    path, dataset = split_source(spec)
    if not path.is_file():
        raise MediumError(f"{path}: no such file")
    if dataset is None:
        if path.suffix.lower() != ".npy":
            raise MediumError(f"{path}: a gridded model is a .npy file (its grid in problem.velocity_grid) or an "
                              "HDF5 dataset named as file.h5:/dataset")
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise MediumError(f"{path}: not a readable .npy file ({e})") from None
        if grid is None:
            raise MediumError(f"{path}: a .npy model needs its grid: problem.velocity_grid = [[x_0, x_last], "
                              "[y_0, y_last]], the coordinates of its first and last nodes along each axis")
        values = _checked_values(values, path)
        if len(grid) != values.ndim or any(len(pair) != 2 or not pair[1] > pair[0] for pair in grid):
            raise MediumError(f"{path}: problem.velocity_grid must hold {values.ndim} pairs [first, last] with "
                              f"first < last, got {grid}")
        lo = tuple(float(a) for a, _ in grid)
        step = tuple((float(b) - float(a)) / (n - 1) for (a, b), n in zip(grid, values.shape))
    else:
        if grid is not None:
            raise MediumError(f"{spec}: an HDF5 model brings its own axes (its dimension scales); leave "
                              "problem.velocity_grid out")
        try:
            with h5py.File(path, "r") as f:
                ds = f.get(dataset)
                if not isinstance(ds, h5py.Dataset):
                    raise MediumError(f"{path}: has no dataset {dataset}")
                values = _checked_values(ds[()], f"{path}:{dataset}")
                lo, step = [], []
                for d, dim in enumerate(ds.dims):
                    if len(dim) == 0:
                        raise MediumError(f"{path}:{dataset}: dimension {d} has no coordinates; attach an HDF5 "
                                          "dimension scale to each dimension (h5py: ds.dims[d].attach_scale(axis))")
                    a, h = _even(dim[0][()], f"{path}:{dataset}: the coordinates of dimension {d}")
                    if len(dim[0]) != values.shape[d]:
                        raise MediumError(f"{path}:{dataset}: dimension {d} has {values.shape[d]} nodes but its "
                                          f"coordinates {len(dim[0])}")
                    lo.append(a)
                    step.append(h)
        except MediumError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise MediumError(f"{path}: not a readable HDF5 file or dataset ({type(e).__name__}: {e})") from None
    model = GriddedSpeed(tuple(lo), tuple(step), values, source=str(spec), sha256=sha256(path))
    if domain is not None:
        lo_d, hi_d = domain
        tol = [1e-9 * max(1.0, abs(v)) for v in lo_d]
        outside = [d for d in range(values.ndim)
                   if model.lo[d] > lo_d[d] + tol[d] or model.hi[d] < hi_d[d] - tol[d]]
        if outside:
            d = outside[0]
            raise MediumError(f"{spec}: covers [{model.lo[d]:g}, {model.hi[d]:g}] along axis {d}, which does not "
                              f"contain the domain's [{lo_d[d]:g}, {hi_d[d]:g}]")
    low, _ = model.extremes()
    if not low > 0:
        raise MediumError(f"{spec}: its interpolant reaches {low:.3g} between the nodes; smooth the model's steps "
                          "(the speed must stay positive)")
    return model


def _checked_values(values, where) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2:
        raise MediumError(f"{where}: a gridded model is a 2-D array (x along the first axis), got shape "
                          f"{values.shape}")
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise MediumError(f"{where}: holds {values.dtype}, not real numbers")
    if min(values.shape) < MIN_NODES or values.size > MAX_NODES:
        raise MediumError(f"{where}: needs {MIN_NODES} to {MAX_NODES:.0e} nodes ({MIN_NODES} per axis at least), "
                          f"got shape {values.shape}")
    values = values.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise MediumError(f"{where}: {int(bad.sum())} value(s) are not finite, the first at index {i}")
    if not (values > 0).all():
        i = tuple(int(v) for v in np.argwhere(values <= 0)[0])
        raise MediumError(f"{where}: the speed must be positive; {values[i]:g} at index {i}")
    return values

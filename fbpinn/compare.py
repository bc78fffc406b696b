"""Several finished runs side by side: ``fbpinn compare A B ...``.

:func:`compare` reads results files (checked by :func:`fbpinn.io.read_results`) and returns one
row per run: its label (the shortest path suffix that tells the files apart), problem, steps,
final relative L2 error (against each run's own exact or reference solution), training time and
the relative difference between its solution and the first run's,

    ||u_i - u_1|| / ||u_1||   over all fields, on the first run's test grid,

where a run on another grid is first interpolated onto that grid (multilinear, along each axis
in turn; points of the first grid outside the other run's domain are left out).  Runs of
different problems are refused unless ``force`` is set (their difference is then not computed);
runs whose axes or fields differ have no difference either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import ResultsError, field_names, read_results, solution_names


@dataclass
class Row:
    """One run of a comparison."""

    label: str
    problem: str
    steps: int
    rel_l2: float
    wall_time: float
    difference: float  # relative difference to the first run's solution (0 for the first; nan if not comparable)


def labels(paths) -> list[str]:
    """The shortest trailing parts of ``paths`` that tell different files apart (``a/run.h5``, ``b/run.h5``)."""
    parts = [Path(p).resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(set(parts)):  # a file named twice keeps one label
            return names
    return ["/".join(p) for p in parts]


def solution(data) -> np.ndarray:
    """The fields of a run on its test grid, stacked on a last axis: (n_0, ..., n_{d-1}, F)."""
    fields = field_names(data["attrs"])
    return np.stack([data["solution"][name] for _, name, _, _ in solution_names(fields)], axis=-1)


def grid(data) -> list[np.ndarray]:
    """The test grid's coordinate vectors, one per axis."""
    return [data["solution"][f"axis_{a}"] for a in str(data["attrs"]["axes"]).split(",")]


def interpolate(values: np.ndarray, axes, onto) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (on the grid ``axes``, fields last) at the grid ``onto``, multilinear along each
    axis in turn; returns the values and a mask of the points of ``onto`` inside ``axes``' box."""
    inside = np.ones([len(a) for a in onto], dtype=bool)
    for d, (a, b) in enumerate(zip(axes, onto)):
        values = np.apply_along_axis(lambda v: np.interp(b, a, v), d, values)
        shape = [1] * len(onto)
        shape[d] = len(b)
        inside &= ((b >= a[0]) & (b <= a[-1])).reshape(shape)
    return values, inside


def on_first_grid(first, data) -> tuple[np.ndarray, np.ndarray]:
    """The fields of run ``data`` on the test grid of run ``first``, and the mask of that grid's
    points inside ``data``'s domain (see :func:`interpolate`)."""
    u = solution(data)
    if u.shape == solution(first).shape and all(np.array_equal(a, b) for a, b in zip(grid(data), grid(first))):
        return u, np.ones(u.shape[:-1], dtype=bool)
    return interpolate(u, grid(data), grid(first))


def compare(paths, force: bool = False) -> list[Row]:
    """The rows of a comparison of the results files ``paths`` (at least two)."""
    if len(paths) < 2:
        raise ResultsError("compare needs at least two results files")
    runs = [read_results(p) for p in paths]
    problems = [str(d["attrs"]["problem"]) for d in runs]
    if len(set(problems)) > 1 and not force:
        shown = ", ".join(f"{p} is {q}" for p, q in zip(paths, problems))
        raise ResultsError(f"the runs solve different problems ({shown}); pass --force to tabulate them anyway")
    first = runs[0]
    u0 = solution(first)
    rows = []
    for label, data, problem in zip(labels(paths), runs, problems):
        difference = math.nan
        same_kind = (problem == problems[0] and data["attrs"]["axes"] == first["attrs"]["axes"]
                     and field_names(data["attrs"]) == field_names(first["attrs"]))
        if same_kind:
            u, inside = on_first_grid(first, data)
            norm = float(np.sqrt((u0[inside] ** 2).sum()))
            difference = float(np.sqrt(((u[inside] - u0[inside]) ** 2).sum())) / norm if norm > 0 else math.nan
        tr = data["training"]
        rows.append(Row(label, problem, int(tr["step"][-1]), float(tr["rel_l2"][-1]), float(data["attrs"]["wall_time"]),
                        difference))
    return rows


def table(rows) -> str:
    """The rows as an aligned text table."""
    head = ["run", "problem", "steps", "rel_l2", "time (s)", "difference to the first"]
    body = [[r.label, r.problem, str(r.steps), _fmt(r.rel_l2), f"{r.wall_time:.1f}",
             "-" if i == 0 else _fmt(r.difference)] for i, r in enumerate(rows)]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body])


def _fmt(v: float) -> str:
    return f"{v:.3e}" if math.isfinite(v) else "n/a"

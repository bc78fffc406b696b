"""Figures of finished runs, drawn from their HDF5 results files alone.

:func:`plot_run` writes PNGs (and one GIF) beside one ``run.h5``; "target" is the exact
solution or, where there is none, the numerical reference stored in the file:

    solution.png       predicted u against the target on the test grid (1-D: lines;
                       2-D: heat maps of u, target and error; 3-D and up: a few slices along
                       the last axis), observations as dots
    error.png          |u - target| on the test grid (only when the file has a target)
    decomposition.png  1-D: every subdomain's normalised window and extent; 2-D and up: the
                       subdomain outlines (first two axes) over a heat map of u
    training.png       loss and test relative L2 against the step
    slices.png         space-time problems only (last axis ``t`` after at least one space
                       axis): 1 space axis: u(x) against the target at a few times;
                       2 and more: heat maps of u, target and error at a few times
    wavefield.gif      2 and more space axes + ``t`` only: u | target | error over the first
                       two space axes, one frame per test time (at most ``MAX_FRAMES``)

A run of several fields (a system of equations) gets the solution, error, slices and
wavefield figures once per field, named with the field (``solution_p.png``); training.png
then shows each field's error beside the overall one.

:func:`plot_compare` overlays the solutions of several 1-D runs in one figure, e.g. a
network fitted to data alone against a physics-informed one.  Both are called by
``fbpinn plot`` (:mod:`fbpinn.cli`).  Windows are recomputed from the decomposition
attributes with :class:`fbpinn.decomposition.Level`.  Matplotlib draws on the Agg
backend and every figure is closed after saving; the GIF is written by
:class:`matplotlib.animation.PillowWriter`.
"""

from __future__ import annotations

import contextvars
import logging
import math
import tomllib
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .compare import grid as _grid  # noqa: E402  (the test grid's coordinate vectors)
from .decomposition import Level  # noqa: E402
from .domains import Box  # noqa: E402
from .io import (TEMPORARY, ResultsError, Stored, field_names, file_format, new_folders, read_results,  # noqa: E402
                 read_snapshots, solution_names, staged, trace_error)

logger = logging.getLogger(__name__)
DPI = 120
DPI_RANGE = (20, 1200)
FORMATS = ("png", "pdf", "svg")  # formats of plot_run's still figures
_DPI = contextvars.ContextVar("dpi", default=DPI)  # the resolution plot_run was asked for
# How much of a test grid plot_run reads (see _decimated): points along each axis that heat maps
# draw, along the axis of a 1-D problem, and in all per dataset.
PLOT_AXIS_POINTS = 512
PLOT_LINE_POINTS = 2**16
PLOT_POINTS = 2**22
N_SLICES = 3  # slices along the last axis drawn in solution.png and error.png of 3-D and higher problems
N_WINDOW_POINTS = 600  # points at which 1-D windows are drawn
N_TIME_LINES = 5  # times drawn in slices.png with 1 space axis
N_TIME_MAPS = 4  # times drawn in slices.png with 2 and more space axes
MAX_FRAMES = 60  # frames of wavefield.gif at most (test times are strided beyond)
GIF_DPI = 80
GIF_FPS = 8
# What drawing raises on data that passed read_results' checks but cannot be drawn (NaN limits, say):
# reported as a ResultsError naming the file and the figure.
_BAD_DATA = (ArithmeticError, IndexError, KeyError, TypeError, ValueError, RuntimeError)


class PlotError(ValueError):
    """A figure that cannot be written where it was asked for (an unwritable folder, an unknown format)."""


# ----------------------------------------------------------------------------- public
def plot_run(path, out_dir=None, fmt: str = "png", dpi: int = DPI) -> list[Path]:
    """Draw the figures of one run beside its results file (or in ``out_dir``).

    Parameters
    ----------
    path : a ``run.h5`` written by :func:`fbpinn.io.write_results`, or a checkpoint (its
        solution is evaluated on the test grid; the error is drawn where the problem has an
        exact solution).
    out_dir : folder for the figures (created if missing, removed again if drawing fails);
        the results file's folder by default, ``checkpoints/step_<step>/`` for a checkpoint.
    fmt : format of the still figures: one of ``FORMATS`` (the animation stays a GIF).
    dpi : resolution of the still figures, in ``DPI_RANGE``.

    Returns
    -------
    The written paths: solution, error (only with an exact or reference solution),
    decomposition, training, then slices (space-time problems) and wavefield.gif
    (2 and more space axes + t).

    All figures are drawn to temporary names (:func:`fbpinn.io.staged`) and moved into place
    only when every one succeeded: a failure leaves the folder as it was.

    Raises
    ------
    ResultsError when the file cannot be read or a figure cannot be drawn from its data;
    PlotError when a figure cannot be written.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise PlotError(f"format {fmt!r}: fbpinn plot writes {', '.join(FORMATS)}")
    if not DPI_RANGE[0] <= dpi <= DPI_RANGE[1]:
        raise PlotError(f"dpi {dpi}: must lie in {DPI_RANGE[0]}..{DPI_RANGE[1]}")
    data, default = _read_run(path)
    folder = Path(out_dir) if out_dir is not None else default
    fields = field_names(data["attrs"])
    views = [("", data)] if len(fields) == 1 else [(f"_{f}", _field_view(data, i)) for i, f in enumerate(fields)]
    figures = []
    for suffix, view in views:
        figures.append((f"solution{suffix}.{fmt}", _plot_solution, view))
        if _target(view)[0]:
            figures.append((f"error{suffix}.{fmt}", _plot_error, view))
    figures += [(f"decomposition.{fmt}", _plot_decomposition, views[0][1]), (f"training.{fmt}", _plot_training, data)]
    n_space = _n_space(data)
    if n_space:
        figures += [(f"slices{suffix}.{fmt}", _plot_slices, view) for suffix, view in views]
    if n_space >= 2:
        figures += [(f"wavefield{suffix}.gif", _plot_wavefield, view) for suffix, view in views]
    if "receivers" in data:
        figures += [(f"receivers{'' if len(fields) == 1 else '_' + f}.{fmt}", _plot_receivers, (data, i))
                    for i, f in enumerate(fields)]
    token = _DPI.set(dpi)
    try:
        with _drawing(path, folder), new_folders(folder), staged() as stage:
            for name, draw, view in figures:
                with _drawing(path, folder / name):
                    draw(view, stage(folder / name))
    finally:
        _DPI.reset(token)
    return [folder / name for name, _, _ in figures]


def _read_run(path: Path):
    """A results file's or a checkpoint's data as read_results gives it, and the default folder of
    its figures: the results file's folder, or ``checkpoints/step_<step>/`` for a checkpoint (its
    solution evaluated on the test grid, :func:`fbpinn.solution.checkpoint_results`)."""
    from . import checkpoint

    if file_format(path) != checkpoint.FORMAT:
        return _decimated(read_results(path, lazy=True), path), path.parent
    from .solution import checkpoint_results

    try:
        return checkpoint_results(path), path.with_suffix("")
    except checkpoint.CheckpointError as e:
        raise ResultsError(str(e)) from None


def _decimated(data, path: Path, limit: int | None = None) -> dict:
    """``data`` of :func:`read_results` with ``lazy=True`` whose solution datasets are read with a
    stride along each axis: at most ``PLOT_AXIS_POINTS`` points along each of the two axes that
    heat maps draw (``PLOT_LINE_POINTS`` along the one axis of a 1-D problem), and at most
    ``limit`` (default ``PLOT_POINTS``) in all, the further axes strided alike for that.  Figures
    of a test grid of any size are thus drawn from a bounded amount of memory (matplotlib's
    above all); smaller grids are read whole."""
    limit = limit or PLOT_POINTS
    sol = dict(data["solution"])
    shape = [len(sol[f"axis_{a}"]) for a in _axis_names(data)]
    drawn = min(len(shape), 2)
    cap = PLOT_AXIS_POINTS if len(shape) > 1 else PLOT_LINE_POINTS
    steps = [-(-n // cap) for n in shape[:drawn]] + [1] * (len(shape) - drawn)
    rest = list(range(drawn, len(shape))) or list(range(len(shape)))
    while math.prod(-(-n // s) for n, s in zip(shape, steps)) > limit:
        grow = [d for d in rest if steps[d] < shape[d]] or [d for d in range(len(shape)) if steps[d] < shape[d]]
        if not grow:
            break
        for d in grow:
            steps[d] += 1
    key = tuple(slice(None, None, s) for s in steps)
    for name, value in sol.items():
        if isinstance(value, Stored):
            sol[name] = value[key]
        elif name.startswith("axis_") and not name.endswith(".attrs"):
            sol[name] = value[key[_axis_names(data).index(name[len("axis_"):])]]
    if any(s > 1 for s in steps):
        logger.info("%s: %s test points; the figures show one in %s along the axes (%s)", path,
                    "x".join(map(str, shape)), ", ".join(map(str, steps)),
                    "x".join(str(-(-n // s)) for n, s in zip(shape, steps)))
    return {**data, "solution": sol}


def _field_view(data, i: int) -> dict:
    """``data`` as if field ``i`` of a several-field run were its only field: its solution,
    target and error under the names of a single-field file, its own final error, and the
    field named in the problem attribute (which titles show)."""
    fields = field_names(data["attrs"])
    sol = data["solution"]
    target = sol["attrs"].get("target")
    _, name, target_name, error_name = solution_names(fields, target)[i]
    view_sol = {k: v for k, v in sol.items() if k.startswith("axis_") or k == "attrs"}
    view_sol["u"] = sol[name]
    if target_name:
        view_sol[target], view_sol["error"] = sol[target_name], sol[error_name]
    training = dict(data["training"])
    if "rel_l2_fields" in training:
        training["rel_l2"] = training["rel_l2_fields"][:, i]
    attrs = dict(data["attrs"], problem=f"{data['attrs']['problem']}, field {fields[i]}", field=fields[i])
    return {**{k: v for k, v in data.items() if k != "observations"}, "attrs": attrs, "solution": view_sol,
            "training": training}


def plot_compare(paths, out) -> Path:
    """Overlay the solutions of several 1-D runs in one figure.

    The exact solution (from the first run that has one) is drawn once in grey; each
    run gets a line and its observations as dots, labelled with its folder name, final
    rel L2 and whether the physics loss was on.

    Parameters
    ----------
    paths : results files of 1-D problems.
    out : PNG (or another format matplotlib writes, by its suffix) to write; missing folders
        above it are created, and removed again if the figure fails.

    Raises
    ------
    ValueError (a :class:`fbpinn.io.ResultsError`) when a file's problem is not 1-D or a file
    cannot be read or drawn; PlotError when ``out`` cannot be written.
    """
    runs = [(Path(p), read_results(p)) for p in paths]
    if not runs:
        raise ValueError("plot_compare needs at least one results file")
    for p, data in runs:
        if len(field_names(data["attrs"])) > 1:
            raise ResultsError(f"{p}: comparison plots need single-field problems; problem "
                               f"{data['attrs']['problem']!r} has the fields {', '.join(field_names(data['attrs']))}")
        axes = _axis_names(data)
        if len(axes) != 1:
            raise ResultsError(f"{p}: comparison plots need 1-D problems; problem {data['attrs']['problem']!r} "
                               f"has {len(axes)} axes ({', '.join(axes)})")
    out = Path(out)
    if _format(out) not in FigureCanvasBase.get_supported_filetypes():
        raise PlotError(f"cannot write {out}: matplotlib writes no .{_format(out)} files; name it .png, .pdf or .svg")
    with _drawing(", ".join(str(p) for p, _ in runs), out), new_folders(out.parent), staged() as stage:
        _plot_comparison(runs, stage(out))
    return out


def plot_differences(paths, out, force: bool = False) -> Path:
    """The figure of ``fbpinn compare --figure``: the runs ``paths`` against the first, any dimension.

    1-D: every run's fields as lines (and the first run's target in grey), the y-axis spanning
    all of them.  2-D and space-time: heat maps of the first run's fields and of each other run's
    difference to them on the first run's test grid (other grids interpolated, blank outside their
    domain); higher dimensions show slices along the last axis as ``solution.png`` does.
    Runs that cannot be compared (:func:`fbpinn.compare.compare`) are left out."""
    from .compare import compare, labels, on_first_grid

    rows = compare(paths, force)
    runs = [read_results(p) for p in paths]
    names = labels(paths)
    first = runs[0]
    keep = [i for i, r in enumerate(rows) if i == 0 or math.isfinite(r.difference)]
    fields = field_names(first["attrs"])
    out = Path(out)
    if _format(out) not in FigureCanvasBase.get_supported_filetypes():
        raise PlotError(f"cannot write {out}: matplotlib writes no .{_format(out)} files; name it .png, .pdf or .svg")
    title = f"{first['attrs']['problem']}: {len(keep)} runs against {names[0]}"
    with _drawing(", ".join(map(str, paths)), out), new_folders(out.parent), staged() as stage:
        target = stage(out)
        if len(_axis_names(first)) == 1:
            view = (lambda d, f: _field_view(d, f)) if len(fields) > 1 else (lambda d, f: d)  # noqa: E731
            with _figure(target, ncols=len(fields), figsize=(8 * len(fields), 4.5)) as (fig, axs):
                for f, field in enumerate(fields):
                    ax = axs[0, f]
                    name, values = _target(view(first, f))
                    if name:
                        ax.plot(_grid(first)[0], values, color="0.6", lw=3, label=f"{name} ({names[0]})")
                    for i in keep:
                        ax.plot(_grid(runs[i])[0], view(runs[i], f)["solution"]["u"], color=f"C{i % 10}", lw=1.4,
                                label=f"{names[i]}: rel L2 {_fmt(rows[i].rel_l2)}")
                    ax.set_xlabel(_axis_names(first)[0])
                    ax.set_ylabel(field)
                    ax.legend(fontsize=8)
                    ax.set_title(title, fontsize=10)
        else:
            panels = []
            for f, field in enumerate(fields):
                base = on_first_grid(first, first)[0][..., f]
                panels.append((f"{field}: {names[0]}", base, "value"))
                for i in keep[1:]:
                    u, inside = on_first_grid(first, runs[i])
                    panels.append((f"{field}: {names[i]} - {names[0]}", np.where(inside, u[..., f] - base, np.nan),
                                   "signed"))
            _heatmaps(first, target, panels, title, None)
    return out


def plot_snapshots(path, out_dir=None, fmt: str = "png", dpi: int = DPI) -> list[Path]:
    """Draw a snapshots file (``output.snapshot_every``) beside it (or in ``out_dir``).

    ``snapshots.<fmt>``: per field, 1-D problems the field at every snapshot (up to
    ``MAX_SNAPSHOT_LINES``, evenly spread) coloured by step; higher dimensions heat maps over the
    first two axes (middle of the others) at up to ``N_TIME_MAPS`` snapshots.  With two or more
    axes also ``snapshots.gif``: the first field over the snapshots, one frame each (at most
    ``MAX_FRAMES``), the colour scale fixed."""
    path = Path(path)
    if fmt not in FORMATS:
        raise PlotError(f"format {fmt!r}: fbpinn plot writes {', '.join(FORMATS)}")
    snap = read_snapshots(path)
    if not len(snap["step"]):
        raise ResultsError(f"{path}: holds no snapshot yet")
    folder = Path(out_dir) if out_dir is not None else path.parent
    names = [f"snapshots.{fmt}"] + (["snapshots.gif"] if len(snap["axes"]) >= 2 else [])
    token = _DPI.set(dpi)
    try:
        with _drawing(path, folder), new_folders(folder), staged() as stage:
            for name in names:
                with _drawing(path, folder / name):
                    (_snapshot_animation if name.endswith(".gif") else _snapshot_figure)(snap, stage(folder / name))
    finally:
        _DPI.reset(token)
    return [folder / name for name in names]


MAX_SNAPSHOT_LINES = 12


def _snapshot_figure(snap, path: Path) -> Path:
    axes, fields, steps = list(snap["axes"]), snap["fields"], snap["step"]
    title = f"{snap['attrs'].get('problem', '?')}: {len(steps)} snapshots, steps {steps[0]} .. {steps[-1]}"
    if len(axes) == 1:
        x = snap["axes"][axes[0]]
        ks = _spread(len(steps), MAX_SNAPSHOT_LINES)
        colours = plt.cm.viridis(np.linspace(0, 1, len(ks)))
        with _figure(path, ncols=len(fields), figsize=(8 * len(fields), 4.5), suptitle=title) as (fig, axs):
            for ax, (name, u) in zip(axs[0], fields.items()):
                for c, k in zip(colours, ks):
                    ax.plot(x, u[k], color=c, lw=1.3, label=f"step {steps[k]}")
                ax.set_xlabel(axes[0])
                ax.set_ylabel(name)
                ax.legend(fontsize=7, ncol=2)
        return path
    ks = _spread(len(steps), N_TIME_MAPS)
    x0, x1 = np.meshgrid(snap["axes"][axes[0]], snap["axes"][axes[1]], indexing="ij")
    plane = (slice(None), slice(None), *(len(snap["axes"][a]) // 2 for a in axes[2:]))
    size = (4.6 * len(ks), 3.9 * len(fields) + 0.6)
    with _figure(path, nrows=len(fields), ncols=len(ks), figsize=size, suptitle=title) as (fig, axs):
        for row, (name, u) in enumerate(fields.items()):
            vmin, vmax = float(np.nanmin(u)), float(np.nanmax(u))
            for col, k in enumerate(ks):
                ax = axs[row, col]
                mesh = ax.pcolormesh(x0, x1, u[k][plane], shading="auto", cmap="viridis", vmin=vmin, vmax=vmax)
                fig.colorbar(mesh, ax=ax)
                ax.set_xlabel(axes[0])
                ax.set_ylabel(axes[1])
                ax.set_title(f"{name}, step {steps[k]}", fontsize=10)
    return path


def _snapshot_animation(snap, path: Path) -> Path:
    axes, steps = list(snap["axes"]), snap["step"]
    name, u = next(iter(snap["fields"].items()))
    x0, x1 = np.meshgrid(snap["axes"][axes[0]], snap["axes"][axes[1]], indexing="ij")
    plane = (slice(None), slice(None), *(len(snap["axes"][a]) // 2 for a in axes[2:]))
    ks = _spread(len(steps), MAX_FRAMES)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    try:
        mesh = ax.pcolormesh(x0, x1, u[ks[0]][plane], shading="auto", cmap="viridis",
                             vmin=float(np.nanmin(u)), vmax=float(np.nanmax(u)))
        fig.colorbar(mesh, ax=ax)
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])

        def frame(k):
            mesh.set_array(u[k][plane])
            ax.set_title(f"{name}, step {steps[k]}", fontsize=10)
            return [mesh]

        frame(ks[0])
        fig.tight_layout()
        FuncAnimation(fig, frame, frames=ks).save(path, writer=_GifWriter(fps=GIF_FPS), dpi=GIF_DPI)
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------- figures
def _plot_comparison(runs, path: Path) -> Path:
    """The figure of :func:`plot_compare` of ``runs``, (path, data) of 1-D runs."""
    with _figure(path, figsize=(9, 5)) as (fig, axs):
        ax = axs[0, 0]
        exact = next(((d["solution"][f"axis_{_axis_names(d)[0]}"], _target(d)[1], _target(d)[0])
                      for _, d in runs if _target(d)[0]), None)
        if exact is not None:
            ax.plot(*exact[:2], color="0.6", lw=3, label=exact[2], zorder=1)
        for i, (p, data) in enumerate(runs):
            colour = f"C{i}"
            physics = {True: "on", False: "off", None: "?"}[_physics(data)]
            label = f"{p.resolve().parent.name}: rel L2 {_fmt(_final_rel_l2(data))}, physics {physics}"
            ax.plot(_grid(data)[0], data["solution"]["u"], color=colour, lw=1.5, label=label, zorder=2)
            obs = data.get("observations")
            if obs is not None:
                ax.scatter(obs["x"][:, 0], obs["u"], s=22, color=colour, edgecolor="k", linewidth=0.5,
                           zorder=3, label=f"{p.resolve().parent.name}: {len(obs['u'])} observations")
        if exact is not None:
            _ylim_to(ax, exact[1])
        ax.set_xlabel(_axis_names(runs[0][1])[0])
        ax.set_ylabel(_field_label(data))
        problems = sorted({d["attrs"]["problem"] for _, d in runs})
        ax.set_title(f"{', '.join(problems)}: {len(runs)} runs compared")
        ax.legend(fontsize=8)
    return path


def _plot_solution(data, path: Path) -> Path:
    sol, axes = data["solution"], _axis_names(data)
    title = _title(data) + "".join(f", learned {k} = {v:.5g}" for k, v in _learned(data).items())
    name, target = _target(data)
    obs = data.get("observations")
    if len(axes) == 1:
        with _figure(path, figsize=(8, 4.5)) as (fig, axs):
            ax = axs[0, 0]
            x = _grid(data)[0]
            if name:
                ax.plot(x, target, color="0.6", lw=3, label=name)
            ax.plot(x, sol["u"], color="C0", lw=1.5, label="FBPINN")
            if obs is not None:
                ax.scatter(obs["x"][:, 0], obs["u"], s=22, color="C3", edgecolor="k", linewidth=0.5, zorder=3,
                           label=f"{len(obs['u'])} observations")
            ax.set_xlabel(axes[0])
            ax.set_ylabel(_field_label(data))
            ax.legend(fontsize=9)
            ax.set_title(title, fontsize=10)
        return path
    return _heatmaps(data, path, _fields(data), title, obs)


def _plot_error(data, path: Path) -> Path:
    sol, axes = data["solution"], _axis_names(data)
    name, target = _target(data)
    err = np.abs(sol["u"] - target)
    title = _title(data)
    if len(axes) > 1:
        return _heatmaps(data, path, [(f"|{_field_label(data)} - {name}|", err, "positive")], title, None)
    with _figure(path, figsize=(8, 4.5)) as (fig, axs):
        ax = axs[0, 0]
        ax.semilogy(_grid(data)[0], err, color="C3", lw=1.2)
        obs = data.get("observations")
        if obs is not None and len(obs["u"]):
            ax.axvspan(obs["x"][:, 0].min(), obs["x"][:, 0].max(), color="C2", alpha=0.15, label="observed range")
            ax.legend(fontsize=9)
        ax.set_xlabel(axes[0])
        ax.set_ylabel(f"|{_field_label(data)} - {name}|")
        ax.set_title(title, fontsize=10)
    return path


def _plot_decomposition(data, path: Path) -> Path:
    dec, axes = data["decomposition"], _axis_names(data)
    lo, hi = np.asarray(dec["attrs"]["domain_lo"], float), np.asarray(dec["attrs"]["domain_hi"], float)
    levels = sorted((k for k in dec if k.startswith("level") and isinstance(dec[k], dict)), key=lambda k: int(k[5:]))
    title = f"{data['attrs']['problem']}: decomposition, window {dec['attrs']['window']}, " \
            f"overlap {float(dec['attrs']['overlap']):.3g}"
    if len(axes) == 1:
        with _figure(path, nrows=len(levels), figsize=(8, 2.2 + 2.6 * len(levels))) as (fig, axs):
            for ax, name in zip(axs[:, 0], levels):
                _windows_1d(ax, dec, name, lo, hi)
                ax.set_xlabel(axes[0])
                ax.set_title(f"{title}\n{name}: {len(dec[name]['centres'])} subdomains", fontsize=10)
        return path
    index, where = _plane(data)
    x0, x1 = np.meshgrid(*_grid(data)[:2], indexing="ij")  # (n0, n1)
    with _figure(path, ncols=len(levels), figsize=(6.8 * len(levels), 5.5)) as (fig, axs):
        for ax, name in zip(axs[0], levels):
            mesh = ax.pcolormesh(x0, x1, data["solution"]["u"][index], shading="auto", cmap="gray", alpha=0.7)
            fig.colorbar(mesh, ax=ax, label=f"u (FBPINN), {where}" if where else "u (FBPINN)")
            _rectangles_2d(ax, dec[name], lo, hi)
            ax.set_xlabel(axes[0])
            ax.set_ylabel(axes[1])
            note = f" (projection onto {axes[0]}, {axes[1]})" if len(axes) > 2 else ""
            ax.set_title(f"{title}\n{name}: {len(dec[name]['centres'])} subdomains{note}", fontsize=10)
    return path


def _plot_training(data, path: Path) -> Path:
    tr = data["training"]
    step, loss, rel = tr["step"], tr["loss"], tr["rel_l2"]
    finite = np.isfinite(rel)
    with _figure(path, ncols=2 if finite.any() else 1, figsize=(12 if finite.any() else 7, 4.5)) as (fig, axs):
        ax = axs[0, 0]
        per_step = tr.get("loss_per_step")
        if per_step is not None and len(per_step):
            ax.plot(np.arange(1, len(per_step) + 1), per_step, color="C0", alpha=0.3, lw=0.8, label="every step")
        ax.plot(step, loss, "o-", color="C0", ms=4, label="at evaluations")
        terms, names = tr.get("loss_terms"), str(tr.get("loss_terms.attrs", {}).get("names", ""))
        if terms is not None and terms.ndim == 2 and terms.shape[1] > 1:
            for i, name in enumerate(names.split(",")[:terms.shape[1]]):
                ax.plot(step, terms[:, i], "-", color=f"C{i + 1}", lw=1.1, label=f"term {name}")
        _stage_markers(ax, tr)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=9)
        ax.set_title(f"{data['attrs']['problem']}: loss (final {_fmt(loss[-1] if len(loss) else math.nan)})",
                     fontsize=10)
        if finite.any():
            ax = axs[0, 1]
            ax.plot(step[finite], rel[finite], "o-", color="C3", ms=4, label="all fields")
            if "rel_l2_fields" in tr:
                for i, f in enumerate(field_names(data["attrs"])):
                    ax.plot(step, tr["rel_l2_fields"][:, i], "-", color=f"C{i % 10}", lw=1.2, label=f)
                ax.legend(fontsize=9)
            _stage_markers(ax, tr)
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel("test relative L2 error")
            ax.set_title(_title(data), fontsize=10)
    return path


# ----------------------------------------------------------------------------- pieces
def _stage_markers(ax, tr) -> None:
    """Dotted vertical lines at the evaluations where the schedule's stage changed (time-marching:
    the next slab, then all subdomains together), labelled with the stage entered."""
    stage, step = tr.get("stage"), tr["step"]
    if stage is None or len(stage) < 2:
        return
    for i in np.flatnonzero(np.diff(stage)) + 1:
        ax.axvline(step[i], color="0.5", ls=":", lw=0.9)
        ax.annotate(f"stage {int(stage[i])}", (step[i], 1), xycoords=("data", "axes fraction"), fontsize=7,
                    rotation=90, va="top", ha="right", color="0.4")


def _windows_1d(ax, dec, name, lo, hi) -> None:
    """Normalised windows of one 1-D level on the domain, extents as bars below them."""
    level = Level(Box(lo, hi), dec[name]["attrs"]["shape"].tolist(), float(dec["attrs"]["overlap"]),
                  str(dec["attrs"]["window"]))
    x = torch.linspace(float(lo[0]), float(hi[0]), N_WINDOW_POINTS, dtype=torch.float64)[:, None]  # (N, 1)
    point, sub, win = level.pairs(x, [()])
    w = np.zeros((level.n_subdomains, len(x)))  # (J, N)
    w[sub.numpy(), point.numpy()] = win[0].numpy()
    centres, half = dec[name]["centres"][:, 0], dec[name]["half_widths"][:, 0]  # (J,)
    for j in range(level.n_subdomains):
        colour = f"C{j % 10}"
        ax.plot(x[:, 0].numpy(), w[j], color=colour, lw=1.3)
        y = -0.08 - 0.06 * j
        ax.plot([centres[j] - half[j], centres[j] + half[j]], [y, y], color=colour, lw=3, solid_capstyle="butt")
        ax.plot(centres[j], y, "|", color="k", ms=7)
    ax.plot(x[:, 0].numpy(), w.sum(0), color="k", ls=":", lw=1, label="sum of windows")
    for edge in (lo[0], hi[0]):
        ax.axvline(edge, color="0.4", ls="--", lw=0.8)
    ax.set_ylabel("normalised window")
    ax.set_ylim(-0.12 - 0.06 * level.n_subdomains, 1.15)
    ax.legend(fontsize=8, loc="upper right")


def _rectangles_2d(ax, level, lo, hi) -> None:
    """Subdomain outlines (first two axes, thin and semi-transparent so that a heat map
    beneath stays legible) and the domain box, centres marked.  Subdomains that differ
    only along later axes project onto one rectangle, drawn once."""
    boxes = np.unique(np.concatenate([level["centres"][:, :2], level["half_widths"][:, :2]], axis=1), axis=0)
    centres, half = boxes[:, :2], boxes[:, 2:]  # (J', 2)
    for j, (c, h) in enumerate(zip(centres, half)):
        ax.add_patch(Rectangle(c - h, 2 * h[0], 2 * h[1], fill=False, edgecolor=to_rgba(f"C{j % 10}", 0.8), lw=1.0))
    ax.add_patch(Rectangle(lo[:2], hi[0] - lo[0], hi[1] - lo[1], fill=False, edgecolor="k", lw=2.2,
                           label="domain"))
    ax.plot(centres[:, 0], centres[:, 1], "kx", ms=6, label="centres")
    ext_lo = np.minimum(lo[:2], (centres - half).min(0))
    ext_hi = np.maximum(hi[:2], (centres + half).max(0))
    pad = 0.05 * (ext_hi - ext_lo)
    ax.set_xlim(ext_lo[0] - pad[0], ext_hi[0] + pad[0])
    ax.set_ylim(ext_lo[1] - pad[1], ext_hi[1] + pad[1])
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper right")


def _plot_receivers(item, path: Path) -> Path:
    """receivers.png, a shot gather: one trace per receiver against time, offset by receiver,
    the FBPINN's solid over the target's (exact or reference) dashed, all on one scale."""
    data, i = item
    group, fields = data["receivers"], field_names(data["attrs"])
    _, name, target_name, _ = solution_names(fields, group["attrs"].get("target"))[i]
    t, u = np.asarray(group["t"]), np.asarray(group[name])
    target = np.asarray(group[target_name]) if target_name else None
    positions = np.asarray(group["positions"])
    peak = float(np.max(np.abs(target if target is not None else u))) or 1.0
    gain = 0.45 / peak  # a trace of the largest amplitude spans 0.9 of the spacing between receivers
    kind, err = trace_error(data, i)
    space = str(data["attrs"]["axes"]).split(",")[:-1]
    title = f"{data['attrs']['problem']}: {len(u)} receiver(s), field {fields[i]}"
    title += f", traces rel L2 vs {kind} {err:.3e}" if kind else ""
    height = min(2.0 + 0.35 * len(u), 14.0)
    with _figure(path, figsize=(9, height)) as (fig, axs):
        ax = axs[0, 0]
        for r in range(len(u)):
            if target is not None:
                ax.plot(t, r + gain * target[r], color="0.55", lw=2.2, ls="--", label=kind if r == 0 else None)
            ax.plot(t, r + gain * u[r], color="C0", lw=1.1, label="FBPINN" if r == 0 else None)
        step = max(1, len(u) // 20)
        ax.set_yticks(range(0, len(u), step))
        ax.set_yticklabels([", ".join(f"{v:.2g}" for v in positions[r]) for r in range(0, len(u), step)], fontsize=8)
        ax.set_ylabel(f"receiver ({', '.join(space)})")
        ax.set_xlabel(str(data["attrs"]["axes"]).split(",")[-1])
        ax.set_ylim(-1, len(u))
        ax.set_title(f"{title}\nscale: 0.45 receiver spacing per {peak:.3g}", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
    return path


def _plot_slices(data, path: Path) -> Path:
    """slices.png of a space-time problem: with 1 space axis, one panel of u(x) over the
    target per time; with more, heat maps of :func:`_fields` at ``N_TIME_MAPS`` times."""
    if _n_space(data) > 1:
        return _heatmaps(data, path, _fields(data), _title(data), None, n_slices=N_TIME_MAPS)
    (x, t), axes = _grid(data), _axis_names(data)
    u, (name, target) = data["solution"]["u"], _target(data)  # (nx, nt)
    ks = _spread(len(t), N_TIME_LINES)
    size = (3.4 * len(ks), 4.0)
    with _figure(path, ncols=len(ks), figsize=size, suptitle=_title(data), sharey=True) as (fig, axs):
        for ax, k in zip(axs[0], ks):
            if name:
                ax.plot(x, target[:, k], color="0.6", lw=3, label=name)
            ax.plot(x, u[:, k], color="C0", lw=1.5, label="FBPINN")
            ax.set_xlabel(axes[0])
            ax.set_title(f"{axes[-1]} = {t[k]:.3g}", fontsize=10)
        if name:
            _ylim_to(axs[0, 0], target)
        axs[0, 0].set_ylabel(_field_label(data))
        axs[0, 0].legend(fontsize=8)
    return path


def _plot_wavefield(data, path: Path) -> Path:
    """wavefield.gif: :func:`_fields` side by side over the first two axes, one frame per
    test time (evenly strided down to ``MAX_FRAMES``), colour scales fixed over all frames."""
    axes, grid, fields = _axis_names(data), _grid(data), _fields(data)
    ks = _spread(len(grid[-1]), MAX_FRAMES)
    x0, x1 = np.meshgrid(grid[0], grid[1], indexing="ij")  # (n0, n1)
    size = (4.4 * len(fields), 3.8)
    fig, axs = plt.subplots(1, len(fields), figsize=size, squeeze=False)
    try:
        meshes = []
        for ax, (label, z, kind) in zip(axs[0], fields):
            vmin, vmax, cmap = _colour_range(z, kind, fields)
            meshes.append(ax.pcolormesh(x0, x1, z[_plane(data, ks[0])[0]], shading="auto", cmap=cmap,
                                        vmin=vmin, vmax=vmax))
            fig.colorbar(meshes[-1], ax=ax)
            ax.set_xlabel(axes[0])
            ax.set_ylabel(axes[1])
            ax.set_title(label, fontsize=10)

        def frame(k):
            index, where = _plane(data, k)
            for mesh, (_, z, _) in zip(meshes, fields):
                mesh.set_array(z[index])
            fig.suptitle(f"{_title(data)}, {where}", fontsize=11)
            return meshes

        frame(ks[0])
        _layout(fig, size, suptitle=True)
        FuncAnimation(fig, frame, frames=ks).save(path, writer=_GifWriter(fps=GIF_FPS), dpi=GIF_DPI)
    finally:
        plt.close(fig)
    return path


def _heatmaps(data, path: Path, fields, title: str, obs, n_slices: int = N_SLICES) -> Path:
    """Heat maps of ``fields`` (label, array, kind) over the first two axes.

    2-D problems: one panel per field side by side.  Higher dimensions: one row per
    field, one column per slice along the last axis (up to ``n_slices``, evenly spread,
    first and last included; middle index of the axes between); observations are
    drawn on 2-D panels only.  Colour scales are shared by all slices of a field.
    """
    axes, grid = _axis_names(data), _grid(data)
    ks = [None] if len(axes) == 2 else _spread(len(grid[-1]), n_slices)
    slices = [_plane(data, k) for k in ks]
    n_rows, n_cols = (1, len(fields)) if len(slices) == 1 else (len(fields), len(slices))
    x0, x1 = np.meshgrid(grid[0], grid[1], indexing="ij")  # (n0, n1)
    size = (5.2 * n_cols, 4.2 * n_rows + 0.6)
    with _figure(path, nrows=n_rows, ncols=n_cols, figsize=size, suptitle=title) as (fig, axs):
        for f, (label, z, kind) in enumerate(fields):
            vmin, vmax, cmap = _colour_range(z, kind, fields)
            for s, (index, where) in enumerate(slices):
                ax = axs.flat[f] if len(slices) == 1 else axs[f, s]
                mesh = ax.pcolormesh(x0, x1, z[index], shading="auto", cmap=cmap, vmin=vmin, vmax=vmax)
                fig.colorbar(mesh, ax=ax)
                if obs is not None and len(slices) == 1 and len(obs["u"]):
                    ax.scatter(obs["x"][:, 0], obs["x"][:, 1], s=14, color="w", edgecolor="k", linewidth=0.6,
                               label="observations")
                    ax.legend(fontsize=8, loc="upper right")
                ax.set_xlabel(axes[0])
                ax.set_ylabel(axes[1])
                ax.set_title(f"{label}, {where}" if where else label, fontsize=10)
    return path


def _colour_range(z, kind, fields):
    """(vmin, vmax, cmap): values share one scale; signed errors are symmetric about 0."""
    if kind == "signed":
        m = float(np.max(np.abs(z))) or 1.0
        return -m, m, "RdBu_r"
    if kind == "positive":
        return 0.0, float(np.max(z)) or 1.0, "magma"
    values = [v for _, v, k in fields if k == "value"]
    return min(float(np.min(v)) for v in values), max(float(np.max(v)) for v in values), "viridis"


def _ylim_to(ax, target) -> None:
    """y limits around ``target`` with a margin, so that a diverging run cannot flatten it."""
    lo, hi = float(np.min(target)), float(np.max(target))
    pad = 0.5 * (hi - lo) if hi > lo else 1.0
    ax.set_ylim(lo - pad, hi + pad)


@contextmanager
def _figure(path: Path, nrows: int = 1, ncols: int = 1, figsize=(8, 4.5), suptitle: str = "", **subplots):
    """A figure with a (nrows, ncols) array of axes, saved to ``path`` and always closed.

    ``subplots``: further arguments of :func:`matplotlib.pyplot.subplots` (``sharey``).
    """
    fig, axs = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, **subplots)
    try:
        yield fig, axs
        if suptitle:
            fig.suptitle(suptitle, fontsize=11)
        _layout(fig, figsize, bool(suptitle))
        fig.savefig(path, dpi=_DPI.get(), format=_format(path))
    finally:
        plt.close(fig)


def _format(path) -> str:
    """The image format of ``path`` by the suffix of its name, or of the name that a temporary
    file of :func:`fbpinn.io.staged` will get (png when there is none)."""
    name = Path(path).name
    match = TEMPORARY.match(name)
    return Path(match["name"] if match else name).suffix[1:].lower() or "png"


class _GifWriter(PillowWriter):
    """matplotlib's Pillow writer, naming the format to Pillow instead of leaving it to guess
    from the file name (a temporary one while :func:`plot_run` draws)."""

    def finish(self):
        self._frames[0].save(self.outfile, format="GIF", save_all=True, append_images=self._frames[1:],
                             duration=int(1000 / self.fps), loop=0)


@contextmanager
def _drawing(source: str, target: Path):
    """Errors while drawing ``target`` from the results file(s) ``source``: a failed write becomes
    PlotError naming ``target``, a failure on the data ResultsError naming both."""
    try:
        with np.errstate(all="ignore"):  # garbage data draws garbage or fails below, without numpy's warnings
            yield
    except (ResultsError, PlotError):
        raise
    except OSError as e:
        raise PlotError(f"cannot write {target}: {e.strerror or e}") from None
    except _BAD_DATA as e:
        lines = str(e).strip().splitlines()
        raise ResultsError(f"{source}: cannot draw {target.name} from its data ({type(e).__name__}: "
                           f"{lines[0] if lines else 'no message'})") from None


def _layout(fig, figsize, suptitle: bool) -> None:
    """Tight layout, leaving room for a one-line suptitle where there is one."""
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figsize[1]) if suptitle else None)


# ----------------------------------------------------------------------------- reading
def _axis_names(data) -> list[str]:
    return str(data["attrs"]["axes"]).split(",")


def _n_space(data) -> int:
    """Number of space axes of a space-time problem (last axis ``t`` after at least one
    other); 0 for any other problem."""
    axes = _axis_names(data)
    return len(axes) - 1 if len(axes) > 1 and axes[-1] == "t" else 0


def _spread(n: int, k: int) -> list[int]:
    """Up to ``k`` evenly spread indices into ``range(n)``, the first and last included."""
    return sorted(set(np.linspace(0, n - 1, min(n, k)).round().astype(int).tolist()))


def _plane(data, k=None):
    """``(index, label)`` of the test-grid plane of the first two axes at index ``k`` of
    the last axis (its middle when None) and the middle index of the axes between;
    2-D problems: the whole grid and an empty label."""
    axes, grid = _axis_names(data), _grid(data)
    if len(axes) == 2:
        return (slice(None), slice(None)), ""
    k = len(grid[-1]) // 2 if k is None else k
    mid = tuple(len(g) // 2 for g in grid[2:-1])
    return (slice(None), slice(None), *mid, k), f"{axes[-1]} = {grid[-1][k]:.3g}"


def _fields(data) -> list:
    """``(label, array, kind)`` of the heat maps: u and, with a target, the target and the
    signed error u - target (kinds as in :func:`_colour_range`)."""
    u = data["solution"]["u"]
    name, target = _target(data)
    f = _field_label(data)
    fields = [(f"{f} (FBPINN)", u, "value")]
    if name:
        fields += [(name, target, "value"), (f"error {f} - {name}", u - target, "signed")]
    return fields


def _target(data):
    """``(name, array)`` of what the error is measured against: the exact solution or a
    numerical reference; ``(None, None)`` when the run has neither."""
    sol = data["solution"]
    for name in ("exact", "reference"):
        if name in sol:
            return name, sol[name]
    return None, None


def _field_label(data) -> str:
    """The name of the field a figure draws (``u`` for single-field runs)."""
    return str(data["attrs"].get("field", field_names(data["attrs"])[0]))


def _final_rel_l2(data) -> float:
    rel = data["training"]["rel_l2"]
    return float(rel[-1]) if len(rel) else math.nan


def _fmt(v: float) -> str:
    return f"{v:.3e}" if math.isfinite(v) else "n/a"


def _title(data) -> str:
    rel = _final_rel_l2(data)
    versus = "" if _target(data)[0] != "reference" else " vs reference"
    if math.isfinite(rel):
        tail = f"final rel L2{versus} {rel:.3e}"
    else:
        tail = "rel L2 n/a" if _target(data)[0] else "no exact solution (rel L2 n/a)"
    return f"{data['attrs']['problem']}: {tail}"


def _learned(data) -> dict:
    g = data.get("learned", {})
    return {k: float(v) for k, v in g.items() if k != "attrs" and not k.endswith(".attrs")}


def _physics(data):
    """problem.physics from the stored TOML config (True by default); None if unreadable."""
    try:
        return bool(tomllib.loads(str(data["attrs"]["config"])).get("problem", {}).get("physics", True))
    except (KeyError, tomllib.TOMLDecodeError):
        return None

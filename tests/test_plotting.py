"""Tests of fbpinn.plotting and ``fbpinn plot``: the PNGs and the GIF exist, are real
images of the expected size (and frame count), the right files are written for each
kind of problem, figures are closed, and bad input fails with a clear error.

1-D, (x, t) and (x, y, t) results files come from tiny training runs through the Python
API; other layouts use hand-written files with the layout of
:func:`fbpinn.io.write_results`.
"""

import shutil

from pathlib import Path

import h5py
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.animation import PillowWriter
from matplotlib.collections import QuadMesh
from matplotlib.patches import Rectangle
from PIL import Image

import fbpinn
from fbpinn import plotting
from fbpinn.cli import main
from fbpinn.io import SCHEMA_VERSION, TEMPORARY

RUN_PNGS = {"solution.png", "error.png", "decomposition.png", "training.png"}
SPACE_TIME = {1: {"slices.png"}, 2: {"slices.png", "wavefield.gif"}}  # extra files by number of space axes


def _train(path, problem, subdomains=(1,), overlap=1.0, points=(50,), test_points=(200,)):
    cfg = fbpinn.load_config(data={
        "problem": problem,
        "decomposition": {"subdomains": list(subdomains), "overlap": overlap},
        "network": {"hidden": [8]},
        "training": {"steps": 20, "points": list(points), "log_every": 10**6, "eval_every": 10},
        "test": {"points": list(test_points)},
    })
    return fbpinn.save_results(path, fbpinn.train(cfg))


def _write_fake(path, axes, n=24, subdomains=2):
    """A results file of a made-up ``len(axes)``-D problem, laid out as io.write_results does."""
    d = len(axes)
    grid = [np.linspace(0.0, 1.0 + k, n) for k in range(d)]  # axis k spans [0, 1 + k]
    mesh = np.meshgrid(*grid, indexing="ij")
    exact = np.prod([np.sin(np.pi * m / (1 + k)) for k, m in enumerate(mesh)], axis=0)  # (n,)*d
    u = exact + 0.05 * mesh[0] * mesh[1]
    centres_1d = [np.linspace(0.0, 1.0 + k, subdomains) for k in range(d)]
    centres = np.stack([m.reshape(-1) for m in np.meshgrid(*centres_1d, indexing="ij")], axis=1)  # (J, d)
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "fbpinn-results", "schema_version": SCHEMA_VERSION, "fbpinn_version": "0.1.0",
                        "problem": f"fake{d}d", "axes": ",".join(axes), "n_ranks": 1,
                        "config": f'[problem]\nname = "fake{d}d"\nphysics = true\n',
                        "start_time": "", "end_time": "", "wall_time": 1.0})
        dec = f.create_group("decomposition")
        dec.attrs.update({"n_levels": 1, "window": "cosine", "overlap": 1.5,
                          "domain_lo": np.zeros(d), "domain_hi": 1.0 + np.arange(d, dtype=float)})
        lv = dec.create_group("level0")
        lv.attrs["shape"] = np.full(d, subdomains)
        lv["centres"] = centres
        lv["half_widths"] = np.tile(0.75 * (1.0 + np.arange(d)) / (subdomains - 1), (len(centres), 1))
        tr = f.create_group("training")
        tr["step"] = np.array([1, 50, 100])
        tr["loss"] = np.array([1.0, 0.1, 0.01])
        tr["rel_l2"] = np.array([1.0, 0.3, 0.05])
        tr["loss_per_step"] = np.geomspace(1.0, 0.01, 100)
        sol = f.create_group("solution")
        for name, g in zip(axes, grid):
            sol[f"axis_{name}"] = g
        sol["u"], sol["exact"], sol["error"] = u, exact, u - exact
        obs = f.create_group("observations")
        obs["x"] = np.random.default_rng(0).uniform(0.0, 1.0, (10, d))
        obs["u"] = np.zeros(10)
        f.create_group("parameters")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny 1-D runs: data only, physics-informed inverse (learns mu), and one without exact solution."""
    root = tmp_path_factory.mktemp("runs")
    data_only = _train(root / "data_only" / "run.h5",
                       {"name": "harmonic_oscillator", "observations": 8, "physics": False, "constraint": "none"})
    inverse = _train(root / "inverse" / "run.h5", {"name": "harmonic_oscillator_inverse", "observations": 8},
                     subdomains=(3,), overlap=1.9)
    no_exact = root / "no_exact" / "run.h5"
    no_exact.parent.mkdir()
    shutil.copy(inverse, no_exact)
    with h5py.File(no_exact, "r+") as f:
        del f["solution/exact"], f["solution/error"], f["solution"].attrs["target"]
        f["training/rel_l2"][...] = np.nan
    return {"data_only": data_only, "inverse": inverse, "no_exact": no_exact}


@pytest.fixture(scope="module")
def space_time(tmp_path_factory):
    """Tiny space-time runs measured against a numerical reference: burgers (x, t) on an
    11-time test grid and wave2d (x, y, t) on a 6-time one."""
    root = tmp_path_factory.mktemp("space_time")
    return {"xt": _train(root / "burgers" / "run.h5", {"name": "burgers"}, (3, 2), 2.0, (20, 10), (41, 11)),
            "xyt": _train(root / "wave2d" / "run.h5", {"name": "wave2d"}, (2, 2, 2), 2.0, (8, 8, 4), (17, 17, 6))}


@pytest.fixture(scope="module")
def plotted(space_time):
    """``(written paths, _Spy)`` of plot_run on each space-time run, drawn once for all tests."""
    out = {}
    for kind, path in space_time.items():
        with pytest.MonkeyPatch.context() as mp:
            spy = _Spy(mp)
            out[kind] = (plotting.plot_run(path), spy)
    return out


def _check_pngs(paths, names):
    """``paths`` are exactly ``names``, each a complete PNG or GIF; no figure left open."""
    assert {p.name for p in paths} == names
    for p in paths:
        assert p.is_file(), p
        assert p.stat().st_size > 5000, (p, p.stat().st_size)
        with Image.open(p) as im:
            assert im.format == p.suffix[1:].upper(), p
            assert min(im.size) > 200, (p, im.size)
            im.verify()  # raises on a truncated or corrupt file
    assert plt.get_fignums() == []


class _Spy:
    """Records the figures saved (by file name) and the GIF frames grabbed while active."""

    def __init__(self, monkeypatch):
        self.saved, self.frames = {}, []
        real_save, real_grab = plt.Figure.savefig, PillowWriter.grab_frame

        def save(fig, fname, *args, **kwargs):
            if isinstance(fname, (str, Path)):  # by the name it gets, not the temporary one drawn to
                match = TEMPORARY.match(Path(fname).name)
                self.saved[match["name"] if match else Path(fname).name] = fig
            return real_save(fig, fname, *args, **kwargs)

        def grab(writer, **kwargs):
            fig = writer.fig
            self.frames.append({"title": fig.get_suptitle(),
                                "clims": [ax.collections[0].get_clim() for ax in fig.axes if ax.get_title()]})  # not colour bars
            return real_grab(writer, **kwargs)

        monkeypatch.setattr(plt.Figure, "savefig", save)
        monkeypatch.setattr(PillowWriter, "grab_frame", grab)


def test_plot_run_1d(runs):
    for name in ("data_only", "inverse"):
        paths = plotting.plot_run(runs[name])
        _check_pngs(paths, RUN_PNGS)
        assert all(p.parent == runs[name].parent for p in paths)


def test_plot_run_without_exact_skips_error(runs):
    paths = plotting.plot_run(runs["no_exact"])
    _check_pngs(paths, RUN_PNGS - {"error.png"})
    assert not (runs["no_exact"].parent / "error.png").exists()


@pytest.mark.parametrize("axes", [("x", "y"), ("t", "x"), ("x", "y", "z")])
def test_plot_run_2d_and_3d(tmp_path, axes):
    """No slices or GIF unless the last axis is t after a space axis."""
    path = _write_fake(tmp_path / "run.h5", axes, n=10 if len(axes) == 3 else 30)
    _check_pngs(plotting.plot_run(path), RUN_PNGS)


@pytest.mark.parametrize("kind, n_space", [("xt", 1), ("xyt", 2)])
def test_plot_run_space_time(plotted, space_time, kind, n_space):
    """Slices for (x, t), slices and the GIF for (x, y, t); runs with a reference instead
    of an exact solution get error.png too."""
    paths = plotted[kind][0]
    _check_pngs(paths, RUN_PNGS | SPACE_TIME[n_space])
    assert all(p.parent == space_time[kind].parent for p in paths)


def test_slices_lines(plotted, space_time):
    """(x, t): one panel per time, the first and final test times included, each with the
    reference in grey beneath u; the title carries the problem and final rel L2."""
    spy = plotted["xt"][1]
    data = fbpinn.load_results(space_time["xt"])
    t = data["solution"]["axis_t"]
    fig = spy.saved["slices.png"]
    axs = fig.axes
    assert len(axs) == plotting.N_TIME_LINES
    assert axs[0].get_title() == f"t = {t[0]:.3g}" and axs[-1].get_title() == f"t = {t[-1]:.3g}"
    for ax in axs:
        assert [line.get_label() for line in ax.get_lines()] == ["reference", "FBPINN"]
    assert "burgers" in fig.get_suptitle() and f"{data['training']['rel_l2'][-1]:.3e}" in fig.get_suptitle()
    with Image.open(space_time["xt"].parent / "slices.png") as im:
        assert im.size == (round(3.4 * len(axs) * plotting.DPI), round(4.0 * plotting.DPI))


def test_slices_heatmaps_and_wavefield(plotted, space_time):
    """(x, y, t): slices.png has rows u, reference, error at N_TIME_MAPS times with u and
    the reference on one colour scale and the error on a symmetric one; the GIF has one
    frame per test time, colour scales fixed over frames and the time in the title."""
    spy = plotted["xyt"][1]
    t = fbpinn.load_results(space_time["xyt"])["solution"]["axis_t"]
    panels = [ax for ax in spy.saved["slices.png"].axes if ax.get_title()]  # colour bars have no title
    assert len(panels) == 3 * plotting.N_TIME_MAPS
    assert [ax.get_title().split(", ")[0] for ax in panels[::plotting.N_TIME_MAPS]] == \
        ["u (FBPINN)", "reference", "error u - reference"]
    assert panels[0].get_title().endswith(f"t = {t[0]:.3g}") and panels[-1].get_title().endswith(f"t = {t[-1]:.3g}")
    clims = [ax.collections[0].get_clim() for ax in panels]
    assert len(set(clims[:2 * plotting.N_TIME_MAPS])) == 1
    assert len(set(clims[2 * plotting.N_TIME_MAPS:])) == 1 and clims[-1][0] == -clims[-1][1]

    assert len(spy.frames) == len(t)
    assert [f["title"].rsplit("t = ", 1)[1] for f in spy.frames] == [f"{v:.3g}" for v in t]
    assert all(f["clims"] == spy.frames[0]["clims"] for f in spy.frames)
    u_clim, ref_clim, err_clim = spy.frames[0]["clims"]
    assert u_clim == ref_clim and err_clim[0] == -err_clim[1]
    with Image.open(space_time["xyt"].parent / "wavefield.gif") as im:
        assert im.n_frames == len(t)
        assert im.size == (round(4.4 * 3 * plotting.GIF_DPI), round(3.8 * plotting.GIF_DPI))


def test_wavefield_frames_capped(tmp_path, monkeypatch):
    """Beyond MAX_FRAMES test times the frames are evenly strided, first and last kept."""
    monkeypatch.setattr(plotting, "MAX_FRAMES", 4)
    path = _write_fake(tmp_path / "run.h5", ("x", "y", "t"), n=10)
    spy = _Spy(monkeypatch)
    gif = plotting._plot_wavefield(fbpinn.load_results(path), tmp_path / "wavefield.gif")
    assert [f["title"].rsplit("t = ", 1)[1] for f in spy.frames] == ["0", "1", "2", "3"]  # t spans [0, 3]
    with Image.open(gif) as im:
        assert im.n_frames == 4
    assert plt.get_fignums() == []


def test_wavefield_closes_figure_on_error(tmp_path, monkeypatch):
    monkeypatch.setattr(plotting, "MAX_FRAMES", 2)
    path = _write_fake(tmp_path / "run.h5", ("x", "y", "t"), n=6)

    def fail(writer):
        raise OSError("disk full")

    monkeypatch.setattr(plotting._GifWriter, "finish", fail)
    with pytest.raises(OSError, match="disk full"):
        plotting._plot_wavefield(fbpinn.load_results(path), tmp_path / "wavefield.gif")
    assert plt.get_fignums() == []


@pytest.mark.parametrize("kind, n_boxes", [("xt", 6), ("xyt", 4)])
def test_decomposition_over_solution(plotted, kind, n_boxes):
    """The subdomain outlines lie over a heat map of u; (x, y, t) subdomains that differ
    only in t project onto one rectangle, drawn once."""
    ax = plotted[kind][1].saved["decomposition.png"].axes[0]
    assert any(isinstance(c, QuadMesh) for c in ax.collections)
    outlines = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_label() != "domain"]
    assert len(outlines) == n_boxes and not any(p.get_fill() for p in outlines)


def test_solution_title_and_windows(runs, monkeypatch):
    """The title carries the problem, final rel L2 and learned mu; the 1-D windows sum to one."""
    titles, windows = [], []
    real_save = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        titles.extend(ax.get_title() for ax in fig.axes)
        windows.extend(line.get_ydata() for ax in fig.axes for line in ax.get_lines()
                       if line.get_label() == "sum of windows")
        return real_save(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    plotting.plot_run(runs["inverse"])
    data = fbpinn.load_results(runs["inverse"])
    mu = float(data["learned"]["mu"])
    assert any("harmonic_oscillator_inverse" in t and f"{data['training']['rel_l2'][-1]:.3e}" in t
               and f"learned mu = {mu:.5g}" in t for t in titles)
    assert len(windows) == 1 and np.allclose(windows[0], 1.0)


def test_plot_compare(runs, tmp_path):
    out = plotting.plot_compare([runs["data_only"], runs["inverse"]], tmp_path / "sub" / "compare.png")
    _check_pngs([out], {"compare.png"})


def test_plot_compare_labels(runs, tmp_path, monkeypatch):
    labels = []
    real_save = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        labels.extend(t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts())
        return real_save(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    plotting.plot_compare([runs["data_only"], runs["inverse"]], tmp_path / "compare.png")
    assert labels.count("exact") == 1
    assert any(s.startswith("data_only: rel L2 ") and s.endswith("physics off") for s in labels)
    assert any(s.startswith("inverse: rel L2 ") and s.endswith("physics on") for s in labels)
    assert sum("8 observations" in s for s in labels) == 2


def test_plot_compare_rejects_2d(runs, tmp_path):
    fake = _write_fake(tmp_path / "run.h5", ("x", "y"))
    with pytest.raises(ValueError, match="1-D"):
        plotting.plot_compare([runs["inverse"], fake], tmp_path / "compare.png")
    assert not (tmp_path / "compare.png").exists()
    assert plt.get_fignums() == []


def test_cli_plot(runs, tmp_path, capsys):
    path = tmp_path / "cli" / "run.h5"
    path.parent.mkdir()
    shutil.copy(runs["inverse"], path)
    assert main(["plot", str(path)]) == 0
    _check_pngs([path.parent / n for n in RUN_PNGS], RUN_PNGS)

    out = tmp_path / "both.png"
    assert main(["plot", str(runs["data_only"]), str(path), "--compare", str(out)]) == 0
    _check_pngs([out], {"both.png"})

    assert main(["plot", str(tmp_path / "nonexistent.h5")]) == 2
    assert "no such file" in capsys.readouterr().err

    fake = _write_fake(tmp_path / "fake.h5", ("x", "y"))
    assert main(["plot", str(path), str(fake)]) == 2
    assert "1-D" in capsys.readouterr().err

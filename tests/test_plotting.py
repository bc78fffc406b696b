"""Tests of fbpinn.plotting and ``fbpinn plot``: the PNGs exist, are real images of a
plausible size, figures are closed, and bad input fails with a clear error.

1-D results files come from tiny training runs through the Python API; the 2-D and
3-D branches use hand-written files with the layout of :func:`fbpinn.io.write_results`.
"""

import shutil

import h5py
import matplotlib.pyplot as plt
import numpy as np
import pytest

import fbpinn
from fbpinn import plotting
from fbpinn.cli import main
from fbpinn.io import SCHEMA_VERSION

RUN_PNGS = {"solution.png", "error.png", "decomposition.png", "training.png"}


def _train(path, problem, subdomains=(1,), overlap=1.0):
    cfg = fbpinn.load_config(data={
        "problem": problem,
        "decomposition": {"subdomains": list(subdomains), "overlap": overlap},
        "network": {"hidden": [8]},
        "training": {"steps": 20, "points": [50], "log_every": 10**6, "eval_every": 10},
        "test": {"points": [200]},
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
        del f["solution/exact"], f["solution/error"]
        f["training/rel_l2"][...] = np.nan
    return {"data_only": data_only, "inverse": inverse, "no_exact": no_exact}


def _check_pngs(paths, names):
    assert {p.name for p in paths} == names
    for p in paths:
        assert p.is_file(), p
        blob = p.read_bytes()
        assert blob.startswith(b"\x89PNG\r\n\x1a\n"), p
        assert len(blob) > 5000, (p, len(blob))
    assert plt.get_fignums() == []


def test_plot_run_1d(runs):
    for name in ("data_only", "inverse"):
        paths = plotting.plot_run(runs[name])
        _check_pngs(paths, RUN_PNGS)
        assert all(p.parent == runs[name].parent for p in paths)


def test_plot_run_without_exact_skips_error(runs):
    paths = plotting.plot_run(runs["no_exact"])
    _check_pngs(paths, RUN_PNGS - {"error.png"})
    assert not (runs["no_exact"].parent / "error.png").exists()


@pytest.mark.parametrize("axes", [("x", "y"), ("x", "y", "t")])
def test_plot_run_2d_and_3d(tmp_path, axes):
    path = _write_fake(tmp_path / "run.h5", axes, n=20 if len(axes) == 3 else 30)
    _check_pngs(plotting.plot_run(path), RUN_PNGS)


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

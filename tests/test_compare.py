"""fbpinn compare: a table of several runs and the relative differences of their solutions."""

import numpy as np
import pytest

import fbpinn
from fbpinn.cli import main
from fbpinn.compare import compare, interpolate, labels, solution
from fbpinn.io import read_results

LAPLACE = {"problem": {"name": "laplace2d_multiscale", "scales": 2}, "decomposition": {"subdomains": [3, 3], "overlap": 1.9},
           "network": {"hidden": [6]}, "training": {"steps": 20, "dtype": "float64", "points": [12, 12]},
           "test": {"points": [21, 17]}}


def run(folder, seed=0, test=None, problem=None):
    data = {k: dict(v) for k, v in LAPLACE.items()}
    data["training"]["seed"] = seed
    if test:
        data["test"]["points"] = test
    if problem:
        data = {"problem": problem, "decomposition": {"subdomains": [4]}, "network": {"hidden": [4]},
                "training": {"steps": 5, "dtype": "float64"}}
    folder.mkdir()
    fbpinn.save_results(folder / "run.h5", fbpinn.train(fbpinn.load_config(data=data)))
    return folder / "run.h5"


def test_differences_on_the_same_and_on_another_grid(tmp_path, capsys):
    a, b, c = run(tmp_path / "a"), run(tmp_path / "b", seed=1), run(tmp_path / "c", test=[30, 25])
    rows = compare([a, b, c, a])
    assert [r.label for r in rows] == ["a/run.h5", "b/run.h5", "c/run.h5", "a/run.h5"]
    ua, ub = solution(read_results(a)), solution(read_results(b))
    assert rows[0].difference == 0 and rows[3].difference == 0
    assert rows[1].difference == pytest.approx(np.linalg.norm(ub - ua) / np.linalg.norm(ua), rel=1e-12)
    # c is the same training as a on another test grid: interpolated onto a's grid it differs by the
    # interpolation error only, far below the difference between two seeds; a grid holding a's
    # points (41 x 33 holds 21 x 17) gives it exactly.
    assert 0 < rows[2].difference < 0.05 * rows[1].difference
    assert compare([a, run(tmp_path / "d", test=[41, 33])])[1].difference < 1e-15
    assert rows[1].rel_l2 == read_results(b)["training"]["rel_l2"][-1] and rows[1].steps == 20
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "problem", "steps"]
    assert out[1].split()[0] == "a/run.h5" and out[1].split()[-1] == "-"
    assert float(out[2].split()[-1]) == pytest.approx(rows[1].difference, rel=1e-3)


def test_interpolation_is_exact_for_multilinear_functions():
    x, y = np.linspace(0, 1, 5), np.linspace(-1, 1, 4)
    f = lambda p, q: 2 + 3 * p - q + 0.5 * p * q  # noqa: E731
    values = f(*np.meshgrid(x, y, indexing="ij"))[..., None]
    onto = [np.linspace(-0.2, 1, 13), np.linspace(-1, 1, 9)]
    got, inside = interpolate(values, [x, y], onto)
    want = f(*np.meshgrid(*onto, indexing="ij"))
    assert inside.shape == (13, 9) and not inside[0].any() and inside[3:].all()
    assert np.abs(got[..., 0][inside] - want[inside]).max() < 1e-12


def test_different_problems_need_force(tmp_path, capsys):
    a, b = run(tmp_path / "a"), run(tmp_path / "b", problem={"name": "cos1d"})
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "different problems" in err and "is cos1d" in err and "--force" in err
    rows = compare([a, b], force=True)
    assert np.isnan(rows[1].difference) and rows[1].problem == "cos1d"
    assert main(["compare", str(a)]) == 2
    assert "at least two" in capsys.readouterr().err


def test_labels_tell_files_apart():
    assert labels(["/r/x/run.h5", "/r/y/run.h5"]) == ["x/run.h5", "y/run.h5"]
    assert labels(["/r/x/a.h5", "/r/x/b.h5"]) == ["a.h5", "b.h5"]


def svg_texts(path) -> set:
    import xml.etree.ElementTree as ET

    return {"".join(e.itertext()).strip() for e in ET.parse(path).iter() if e.tag.endswith("text")}


@pytest.mark.parametrize("kind", ["1d", "2d", "system"])
def test_figure_of_the_runs_against_the_first(tmp_path, kind):
    import matplotlib

    if kind == "1d":
        cos = {"name": "cos1d"}
        a, b = run(tmp_path / "a", problem=cos), run(tmp_path / "b", problem=cos)
        expected = {"exact (a/run.h5)"}
    elif kind == "2d":
        a, b = run(tmp_path / "a"), run(tmp_path / "b", seed=1, test=[30, 25])
        expected = {"u: a/run.h5", "u: b/run.h5 - a/run.h5"}
    else:
        from test_fields import ACOUSTIC

        data = {**ACOUSTIC, "training": {**ACOUSTIC["training"], "steps": 3}}
        for name, seed in (("a", 0), ("b", 1)):
            (tmp_path / name).mkdir()
            cfg = fbpinn.load_config(data={**data, "training": {**data["training"], "seed": seed}})
            fbpinn.save_results(tmp_path / name / "run.h5", fbpinn.train(cfg))
        a, b = tmp_path / "a" / "run.h5", tmp_path / "b" / "run.h5"
        expected = {"p: a/run.h5", "v: b/run.h5 - a/run.h5"}
    out = tmp_path / "figs" / "compare.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        assert main(["compare", str(a), str(b), "--figure", str(out)]) == 0
    assert expected <= svg_texts(out)


def test_figure_to_an_unknown_format_is_refused(tmp_path, capsys):
    a, b = run(tmp_path / "a"), run(tmp_path / "b", seed=1)
    assert main(["compare", str(a), str(b), "--figure", str(tmp_path / "f" / "x.bmpx")]) == 2
    assert "matplotlib writes no .bmpx files" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()

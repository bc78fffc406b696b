"""fbpinn plot's options (--out-dir, --format, --dpi) and training.png's loss terms and stage markers."""

import xml.etree.ElementTree as ET

import matplotlib
import pytest
from PIL import Image

import fbpinn
from fbpinn.cli import main
from test_parallel import SOFT_PINN, WAVE_MARCH, write_toml


@pytest.fixture(scope="module")
def marched(tmp_path_factory):
    """A short time-marching run of wave1d (three slabs, then all together) and its results file."""
    folder = tmp_path_factory.mktemp("march")
    cfg = write_toml({**WAVE_MARCH, "training": {**WAVE_MARCH["training"], "steps": 120, "eval_every": 10}},
                     folder / "c.toml")
    path = folder / "run.h5"
    fbpinn.save_results(path, fbpinn.train(fbpinn.load_config(cfg)))
    return path


def svg_texts(path) -> set:
    return {"".join(e.itertext()).strip() for e in ET.parse(path).iter() if e.tag.endswith("text")}


def test_figures_go_to_the_folder_in_the_format_asked_for(marched, tmp_path):
    out = tmp_path / "new" / "figures"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as text, to read it back
        assert main(["plot", str(marched), "--out-dir", str(out), "--format", "svg"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["decomposition.svg", "error.svg", "slices.svg", "solution.svg", "training.svg"]
    assert not (marched.parent / "training.svg").exists() and not (marched.parent / "training.png").exists()
    assert {"stage 1", "stage 2", "stage 3"} <= svg_texts(out / "training.svg")  # slabs 2, 3, then all together
    assert main(["plot", str(marched), "--out-dir", str(tmp_path / "pdf"), "--format", "pdf"]) == 0
    assert (tmp_path / "pdf" / "solution.pdf").read_bytes()[:5] == b"%PDF-"


def test_dpi_sets_the_resolution(marched, tmp_path):
    sizes = {}
    for dpi in (60, 120):
        assert main(["plot", str(marched), "--out-dir", str(tmp_path / str(dpi)), "--dpi", str(dpi)]) == 0
        with Image.open(tmp_path / str(dpi) / "solution.png") as im:
            sizes[dpi] = im.size
    assert sizes[120][0] == pytest.approx(2 * sizes[60][0], abs=2)
    assert sizes[120][1] == pytest.approx(2 * sizes[60][1], abs=2)


@pytest.mark.parametrize("args,message", [(["--format", "jpg"], "format 'jpg': fbpinn plot writes png, pdf, svg"),
                                          (["--dpi", "5"], "dpi 5: must lie in 20..1200"),
                                          (["--dpi", "2000"], "dpi 2000: must lie in 20..1200")])
def test_bad_options_are_refused_before_anything_is_written(marched, tmp_path, capsys, args, message):
    out = tmp_path / "figs"
    assert main(["plot", str(marched), "--out-dir", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_training_figure_draws_each_loss_term(tmp_path):
    cfg = write_toml(SOFT_PINN, tmp_path / "c.toml")  # physics and two soft initial conditions
    fbpinn.save_results(tmp_path / "run.h5", fbpinn.train(fbpinn.load_config(cfg)))
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        assert main(["plot", str(tmp_path / "run.h5"), "--format", "svg"]) == 0
    texts = svg_texts(tmp_path / "training.svg")
    assert {"term physics", "term ic_u", "term ic_ut"} <= texts
    assert not any(t.startswith("stage") for t in texts)  # one stage: no markers

"""The fbpinn command line end to end, in a temporary folder."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fbpinn.cli import main
from fbpinn.io import read_results

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--set", "training.steps=40", "--set", "training.compile=false", "--set", "training.eval_every=20",
        "--set", "training.points=[60]"]


def test_train_info_plot(tmp_path, capsys):
    out = tmp_path / "ho"
    assert main(["train", str(ROOT / "configs/harmonic_oscillator.toml"), "--out", str(out), *FAST]) == 0
    data = read_results(out / "run.h5")
    assert data["training"]["step"].tolist() == [1, 20, 40]
    assert "steps = 40" in data["attrs"]["config"]
    assert np.isfinite(data["training"]["rel_l2"]).all()
    capsys.readouterr()
    assert main(["info", str(out / "run.h5"), "--config"]) == 0
    text = capsys.readouterr().out
    assert "problem harmonic_oscillator" in text and "steps 40" in text and "[training]" in text


def test_reference_solution_is_stored_and_errors_are_measured_against_it(tmp_path, capsys):
    out = tmp_path / "burgers"
    args = ["--set", "training.steps=20", "--set", "training.compile=false", "--set", "training.eval_every=20",
            "--set", "training.points=[30,10]", "--set", "test.points=[41,11]", "--set", "network.hidden=[8]",
            "--set", "decomposition.subdomains=[4,2]"]
    assert main(["train", str(ROOT / "configs/burgers.toml"), "--out", str(out), *args]) == 0
    data = read_results(out / "run.h5")
    sol = data["solution"]
    assert sol["attrs"]["target"] == "reference" and "Cole-Hopf" in sol["attrs"]["reference_method"]
    assert "exact" not in sol and sol["reference"].shape == (41, 11)
    assert np.abs(sol["reference"][:, 0] + np.sin(np.pi * sol["axis_x"])).max() < 1e-12  # u(x, 0)
    assert np.array_equal(sol["error"], sol["u"] - sol["reference"])
    rel = np.linalg.norm(sol["error"]) / np.linalg.norm(sol["reference"])
    assert data["training"]["rel_l2"][-1] == pytest.approx(rel, rel=1e-6)
    capsys.readouterr()
    assert main(["info", str(out / "run.h5")]) == 0
    assert "against the reference (Cole-Hopf" in capsys.readouterr().out


def test_problems_lists_names(capsys):
    assert main(["problems"]) == 0
    out = capsys.readouterr().out
    for name in ("harmonic_oscillator", "harmonic_oscillator_inverse", "cos1d"):
        assert name in out


@pytest.mark.parametrize("args,message", [
    (["--set", "training.steps=-3"], "config: training.steps: must be >= 1"),
    (["--set", "training.bogus=1"], "config: training.bogus: unknown key"),
    (["--set", "nonsense"], "an override must look like section.key=value"),
])
def test_bad_config_exits_2_without_output(tmp_path, args, message):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fbpinn", "train", str(ROOT / "configs/cos1d.toml"), "--out",
                           str(out), *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_unwritable_output_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # A folder below a plain file can never be created.
    code = main(["train", str(ROOT / "configs/cos1d.toml"), "--out", str(blocker / "sub"), *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot write results to {blocker / 'sub'}" in err


def test_bad_results_file_exits_2(tmp_path):
    bad = tmp_path / "run.h5"
    bad.write_text("nope")
    assert main(["info", str(bad)]) == 2
    assert main(["plot", str(bad)]) == 2


@pytest.mark.parametrize("command", ["train", "plot", "info", "problems"])
def test_help(command):
    proc = subprocess.run([sys.executable, "-m", "fbpinn", command, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: fbpinn " + command in proc.stdout


def test_console_script_installed():
    proc = subprocess.run(["fbpinn", "--help"], capture_output=True, text=True,
                          env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"})
    assert proc.returncode == 0 and "train" in proc.stdout

"""Problems from the user's own code: ``problem.module`` (a file or a module name), the
``fbpinn.problems`` entry points, re-registration, provenance in results and checkpoints,
resuming after the module changed, ``problem.domain``, and the shipped out-of-package
example trained, resumed on two ranks and read back without its module, through the CLI."""

import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fbpinn import checkpoint as ckpt
from fbpinn import plugins, registry
from fbpinn.cli import main
from fbpinn.config import ConfigError, load_config, to_toml
from fbpinn.io import read_results
from fbpinn.problems import all_problems
from test_checkpoint import same
from test_parallel import mpirun, needs_mpi, write_toml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A tiny run of any 1-D problem: a few steps of a small model, nothing written but at the end.
TINY = {"decomposition": {"subdomains": [2], "overlap": 2.0}, "network": {"hidden": [4]},
        "training": {"steps": 2, "points": [10], "eval_every": 1, "log_every": 1, "threads": 1},
        "test": {"points": [5]}, "checkpoint": {"every": 0}}

# Settings that make the example's runs short (float64, so that runs on any rank count agree closely).
SHORT = ["decomposition.subdomains=[4]", "network.hidden=[8]", "training.points=[60]", "training.dtype=float64",
         "training.lr=1e-2", "training.eval_every=10", "training.log_every=1000", "test.points=[50]",
         "checkpoint.every=10"]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def problem_source(name: str, doc: str = "u_x = 1 on [0, 1] with u(0) = 0.", cls: str = "Mine") -> str:
    """A module that registers a small 1-D problem as ``name``."""
    return textwrap.dedent(f'''
        import torch

        from fbpinn.problems import Problem
        from fbpinn.registry import register


        @register("problem", {name!r})
        class {cls}(Problem):
            """{doc}"""

            axes = ("x",)
            needs = ("u_x",)
            has_constraint = True

            def constraint(self, x):
                return torch.zeros_like(x[:, 0]), x[:, 0]

            def residual(self, x, d):
                return d["u_x"] - 1

            def exact(self, x):
                return x[:, 0].double()
    ''')


@pytest.fixture(autouse=True)
def _clean_registry():
    """Leave the registries, the entry-point cache and sys.modules as they were: what a test
    registers or imports does not reach the other tests."""
    tables = {kind: dict(t) for kind, t in registry._REGISTRIES.items()}
    broken = {kind: dict(t) for kind, t in registry._broken.items()}
    points = dict(registry._entry_points)
    modules = set(sys.modules)
    yield
    for kind, t in registry._REGISTRIES.items():
        t.clear()
        t.update(tables[kind])
    for kind, t in registry._broken.items():
        t.clear()
        t.update(broken[kind])
    registry._entry_points.clear()
    registry._entry_points.update(points)
    for name in set(sys.modules) - modules:
        if name.startswith(("fbpinn_user_", "extpkg_fb", "mypkg_fb")):
            del sys.modules[name]


def tiny_config(folder: Path, module: str, name: str, **problem) -> Path:
    """A config file in ``folder`` of a tiny run of ``name`` from ``problem.module = module``."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_toml({"problem": {"module": module, "name": name, **problem}, **TINY}, folder / "c.toml")


def example(tmp_path) -> Path:
    """The shipped example (config and module) copied into a folder of its own; the config's path."""
    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("helmholtz1d.py", "helmholtz1d.toml"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder / "helmholtz1d.toml"


def exact_helmholtz(x, a=0.0, b=1.0, m=2):
    """The example's exact solution, written out independently."""
    xi = (np.asarray(x) - a) / (b - a)
    return np.sin(m * np.pi * xi) + np.sin(3 * m * np.pi * xi) / 3


def error_line(capsys) -> str:
    """The one error line the last command printed (no traceback)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fbpinn: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- problem.module
def test_module_path_is_read_from_the_config_folder(tmp_path, monkeypatch):
    source = tmp_path / "a" / "sub" / "mine.py"
    source.parent.mkdir(parents=True)
    source.write_text(problem_source("mine_relative"))
    cfg_path = tiny_config(tmp_path / "a", "sub/mine.py", "mine_relative")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_config(cfg_path)
    assert cfg.problem_name == "mine_relative"
    assert cfg.problem_module == str(source.resolve())
    assert cfg.problem_module_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    # The stored config names the resolved path: it loads from anywhere.
    stored = tomllib.loads(to_toml(cfg))
    assert stored["problem"]["module"] == str(source.resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = load_config(data=stored)
    assert again.problem_module == cfg.problem_module and again.problem_name == "mine_relative"
    # "~" is the home folder.
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    home = load_config(cfg_path, ["problem.module=~/sub/mine.py"])
    assert home.problem_module == str(source.resolve())


def test_module_by_dotted_name(tmp_path, monkeypatch):
    package = tmp_path / "site" / "mypkg_fb"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "probs.py").write_text(problem_source("mine_dotted"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cfg = load_config(tiny_config(tmp_path, "mypkg_fb.probs", "mine_dotted"))
    assert cfg.problem_module == "mypkg_fb.probs"
    assert cfg.problem_module_sha256 == hashlib.sha256((package / "probs.py").read_bytes()).hexdigest()
    assert registry.get("problem", "mine_dotted").__module__ == "mypkg_fb.probs"


@pytest.mark.parametrize("source,module,message", [
    (None, "missing.py", r"config: problem\.module: no file '.*/missing\.py' \(a relative path is read from the "
                         r"config's folder .*\)$"),
    ("x = 1\ndef f(:\n    pass\n", "bad.py",
     r"config: problem\.module: importing '.*/bad\.py' failed: SyntaxError: .*line 2"),
    ("import math\n\nx = 1 / 0\n", "bad.py",
     r"config: problem\.module: importing '.*/bad\.py' failed: ZeroDivisionError: division by zero \(line 3\)$"),
    (None, "no_such_fbpinn_module", r"config: problem\.module: no module 'no_such_fbpinn_module' on the Python path"),
    (None, "not a module", r"config: problem\.module: 'not a module' is neither a path to a \.py file nor a module"),
])
def test_module_that_cannot_be_imported_is_a_config_error(tmp_path, capsys, source, module, message):
    if source is not None:
        (tmp_path / module).write_text(source)
    out = tmp_path / "out"
    assert main(["train", str(tiny_config(tmp_path, module, "mine")), "--out", str(out)]) == 2
    line = error_line(capsys)
    assert __import__("re").search(message, line.removeprefix("fbpinn: error: ")), line
    assert not out.exists()
    assert not [m for m in sys.modules if m.startswith("fbpinn_user_bad")]  # a failed import leaves nothing


def test_loading_a_module_again_is_harmless_and_an_edit_replaces_the_class(tmp_path):
    source = tmp_path / "mine.py"
    source.write_text(problem_source("mine_again", doc="First version."))
    cfg_path = tiny_config(tmp_path, "mine.py", "mine_again")
    load_config(cfg_path)
    first = registry.get("problem", "mine_again")
    load_config(cfg_path)  # a second config, a resume: the module is not run again
    assert registry.get("problem", "mine_again") is first
    source.write_text(problem_source("mine_again", doc="Second version."))  # a notebook's edit and reload
    cfg = load_config(cfg_path)
    second = registry.get("problem", "mine_again")
    assert second is not first and second.__doc__ == "Second version."
    assert cfg.problem_module_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()


def test_two_classes_under_one_name_is_an_error_naming_both_modules(tmp_path):
    (tmp_path / "one.py").write_text(problem_source("twin", cls="One"))
    (tmp_path / "two.py").write_text(problem_source("twin", cls="Two"))
    load_config(tiny_config(tmp_path / "a", str(tmp_path / "one.py"), "twin"))
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config(tmp_path / "b", str(tmp_path / "two.py"), "twin"))
    text = str(info.value)
    assert text.startswith("config: problem.module: importing ")
    assert "problem 'twin' is registered twice" in text
    assert plugins.module_name((tmp_path / "one.py").resolve()) in text
    assert plugins.module_name((tmp_path / "two.py").resolve()) in text
    # In code, too: the same class again is fine, another class under its name is not.
    class A:
        pass

    class B:
        pass

    registry.register("window", "twin_window")(A)
    registry.register("window", "twin_window")(A)
    with pytest.raises(registry.RegistryError, match=r"window 'twin_window' is registered twice: by .*A .*B"):
        registry.register("window", "twin_window")(B)


# ----------------------------------------------------------------------------- entry points
def _distribution(site: Path) -> None:
    """An installed distribution ``extpkg-fb`` in ``site`` offering one good and one broken problem."""
    package = site / "extpkg_fb"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(problem_source("unused_name", cls="Good").replace(
        '@register("problem", \'unused_name\')', ""))
    info = site / "extpkg_fb-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extpkg-fb\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fbpinn.problems]\next_good = extpkg_fb:Good\n"
                                           "ext_broken = extpkg_missing_fb:Nope\n")


def test_entry_points_offer_problems_and_a_broken_one_hides_no_other(tmp_path, monkeypatch, capsys):
    _distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry._entry_points.clear()  # read the metadata again
    assert {"ext_good", "ext_broken", "cos1d", "wave2d"} <= set(registry.names("problem"))
    assert "extpkg_fb" not in sys.modules  # names come from the metadata alone
    assert main(["problems"]) == 0
    out, err = capsys.readouterr()
    assert "ext_good" in out and "cos1d" in out and "ext_broken" not in out
    assert err.strip() == ("fbpinn: warning: entry point 'ext_broken' = 'extpkg_missing_fb:Nope' of distribution "
                           "'extpkg-fb' (group fbpinn.problems) cannot be loaded: ModuleNotFoundError: No module "
                           "named 'extpkg_missing_fb'")
    good = all_problems()["ext_good"]
    assert good.__module__ == "extpkg_fb" and good.name == "ext_good"
    cfg = load_config(data={"problem": {"name": "ext_good"}, **TINY})
    assert cfg.problem_name == "ext_good" and cfg.problem_module == ""
    with pytest.raises(ConfigError, match=r"^config: problem\.name: entry point 'ext_broken' = "
                                          r"'extpkg_missing_fb:Nope' of distribution 'extpkg-fb' .*cannot be loaded: "
                                          r"ModuleNotFoundError"):
        load_config(data={"problem": {"name": "ext_broken"}, **TINY})


def test_without_fbpinn_metadata_the_error_says_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    registry._entry_points.clear()
    with pytest.raises(ConfigError, match=r"problem\.name: no installed fbpinn found .*Install the package, e\.g\. "
                                          r"`pip install -c constraints\.txt -e \.`"):
        load_config(data={"problem": {"name": "cos1d"}, **TINY})

    class Stale:  # metadata of a release from before the entry points
        version, entry_points = "0.0.1", []

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Stale())
    with pytest.raises(registry.RegistryError, match=r"fbpinn 0\.0\.1 metadata declares no 'fbpinn\.windows' entry "
                                                     r"points: it is out of date\. Reinstall"):
        registry.names("window")


def test_the_registry_imports_no_plug_in():
    proc = subprocess.run([sys.executable, "-c", "import sys, fbpinn.registry as r, fbpinn.problems; "
                           "print(r.names('problem')); print(sorted(m for m in sys.modules if m.startswith('fbpinn')))"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names, modules = proc.stdout.strip().splitlines()
    assert "'cos1d'" in names and "'wave1d'" in names
    plug_ins = [m for m in eval(modules) if m.startswith("fbpinn.problems.") or m in ("fbpinn.windows",
                                                                                       "fbpinn.schedulers")]
    assert "fbpinn.problems" in modules and plug_ins == []


# ----------------------------------------------------------------------------- problem.domain
def test_example_exact_solution_solves_its_equation_on_any_domain():
    module = plugins.import_module(str(EXAMPLES / "helmholtz1d.py"), EXAMPLES).module
    for domain in (None, [[2.0, 5.0]], [[-0.3, 0.1]]):
        problem = module.Helmholtz1d(module.HelmholtzParams(domain=domain), dtype=torch.float64)
        box = problem.domain
        x = box.grid([301]).requires_grad_(True)
        u = problem.exact(x)
        (u_x,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        (u_xx,) = torch.autograd.grad(u_x.sum(), x)
        r = problem.residual(x, {"u": u.detach(), "u_xx": u_xx[:, 0]})
        assert r.abs().max().item() < 1e-9 * u_xx.abs().max().item()
        a, b = box.lo[0], box.hi[0]
        assert np.allclose(u.detach().numpy(), exact_helmholtz(x[:, 0].detach().numpy(), a, b), atol=1e-13)
        ends = torch.tensor([[a], [b]], dtype=torch.float64)
        assert problem.constraint(ends)[1].abs().max().item() == 0.0


@pytest.mark.parametrize("value,message", [
    ([0.0, 1.0], r"problem\.domain: must list one \[lo, hi\] pair per axis \('x',\), e\.g\. \[\[0\.0, 1\.0\]\], "
                 r"got \[0\.0, 1\.0\]"),
    ([[0.0, 1.0], [0.0, 1.0]], r"problem\.domain: must list one \[lo, hi\] pair per axis \('x',\)"),
    ([[1.0, 0.0]], r"problem\.domain: axis 0: needs lo < hi, at least 1e-06 apart, got \[1\.0, 0\.0\]"),
    ([[1.0, 1.0]], r"problem\.domain: axis 0: needs lo < hi"),
    ([[0.0, 1e7]], r"problem\.domain: axis 0: bounds must lie in \[-1e\+06, 1e\+06\], got \[0\.0, 10000000\.0\]"),
    ([[0.0, float("inf")]], r"problem\.domain\[0\]\[1\]: must be finite, got inf"),
    ([[0.0, 1.0, 2.0]], r"problem\.domain: axis 0: must be a pair \[lo, hi\], got \[0\.0, 1\.0, 2\.0\]"),
    ([["a", 1.0]], r"problem\.domain\[0\]\[0\]: must be a number, got 'a'"),
])
def test_domain_values_are_checked(value, message):
    data = {"problem": {"module": str(EXAMPLES / "helmholtz1d.py"), "name": "helmholtz1d", "domain": value}, **TINY}
    with pytest.raises(ConfigError, match=r"^config: " + message):
        load_config(data=data)


def test_domain_is_refused_where_the_problem_fixes_it():
    with pytest.raises(ConfigError, match=r"^config: problem\.domain: problem 'cos1d' has a fixed domain \(its "
                                          r"solution assumes it\): leave problem\.domain out$"):
        load_config(data={"problem": {"name": "cos1d", "domain": [[0.0, 1.0]]}, **TINY})
    assert not all_problems()["cos1d"].configurable_domain


def test_domain_override_changes_the_trained_domain(tmp_path):
    cfg = load_config(EXAMPLES / "helmholtz1d.toml", ["problem.domain=[[2.0, 5.0]]"])
    assert cfg.problem.domain == [[2.0, 5.0]]
    assert "domain = [[2.0, 5.0]]" in to_toml(cfg)
    out = tmp_path / "r"
    assert main(["train", str(EXAMPLES / "helmholtz1d.toml"), "--out", str(out), *_sets(SHORT),
                 "--set", "training.steps=30", "--set", "problem.domain=[[2.0, 5.0]]"]) == 0
    data = read_results(out / "run.h5")
    dec, sol = data["decomposition"], data["solution"]
    assert dec["attrs"]["domain_lo"].tolist() == [2.0] and dec["attrs"]["domain_hi"].tolist() == [5.0]
    assert sol["axis_x"][0] == 2.0 and sol["axis_x"][-1] == 5.0
    centres = dec["level0"]["centres"][:, 0]
    assert centres.min() == pytest.approx(2.0) and centres.max() == pytest.approx(5.0)
    assert np.allclose(sol["exact"], exact_helmholtz(sol["axis_x"], 2.0, 5.0), atol=1e-12)
    assert sol["u"][0] == 0.0 and sol["u"][-1] == 0.0  # the ansatz pins the new ends


# ----------------------------------------------------------------------------- provenance and resume
def test_resume_refuses_a_changed_module_unless_told(tmp_path, capsys):
    cfg = example(tmp_path)
    module = cfg.with_name("helmholtz1d.py")
    before = hashlib.sha256(module.read_bytes()).hexdigest()
    out = tmp_path / "r"
    args = ["train", str(cfg), "--out", str(out), *_sets(SHORT)]
    assert main([*args, "--set", "training.steps=10"]) == 0
    (step, path), = ckpt.listing(out / "checkpoints")
    state = ckpt.read(path)
    assert state["problem_module"] == str(module.resolve()) and state["problem_module_sha256"] == before
    with h5py.File(out / "run.h5") as f:
        assert f.attrs["problem_module"] == str(module.resolve()) and f.attrs["problem_module_sha256"] == before
    capsys.readouterr()

    module.write_text(module.read_text() + "\n# an edit after the checkpoint\n")
    after = hashlib.sha256(module.read_bytes()).hexdigest()
    assert main([*args, "--set", "training.steps=20", "--resume"]) == 2
    line = error_line(capsys)
    assert (f"{path} was trained with problem.module {module.resolve()} of SHA-256 {before}; {module.resolve()} "
            f"now has SHA-256 {after}: its source changed since") in line
    assert "--allow-module-change" in line
    assert [s for s, _ in ckpt.listing(out / "checkpoints")] == [10]

    assert main([*args, "--set", "training.steps=20", "--resume", "--allow-module-change"]) == 0
    log = capsys.readouterr().out
    assert "going on with the changed code (--allow-module-change)" in log and after in log
    data = read_results(out / "run.h5")
    assert data["attrs"]["problem_module_sha256"] == after and int(data["training"]["step"][-1]) == 20


@needs_mpi
def test_example_trains_resumes_on_two_ranks_and_reads_without_its_module(tmp_path, capsys):
    cfg = example(tmp_path)
    module = cfg.with_name("helmholtz1d.py").resolve()
    sha = hashlib.sha256(module.read_bytes()).hexdigest()
    out, whole = tmp_path / "r", tmp_path / "whole"
    # 30 steps on one process, then on to 60 on two ranks, each writing its part of the solution ...
    assert main(["train", str(cfg), "--out", str(out), *_sets(SHORT), "--set", "training.steps=30"]) == 0
    assert [s for s, _ in ckpt.listing(out / "checkpoints")] == [30, 20]
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(out), "--resume", *_sets(SHORT),
                      "--set", "training.steps=60", "--set", "output.per_rank=true"], timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "written by 1 rank(s)" in proc.stdout
    # ... equals 60 uninterrupted steps on one process.
    assert main(["train", str(cfg), "--out", str(whole), *_sets(SHORT), "--set", "training.steps=60"]) == 0
    resumed = read_results(out / "run.h5")
    same(read_results(whole / "run.h5"), resumed, rtol=1e-9)
    assert resumed["attrs"]["n_ranks"] == 2 and resumed["solution"]["attrs"]["parts"] == 2
    assert resumed["attrs"]["problem_module"] == str(module) and resumed["attrs"]["problem_module_sha256"] == sha
    assert np.allclose(resumed["solution"]["exact"], exact_helmholtz(resumed["solution"]["axis_x"]), atol=1e-12)
    errors = resumed["training"]["rel_l2"]
    assert errors[-1] < 0.5 * errors[0]  # it learns the exact solution
    capsys.readouterr()

    # Without the module (moved away), a fresh process still summarises, plots and merges the run.
    module.rename(tmp_path / "moved.py")
    script = textwrap.dedent(f"""
        import sys
        from fbpinn.cli import main
        run = {str(out / 'run.h5')!r}
        codes = [main(["info", run]), main(["plot", run]), main(["merge", run])]
        print("codes", codes)
        sys.exit(max(codes))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "codes [0, 0, 0]" in proc.stdout
    assert "problem helmholtz1d," in proc.stdout and f"problem module {module} (sha256 {sha})" in proc.stdout
    assert (out / "solution.png").is_file() and (out / "training.png").is_file()
    merged = read_results(out / "run_merged.h5")
    assert "parts" not in merged["solution"]["attrs"]
    assert np.array_equal(merged["solution"]["u"], resumed["solution"]["u"])
    assert merged["attrs"]["problem_module"] == str(module)


@pytest.mark.slow
def test_example_reaches_its_documented_accuracy(tmp_path):
    out = tmp_path / "r"
    assert main(["train", str(EXAMPLES / "helmholtz1d.toml"), "--out", str(out)]) == 0
    assert read_results(out / "run.h5")["training"]["rel_l2"][-1] < 1e-3  # 4.8e-4 measured

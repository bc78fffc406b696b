"""Systems of equations: problems of several fields, from derivative names to results files and MPI."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import fbpinn
from fbpinn.decomposition import Level
from fbpinn.derivatives import parse, split_name
from fbpinn.io import read_results
from fbpinn.model import FBPINN
from fbpinn.problems import Derivs, Problem, check_fields
from test_parallel import mpirun, needs_mpi, write_toml

LOTKA = {"problem": {"name": "lotka_volterra", "t_end": 4.0},
         "decomposition": {"subdomains": [5], "overlap": 2.5}, "network": {"hidden": [8]},
         "training": {"steps": 100, "dtype": "float64", "points": [80], "eval_every": 50, "log_every": 50},
         "test": {"points": [41]}}
ACOUSTIC = {"problem": {"name": "acoustic1d"},
            "decomposition": {"subdomains": [4, 3], "overlap": 1.9}, "network": {"hidden": [8]},
            "training": {"steps": 100, "dtype": "float64", "points": [16, 12], "eval_every": 50, "lr": 3e-3},
            "test": {"points": [21, 11]}}


def split_run(tmp_path, steps: int = 5):
    """``acoustic1d`` trained for ``steps`` steps on 2 ranks with per-rank output: the path of its
    run.h5 (in tmp_path/p), whose solution datasets are virtual over run_p0.h5 and run_p1.h5."""
    cfg = write_toml({**ACOUSTIC, "training": {**ACOUSTIC["training"], "steps": steps}}, tmp_path / "c.toml")
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "p"),
                      "--set", "output.per_rank=true"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "p" / "run.h5"


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fbpinn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- names
def test_derivative_names_of_several_fields():
    axes, fields = ("x", "t"), ("p", "v")
    assert split_name("p", axes, fields) == (0, ())
    assert split_name("v_tx", axes, fields) == (1, (0, 1))
    assert split_name("v_xxxx", axes, fields) == (1, (0, 0, 0, 0))
    assert parse("u_xt", axes) == (0, 1)  # one field: the names of before
    for bad, message in [("u_x", "bad derivative name 'u_x'"), ("p_", "bad derivative name"),
                         ("p_z", "names an axis not in"), ("pv", "bad derivative name"), ("", "bad derivative")]:
        with pytest.raises(ValueError, match=message):
            split_name(bad, axes, fields)


def test_a_derivative_missing_from_needs_is_named():
    stack = torch.arange(6.0).reshape(3, 1, 2)  # orders (), (0,), (0, 0) of fields p, v at one point
    d = Derivs(stack, [(), (0,), (0, 0)], ("x",), ("p", "v"), "mine")
    assert d["v_xx"].item() == 5.0 and d["p_x"].item() == 2.0
    with pytest.raises(KeyError, match=r"problem 'mine' uses v_xxx, which was not computed: add 'v_xxx' to the "
                                       r"problem's needs"):
        d["v_xxx"]


@pytest.mark.parametrize("fields,message", [(("p", "v"), None), (("u",), None), (("u1", "u2", "u3"), None),
                                            ((), "non-empty"), (["p"], "tuple"), (("p_x",), "no '_'"),
                                            (("p", "p"), "twice"), (("error",), "none of"), (("1p",), "letter")])
def test_field_names_are_checked(fields, message):
    bad = check_fields(fields, ("x",))
    assert bad is None if message is None else message in bad


# ----------------------------------------------------------------------------- the model
class Pair(Problem):
    """Two fields on a 2-D box, an ansatz on the first only."""

    axes, fields = ("x", "y"), ("a", "b")
    lo, hi = (0.0, -1.0), (1.0, 1.0)
    has_constraint = True

    def constraint(self, x):
        one = torch.ones_like(x[:, 0])
        a = torch.stack([torch.sin(x[:, 0]) * x[:, 1], 0 * one], dim=1)
        b = torch.stack([torch.tanh(3 * x[:, 0]) * torch.cos(x[:, 1]), one], dim=1)
        return a, b


def test_fast_derivatives_of_every_field_equal_autograd():
    prob = Pair()
    levels = [Level(prob.domain, [3, 4], 1.9), Level(prob.domain, [2, 2], 1.5, "sigmoid")]
    model = FBPINN(prob, levels, [10, 6], "tanh", torch.Generator().manual_seed(3), torch.float64)
    x = prob.domain.grid([9, 11])
    orders = [(0,), (1,), (0, 0), (0, 1), (1, 1)]
    batch = model.prepare(x, orders)
    fast = model(batch)
    assert fast.shape == (len(batch.orders), len(x), 2)
    for f in range(2):
        ref = model.autograd(x, batch.orders, field=f)
        for k, o in enumerate(batch.orders):
            scale = ref[o].abs().max().item()
            assert scale > 0
            assert (fast[k, :, f] - ref[o]).abs().max().item() <= 1e-11 * scale, (f, o)
    # The ansatz of the first field holds at x = 0: a = 0, b = 0 there.
    edge = torch.stack([torch.zeros(7, dtype=torch.float64), torch.linspace(-1, 1, 7, dtype=torch.float64)], 1)
    assert model.value(edge)[:, 0].abs().max() < 1e-15
    assert model.value(edge)[:, 1].abs().max() > 1e-3  # the second is free


def test_fields_are_separate_network_outputs():
    # Two fields of one network equal two single-field networks holding its output columns.
    prob = Pair()
    level = Level(prob.domain, [3, 2], 1.9)
    model = FBPINN(prob, [level], [6], "sin", torch.Generator().manual_seed(1), torch.float64)
    assert model.nets[0].weights[-1].shape == (6, 6, 2)
    x = prob.domain.grid([7, 5])
    both = model.value(x)

    class One(Problem):
        axes, lo, hi = Pair.axes, Pair.lo, Pair.hi

    for f in range(2):
        single = FBPINN(One(), [level], [6], "sin", torch.Generator().manual_seed(1), torch.float64)
        with torch.no_grad():
            for mine, theirs in zip(single.parameters(), model.parameters()):
                mine.copy_(theirs[..., f:f + 1] if theirs is model.nets[0].weights[-1] or
                           theirs is model.nets[0].biases[-1] else theirs)
        a, b = (v[:, f] for v in prob.constraint(x))
        assert torch.allclose(single.value(x)[:, 0] * b + a, both[:, f], rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- training and files
def test_single_field_files_keep_their_layout(tmp_path):
    cfg = write_toml({**LOTKA, "problem": {"name": "cos1d"}, "test": {"points": [50]}}, tmp_path / "c.toml")
    run = fbpinn.train(fbpinn.load_config(cfg))
    assert run.u_test.shape == (50,) and run.u_exact.shape == (50,)
    fbpinn.save_results(tmp_path / "run.h5", run)
    with h5py.File(tmp_path / "run.h5") as f:
        assert sorted(f["solution"]) == ["axis_x", "error", "exact", "u"]
        assert "rel_l2_fields" not in f["training"] and f.attrs["fields"] == "u"


def test_system_trains_and_its_file_holds_every_field(tmp_path):
    cfg = write_toml(LOTKA, tmp_path / "c.toml")
    out = tmp_path / "r"
    proc = run_cli("train", cfg, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "(prey " in proc.stderr + proc.stdout and "predator " in proc.stderr + proc.stdout
    data = read_results(out / "run.h5")
    sol, tr = data["solution"], data["training"]
    assert data["attrs"]["fields"] == "prey,predator"
    assert {"prey", "predator", "reference_prey", "reference_predator", "error_prey", "error_predator"} <= set(sol)
    assert sol["attrs"]["target"] == "reference"
    # The stored per-field and overall errors are those of the stored fields.
    num = [((sol[f] - sol[f"reference_{f}"]) ** 2).sum() for f in ("prey", "predator")]
    den = [(sol[f"reference_{f}"] ** 2).sum() for f in ("prey", "predator")]
    assert tr["rel_l2_fields"].shape == (3, 2)
    assert np.allclose(tr["rel_l2_fields"][-1], np.sqrt(np.array(num) / den), rtol=1e-12)
    assert tr["rel_l2"][-1] == pytest.approx(np.sqrt(sum(num) / sum(den)), rel=1e-12)
    assert np.array_equal(sol["error_prey"], sol["prey"] - sol["reference_prey"])
    # The reference: the exact prey and predator satisfy the system's invariant
    # V = delta x - gamma ln x + beta y - alpha ln y (all rates one): constant along the orbit.
    x, y = sol["reference_prey"], sol["reference_predator"]
    invariant = x - np.log(x) + y - np.log(y)
    assert np.abs(invariant - invariant[0]).max() < 1e-10
    assert sol["reference_prey"][0] == 2.0 and sol["reference_predator"][0] == 1.0
    info = run_cli("info", out / "run.h5")
    assert info.returncode == 0 and "per field: prey" in info.stdout
    plot = run_cli("plot", out / "run.h5")
    assert plot.returncode == 0, plot.stderr
    for name in ("solution_prey.png", "error_prey.png", "solution_predator.png", "error_predator.png",
                 "decomposition.png", "training.png"):
        assert (out / name).stat().st_size > 1000, name
    assert not (out / "solution.png").exists()


def test_system_resume_equals_uninterrupted(tmp_path):
    cfg = write_toml({**LOTKA, "checkpoint": {"every": 40}}, tmp_path / "c.toml")
    whole = run_cli("train", cfg, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    part = run_cli("train", cfg, "--out", tmp_path / "part", "--set", "training.steps=60")
    assert part.returncode == 0, part.stderr
    resumed = run_cli("train", cfg, "--out", tmp_path / "part", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_results(tmp_path / "whole" / "run.h5"), read_results(tmp_path / "part" / "run.h5")
    assert np.array_equal(a["training"]["loss_per_step"], b["training"]["loss_per_step"])
    # The stopped segment evaluated at its last step (60) too; the rows of the steps both evaluated agree.
    assert b["training"]["step"].tolist() == [1, 50, 60, 100]
    assert np.array_equal(a["training"]["rel_l2_fields"], b["training"]["rel_l2_fields"][[0, 1, 3]])
    assert np.array_equal(a["solution"]["predator"], b["solution"]["predator"])


@needs_mpi
@pytest.mark.parametrize("per_rank", [False, True])
def test_mpi_system_equals_serial(tmp_path, per_rank):
    cfg = write_toml(ACOUSTIC, tmp_path / "c.toml")
    serial = fbpinn.train(fbpinn.load_config(cfg))
    assert serial.u_test.shape == (21 * 11, 2)
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "p"),
                      "--set", f"output.per_rank={str(per_rank).lower()}"], timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    path = tmp_path / "p" / "run.h5"
    if per_rank:
        merged = run_cli("merge", path)
        assert merged.returncode == 0, merged.stderr
        with h5py.File(path) as f:
            assert f["solution/v"].is_virtual and f["solution/exact_p"].is_virtual
        path = tmp_path / "p" / "run_merged.h5"
    out = read_results(path)
    ref = np.asarray(serial.loss_per_step)
    assert np.abs(out["training"]["loss_per_step"] - ref).max() <= 1e-9 * np.abs(ref).max()
    for name, arr in serial.model.parameter_arrays().items():
        level, key = name.split("/")
        assert np.abs(out["parameters"][level][key] - arr).max() <= 1e-9 * max(np.abs(arr).max(), 1.0), name
    for f, field in enumerate(("p", "v")):
        assert np.abs(out["solution"][field].ravel() - serial.u_test[:, f]).max() <= 1e-8
        assert np.abs(out["solution"][f"exact_{field}"].ravel() - serial.u_exact[:, f]).max() == 0
    assert out["training"]["rel_l2_fields"][-1] == pytest.approx(serial.history["rel_l2_fields"][-1], rel=1e-9)


def test_acoustic_exact_solution_satisfies_the_system():
    # The exact solution's derivatives (by autograd) make both residuals vanish, and the ansatz
    # gives its initial and wall values.
    prob = fbpinn.registry.get("problem", "acoustic1d")(None, torch.float64)
    x = prob.domain.grid([13, 9]).requires_grad_(True)
    u = prob.exact(x)
    grads = [torch.autograd.grad(u[:, f].sum(), x, create_graph=True)[0] for f in range(2)]
    stack = torch.stack([u, torch.stack([g[:, 0] for g in grads], 1), torch.stack([g[:, 1] for g in grads], 1)])
    d = Derivs(stack[:, :, :], [(), (0,), (1,)], prob.axes, prob.fields)
    for r in prob.residual(x, d):
        assert r.abs().max().item() < 1e-12
    a, b = prob.constraint(x.detach())
    t0 = x[:, 1] == 0
    assert torch.allclose(a[t0], prob.exact(x.detach())[t0], atol=1e-15) and b[t0].abs().max() == 0
    walls = (x[:, 0] == 0) | (x[:, 0] == 1)
    assert a[walls, 1].abs().max() == 0 and b[walls, 1].abs().max() < 1e-15


def test_runge_kutta_reference_agrees_with_scipy():
    # The Lotka-Volterra reference against SciPy's adaptive eighth-order integrator at tight tolerances.
    integrate = pytest.importorskip("scipy.integrate")
    prob = fbpinn.registry.get("problem", "lotka_volterra")(
        fbpinn.registry.get("problem", "lotka_volterra").Params(alpha=1.5, beta=1.0, gamma=3.0, delta=1.0,
                                                                 prey0=10.0, predator0=5.0, t_end=5.0),
        torch.float64)
    axes = prob.domain.grid_axes([101])
    ours = prob.reference(axes).numpy()
    assert ours.shape == (101, 2)
    sol = integrate.solve_ivp(prob.rates, (0.0, 5.0), [10.0, 5.0], method="DOP853", t_eval=axes[0].numpy(),
                              rtol=1e-13, atol=1e-13)
    assert sol.success
    assert np.abs(ours - sol.y.T).max() <= 1e-8 * np.abs(sol.y).max()


def test_system_with_observations_of_both_fields(tmp_path, monkeypatch):
    # A data term whose residual and target have one column per field, and observations of both
    # fields stored in and read back from the results file.
    from fbpinn import registry
    from fbpinn.problems import Term
    from fbpinn.registry import register

    monkeypatch.setitem(registry._REGISTRIES, "problem", dict(registry._REGISTRIES["problem"]))  # undone after

    base = fbpinn.registry.get("problem", "lotka_volterra")

    @register("problem", "lotka_volterra_observed")
    class Observed(base):
        """Lotka-Volterra with observations of both fields."""

        def terms(self, generator):
            t = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)[:, None]
            values = torch.stack([2 + 0 * t[:, 0], 1 + t[:, 0]], dim=1)
            self._obs = (t, values)
            return [Term("data", t.to(self.dtype), ("prey", "predator"),
                         lambda x, d: torch.stack([d["prey"], d["predator"]], dim=1), 10.0, values.to(self.dtype))]

        def observations(self):
            return getattr(self, "_obs", None)

    cfg = fbpinn.load_config(data={**{k: dict(v) for k, v in LOTKA.items()},
                                   "problem": {"name": "lotka_volterra_observed", "t_end": 4.0}})
    run = fbpinn.train(cfg)
    assert run.term_names == ["physics", "data"]
    fbpinn.save_results(tmp_path / "run.h5", run)
    data = read_results(tmp_path / "run.h5")
    assert data["observations"]["u"].shape == (7, 2)
    assert np.array_equal(data["observations"]["u"][:, 1], 1 + np.linspace(0.5, 2.0, 7))
    assert data["training"]["loss_terms"].shape == (3, 2) and (data["training"]["loss_terms"][:, 1] > 0).all()

"""torch.compile of the training step: one compilation holds for every draw of the points and
every slab with the same layout (the number of subdomain groups in each pass).  Dynamo runs with its eager backend here (the graph capture and its guards, which
decide about recompiling, without the C++ code generation), so the test needs no compiler."""

import pytest
import torch
from torch._dynamo.utils import counters

import fbpinn
from fbpinn.trainer import Trainer


def marching(resample_every: int, compile_: bool = True):
    return fbpinn.load_config(data={
        "problem": {"name": "wave1d", "t_max": 1.0},
        "decomposition": {"subdomains": [2, 4], "overlap": 1.5},
        "network": {"hidden": [8]},
        "training": {"steps": 24, "points": [40, 40], "log_every": 10**6, "eval_every": 10**6,
                     "compile": compile_, "resample_every": resample_every, "sampler": "uniform", "lbfgs_steps": 4},
        "schedule": {"kind": "time_marching", "slabs": 3, "steps_per_slab": 8},
        "test": {"points": [9, 11]},
    })


def compiled_graphs(monkeypatch, cfg, mark: bool = True) -> tuple[int, set, set]:
    """Graphs dynamo captured over a whole run, the point counts the run saw, and the layouts of
    its batches (the number of subdomain groups in each pass: a new layout is a new graph)."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda f, **options: real(f, backend="eager"))
    if not mark:
        monkeypatch.setattr(Trainer, "_mark_dynamic", lambda self: None)
    torch._dynamo.reset()
    counters.clear()
    trainer = Trainer(cfg)
    seen, layouts = set(), set()
    for step in range(1, cfg.training.steps + 1):
        trainer.step(step)
        seen.add(trainer.n_points())
        layouts.add(tuple(len(p.batch.blocks) for p in trainer.passes))
    return counters["stats"]["unique_graphs"], seen, layouts


def test_one_compilation_for_every_draw_and_slab_of_a_layout(monkeypatch):
    graphs, seen, layouts = compiled_graphs(monkeypatch, marching(resample_every=2))
    assert len(seen) >= 6  # the point count changed with the draws and the slabs
    assert graphs == len(layouts) <= 2


def test_without_the_dynamic_sizes_each_new_size_compiles_again(monkeypatch):
    # What the marking prevents: the first graph is specialised to the first draw's sizes.
    graphs, _, layouts = compiled_graphs(monkeypatch, marching(resample_every=2), mark=False)
    assert graphs > len(layouts)


def test_compiled_run_equals_the_eager_one(monkeypatch):
    # The loss as a tensor-held scale and rows taken by the terms' sizes change no number.
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda f, **options: real(f, backend="eager"))
    torch._dynamo.reset()
    runs = []
    for compile_ in (True, False):
        cfg = marching(resample_every=2, compile_=compile_)
        trainer = Trainer(cfg)
        runs.append([trainer.step(step)[0] for step in range(1, cfg.training.steps + 1)])
    assert runs[0] == pytest.approx(runs[1], rel=1e-6)


def test_loss_and_gradient_are_one_graph_equal_to_the_loss_only_compilation(monkeypatch):
    # training.compile traces torch.autograd.grad into the loss's graph: the backward pass is not a
    # second graph behind the autograd engine.  The parameters it reaches equal the ones reached by
    # compiling the loss alone and back-propagating, step for step.
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda f, **options: real(f, backend="eager"))
    cfg = fbpinn.load_config(data={
        "problem": {"name": "cos1d"}, "decomposition": {"subdomains": [6], "overlap": 2.5},
        "network": {"hidden": [8, 8]},
        "training": {"steps": 6, "points": [80], "dtype": "float64", "log_every": 10**6, "eval_every": 10**6,
                     "compile": True},
        "test": {"points": [50]}})
    runs, params = [], []
    for fused in (True, False):
        torch._dynamo.reset()
        counters.clear()
        trainer = Trainer(cfg)
        assert trainer.fused
        trainer.fused = fused
        runs.append([trainer.step(step)[0] for step in range(1, cfg.training.steps + 1)])
        params.append([p.detach().clone() for p in trainer.params])
        if fused:
            assert counters["stats"]["unique_graphs"] == 1
            assert trainer._compiled is None  # the loss-only compilation was not used
    assert runs[0] == pytest.approx(runs[1], rel=1e-12)
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_a_failed_compilation_of_loss_and_gradient_falls_back_to_the_loss_alone(monkeypatch, caplog):
    real = torch.compile

    def compile_(f, **options):
        if f.__name__ == "_gradients_impl":
            def broken():
                raise RuntimeError("cannot trace this\nsecond line")
            return broken
        return real(f, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_)
    data = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4], "overlap": 2.5},
            "network": {"hidden": [8]}, "test": {"points": [20]},
            "training": {"steps": 3, "points": [40], "dtype": "float64", "compile": False}}
    eager = Trainer(fbpinn.load_config(data=data))
    expected = [eager.step(s)[0] for s in range(1, 4)]
    trainer = Trainer(fbpinn.load_config(data={**data, "training": {**data["training"], "compile": True}}))
    with caplog.at_level("WARNING", logger="fbpinn.trainer"):
        losses = [trainer.step(s)[0] for s in range(1, 4)]
    assert not trainer.fused and trainer._compiled is not None
    messages = [r.getMessage() for r in caplog.records]
    assert "torch.compile with a C++ wrapper failed (cannot trace this); compiling without" in messages
    assert any("failed (cannot trace this); compiling the loss alone" in m for m in messages)
    assert losses == pytest.approx(expected, rel=1e-12)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads, omp, points, expect_one", [
    (0, None, [40], True),     # 120 pairs of width 8: one thread
    (2, None, [40], False),    # the config's choice stands
    (0, "2", [40], False),     # so does OMP_NUM_THREADS
    (0, None, [2000], False),  # 6,000 pairs of width 8: large enough for more threads
])
def test_a_small_step_runs_on_one_thread_when_threads_are_automatic(monkeypatch, restore_threads, threads, omp,
                                                                     points, expect_one):
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    torch.set_num_threads(2)
    cfg = fbpinn.load_config(data={
        "problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4], "overlap": 2.5},
        "network": {"hidden": [8]}, "test": {"points": [20]},
        "training": {"steps": 3, "points": points, "threads": threads}})
    trainer = Trainer(cfg)
    assert trainer.step_size() == trainer.pairs() * 8
    assert (trainer.step_size() < Trainer.SMALL_STEP) == (points == [40])
    assert (torch.get_num_threads() == 1) == expect_one


def test_sizes_stay_static_only_when_the_points_never_change():
    base = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4], "overlap": 2.5},
            "network": {"hidden": [8]}, "test": {"points": [20]}, "training": {"steps": 4, "points": [40]}}
    assert not Trainer(fbpinn.load_config(data=base)).sizes_change()
    for training in ({"sampler": "uniform"}, {"sampler": "sobol", "resample_every": 2},
                     {"sampler": "uniform", "adaptive": 0.5, "resample_every": 2}):
        data = {**base, "training": {**base["training"], **training}}
        assert Trainer(fbpinn.load_config(data=data)).sizes_change(), training
    assert Trainer(marching(resample_every=0)).sizes_change()  # the slabs hold different points


def test_a_fixed_grid_compiles_once_with_static_sizes(monkeypatch):
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda f, **options: real(f, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    cfg = fbpinn.load_config(data={
        "problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4], "overlap": 2.5},
        "network": {"hidden": [8]}, "test": {"points": [20]},
        "training": {"steps": 6, "points": [40], "compile": True}})
    trainer = Trainer(cfg)
    marked = []
    monkeypatch.setattr(torch._dynamo, "maybe_mark_dynamic", lambda t, d: marked.append(d))
    trainer._prepare_terms()
    assert marked == []
    for step in range(1, 7):
        trainer.step(step)
    assert counters["stats"]["unique_graphs"] == 1

"""torch.compile of the training step: one compilation holds for every draw of the points and
every slab with the same layout (the number of subdomain groups in each pass).  Dynamo runs with its eager backend here (the graph capture and its guards, which
decide about recompiling, without the C++ code generation), so the test needs no compiler."""

import pytest
import torch

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


def compiled_graphs(monkeypatch, graphs, cfg, mark: bool = True) -> tuple[dict, set, set]:
    """Graphs captured over a whole run for each compiled function (the Adam steps' whole step, the
    L-BFGS phase's loss and gradient; see the without_compiler fixture), the point counts the run saw,
    and the layouts of its batches (the number of subdomain groups in each pass: a new layout is a
    new graph)."""
    if not mark:
        monkeypatch.setattr(Trainer, "_mark_dynamic", lambda self: None)
    trainer = Trainer(cfg)
    seen, layouts = set(), set()
    for step in range(1, cfg.training.steps + 1):
        trainer.step(step)
        seen.add(trainer.n_points())
        layouts.add(tuple(len(p.batch.blocks) for p in trainer.passes))
    return graphs, seen, layouts


def test_one_compilation_for_every_draw_and_slab_of_a_layout(monkeypatch, without_compiler):
    graphs, seen, layouts = compiled_graphs(monkeypatch, without_compiler, marching(resample_every=2))
    assert len(seen) >= 6  # the point count changed with the draws and the slabs
    assert set(graphs) == {"_whole_impl", "_gradients_impl"}  # Adam steps, L-BFGS steps (never traced:
    assert graphs["_whole_impl"] == len(layouts) <= 2  # the points change); each slab's new Adam
    assert graphs["_gradients_impl"] <= len(layouts)  # compiles nothing again


def test_without_the_dynamic_sizes_each_new_size_compiles_again(monkeypatch, without_compiler):
    # What the marking prevents: the first graph is specialised to the first draw's sizes.
    graphs, _, layouts = compiled_graphs(monkeypatch, without_compiler, marching(resample_every=2), mark=False)
    assert graphs["_whole_impl"] > len(layouts)


def test_compiled_run_equals_the_eager_one(without_compiler):
    # The loss as a tensor-held scale and rows taken by the terms' sizes change no number.
    runs = []
    for compile_ in (True, False):
        cfg = marching(resample_every=2, compile_=compile_)
        trainer = Trainer(cfg)
        runs.append([trainer.step(step)[0] for step in range(1, cfg.training.steps + 1)])
    assert runs[0] == pytest.approx(runs[1], rel=1e-6)


def small(problem: str = "cos1d", **training):
    return fbpinn.load_config(data={
        "problem": {"name": problem}, "decomposition": {"subdomains": [6], "overlap": 2.5},
        "network": {"hidden": [8, 8]},
        "training": {"steps": 6, "points": [80], "dtype": "float64", "log_every": 10**6, "eval_every": 10**6,
                     "compile": True, **training},
        "test": {"points": [50]}})


MODES = {"traced": "traced", "whole": "_whole_impl", "gradient": "_gradients_impl", "loss": "_loss_impl"}


@pytest.mark.parametrize("problem, extra", [("cos1d", {}), ("harmonic_oscillator_inverse", {"lr_decay": 0.5})])
def test_each_compiled_step_is_one_graph_equal_to_the_loss_only_compilation(without_compiler, problem, extra):
    # training.compile on fixed points traces the whole step once (loss, gradient, Adam update) with
    # the points as constants; without the trace, dynamo compiles the whole step, or the loss and
    # its gradient (torch.autograd.grad traced into the loss's graph), or the loss alone.  The
    # parameters each reaches are the same, step for step, with a learning rate that changes every
    # step and a learned constant of the problem among the parameters.
    cfg = small(problem, **extra)
    runs, params = [], []
    for mode, graph in MODES.items():
        torch._dynamo.reset()
        without_compiler.clear()
        trainer = Trainer(cfg)
        assert trainer.fused and trainer.whole and trainer.trace and not trainer.sizes_change()
        trainer.trace, trainer.whole, trainer.fused = mode == "traced", mode in ("traced", "whole"), mode != "loss"
        runs.append([trainer.step(step)[0] for step in range(1, cfg.training.steps + 1)])
        params.append([p.detach().clone() for p in trainer.params])
        assert without_compiler == {graph: 1}, mode
    assert len(params[0]) > 2 + 2 * (problem != "cos1d")  # every layer, and the learned constant
    for other in range(1, len(MODES)):
        assert runs[0] == pytest.approx(runs[other], rel=1e-12)
        for a, b in zip(params[0], params[other]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert max(float((a - b.detach()).abs().max()) for a, b in zip(params[0], Trainer(cfg).params)) > 1e-4  # trained


def test_the_traced_step_compiled_by_inductor_equals_the_eager_run():
    # The real compiler (C++ kernels, with the C++ wrapper for a step this small).
    cfg = small("harmonic_oscillator", steps=4)
    eager = Trainer(small("harmonic_oscillator", steps=4, compile=False))
    traced = Trainer(cfg)
    expected = [eager.step(s)[0] for s in range(1, 5)]
    got = [traced.step(s)[0] for s in range(1, 5)]
    assert traced._traced is not None and traced.trace
    assert got == pytest.approx(expected, rel=1e-12)
    for a, b in zip(traced.params, eager.params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-11, atol=1e-13)


def test_the_traced_step_is_traced_again_for_new_points_and_resumes_exactly(without_compiler):
    cfg = small(steps=8)
    straight = Trainer(cfg)
    expected = [straight.step(s)[0] for s in range(1, 9)]
    without_compiler.clear()
    first = Trainer(cfg)
    [first.step(s) for s in range(1, 5)]
    assert without_compiler == {"traced": 1}
    state = first.state_dict(4)
    second = Trainer(cfg)
    second.load_state_dict(state)  # prepares its points: a new trace
    got = [second.step(s)[0] for s in range(5, 9)]
    assert without_compiler == {"traced": 2}
    assert got == expected[4:]
    for a, b in zip(second.params, straight.params):
        assert torch.equal(a, b)


def laplace_trace(cfg) -> torch.fx.GraphModule:
    trainer = Trainer(cfg)
    trainer._lr = torch.zeros((), dtype=torch.float64)
    return trainer._trace()


def constants_only(graph: torch.fx.GraphModule) -> list:
    """The operations of ``graph`` that read none of its inputs, even through other operations."""
    reads = set(graph.graph.find_nodes(op="placeholder"))
    for node in graph.graph.nodes:
        if any(a in reads for a in node.all_input_nodes):
            reads.add(node)
    return [n for n in graph.graph.nodes if n.op == "call_function" and n.all_input_nodes and n not in reads]


def test_the_traced_step_computes_nothing_from_its_constants_alone(monkeypatch, without_compiler):
    # The 2-D Laplace problem's source term is six sines of the point coordinates: computed once
    # when the step is traced, not at every step.  Where the folding fails (a private function of
    # torch's), the step is traced without it and gives the same numbers.
    import torch._inductor.constant_folding

    cfg = fbpinn.load_config(data={
        "problem": {"name": "laplace2d_multiscale"}, "decomposition": {"subdomains": [3, 3], "overlap": 1.9},
        "network": {"hidden": [8]}, "test": {"points": [10, 10]},
        "training": {"steps": 5, "points": [12, 12], "dtype": "float64", "compile": True}})
    folded = laplace_trace(cfg)
    assert constants_only(folded) == []
    assert not any(n.target == torch.ops.aten.sin.default for n in folded.graph.nodes)
    trainer = Trainer(cfg)
    runs = [[trainer.step(s)[0] for s in range(1, 6)]]
    assert without_compiler == {"traced": 1}

    def fails(graph, constraint_fn=None):
        raise RuntimeError("cannot fold")
    monkeypatch.setattr(torch._inductor.constant_folding, "constant_fold", fails)
    unfolded = laplace_trace(cfg)
    assert sum(n.target == torch.ops.aten.sin.default for n in constants_only(unfolded)) == 6
    trainer = Trainer(cfg)
    runs.append([trainer.step(s)[0] for s in range(1, 6)])
    assert without_compiler == {"traced": 2}
    assert runs[0] == pytest.approx(runs[1], rel=1e-12)


@pytest.mark.parametrize("broken", [("traced",), ("traced", "_whole_impl"),
                                    ("traced", "_whole_impl", "_gradients_impl")])
def test_a_failed_compilation_falls_back_a_stage_at_a_time(monkeypatch, without_compiler, caplog, broken):
    # The traced step that fails goes through dynamo; the whole step that fails to compile there
    # leaves the update outside; the loss and gradient that fail leave the gradient to the autograd
    # engine.  Each first tries the C++ wrapper.
    import fbpinn.trainer

    def fails(*args, **kwargs):
        raise RuntimeError("cannot trace this\nsecond line")

    real_compile, real_traced = torch.compile, fbpinn.trainer.compile_traced
    monkeypatch.setattr(torch, "compile", lambda f, **options: fails if f.__name__ in broken else
                        real_compile(f, **options))
    monkeypatch.setattr(fbpinn.trainer, "compile_traced", fails if "traced" in broken else real_traced)
    data = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4], "overlap": 2.5},
            "network": {"hidden": [8]}, "test": {"points": [20]},
            "training": {"steps": 3, "points": [40], "dtype": "float64", "compile": False}}
    eager = Trainer(fbpinn.load_config(data=data))
    expected = [eager.step(s)[0] for s in range(1, 4)]
    trainer = Trainer(fbpinn.load_config(data={**data, "training": {**data["training"], "compile": True}}))
    with caplog.at_level("WARNING", logger="fbpinn.trainer"):
        losses = [trainer.step(s)[0] for s in range(1, 4)]
    assert not trainer.trace
    assert trainer.whole == (len(broken) == 1) and trainer.fused == (len(broken) < 3)
    assert (trainer._compiled is not None) == (len(broken) == 3)
    messages = [r.getMessage() for r in caplog.records]
    assert "torch.compile with a C++ wrapper failed (cannot trace this); compiling without" in messages
    fallbacks = ["torch.compile of the traced step failed (cannot trace this); compiling it through dynamo",
                 "torch.compile of the step with its update failed (cannot trace this); updating the parameters "
                 "outside the compiled step",
                 "torch.compile of the loss and its gradient failed (cannot trace this); compiling the loss alone"]
    assert [m for m in messages if m in fallbacks] == fallbacks[:len(broken)]
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


def test_a_fixed_grid_compiles_once_with_static_sizes(monkeypatch, without_compiler):
    cfg = fbpinn.load_config(data={
        "problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4], "overlap": 2.5},
        "network": {"hidden": [8]}, "test": {"points": [20]},
        "training": {"steps": 6, "points": [40], "compile": True}})
    trainer = Trainer(cfg)
    marked = []
    monkeypatch.setattr(torch._dynamo, "maybe_mark_dynamic", lambda t, d: marked.append(d))
    trainer._prepare_terms()
    assert marked == []
    trainer.trace = False  # dynamo's compilation, not the trace (which fixes every size)
    for step in range(1, 7):
        trainer.step(step)
    assert without_compiler == {"_whole_impl": 1}

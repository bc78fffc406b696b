"""Shared helpers for the tests."""

import pytest
import torch

import fbpinn


def make_config(problem: dict, subdomains, hidden=(16,), steps=100, points=None, **training):
    """A validated config from a few settings (float64 unless given)."""
    training = {"steps": steps, "dtype": "float64", "log_every": 10**6, **training}
    if points is not None:
        training["points"] = list(points)
    return fbpinn.load_config(data={
        "problem": problem,
        "decomposition": {"subdomains": list(subdomains), "overlap": training.pop("overlap", 2.99)},
        "network": {"hidden": list(hidden)},
        "training": training,
    })


def config_error(data: dict, *overrides: str) -> str:
    """The message of the ConfigError that ``data`` with ``overrides`` raises (the test fails if none)."""
    import pytest

    from fbpinn.config import ConfigError

    with pytest.raises(ConfigError) as e:
        fbpinn.load_config(data=data, overrides=list(overrides))
    return str(e.value)


def blow_up_at(monkeypatch, step: int) -> None:
    """Make training's parameters NaN just before ``step``, as if an update had blown up."""
    from fbpinn.trainer import Trainer

    original = Trainer.step

    def patched(self, n, *args, **kwargs):
        if n == step:
            self.model.nets[0].weights[0].data.fill_(float("nan"))
        return original(self, n, *args, **kwargs)

    monkeypatch.setattr(Trainer, "step", patched)


@pytest.fixture
def without_compiler(monkeypatch):
    """torch.compile with dynamo's eager backend and the traced whole step run as its graph: every
    path of training.compile is taken (graph capture, guards, the trace) with no C++ code generated.
    Yields the graphs captured so far, by compiled function ("traced" for the traced step)."""
    import fbpinn.trainer

    real = torch.compile
    graphs = {}

    def compile_(f, **options):
        def backend(gm, inputs):
            graphs[f.__name__] = graphs.get(f.__name__, 0) + 1
            return gm.forward
        return real(f, backend=backend)

    def compile_traced(graph, inputs, cpp_wrapper):
        graphs["traced"] = graphs.get("traced", 0) + 1
        return graph

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(fbpinn.trainer, "compile_traced", compile_traced)
    torch._dynamo.reset()
    yield graphs


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield

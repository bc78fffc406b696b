"""The CUDA-graph replay of a compiled step: its bookkeeping, with stand-ins for CUDA's graph and
its recording (a recorded call runs nothing; a replay runs what was recorded).  The real graph is
tested on a GPU in test_gpu.py."""

import contextlib
import logging

import pytest
import torch

from fbpinn.cudagraph import CapturedStep


class Recorder:
    """CUDA's graph, recording context and streams, for a program that knows how to be recorded."""

    def __init__(self, wrong: bool = False, fails: bool = False):
        self.active, self.records, self.replays, self.wrong, self.fails = None, 0, 0, wrong, fails

    def graph(self):
        recorder = self

        class Graph:
            def replay(self):
                recorder.replays += 1
                self.run()
        return Graph()

    @contextlib.contextmanager
    def capture(self, graph):
        if self.fails:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        self.active, self.records = graph, self.records + 1
        try:
            yield
        finally:
            self.active = None


class Program:
    """A step: p -= lr * sign(p); returns the sum of p.  Recorded, it writes into a fixed output."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def update(self, p, lr, out):
        p.sub_(lr * torch.sign(p) * (2.0 if self.recorder.wrong else 1.0))
        out.copy_(p.sum().reshape(1))

    def __call__(self, p, lr):
        graph = self.recorder.active
        if graph is not None:  # recording: nothing runs
            out = torch.zeros(1, dtype=p.dtype)
            graph.run = lambda: self.update(p, lr, out)
            return out
        out = torch.zeros(1, dtype=p.dtype)
        self.update(p, lr, out)
        return out


def run(recorder: Recorder, calls: int, replace_at: int | None = None):
    p, lr = torch.linspace(-1.0, 2.0, 7, dtype=torch.float64), torch.tensor(0.01, dtype=torch.float64)
    step = CapturedStep(Program(recorder), warmup=2, graph=recorder.graph, capture=recorder.capture,
                        stream=lambda: None)
    outs = []
    for k in range(calls):
        if k == replace_at:
            p = p.clone()  # a new tensor: a new address
        outs.append(float(step(p, lr)))
    return outs, p, step


def plain(calls: int):
    p = torch.linspace(-1.0, 2.0, 7, dtype=torch.float64)
    outs = []
    for _ in range(calls):
        p -= 0.01 * torch.sign(p)
        outs.append(float(p.sum()))
    return outs, p


def test_the_step_is_recorded_once_after_the_warmup_and_replayed():
    recorder = Recorder()
    outs, p, step = run(recorder, 8)
    expected, q = plain(8)
    assert outs == pytest.approx(expected, rel=1e-14) and torch.allclose(p, q, rtol=0, atol=1e-14)
    assert recorder.records == 1 and step.calls == 2
    assert recorder.replays == 8 - 2  # the recorded call is replayed too (after its check)


def test_an_input_at_a_new_address_records_the_graph_again():
    recorder = Recorder()
    outs, p, _ = run(recorder, 8, replace_at=5)
    assert outs == pytest.approx(plain(8)[0], rel=1e-14)
    assert recorder.records == 2


def test_a_replay_that_differs_from_the_program_is_dropped(caplog):
    recorder_wrong = Recorder(wrong=True)  # the replay steps twice as far

    class Half(Program):  # the program itself steps normally; only the recorded run is wrong
        def __call__(self, p, lr):
            if self.recorder.active is not None:
                return super().__call__(p, lr)
            self.recorder.wrong = False
            try:
                return super().__call__(p, lr)
            finally:
                self.recorder.wrong = True

    p, lr = torch.linspace(-1.0, 2.0, 7, dtype=torch.float64), torch.tensor(0.01, dtype=torch.float64)
    step = CapturedStep(Half(recorder_wrong), warmup=2, graph=recorder_wrong.graph, capture=recorder_wrong.capture,
                        stream=lambda: None)
    with caplog.at_level(logging.WARNING, logger="fbpinn.cudagraph"):
        outs = [float(step(p, lr)) for _ in range(6)]
    expected, q = plain(6)
    assert outs == pytest.approx(expected, rel=1e-14) and torch.allclose(p, q, rtol=0, atol=1e-14)
    assert not step.replaying and recorder_wrong.replays == 1
    assert "the CUDA graph's step differs from the program's; the step runs without it" in caplog.messages


def test_a_recording_that_fails_leaves_the_program_as_it_is(caplog):
    recorder = Recorder(fails=True)
    with caplog.at_level(logging.WARNING, logger="fbpinn.cudagraph"):
        outs, p, step = run(recorder, 5)
    assert outs == pytest.approx(plain(5)[0], rel=1e-14)
    assert not step.replaying and recorder.replays == 0
    assert caplog.messages == ["recording the step as a CUDA graph failed (operation not permitted when stream is "
                               "capturing); the step runs without it"]


def test_the_trainer_replays_its_traced_step_with_inputs_that_keep_their_addresses(monkeypatch, without_compiler):
    # The traced step of a run on fixed points, replayed through a stand-in graph that records by
    # running the program and undoing its updates (a real recording runs nothing) and replays by
    # running it again into the recorded output: one recording for the whole run (the inputs keep
    # their addresses from step to step), the first replay checked, and the run's numbers those of
    # the program called directly, the loss of every step included, though the next replay
    # overwrites the output before the loss of an ordinary step is read.
    import fbpinn
    from fbpinn.trainer import Trainer

    class Graph:
        def replay(self):
            self.output.copy_(self.program(*self.inputs))

    recorded = []

    def replayed(trainer, program):
        @contextlib.contextmanager
        def capture(graph):
            inputs = trainer._step_inputs()
            saved = [t.detach().clone() for t in inputs]
            real = step.program

            def record(*args):
                graph.program, graph.inputs = real, args
                graph.output = real(*args)
                return graph.output
            step.program = record
            try:
                yield
            finally:
                step.program = real
                with torch.no_grad():
                    for t, s in zip(inputs, saved):
                        t.copy_(s)
                recorded.append(len(recorded))

        step = CapturedStep(program, warmup=2, graph=Graph, capture=capture, stream=lambda: None)
        return step

    cfg = fbpinn.load_config(data={
        "problem": {"name": "harmonic_oscillator"}, "decomposition": {"subdomains": [5], "overlap": 2.5},
        "network": {"hidden": [8]}, "test": {"points": [20]},
        "training": {"steps": 12, "points": [60], "dtype": "float64", "compile": True, "lr_decay": 0.5}})
    plain = Trainer(cfg)
    expected = [plain.step(s)[0] for s in range(1, 13)]
    monkeypatch.setattr(Trainer, "_replayed", replayed)
    trainer = Trainer(cfg)
    got = {}
    for s in range(1, 13):  # ordinary steps, as in a run: each loss is read after the next step's replay
        trainer.step(s, wait=s % 4 == 0)
        got.update((n, float(terms.sum())) for n, terms in trainer.arrived())
    step = trainer._traced
    assert isinstance(step, CapturedStep) and step.replaying and step.calls == 2 and recorded == [0]
    assert sorted(got) == list(range(1, 13))
    assert [got[s] for s in range(1, 13)] == pytest.approx(expected, rel=1e-13)
    for a, b in zip(trainer.params, plain.params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-13, atol=1e-15)

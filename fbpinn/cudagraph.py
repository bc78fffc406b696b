"""A compiled training step replayed as one CUDA graph.

On a GPU a small step is bound by launching its kernels, not by running them: a few hundred
launches of microseconds each.  A CUDA graph records those launches once and replays them with
one call.  The traced step of :meth:`fbpinn.trainer.Trainer._traced_step` suits this well: its
only inputs are the parameters, Adam's moments and step counts and the learning rate, tensors
that it updates in place and that therefore keep their addresses from step to step; the points
are constants of the program.

:class:`CapturedStep` runs the program normally for its first calls (``warmup``; they are real
training steps), then records one call and replays it from then on.  The first replay is checked
against a normal call on copies of the inputs: where the two differ the graph is dropped and the
program runs as it is (logged), so a program that cannot be replayed costs speed, not results.  A
change of an input's address (a tensor replaced rather than updated) records the graph again.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class CapturedStep:
    """``program(*inputs)`` replayed as a CUDA graph after ``warmup`` normal calls.

    Parameters
    ----------
    program : a function of tensors that updates some of them in place and returns a tensor.
    warmup : normal calls before the graph is recorded (CUDA libraries set up their workspaces
        on the first calls; a graph may not record that).
    graph, capture, stream : CUDA's graph type, its recording context and a stream factory
        (replaced by stand-ins to test the bookkeeping without a GPU).
    """

    def __init__(self, program, warmup: int = 2, graph=None, capture=None, stream=None):
        self.program, self.warmup = program, warmup
        self._graph_type = graph or torch.cuda.CUDAGraph
        self._capture = capture or torch.cuda.graph
        self._stream = stream or torch.cuda.Stream
        self.graph, self.output, self.addresses = None, None, None
        self.calls = 0  # normal calls so far
        self.replaying = True  # False once a replay disagreed with the program, or recording failed

    def __call__(self, *inputs) -> torch.Tensor:
        if not self.replaying:
            return self.program(*inputs)
        addresses = [t.data_ptr() for t in inputs]
        if self.graph is not None and addresses == self.addresses:
            self.graph.replay()
            return self.output
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            return self._on_side_stream(inputs)
        return self._record(inputs, addresses)

    def _on_side_stream(self, inputs) -> torch.Tensor:
        if not torch.cuda.is_available():
            return self.program(*inputs)
        side, main = self._stream(), torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self.program(*inputs)
        main.wait_stream(side)
        return out

    def _record(self, inputs, addresses) -> torch.Tensor:
        """Record a call, check its replay against a normal call on copies, and return its output."""
        copies = [t.detach().clone() for t in inputs]
        try:
            graph = self._graph_type()
            with self._capture(graph):
                output = self.program(*inputs)
        except Exception as e:  # an operation CUDA graphs cannot hold
            return self._give_up(f"recording the step as a CUDA graph failed ({str(e).splitlines()[0]})", inputs)
        # Recording ran nothing: the inputs are as before.  A normal call on the copies, then the replay
        # (equal up to the order of atomic additions; a replay that misses an update is off by a step).
        expected = self.program(*copies).clone()
        graph.replay()
        if not (close(output, expected) and all(close(t, c) for t, c in zip(inputs, copies))):
            # The inputs may hold the replay's update: restore the normal call's.
            with torch.no_grad():
                for t, c in zip(inputs, copies):
                    t.copy_(c)
            return self._give_up("the CUDA graph's step differs from the program's", None, expected)
        self.graph, self.output, self.addresses = graph, output, addresses
        logger.info("the step is replayed as one CUDA graph")
        return output

    def _give_up(self, why: str, inputs, output=None) -> torch.Tensor:
        logger.warning("%s; the step runs without it", why)
        self.replaying, self.graph, self.output = False, None, None
        return self.program(*inputs) if output is None else output


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to rounding: far closer than one Adam step (about 1e-3 of a parameter) moves them."""
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-7))

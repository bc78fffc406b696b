"""The fast forward-mode derivative path against nested autograd (float64)."""

import pytest
import torch

from fbpinn.decomposition import Level
from fbpinn.derivatives import closure, parse
from fbpinn.model import FBPINN
from fbpinn.problems import Problem
from fbpinn.registry import names


class Plain(Problem):
    """A problem with no ansatz (u = u_hat)."""

    def __init__(self, lo, hi, scale=1.0):
        super().__init__()
        self.lo, self.hi, self.axes = tuple(lo), tuple(hi), tuple("xyz"[: len(lo)])
        self.default_output_scale = scale


class Ansatz(Plain):
    has_constraint = True

    def constraint(self, x):
        a = torch.sin(x[:, 0]) * x[:, -1] ** 2
        b = torch.tanh(2 * x[:, 0]) * torch.cos(x[:, -1])
        return a, b


def check(model, x, orders, tol=1e-10):
    batch = model.prepare(x, orders)
    fast = model(batch)
    ref = model.autograd(x, batch.orders)
    for k, o in enumerate(batch.orders):
        scale = ref[o].abs().max().item()
        assert scale > 0
        err = (fast[k, :, 0] - ref[o]).abs().max().item() / scale
        assert err <= tol, f"derivative {o}: relative error {err:.2e}"
    return fast


@pytest.mark.parametrize("window", names("window"))
@pytest.mark.parametrize("activation", ["tanh", "sin", "gelu"])
def test_1d(window, activation):
    prob = Ansatz([0.0], [1.0], scale=0.5)
    level = Level(prob.domain, [6], 2.5, window)
    model = FBPINN(prob, [level], [16, 16], activation, torch.Generator().manual_seed(0), torch.float64)
    x = torch.linspace(0, 1, 301, dtype=torch.float64)[:, None]
    check(model, x, [(0,), (0, 0)])


@pytest.mark.parametrize("problem_cls", [Plain, Ansatz])
def test_2d_mixed(problem_cls):
    prob = problem_cls([0.0, -1.0], [2.0, 1.0])
    level = Level(prob.domain, [4, 3], 1.9)
    model = FBPINN(prob, [level], [12, 12], "tanh", torch.Generator().manual_seed(1), torch.float64)
    x = torch.rand(400, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x * torch.tensor([2.0, 2.0], dtype=torch.float64) + torch.tensor([0.0, -1.0], dtype=torch.float64)
    check(model, x, [(0,), (1,), (0, 0), (0, 1), (1, 1)])


def test_3d_and_multilevel():
    prob = Ansatz([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    levels = [Level(prob.domain, [1, 1, 1], 1.9), Level(prob.domain, [2, 3, 2], 1.9)]
    model = FBPINN(prob, levels, [8], "tanh", torch.Generator().manual_seed(3), torch.float64)
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    check(model, x, [(0, 2), (1, 1), (2,)])


@pytest.mark.parametrize("hidden", [[], [9], [9, 7], [6, 8, 5]])
@pytest.mark.parametrize("orders", [[(0,), (2,)], [(0, 1), (2, 2)], [(1, 1), (0,)]])
def test_every_depth_and_closure_of_order_two(hidden, orders):
    # The order-two path folds the first layer into the second (its derivative rows are constant):
    # no hidden layer, one (the fold meets the output layer), two and three (layers after the fold).
    prob = Ansatz([0.0, -1.0, 0.0], [1.0, 1.0, 2.0])
    level = Level(prob.domain, [2, 3, 2], 1.7)
    model = FBPINN(prob, [level], hidden, "gelu", torch.Generator().manual_seed(8), torch.float64)
    x = torch.rand(150, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    check(model, x * torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) - torch.tensor([0.0, 1.0, 0.0]), orders)


def test_subset_of_subdomains_is_a_partial_sum():
    # Holding a subset (as a process does under MPI) sums only those subdomains:
    # the two halves add up to the whole.
    prob = Plain([0.0], [1.0])
    level = Level(prob.domain, [8], 2.5)
    x = torch.linspace(0, 1, 101, dtype=torch.float64)[:, None]
    full = FBPINN(prob, [level], [8], "tanh", torch.Generator().manual_seed(5), torch.float64)
    parts = [FBPINN(prob, [level], [8], "tanh", torch.Generator().manual_seed(5), torch.float64, held=[ids])
             for ids in (range(0, 3), range(3, 8))]
    total = sum(m(m.prepare(x, [(0, 0)])) for m in parts)
    assert torch.allclose(total, full(full.prepare(x, [(0, 0)])), rtol=0, atol=1e-12)


def test_frozen_subdomains_summed_once_give_the_same_solution_and_gradients():
    # A batch that sums the frozen subdomains at preparation gives the values and derivatives of
    # the plain batch, and the same gradients for the others; the frozen ones get none.
    prob = Ansatz([0.0, 0.0], [1.0, 1.0])
    level = Level(prob.domain, [3, 4], 1.9)
    model = FBPINN(prob, [level], [10], "tanh", torch.Generator().manual_seed(6), torch.float64)
    x = torch.rand(300, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    frozen = torch.arange(12) % 4 < 2  # the first two centres along the second axis
    orders = [(0,), (1,), (0, 0), (1, 1)]
    results = []
    for mask in (None, frozen):
        model.zero_grad()
        batch = model.prepare(x, orders, mask)
        u = model(batch)
        (u * u).sum().backward()
        results.append((u.detach(), model.nets[0].weights[0].grad.clone(), batch))
    (u_plain, g_plain, plain), (u_cached, g_cached, cached) = results
    assert cached.fixed is not None and cached.fixed.abs().max() > 0.1
    assert cached.pairs() < plain.pairs()
    assert torch.allclose(u_cached, u_plain, rtol=0, atol=1e-12)
    assert torch.allclose(g_cached[~frozen], g_plain[~frozen], rtol=1e-10, atol=1e-12)
    assert g_plain[frozen].abs().max() > 0 and g_cached[frozen].abs().max() == 0


def test_names_and_closure():
    assert parse("u", ("x", "t")) == ()
    assert parse("u_tx", ("x", "t")) == (0, 1)
    assert parse("u_tt", ("x", "t")) == (1, 1)
    with pytest.raises(ValueError, match="axis"):
        parse("u_z", ("x", "t"))
    assert closure([(0, 1)]) == [(), (0,), (1,), (0, 1)]
    with pytest.raises(ValueError, match="order 7"):
        closure([(0,) * 7])


def test_product_rule_written_out_while_compiling_equals_the_gathered_form():
    # While torch.compile traces, the Leibniz sums are written out term by term (no gathers):
    # traced with dynamo's eager backend (no compiler needed), they equal the gathered form.
    from fbpinn.derivatives import ProductRule

    orders = closure([(0, 1), (1, 1, 2), (0, 0)])
    rule = ProductRule(orders)
    gen = torch.Generator().manual_seed(10)
    f, g = (torch.randn(len(orders), 5, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    torch._dynamo.reset()
    traced = torch.compile(rule.apply, backend="eager", fullgraph=True)(f, g)
    assert torch.allclose(traced, rule.apply(f, g), rtol=1e-14, atol=1e-14)
    # (u v)_yyz has 2^3 = 8 terms: 6 distinct pairs, those with one y and with yz twice
    k = orders.index((1, 1, 2))
    assert sum(c for _, c in rule.terms[k]) == 8 and len(rule.terms[k]) == 6


@pytest.mark.parametrize("hidden", [[9], [9, 7]])
def test_thin_products_written_out_while_compiling_equal_the_eager_path_and_gradients(hidden):
    # While torch.compile traces, products with at most NARROW output columns (the output layer of
    # [9]'s fold takes the 2 first- and the 3 second-order entries) are broadcast sums: traced with
    # dynamo's eager backend, the fields and the parameters' gradients equal the eager batched GEMMs.
    import fbpinn.derivatives as D

    prob = Plain([0.0, -1.0], [1.0, 1.0])
    level = Level(prob.domain, [3, 2], 1.7)
    model = FBPINN(prob, [level], hidden, "tanh", torch.Generator().manual_seed(3), torch.float64)
    x = torch.rand(90, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1
    batch = model.prepare(x.abs(), [(0, 0), (1, 1), (0, 1)])
    assert len(batch.orders) <= 1 + 2 + 3 and batch.orders != [()]

    def loss_and_grads():
        u = model(batch)
        loss = (u * u).sum()
        return u.detach(), torch.autograd.grad(loss, list(model.parameters()))

    eager = loss_and_grads()
    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        traced = torch.compile(loss_and_grads, backend="eager")()
    calls = []
    real = D._matmul
    D._matmul = lambda a, w: calls.append(w.shape[2]) or real(a, w)
    try:
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            torch._dynamo.reset()
            torch.compile(loss_and_grads, backend="eager")()
    finally:
        D._matmul = real
    assert any(1 < n <= D.NARROW for n in calls) == (len(hidden) == 1)  # the thin path (only after the fold)
    torch.testing.assert_close(traced[0], eager[0], rtol=1e-12, atol=1e-13)
    for a, b in zip(traced[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)

"""Derivatives of order three to six in the forward-mode path, against nested autograd (float64).

The stacked networks alone, the activations, the windows and the whole model (several
overlapping subdomains, two levels, a hard-constraint ansatz) for every activation and
shipped window, a window that defines its value only, and the order-two path left as it was.
"""

import itertools
import math

import pytest
import torch

from fbpinn.decomposition import Level
from fbpinn.derivatives import (MAX_ORDER, Activation, FaaDiBruno, TaylorTables, _layer, autograd_derivatives,
                                closure, mlp_taylor)
from fbpinn.model import FBPINN
from fbpinn.windows import CosineWindow, SigmoidWindow, Window
from test_derivatives import Plain  # no ansatz: u = u_hat on the box [lo, hi]

F64 = torch.float64
WINDOWS = ["cosine", "sigmoid"]
ACTIVATIONS = ["tanh", "sin", "gelu"]


class Ansatz(Plain):
    """A problem with a hard-constraint ansatz u = A + B u_hat whose parts vary along every axis."""

    has_constraint = True

    def constraint(self, x):
        a = torch.sin(x[:, 0]) * x[:, -1] ** 2 + torch.cos(x.sum(1))
        b = torch.tanh(2 * x[:, 0]) * torch.cos(x[:, -1]) + 0.5 * torch.sin(x.sum(1))
        return a, b


def check(model, x, orders, tol=1e-10):
    """The fast path's derivatives at ``x`` equal the autograd reference to ``tol`` (relative to
    each derivative's largest magnitude); returns the worst relative error."""
    batch = model.prepare(x, orders)
    fast = model(batch)
    ref = model.autograd(x, batch.orders)
    worst = 0.0
    for k, o in enumerate(batch.orders):
        scale = ref[o].abs().max().item()
        assert scale > 0, f"derivative {o} vanishes: the check would be empty"
        err = (fast[k].reshape(ref[o].shape) - ref[o]).abs().max().item() / scale
        assert err <= tol, f"derivative {o}: relative error {err:.2e}"
        worst = max(worst, err)
    return worst


def edge_points(levels, d: int, lo: float, hi: float, eps: float = 1e-6) -> torch.Tensor:
    """Coordinates just inside and just outside every subdomain edge along axis ``d``, in [lo, hi]."""
    edges = []
    for lv in levels:
        ax = lv.axes[d]
        for c in ax.centres.tolist():
            edges += [c - ax.half_width, c + ax.half_width]
    pts = [e + s * eps for e in edges for s in (-1, 1)]
    return torch.tensor(sorted(p for p in pts if lo < p < hi), dtype=F64)


def random_points(n, lo, hi, seed):
    """``n`` uniform points in the box [lo, hi]."""
    lo, hi = torch.tensor(lo, dtype=F64), torch.tensor(hi, dtype=F64)
    return lo + (hi - lo) * torch.rand(n, len(lo), generator=torch.Generator().manual_seed(seed), dtype=F64)


def model_of(problem, levels, hidden, activation, seed=0):
    return FBPINN(problem, levels, hidden, activation, torch.Generator().manual_seed(seed), F64)


# ----------------------------------------------------------------------------- closure and tables
def test_closure_accepts_up_to_max_order_and_names_the_limit_beyond():
    assert MAX_ORDER == 6
    assert closure([(1, 0, 0)]) == [(), (0,), (1,), (0, 0), (0, 1), (0, 0, 1)]
    assert len(closure([(0,) * MAX_ORDER])) == MAX_ORDER + 1
    with pytest.raises(ValueError, match=rf"order {MAX_ORDER + 1} .*MAX_ORDER = {MAX_ORDER}"):
        closure([(0,) * (MAX_ORDER + 1)])


def test_faa_di_bruno_tables_of_the_fourth_derivative():
    # d4 sigma(a) = s' a4 + s''(4 a1 a3 + 3 a2^2) + s'''(6 a1^2 a2) + s'''' a1^4 (1-D, entries 0..4).
    jet = FaaDiBruno(closure([(0, 0, 0, 0)]))
    rows = {(r, out + 1, tuple(ix), c) for r, (index, coef, outs) in jet.terms.items()
            for ix, c, out in zip(index, coef, outs)}
    assert {row for row in rows if row[1] == 4} == {(2, 4, (1, 3), 4), (2, 4, (2, 2), 3), (3, 4, (1, 1, 2), 6),
                                                   (4, 4, (1, 1, 1, 1), 1)}
    # Mixed: d_xy sigma = s' a_xy + s'' a_x a_y; d_xxy adds s''(a_xx a_y + 2 a_x a_xy) + s''' a_x^2 a_y.
    orders = closure([(0, 0, 1)])
    pos = {o: k for k, o in enumerate(orders)}
    jet = FaaDiBruno(orders)
    rows = {(r, out + 1, tuple(ix), c) for r, (index, coef, outs) in jet.terms.items()
            for ix, c, out in zip(index, coef, outs)}
    x, y, xx, xy, xxy = (pos[o] for o in [(0,), (1,), (0, 0), (0, 1), (0, 0, 1)])
    assert {row for row in rows if row[1] == xxy} == {(2, xxy, tuple(sorted((xx, y))), 1),
                                                     (2, xxy, tuple(sorted((x, xy))), 2), (3, xxy, (x, x, y), 1)}
    assert {row for row in rows if row[1] == xy} == {(2, xy, (x, y), 1)}


def test_order_two_closures_keep_the_order_two_tables():
    assert TaylorTables(closure([(0, 1), (1, 1)])).general is None
    assert TaylorTables(closure([(0, 0, 1)])).general is not None


# ----------------------------------------------------------------------------- activations and windows
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_derivatives_to_max_order(name):
    act = Activation(name)
    a = torch.linspace(-4, 4, 201, dtype=F64)
    got = act.derivatives(a, MAX_ORDER)
    assert len(got) == MAX_ORDER + 1
    for k, g in enumerate(act(a)):  # the order-two values exactly as __call__ gives them
        assert torch.equal(got[k], g)
    x = a.detach().requires_grad_(True)
    f = act.value(x)
    for k in range(MAX_ORDER + 1):
        assert torch.allclose(got[k], f, rtol=1e-12, atol=1e-12 * f.abs().max().item()), (name, k)
        f = torch.autograd.grad(f.sum(), x, create_graph=True)[0]


@pytest.mark.parametrize("cls", [CosineWindow, SigmoidWindow])
def test_window_closed_forms_equal_nested_autograd(cls):
    win = cls(2.5)
    z = torch.cat([torch.linspace(-1.3, 1.3, 263, dtype=F64), torch.tensor([-1 + 1e-7, 1 - 1e-7], dtype=F64)])
    got = win.derivatives(z, MAX_ORDER)
    ref = win.autograd_derivatives(z, MAX_ORDER)
    assert len(got) == MAX_ORDER + 1
    for k, (g, r) in enumerate(zip(got, ref)):
        assert r.abs().max() > 0
        assert torch.allclose(g, r, rtol=0, atol=1e-12 * r.abs().max().item()), (cls.__name__, k)
        assert (g[z.abs() >= 1] == 0).all()
    for g, c in zip(got, win(z)):
        assert torch.equal(g, c)


class BumpWindow(Window):
    """A user-defined window that defines its value alone: exp(1 - 1 / (1 - z^2)) on |z| < 1."""

    def value(self, z):
        inside = z.abs() < 1
        zs = torch.where(inside, z, torch.zeros_like(z))
        return torch.exp(1 - 1 / (1 - zs * zs)) * inside.to(z.dtype)


def test_a_window_with_its_value_alone_gets_every_order():
    win = BumpWindow(2.0)
    z = torch.linspace(-1.2, 1.2, 97, dtype=F64)
    phi, d1, d2 = win(z)
    inner = z.abs() < 1
    e = torch.exp(1 - 1 / (1 - z[inner] ** 2))
    assert torch.allclose(phi[inner], e, rtol=1e-14, atol=0) and (phi[~inner] == 0).all()
    assert torch.allclose(d1[inner], e * -2 * z[inner] / (1 - z[inner] ** 2) ** 2, rtol=1e-12, atol=1e-14)
    assert len(win.derivatives(z, 5)) == 6
    with pytest.raises(NotImplementedError, match="Empty"):
        type("Empty", (Window,), {})(2.0)(z)


@pytest.mark.parametrize("window", WINDOWS)
def test_normalised_axis_windows_beyond_order_two(window):
    # The normalised 1-D windows and their derivatives against autograd of w = phi / sum(phi).
    level = Level(Plain([0.0], [1.0]).domain, [5], 2.3, window)
    x = torch.cat([torch.linspace(0, 1, 57, dtype=F64), edge_points([level], 0, 0.0, 1.0)])
    _, _, w = level.axis_windows(0, x, MAX_ORDER)
    _, _, w2 = level.axis_windows(0, x, 2)
    for a, b in zip(w, w2):
        assert torch.allclose(a, b, rtol=0, atol=1e-13 * b.abs().max().item())
    for m in range(w[0].shape[1]):
        ref = autograd_derivatives(lambda y: level.axis_windows(0, y[:, 0], 0)[2][0][:, m], x[:, None],
                                   [(0,) * k for k in range(1, MAX_ORDER + 1)])
        for k in range(MAX_ORDER + 1):
            r = ref[(0,) * k]
            assert torch.allclose(w[k][:, m], r, rtol=0, atol=1e-11 * max(r.abs().max().item(), 1.0)), (m, k)


# ----------------------------------------------------------------------------- the stacked networks
def stacked_net(dim, hidden, n_out, j, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = [dim, *hidden, n_out]
    weights = [torch.randn(j, a, b, generator=g, dtype=F64) / a**0.5 for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [0.3 * torch.randn(j, 1, 1, b, generator=g, dtype=F64) for b in sizes[1:]]
    return weights, biases


def all_orders(dim, n):
    return [o for r in range(1, n + 1) for o in itertools.combinations_with_replacement(range(dim), r)]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dim, top", [(1, MAX_ORDER), (2, 4), (3, 4)])
def test_stacked_networks_alone(activation, dim, top):
    # Every derivative up to order ``top`` of every output of three stacked networks.
    j, m = 3, 9
    weights, biases = stacked_net(dim, [7, 6], 2, j, seed=dim)
    act = Activation(activation)
    orders = closure(all_orders(dim, top))
    x = torch.randn(j * m, dim, generator=torch.Generator().manual_seed(10 + dim), dtype=F64)
    t_in = torch.zeros(j, len(orders), m, dim, dtype=F64)
    t_in[:, 0] = x.reshape(j, m, dim)
    for k, o in enumerate(orders):
        if len(o) == 1:
            t_in[:, k, :, o[0]] = 1.0
    fast = mlp_taylor(weights, biases, t_in, TaylorTables(orders), act)  # (J, K, M, 2)
    for out in range(2):
        ref = autograd_derivatives(
            lambda y: mlp_taylor(weights, biases, y.reshape(j, 1, m, dim), TaylorTables([()]), act)[:, 0, :, out]
            .reshape(-1), x, orders)
        for k, o in enumerate(orders):
            r = ref[o]
            err = (fast[:, k, :, out].reshape(-1) - r).abs().max().item() / r.abs().max().item()
            assert err <= 1e-11, f"{activation} output {out} derivative {o}: relative error {err:.2e}"


# ----------------------------------------------------------------------------- the whole model
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("window", WINDOWS)
def test_model_1d_third_and_fourth_order(window, activation):
    prob = Ansatz([0.0], [1.0], scale=0.5)
    levels = [Level(prob.domain, [2], 1.9, window), Level(prob.domain, [6], 2.5, window)]
    model = model_of(prob, levels, [10, 10], activation)
    x = torch.cat([torch.linspace(0, 1, 81, dtype=F64), edge_points(levels, 0, 0.0, 1.0)])[:, None]
    check(model, x, [(0, 0, 0), (0, 0, 0, 0)])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("window", WINDOWS)
def test_model_2d_mixed_to_fourth_order(window, activation):
    prob = Ansatz([0.0, -1.0], [2.0, 1.0])
    levels = [Level(prob.domain, [1, 1], 1.9, window), Level(prob.domain, [4, 3], 1.9, window)]
    model = model_of(prob, levels, [8, 8], activation, seed=1)
    edges = edge_points(levels, 0, 0.0, 2.0)
    near = torch.stack([edges, torch.linspace(-0.9, 0.9, len(edges), dtype=F64)], 1)
    x = torch.cat([random_points(60, [0.0, -1.0], [2.0, 1.0], seed=2), near])
    check(model, x, [(0, 0, 1), (0, 1, 1), (0, 0, 1, 1), (0, 0, 0, 1), (0, 1, 1, 1), (1, 1, 1, 1), (0, 0, 0, 0)])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("window", WINDOWS)
def test_model_3d_mixed(window, activation):
    prob = Ansatz([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    levels = [Level(prob.domain, [1, 1, 1], 1.9, window), Level(prob.domain, [2, 3, 2], 1.9, window)]
    model = model_of(prob, levels, [8], activation, seed=3)
    edges = edge_points(levels, 1, 0.0, 1.0)
    near = torch.stack([torch.full_like(edges, 0.3), edges, torch.full_like(edges, 0.55)], 1)
    x = torch.cat([random_points(50, [0.0] * 3, [1.0] * 3, seed=4), near])
    check(model, x, [(0, 1, 2), (0, 0, 1, 2), (0, 0, 0, 0), (1, 1, 2, 2), (0, 2, 2, 2)])


@pytest.mark.parametrize("problem_cls", [Plain, Ansatz])
def test_model_fifth_and_sixth_order(problem_cls):
    prob = problem_cls([0.0, 0.0], [1.0, 2.0])
    levels = [Level(prob.domain, [1, 1], 1.9, "sigmoid"), Level(prob.domain, [3, 3], 2.2, "cosine")]
    model = model_of(prob, levels, [8, 8], "tanh", seed=5)
    x = random_points(40, [0.0, 0.0], [1.0, 2.0], seed=6)
    check(model, x, [(0, 0, 0, 0, 0, 0), (0, 0, 0, 1, 1), (0, 0, 0, 1, 1, 1), (1, 1, 1, 1, 1, 1)], tol=1e-9)


def test_model_with_a_user_window_that_gives_its_value_alone():
    prob = Ansatz([0.0, 0.0], [1.0, 1.0])
    levels = [Level(prob.domain, [1, 1], 1.9), Level(prob.domain, [3, 2], 2.0)]
    for lv in levels:
        lv.window = BumpWindow(lv.window.overlap)  # instead of a registered name: no registry state changes
    model = model_of(prob, levels, [8], "gelu", seed=7)
    x = random_points(60, [0.0, 0.0], [1.0, 1.0], seed=8)
    check(model, x, [(0, 0), (0, 1)])  # the order-two path, from autograd of the value
    check(model, x, [(0, 0, 0, 1), (0, 0, 1, 1), (1, 1, 1)])


# ----------------------------------------------------------------------------- order two as before
def test_order_two_path_equals_the_per_layer_loop():
    # Order-two closures fold the first layer into the second; the per-layer formulas on the
    # (J, K, M, H) entries, recomputed here, and the general path agree with it to rounding.
    # The inputs are as the model builds them: constant first-order rows, zero second-order ones.
    weights, biases = stacked_net(2, [6, 5], 1, 2, seed=9)
    act = Activation("tanh")
    orders = closure([(0, 1), (0, 0), (1, 1)])
    t_in = torch.zeros(2, len(orders), 7, 2, dtype=F64)
    t_in[:, 0] = torch.randn(2, 7, 2, generator=torch.Generator().manual_seed(11), dtype=F64)
    t_in[:, 1, :, 0], t_in[:, 2, :, 1] = 1.7, torch.tensor([0.6, 2.5], dtype=F64)[:, None]
    fast = mlp_taylor(weights, biases, t_in, TaylorTables(orders), act)
    t = t_in
    for layer, (w, b) in enumerate(zip(weights, biases)):
        t = _layer(t, w)
        t = torch.cat([t[:, :1] + b, t[:, 1:]], dim=1)
        if layer == len(weights) - 1:
            break
        y, d1, d2 = act(t[:, 0])
        t = torch.cat([y.unsqueeze(1), d1.unsqueeze(1) * t[:, 1:3],
                       d1.unsqueeze(1) * t[:, 3:6] + d2.unsqueeze(1) * t[:, [1, 1, 2]] * t[:, [1, 2, 2]]], dim=1)
    assert fast.shape == t.shape and fast[:, 3:].abs().max() > 0.1
    assert torch.allclose(fast, t, rtol=1e-13, atol=1e-13)
    tables = TaylorTables(orders)
    tables.general = FaaDiBruno(orders)
    general = mlp_taylor(weights, biases, t_in, tables, act)
    assert torch.allclose(general, fast, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("window", WINDOWS)
def test_order_two_windows_are_the_original_formulas(window):
    level = Level(Plain([0.0], [1.0]).domain, [4], 2.1, window)
    x = torch.linspace(0, 1, 41, dtype=F64)
    idx, _, w = level.axis_windows(0, x, 2)
    ax = level.axes[0]
    z = (x[:, None] - ax.centres[idx]) / ax.half_width
    phi, p1, p2 = level.window(z)
    p1, p2 = p1 * (1.0 / ax.half_width), p2 * (1.0 / ax.half_width) ** 2
    s, s1, s2 = phi.sum(1, keepdim=True), p1.sum(1, keepdim=True), p2.sum(1, keepdim=True)
    assert torch.equal(w[0], phi / s)
    assert torch.equal(w[1], p1 / s - phi * s1 / s**2)
    assert torch.equal(w[2], p2 / s - 2 * p1 * s1 / s**2 - phi * s2 / s**2 + 2 * phi * s1**2 / s**3)
    assert math.isclose(w[0].sum(1).min().item(), 1.0, rel_tol=1e-14)

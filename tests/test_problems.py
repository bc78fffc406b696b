"""Every registered problem: its exact solution satisfies its equation."""

import math

import pytest
import torch

from fbpinn.derivatives import autograd_derivatives, closure, parse
from fbpinn.problems import Derivs, Problem, all_problems


WITH_EXACT = [n for n, cls in sorted(all_problems().items())
              if cls().exact(torch.zeros(1, cls().dim, dtype=torch.float64)) is not None]


def test_problems_without_exact_solution_have_a_reference():
    for name, cls in all_problems().items():
        if name not in WITH_EXACT:
            assert cls.reference is not Problem.reference and cls.reference_name, name


@pytest.mark.parametrize("name", WITH_EXACT)
def test_exact_solution_has_zero_residual(name):
    problem = all_problems()[name](dtype=torch.float64)
    for pname, p in problem.parameters().items():  # learnable constants at their true values
        p.data.fill_(getattr(problem.p, pname))
    x = problem.domain.grid([257] * problem.dim)
    keys = closure([parse(n, problem.axes, problem.fields) for n in problem.needs])
    n_fields = len(problem.fields)
    columns = [autograd_derivatives(lambda y: problem.exact(y).reshape(len(y), n_fields)[:, f], x, keys)
               for f in range(n_fields)]
    stack = torch.stack([torch.stack([d[o] for o in keys]) for d in columns], dim=-1)  # (K, N, F)
    r = problem.residual(x, Derivs(stack, keys, problem.axes, problem.fields, name))
    r = torch.stack(list(r), dim=-1) if isinstance(r, (tuple, list)) else r
    scale = max(stack.abs().max().item(), 1.0)
    assert r.abs().max().item() < 1e-9 * scale * max(getattr(problem.p, "k", 1.0), 1.0)


WITH_ANSATZ = [n for n in sorted(all_problems()) if all_problems()[n]().has_constraint]


def _constraint(problem, x):
    """The ansatz's A and B at ``x`` as (N, F): one column per field."""
    a, b = problem.constraint(x)
    return a.reshape(len(x), -1), b.reshape(len(x), -1)


def _sign_changes(g, lo: float, hi: float, n: int = 64) -> list[float]:
    """Points strictly inside (lo, hi) where the function ``g`` of a 1-D tensor changes sign,
    bisected to machine precision."""
    s = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    v = g(s)
    roots = []
    for i in range(1, n + 1):
        if v[i] == 0 and i < n:
            roots.append(s[i].item())
        elif v[i - 1] * v[i] < 0:
            a, b = s[i - 1].item(), s[i].item()
            for _ in range(200):
                m = 0.5 * (a + b)
                if m in (a, b):
                    break
                gm = g(torch.tensor([m], dtype=torch.float64))[0]
                if gm == 0:
                    a = b = m
                    break
                a, b = (a, m) if (g(torch.tensor([a], dtype=torch.float64))[0] * gm < 0) else (m, b)
            roots.append(0.5 * (a + b))
    return roots


def _pinned(problem, field: int):
    """Where the ansatz pins ``field``: (axis, value, points) of every plane ``x_axis = value`` on
    which B vanishes -- a side of the domain, or a plane inside it across which B changes sign
    (``cos1d`` pins u(0) = 0).  The points are a grid on the plane."""
    box = problem.domain
    on_plane = box.grid([5] * box.dim)
    base = torch.tensor([[lo + 0.37 * (hi - lo) for lo, hi in zip(box.lo, box.hi)]], dtype=torch.float64)
    found = []
    for d in range(box.dim):
        def along(s, d=d):
            x = base.repeat(len(s), 1)
            x[:, d] = s
            return _constraint(problem, x)[1][:, field]

        for value in [box.lo[d], box.hi[d], *_sign_changes(along, box.lo[d], box.hi[d])]:
            x = on_plane.clone()
            x[:, d] = value
            if _constraint(problem, x)[1][:, field].abs().max().item() < 1e-12:
                found.append((d, value, x))
    return found


@pytest.mark.parametrize("name", WITH_ANSATZ)
def test_constraint_holds_for_any_network(name):
    # With a hard ansatz, u = A + B u_hat meets the conditions whatever u_hat is: B vanishes where the
    # ansatz pins a field (found on the problem's own domain, wherever it lies), and there A is the
    # exact solution.  Elsewhere B is nonzero: the networks are free there.
    problem = all_problems()[name](dtype=torch.float64)
    box = problem.domain
    x = torch.stack(torch.meshgrid(*[torch.tensor([lo + f * (hi - lo) for f in (0.137, 0.481, 0.862)],
                                                  dtype=torch.float64) for lo, hi in zip(box.lo, box.hi)],
                                   indexing="ij"), -1).reshape(-1, box.dim)
    _, b = _constraint(problem, x)
    assert (b.abs() > 0).all(), f"{name}: B vanishes inside the domain"
    for field in range(b.shape[1]):
        pinned = _pinned(problem, field)
        assert pinned, f"{name}: B of field {field} vanishes on no side or plane of {box.lo} .. {box.hi}"
        if name in WITH_EXACT:
            for d, value, x in pinned:
                a = _constraint(problem, x)[0][:, field]
                exact = problem.exact(x).reshape(len(x), -1)[:, field]
                assert (a - exact).abs().max().item() < 1e-10 * max(exact.abs().max().item(), 1.0), (field, d, value)


def test_oscillator_exact_values():
    problem = all_problems()["harmonic_oscillator"]()
    t = torch.tensor([[0.0], [0.5]], dtype=torch.float64)
    u = problem.exact(t)
    assert abs(u[0].item() - 1.0) < 1e-15
    # delta = 2, omega = sqrt(396): a hand-checked value at t = 0.5
    import math
    w = math.sqrt(396.0)
    phi = math.atan(-2.0 / w)
    assert abs(u[1].item() - math.exp(-1.0) * math.cos(0.5 * w + phi) / math.cos(phi)) < 1e-15


def test_problems_registry_lists_the_seed_problems():
    from fbpinn import registry

    own = {n for n, ep in registry.entry_points("problem").items() if ep.dist.name == "fbpinn"}
    assert {"harmonic_oscillator", "harmonic_oscillator_inverse", "cos1d"} <= own <= set(all_problems())
    for name in own:
        cls = all_problems()[name]
        assert cls.__doc__ and cls.__module__.startswith("fbpinn.problems") and cls.name == name


def test_wave1d_exact_solution_reflects_from_fixed_ends():
    problem = all_problems()["wave1d"](dtype=torch.float64)
    t = torch.linspace(0, problem.p.t_max, 41, dtype=torch.float64)
    ends = torch.cat([torch.stack([torch.full_like(t, e), t], 1) for e in (-1.0, 1.0)])
    assert problem.exact(ends).abs().max().item() < 1e-12  # fixed ends
    # At t = 2/c the two halves have reflected once (sign flipped) and met again at x0.
    x = torch.tensor([[problem.p.x0, 2.0 / problem.p.c], [problem.p.x0, 0.0]], dtype=torch.float64)
    u = problem.exact(x)
    assert abs(u[0].item() + 1.0) < 1e-12 and abs(u[1].item() - 1.0) < 1e-12
    a, b = problem.constraint(ends)  # the ansatz pins the ends whatever the network gives
    assert a.abs().max().item() < 1e-12 and b.abs().max().item() < 1e-12


def test_burgers_reference_meets_the_conditions_and_the_ansatz():
    problem = all_problems()["burgers"](dtype=torch.float64)
    axes = problem.domain.grid_axes([65, 11])
    ref = problem.reference(axes)  # (65, 11)
    assert ref.shape == (65, 11)
    assert (ref[:, 0] + torch.sin(torch.pi * axes[0])).abs().max().item() < 1e-12  # u(x, 0) = -sin(pi x)
    assert ref[[0, -1], :].abs().max().item() < 1e-10  # u(+-1, t) = 0
    x = problem.domain.grid([65, 11])
    a, b = problem.constraint(x)
    on_edges = (x[:, 1] == 0) | (x[:, 0].abs() == 1)
    assert (a[on_edges] - ref.reshape(-1)[on_edges]).abs().max().item() < 1e-10
    assert b[on_edges].abs().max().item() < 1e-12


def test_wave2d_reference_starts_from_the_pulse_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FBPINN_CACHE", str(tmp_path))
    problem = all_problems()["wave2d"](all_problems()["wave2d"].Params(velocity="mixture", reference_h=0.04))
    axes = problem.domain.grid_axes([21, 21, 5])
    ref = problem.reference(axes)
    assert ref.shape == (21, 21, 5)
    gx, gy = torch.meshgrid(axes[0], axes[1], indexing="ij")
    assert (ref[:, :, 0] - problem.initial(gx, gy)).abs().max().item() < 1e-12
    assert 0 < ref[:, :, -1].abs().max().item() < 0.5  # the pulse has spread out
    assert len(list(tmp_path.glob("wave-*.h5"))) == 1
    again = problem.reference(axes)  # read back from the cache
    assert torch.equal(again, ref)
    other = all_problems()["wave2d"](all_problems()["wave2d"].Params(velocity="constant", reference_h=0.04))
    assert not torch.allclose(other.reference(axes), ref)  # the medium is part of the cache key
    assert len(list(tmp_path.glob("wave-*.h5"))) == 2


def _absorbing_residual(order, side, direction):
    """The points of one side and the absorbing term's residual of a wave (a function of points) there."""
    cls = all_problems()["wave2d"]
    problem = cls(cls.Params(boundary_points=[9, 5], absorbing_order=order), dtype=torch.float64)  # c0 = 1
    term = problem.terms(torch.Generator())[0]
    x = term.x[(term.x[:, side] * direction) >= 1]
    assert len(x) == 9 * 5
    keys = closure([parse(n, problem.axes) for n in term.needs])

    def residual(wave):
        d = autograd_derivatives(wave, x, keys)
        return term.residual(x, Derivs(torch.stack([d[o] for o in keys]).unsqueeze(-1), keys, problem.axes))

    return x, residual


def _pulse(s):
    return torch.exp(-((s - 0.3) ** 2) / 0.02)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("side, direction", [(0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0)])
def test_wave2d_absorbing_condition_passes_outgoing_and_stops_incoming_waves(order, side, direction):
    _, residual = _absorbing_residual(order, side, direction)
    outgoing = lambda y: _pulse(direction * y[:, side] - y[:, 2])  # noqa: E731  travels outwards through that side
    incoming = lambda y: _pulse(-direction * y[:, side] - y[:, 2] + 2)  # noqa: E731
    assert residual(outgoing).abs().max().item() < 1e-12
    assert residual(incoming).abs().max().item() > 1.0


@pytest.mark.parametrize("side, direction", [(0, 1.0), (1, -1.0)])
def test_wave2d_second_order_absorbing_condition_is_closer_at_oblique_incidence(side, direction):
    # u = f(n.x cos(theta) + s sin(theta) - t) leaves at theta to the outward normal n.  The first-order
    # residual is (1 - cos theta) u_t, the second-order one (1 - cos theta - sin^2 theta / 2) u_tt:
    # 0.0789 and 0.0031 times the wave's own scale for theta = 0.4.
    theta = 0.4
    wave = lambda y: _pulse(direction * y[:, side] * math.cos(theta) + y[:, 1 - side] * math.sin(theta)  # noqa: E731
                            - y[:, 2])
    for order, k in ((1, 1 - math.cos(theta)), (2, 1 - math.cos(theta) - math.sin(theta) ** 2 / 2)):
        x, residual = _absorbing_residual(order, side, direction)
        scale = autograd_derivatives(wave, x, [(2,) * order])[(2,) * order]  # u_t or u_tt
        assert scale.abs().max().item() > 1.0
        assert torch.allclose(residual(wave), k * scale, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("velocity", ["constant", "mixture"])
def test_wave2d_taylor_ansatz_meets_the_initial_conditions_and_the_equation_at_t0(velocity):
    # A = exp(-(t/fade)^4) (u0 + t^2/2 c^2 lap u0): A(0) = u0, A_t(0) = 0, and A_tt(0) = c^2 lap u0
    # = c^2 lap A(0), so A's residual vanishes at t = 0; the pulse ansatz's is
    # -2 u0 / sigma^2 - c^2 lap u0 there.
    cls = all_problems()["wave2d"]
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(200, 2, generator=g, dtype=torch.float64) * 0.8 - 0.4  # near the pulse
    x = torch.cat([xy, torch.zeros(200, 1, dtype=torch.float64)], 1)
    orders = [(), (2,), (2, 2), (0, 0), (1, 1)]
    r2, w2 = (xy ** 2).sum(1), 0.1 ** 2
    u0 = torch.exp(-r2 / (2 * w2))
    c2 = cls(cls.Params(velocity=velocity), dtype=torch.float64).speed(xy[:, 0], xy[:, 1]) ** 2
    lap = u0 * (r2 / w2 - 2) / w2
    for ansatz, expect in [("taylor", 0 * u0), ("pulse", -2 * u0 / 0.3 ** 2 - c2 * lap)]:
        problem = cls(cls.Params(velocity=velocity, ansatz=ansatz, sigma=0.3), dtype=torch.float64)
        a, b = (autograd_derivatives(lambda y: problem.constraint(y)[part], x, orders) for part in (0, 1))
        for d, first in ((a, u0), (b, 0 * u0)):
            assert (d[()] - first).abs().max().item() < 1e-12
            assert d[(2,)].abs().max().item() < 1e-12
        d = a
        residual = d[(2, 2)] - c2 * (d[(0, 0)] + d[(1, 1)])
        assert (residual - expect).abs().max().item() < 1e-9 * u0.max().item() / 0.3 ** 2

"""Every registered problem: its exact solution satisfies its equation."""

import pytest
import torch

from fbpinn.derivatives import autograd_derivatives, parse
from fbpinn.problems import Derivs, all_problems


@pytest.mark.parametrize("name", sorted(all_problems()))
def test_exact_solution_has_zero_residual(name):
    problem = all_problems()[name](dtype=torch.float64)
    for pname, p in problem.parameters().items():  # learnable constants at their true values
        p.data.fill_(getattr(problem.p, pname))
    x = problem.domain.grid([257] * problem.dim)
    orders = [parse(n, problem.axes) for n in problem.needs]
    d = autograd_derivatives(problem.exact, x, orders)
    stack = torch.stack([d[o] for o in sorted(d, key=lambda o: (len(o), o))])
    r = problem.residual(x, Derivs(stack, sorted(d, key=lambda o: (len(o), o)), problem.axes))
    scale = max(stack.abs().max().item(), 1.0)
    assert r.abs().max().item() < 1e-9 * scale * max(getattr(problem.p, "k", 1.0), 1.0)


WITH_ANSATZ = [n for n, cls in sorted(all_problems().items()) if cls().has_constraint]


@pytest.mark.parametrize("name", WITH_ANSATZ)
def test_constraint_holds_for_any_network(name):
    # With a hard ansatz, u = A + B u_hat meets the conditions whatever u_hat is.
    problem = all_problems()[name](dtype=torch.float64)
    x0 = torch.zeros(1, problem.dim, dtype=torch.float64)
    a, b = problem.constraint(x0)
    exact = problem.exact(x0)
    assert abs(b.item()) < 1e-12 and abs(a.item() - exact.item()) < 1e-12


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
    assert {"harmonic_oscillator", "harmonic_oscillator_inverse", "cos1d"} <= set(all_problems())
    for cls in all_problems().values():
        assert cls.__doc__ and cls.__module__.startswith("fbpinn.problems")

"""wave1d's Taylor ansatz: u0 + t^2/2 c^2 u0'' faded out, so that the network's target starts at 0."""

import pytest
import torch

import fbpinn
from fbpinn.config import ConfigError
from fbpinn.derivatives import autograd_derivatives

DATA = {"problem": {"name": "wave1d", "ansatz": "taylor", "c": 1.3, "x0": 0.2, "sigma": 0.5},
        "decomposition": {"subdomains": [4, 4], "overlap": 1.9}, "training": {"points": [16, 16]}}


def test_taylor_ansatz_carries_the_initial_data_and_curvature():
    p = fbpinn.registry.get("problem", "wave1d")(fbpinn.load_config(data=DATA).problem, torch.float64)
    x = torch.stack([torch.linspace(-0.9, 0.9, 37, dtype=torch.float64), torch.zeros(37, dtype=torch.float64)], 1)
    d = autograd_derivatives(lambda y: p.constraint(y)[0], x, [(), (1,), (1, 1), (0, 0)])
    assert torch.allclose(d[()], p.exact(x), atol=1e-15)  # u(x, 0) = u0
    assert d[(1,)].abs().max() < 1e-12  # u_t(x, 0) = 0
    assert torch.allclose(d[(1, 1)], 1.3**2 * d[(0, 0)], rtol=1e-10, atol=1e-10)  # u_tt = c^2 u_xx at t = 0
    assert d[(0, 0)].abs().max() > 10  # the pulse's curvature is there to carry
    # The network's part vanishes with its ramp at t = 0 and at the walls.
    B = p.constraint(torch.tensor([[0.3, 0.0], [1.0, 0.7], [-1.0, 0.4]], dtype=torch.float64))[1]
    assert B.abs().max() < 1e-15
    late = p.constraint(torch.tensor([[0.2, 1.5]], dtype=torch.float64))[0]
    assert late.abs().max() < 1e-20  # faded out long before t = 1.5


def test_ansatz_is_validated():
    with pytest.raises(ConfigError, match="problem.ansatz: must be one of pulse, taylor, got 'quadratic'"):
        fbpinn.load_config(data=DATA, overrides=["problem.ansatz='quadratic'"])

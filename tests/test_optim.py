"""The lean Adam against torch.optim.Adam."""

import pytest
import torch

from fbpinn.optim import Adam


@pytest.mark.parametrize("fused", [True, False])
def test_matches_torch_adam(fused):
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3, 4), (5, 1, 1, 4), (2,)]
    a = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    ours, ref = Adam(a, lr=3e-3), torch.optim.Adam(b, lr=3e-3)
    ours.fused = fused and ours.fused
    for step in range(50):
        ours.lr = ref.param_groups[0]["lr"] = 3e-3 * 0.97**step
        for params, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            loss = sum((torch.sin(p) * (k + 1)).pow(2).sum() for k, p in enumerate(params))
            loss.backward()
            opt.step()
    for p, q in zip(a, b):
        assert torch.allclose(p, q, rtol=0, atol=1e-13)
    assert max((p - p0).abs().max() for p, p0 in zip(a, [torch.randn(s, generator=torch.Generator().manual_seed(0),
                                                                       dtype=torch.float64) for s in shapes])) > 0


def test_state_round_trip():
    p = torch.ones(3, requires_grad=True)
    opt = Adam([p], lr=0.1)
    p.grad = torch.tensor([1.0, -2.0, 3.0])
    opt.step()
    state = opt.state_dict()
    q = p.detach().clone().requires_grad_(True)
    other = Adam([q], lr=0.5)
    other.load_state_dict(state)
    for o in (opt, other):
        o.params[0].grad = torch.tensor([0.5, 0.5, 0.5])
        o.step()
    assert torch.equal(p, q) and other.lr == 0.1

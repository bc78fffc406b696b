"""The lean Adam against torch.optim.Adam."""

import pytest
import torch

from fbpinn.optim import Adam


@pytest.mark.parametrize("fused", [True, False])
def test_matches_torch_adam(fused):
    check_against_torch(fused=fused, tensor_update=False)


@pytest.mark.parametrize("compiled", [False, True])
def test_the_tensor_update_matches_torch_adam(compiled):
    # Adam.update, the update of a compiled training step: the same numbers as torch's Adam with a
    # learning rate that changes every step, eagerly and traced by dynamo (one graph for every lr).
    check_against_torch(fused=False, tensor_update=True, compiled=compiled)


def check_against_torch(fused: bool, tensor_update: bool, compiled: bool = False):
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3, 4), (5, 1, 1, 4), (2,)]
    a = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    ours, ref = Adam(a, lr=3e-3), torch.optim.Adam(b, lr=3e-3)
    ours.fused = fused and ours.fused
    lr = torch.zeros((), dtype=torch.float64)
    update = ours.update
    if compiled:
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        update = torch.compile(ours.update, backend="eager")
    for step in range(50):
        ours.lr = ref.param_groups[0]["lr"] = 3e-3 * 0.97**step
        for params, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            loss = sum((torch.sin(p) * (k + 1)).pow(2).sum() for k, p in enumerate(params))
            loss.backward()
            if opt is ours and tensor_update:
                lr.fill_(ours.lr)
                update([p.grad for p in params], lr)
            else:
                opt.step()
    if compiled:
        assert counters["stats"]["unique_graphs"] == 1
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


@pytest.mark.parametrize("tensor_update", [False, True])
def test_a_parameter_without_gradient_is_left_alone(tensor_update):
    # Neither its value, its moments nor its step count change; the others step as usual.
    a, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = Adam([a, b], lr=0.1)
    grads = [torch.tensor([1.0, -2.0, 3.0]), None]
    for _ in range(2):
        if tensor_update:
            opt.update(grads, torch.tensor(0.1, dtype=torch.float64))
        else:
            a.grad = grads[0]
            opt.step()
    assert [float(s) for s in opt.steps] == [2.0, 0.0]
    assert torch.equal(b, torch.ones(2)) and float(opt.exp_avg_sq[1].abs().max()) == 0.0
    # Adam's first steps move each element by about lr, against its gradient's sign.
    torch.testing.assert_close(a.detach(), torch.tensor([0.8, 1.2, 0.8]), rtol=0, atol=1e-6)

"""Adam with little per-step overhead, for the few large stacked parameter tensors of a model.

``torch.optim.Adam`` spends tens of microseconds per step in Python bookkeeping, a
noticeable share of a step on small problems.  :class:`Adam` keeps its state in
plain lists and calls the fused kernel directly where this torch has it (falling
back to ``torch._foreach`` arithmetic otherwise); it follows torch's Adam update
exactly (tested against it).  Its state is a dict of tensors for checkpoints.
"""

from __future__ import annotations

import torch


class Adam:
    """Adam (Kingma & Ba) without weight decay.

    Parameters
    ----------
    params : list of tensors with ``requires_grad``.
    lr, betas, eps : as ``torch.optim.Adam``.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
        self.fused = hasattr(torch, "_fused_adam_")

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Apply one update with the gradients in ``p.grad`` (parameters without one are skipped)."""
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        params = [self.params[i] for i in idx]
        grads = [self.params[i].grad for i in idx]
        m = [self.exp_avg[i] for i in idx]
        v = [self.exp_avg_sq[i] for i in idx]
        steps = [self.steps[i] for i in idx]
        torch._foreach_add_(steps, 1)
        if self.fused:
            torch._fused_adam_(params, grads, m, v, [], steps, lr=self.lr, beta1=self.beta1, beta2=self.beta2,
                               weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
            return
        n = float(steps[0])  # all held parameters step together
        torch._foreach_lerp_(m, grads, 1 - self.beta1)
        torch._foreach_mul_(v, self.beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - self.beta2)
        bc1, bc2 = 1 - self.beta1**n, 1 - self.beta2**n
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2**0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, -self.lr / bc1)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "betas": (self.beta1, self.beta2), "eps": self.eps,
                "exp_avg": [t.clone() for t in self.exp_avg], "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
                "steps": [t.clone() for t in self.steps]}

    def load_state_dict(self, state: dict) -> None:
        self.lr, (self.beta1, self.beta2), self.eps = state["lr"], tuple(state["betas"]), state["eps"]
        for dst, key in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq"), (self.steps, "steps")):
            for d, s in zip(dst, state[key]):
                d.copy_(s)

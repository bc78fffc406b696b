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


def local_dot(a, b) -> float:
    """The inner product of two lists of tensors (each element once), in float64: the
    default of :class:`LBFGS` on one process."""
    return float(sum(torch.sum(x.double() * y.double()) for x, y in zip(a, b)))


class LBFGS:
    """L-BFGS with a fixed step length (no line search), for a final phase of training.

    Each step takes the direction -H g of the two-loop recursion over the newest ``history``
    pairs (s_k, y_k) = (x_{k+1} - x_k, g_{k+1} - g_k), with H0 = gamma I and gamma = s.y / y.y
    of the newest pair kept; a pair is kept only where s.y > 1e-10 y.y (the curvature
    condition), so H stays positive definite.  The step is x <- x + t d with t = ``lr``, and on
    the first step t = lr * min(1, 1 / sum |g|) (as torch's L-BFGS without a line search does).

    Every inner product goes through ``dot(a_list, b_list) -> float``: under MPI the trainer
    passes one that counts every parameter once over all ranks (:meth:`fbpinn.trainer.Trainer.
    global_dot`), so the directions are those of one process.  ``dot`` must return the same
    value on every rank.  The state (:meth:`state_dict`) holds the pairs per parameter tensor,
    rho_k = 1 / s_k.y_k, gamma, the previous parameters and gradient and the step count.
    """

    CURVATURE = 1e-10  # a pair is kept where s.y > CURVATURE * y.y

    def __init__(self, params, lr: float = 1.0, history: int = 10, dot=None):
        self.params = list(params)
        self.lr, self.history = float(lr), int(history)
        self.dot = dot or local_dot
        self.s, self.y, self.rho = [], [], []  # pairs, oldest first; s[k], y[k]: one tensor per parameter
        self.gamma = 1.0
        self.prev_x, self.prev_g = None, None
        self.steps = 0  # steps taken
        self.last_t = self.lr  # the step length of the last step

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def direction(self, g) -> list:
        """-H g by the two-loop recursion over the stored pairs (H0 = gamma I)."""
        q = [t.clone() for t in g]
        alphas = []
        for s, y, rho in zip(reversed(self.s), reversed(self.y), reversed(self.rho)):
            a = rho * self.dot(s, q)
            alphas.append(a)
            torch._foreach_add_(q, y, alpha=-a)
        torch._foreach_mul_(q, self.gamma)
        for s, y, rho, a in zip(self.s, self.y, self.rho, reversed(alphas)):
            b = rho * self.dot(y, q)
            torch._foreach_add_(q, s, alpha=a - b)
        torch._foreach_neg_(q)
        return q

    def new_loss(self) -> None:
        """The loss changed (fresh collocation points) since the last step: the next step forms no
        pair, since its gradient change would mix two losses, but keeps the pairs it has (the
        curvature of a fresh draw of the same loss is about the same)."""
        self.prev_x, self.prev_g = None, None

    @torch.no_grad()
    def step(self) -> None:
        """One update with the gradients in ``p.grad`` (a parameter without one has gradient 0)."""
        x = [p.detach() for p in self.params]
        g = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.steps > 0 and self.prev_x is not None:
            s = torch._foreach_sub(x, self.prev_x)
            y = torch._foreach_sub(g, self.prev_g)
            sy, yy = self.dot(s, y), self.dot(y, y)
            if sy > self.CURVATURE * yy:
                self.s.append(s)
                self.y.append(y)
                self.rho.append(1.0 / sy)
                self.gamma = sy / yy
                if len(self.s) > self.history:
                    del self.s[0], self.y[0], self.rho[0]
        d = self.direction(g)
        t = self.lr
        if self.steps == 0:
            total = self.dot(g, [torch.sign(v) for v in g])  # sum |g|
            t = self.lr * min(1.0, 1.0 / total) if total > 0 else self.lr
        self.prev_x = [v.clone() for v in x]
        self.prev_g = [v.clone() for v in g]
        torch._foreach_add_(x, d, alpha=t)
        self.steps += 1
        self.last_t = t

    def state_dict(self) -> dict:
        """The state as tensors and plain values (copies)."""
        copy = lambda ts: None if ts is None else [t.clone() for t in ts]  # noqa: E731
        return {"lr": self.lr, "history": self.history, "s": [copy(s) for s in self.s],
                "y": [copy(y) for y in self.y], "rho": list(self.rho), "gamma": self.gamma,
                "prev_x": copy(self.prev_x), "prev_g": copy(self.prev_g), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Take a state of :meth:`state_dict` (tensors are copied onto the parameters' devices and dtypes)."""
        like = lambda ts: None if ts is None else [torch.as_tensor(t).to(p.device, p.dtype).clone()  # noqa: E731
                                                   for t, p in zip(ts, self.params)]
        self.lr, self.history = float(state["lr"]), int(state["history"])
        self.s, self.y = [like(s) for s in state["s"]], [like(y) for y in state["y"]]
        self.rho, self.gamma = [float(r) for r in state["rho"]], float(state["gamma"])
        self.prev_x, self.prev_g = like(state["prev_x"]), like(state["prev_g"])
        self.steps = int(state["steps"])

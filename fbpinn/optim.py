"""Adam with little per-step overhead, for the few large stacked parameter tensors of a model.

``torch.optim.Adam`` spends tens of microseconds per step in Python bookkeeping, a
noticeable share of a step on small problems.  :class:`Adam` keeps its state in
plain lists and calls the fused kernel directly where this torch has it (falling
back to :func:`adam_update`, the update in tensor operations, otherwise); it follows torch's Adam update
exactly (tested against it).  Its state is a dict of tensors for checkpoints.

:class:`LBFGS` is the optimiser of a final phase of training; :class:`FlatSpace` gives it the
parameters as one vector (under MPI: this rank's part, and inner products over all ranks).
"""

from __future__ import annotations

import numpy as np
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
        # Each parameter's step count, as views of one tensor: one addition counts a step of all.
        self._counts = {}
        for p in self.params:
            self._counts.setdefault(p.device, torch.zeros(sum(q.device == p.device for q in self.params),
                                                          dtype=torch.float32, device=p.device))
        used = {d: 0 for d in self._counts}
        self.steps = []
        for p in self.params:
            self.steps.append(self._counts[p.device][used[p.device]])
            used[p.device] += 1
        self.fused = hasattr(torch, "_fused_adam_")

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Apply one update with the gradients in ``p.grad`` (parameters without one are skipped)."""
        grads = [p.grad for p in self.params]
        if not self.fused:  # a torch without the fused kernel: the same update in tensor operations
            lr = torch.tensor(self.lr, dtype=torch.float64, device=self.params[0].device)
            adam_update(self.params, grads, self.exp_avg, self.exp_avg_sq, self.counts, lr, self.beta1, self.beta2,
                        self.eps)
            return
        if all(g is not None for g in grads):  # as on every ordinary step
            params, m, v, steps = self.params, self.exp_avg, self.exp_avg_sq, self.steps
            for counts in self._counts.values():
                counts.add_(1)
        else:
            idx = [i for i, g in enumerate(grads) if g is not None]
            if not idx:
                return
            params, grads = [self.params[i] for i in idx], [grads[i] for i in idx]
            m, v = [self.exp_avg[i] for i in idx], [self.exp_avg_sq[i] for i in idx]
            steps = [self.steps[i] for i in idx]
            torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, m, v, [], steps, lr=self.lr, beta1=self.beta1, beta2=self.beta2,
                           weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)

    @property
    def counts(self) -> torch.Tensor:
        """The step count of every parameter, one tensor (every parameter on one device)."""
        if len(self._counts) != 1:
            raise ValueError(f"the parameters are on {len(self._counts)} devices; one was expected")
        return next(iter(self._counts.values()))

    def update(self, grads, lr: torch.Tensor) -> None:
        """The update of :meth:`step` written with tensor operations only, for a compiled training step
        (see :func:`adam_update`)."""
        adam_update(self.params, grads, self.exp_avg, self.exp_avg_sq, self.counts, lr, self.beta1, self.beta2,
                    self.eps)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "betas": (self.beta1, self.beta2), "eps": self.eps,
                "exp_avg": [t.clone() for t in self.exp_avg], "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
                "steps": [t.clone() for t in self.steps]}

    def load_state_dict(self, state: dict) -> None:
        self.lr, (self.beta1, self.beta2), self.eps = state["lr"], tuple(state["betas"]), state["eps"]
        for dst, key in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq"), (self.steps, "steps")):
            for d, s in zip(dst, state[key]):
                d.copy_(s)


def adam_update(params, grads, exp_avg, exp_avg_sq, counts: torch.Tensor, lr: torch.Tensor, beta1: float,
                beta2: float, eps: float) -> None:
    """One Adam update, in place, written with tensor operations only so that it can be traced into a
    compiled training step; the numbers of :meth:`Adam.step`.

    ``grads`` follow the parameters (None: that parameter is skipped, as :meth:`Adam.step` skips one
    without a gradient); ``counts`` holds every parameter's step count; the learning rate is a 0-d
    float64 tensor, so that a schedule changes a value rather than the compiled program.  The
    learning rate and the bias corrections are taken in double, as :meth:`Adam.step` takes them."""
    used = [i for i, g in enumerate(grads) if g is not None]
    with torch.no_grad():
        if len(used) == len(grads):
            counts.add_(1)
        else:
            for i in used:
                counts[i].add_(1)
        for i in used:
            p, g, m, v = params[i], grads[i], exp_avg[i], exp_avg_sq[i]
            n = counts[i].double()
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step_size = lr / (1 - beta1**n)  # 0-d, double: rounded once, where it scales m
            denom = v.sqrt() / (1 - beta2**n).sqrt() + eps
            p.sub_(step_size * m / denom)


def _substitute(T: np.ndarray, rhs: np.ndarray, upper: bool) -> np.ndarray:
    """The solution of the triangular system T x = rhs (float64), by back or forward substitution."""
    if len(rhs) == 0:
        return np.zeros(0)
    x = torch.linalg.solve_triangular(torch.from_numpy(T), torch.from_numpy(rhs)[:, None], upper=upper)
    return x[:, 0].numpy()


class FlatSpace:
    """The parameters an :class:`LBFGS` works on, as one vector: each tensor's elements (or only the
    rows ``rows[i]`` of tensor i, along its first axis) in order, concatenated.

    Parameters
    ----------
    params : the parameter tensors.
    rows : per tensor, a LongTensor of the rows that take part, or None for all (default: all).
    weights : float64 tensor over the vector, or None: how often each element counts in an inner
        product (under MPI, 1 on the rank that owns an element and 0 on the others, so that every
        parameter counts once over all ranks).
    reduce : the sum of a float64 NumPy array over the processes, the same on every one of them
        (:meth:`fbpinn.parallel.Context.allgather_sum`); None on one process.
    """

    def __init__(self, params, rows=None, weights=None, reduce=None):
        self.params = list(params)
        self.rows = list(rows) if rows is not None else [None] * len(self.params)
        self.rows = [None if r is None else r.to(p.device) for r, p in zip(self.rows, self.params)]
        self.sizes = [p.numel() if r is None else len(r) * p[0].numel() for p, r in zip(self.params, self.rows)]
        self.size = sum(self.sizes)
        self.weights, self.reduce = weights, reduce

    def gather(self, tensors) -> torch.Tensor:
        """The vector of ``tensors`` (shaped like the parameters)."""
        parts = [t.reshape(-1) if r is None else t[r].reshape(-1) for t, r in zip(tensors, self.rows)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def split(self, vec: torch.Tensor) -> list:
        """Tensors shaped like the parameters (and of their dtype) holding ``vec`` (0 outside the rows)."""
        out = []
        for piece, p, r in zip(torch.split(vec, self.sizes), self.params, self.rows):
            if r is None:
                out.append(piece.view(p.shape).to(p.dtype).clone())
            else:
                full = torch.zeros_like(p)
                full[r] = piece.view((len(r),) + tuple(p.shape[1:])).to(p.dtype)
                out.append(full)
        return out

    def add_(self, vec: torch.Tensor, alpha: float) -> None:
        """params += alpha * vec (in the parameters' dtype), in place."""
        for piece, p, r in zip(torch.split(vec, self.sizes), self.params, self.rows):
            piece = piece.to(p.dtype)
            if r is None:
                p.add_(piece.view(p.shape), alpha=alpha)
            else:
                p.index_add_(0, r, piece.view((len(r),) + tuple(p.shape[1:])), alpha=alpha)

    def dots(self, A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
        """All inner products of the rows of A (k, size) with those of B (j, size), float64
        tensors, as a (k, j) float64 array, over all processes."""
        if self.weights is not None:
            B = B * self.weights
        out = (A @ B.T).cpu().numpy()
        return out if self.reduce is None else self.reduce(out)


class LBFGS:
    """L-BFGS with a fixed step length (no line search), for a final phase of training.

    Each step takes the direction -H g of the two-loop recursion over the newest ``history``
    pairs (s_k, y_k) = (x_{k+1} - x_k, g_{k+1} - g_k), with H0 = gamma I and gamma = s.y / y.y
    of the newest pair kept; a pair is kept only where s.y > 1e-10 y.y (the curvature
    condition), so H stays positive definite.  The step is x <- x + t d with t = ``lr``, and on
    the first step t = lr * min(1, 1 / sum |g|) (as torch's L-BFGS without a line search does).

    The recursion runs on inner products alone: the pairs' Gram matrices S'Y and Y'Y are kept
    (each step adds a row and a column) and each step takes S'g and Y'g, so that a step computes
    one matrix product of the stored vectors with [g, s, y] (one reduction under MPI) and one
    combination of them for the direction, instead of 2 x history inner products and updates
    one after the other.  The vectors live in one float64 matrix of 2 (history + 1) rows (the
    pairs and one free slot for the next); s and y are the float32 differences, so a checkpoint
    in the parameters' dtype holds them exactly.

    ``space`` (:class:`FlatSpace`) gives the vector of the parameters and the inner products
    (under MPI: counting every parameter once over all ranks, equal on every rank).  The state
    (:meth:`state_dict`) holds the pairs per parameter tensor, rho_k = 1 / s_k.y_k, the Gram
    matrices, gamma, the previous parameters and gradient and the step count.
    """

    CURVATURE = 1e-10  # a pair is kept where s.y > CURVATURE * y.y

    def __init__(self, params, lr: float = 1.0, history: int = 10, space: FlatSpace | None = None):
        self.space = space or FlatSpace(params)
        self.params = self.space.params
        self.lr, self.history = float(lr), int(history)
        h = self.history + 1  # slots: the kept pairs and a free one
        self.V = None  # (2 h, size) float64: row k the s of slot k, row h + k its y (allocated on the first step)
        self.order = []  # slots of the kept pairs, oldest first
        self.rho_slot = np.zeros(h)
        self.SY, self.YY = np.zeros((h, h)), np.zeros((h, h))  # SY[a, b] = s_a.y_b, YY[a, b] = y_a.y_b
        self.gamma = 1.0
        self.prev_x, self.prev_g = None, None  # vectors (the parameters' dtype)
        self.steps = 0  # steps taken
        self.last_t = self.lr  # the step length of the last step

    # ------------------------------------------------------------ the pairs, as lists
    @property
    def s(self) -> list:
        """The kept s_k, oldest first, each as tensors shaped like the parameters."""
        return [self.space.split(self.V[k]) for k in self.order]

    @property
    def y(self) -> list:
        h = self.history + 1
        return [self.space.split(self.V[h + k]) for k in self.order]

    @property
    def rho(self) -> list:
        return [float(self.rho_slot[k]) for k in self.order]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def new_loss(self) -> None:
        """The loss changed (fresh collocation points) since the last step: the next step forms no
        pair, since its gradient change would mix two losses, but keeps the pairs it has (the
        curvature of a fresh draw of the same loss is about the same)."""
        self.prev_x, self.prev_g = None, None

    def _buffer(self) -> torch.Tensor:
        if self.V is None:
            p = self.params[0] if self.params else torch.zeros(0)
            self.V = torch.zeros(2 * (self.history + 1), self.space.size, dtype=torch.float64, device=p.device)
        return self.V

    def _free_slot(self) -> int:
        return next(k for k in range(self.history + 1) if k not in self.order)

    def _keep(self, slot: int, G: np.ndarray) -> None:
        """Keep the pair just written to ``slot`` if it has curvature, from G = V [g, s, y]'."""
        h = self.history + 1
        sy, yy = G[slot, 2], G[h + slot, 2]
        if not sy > self.CURVATURE * yy:
            return
        kept = np.array(self.order + [slot])
        self.SY[slot, kept] = G[h + kept, 1]  # s.y_b
        self.SY[kept, slot] = G[kept, 2]  # s_a.y
        self.YY[slot, kept] = self.YY[kept, slot] = G[h + kept, 2]
        self.rho_slot[slot], self.gamma = 1.0 / sy, sy / yy
        self.order.append(slot)
        if len(self.order) > self.history:
            self.order.pop(0)

    def _coefficients(self, G: np.ndarray):
        """The direction -H g as (c, c_g): d = c' V + c_g g, from G[:, 0] = V g (the two-loop
        recursion, written with the Gram matrices)."""
        h = self.history + 1
        idx = np.array(self.order, dtype=np.int64)
        m = len(idx)
        Sg, Yg = G[idx, 0], G[h + idx, 0]
        SY, YY, rho = self.SY[np.ix_(idx, idx)], self.YY[np.ix_(idx, idx)], self.rho_slot[idx]
        # Both loops of the recursion are triangular systems (unit diagonal: solved by substitution):
        # a_i = rho_i (s_i.g - sum_{j > i} s_i.y_j a_j), the first loop's q_i = g - sum_{j > i} a_j y_j;
        # b_i = rho_i (gamma y_i.q_0 + sum_{j < i} s_j.y_i (a_j - b_j)), the second loop's r_i.
        upper = np.triu(SY, 1)  # s_i.y_j for j > i
        a = _substitute(np.eye(m) + rho[:, None] * upper, rho * Sg, upper=True)
        yq = Yg - YY @ a  # y_i.q_0
        lower = upper.T  # s_j.y_i for j < i
        b = _substitute(np.eye(m) + rho[:, None] * lower, rho * (self.gamma * yq + lower @ a), upper=False)
        c = np.zeros(2 * h)  # d = -r_m = -gamma g + gamma sum a_j y_j - sum (a_j - b_j) s_j
        c[idx] = b - a
        c[h + idx] = self.gamma * a
        return c, -self.gamma

    @torch.no_grad()
    def step(self) -> None:
        """One update with the gradients in ``p.grad`` (a parameter without one has gradient 0)."""
        space, h = self.space, self.history + 1
        x = space.gather([p.detach() for p in self.params])
        g = space.gather([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])
        V, g64 = self._buffer(), g.double()
        if self.steps > 0 and self.prev_x is not None:
            slot = self._free_slot()
            V[slot] = x - self.prev_x
            V[h + slot] = g - self.prev_g
            G = space.dots(V, torch.stack([g64, V[slot], V[h + slot]]))
            self._keep(slot, G)
        else:
            G = space.dots(V, g64[None])
        c, cg = self._coefficients(G)
        d = torch.as_tensor(c, dtype=torch.float64, device=V.device) @ V + cg * g64
        t = self.lr
        if self.steps == 0:
            total = float(space.dots(g64[None], torch.sign(g64)[None])[0, 0])  # sum |g|
            t = self.lr * min(1.0, 1.0 / total) if total > 0 else self.lr
        self.prev_x, self.prev_g = x, g
        space.add_(d, alpha=t)
        self.steps += 1
        self.last_t = t

    def tensors(self) -> list:
        """The state's tensors (for a finiteness check)."""
        if self.prev_x is None:
            return []
        h = self.history + 1
        rows = self.order + [h + k for k in self.order]
        return [self.prev_x, self.prev_g, self.V[rows]]

    def state_dict(self) -> dict:
        """The state as tensors shaped like the parameters and plain values (copies)."""
        split = lambda v: None if v is None else self.space.split(v)  # noqa: E731
        idx = np.array(self.order, dtype=np.int64)
        return {"lr": self.lr, "history": self.history, "s": self.s, "y": self.y, "rho": self.rho,
                "gram": np.stack([self.SY[np.ix_(idx, idx)], self.YY[np.ix_(idx, idx)]]), "slots": list(self.order),
                "gamma": self.gamma, "prev_x": split(self.prev_x), "prev_g": split(self.prev_g), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Take a state of :meth:`state_dict` (tensors are moved onto the parameters' devices).  Where
        ``state`` lacks them, the Gram matrices are recomputed and the pairs take slots 0 .. K - 1
        (the slots matter only to the last bit: they fix the order of the sums)."""
        space = self.space
        vec = lambda ts: None if ts is None else space.gather(  # noqa: E731
            [torch.as_tensor(t).to(p.device, p.dtype) for t, p in zip(ts, self.params)])
        self.lr, self.history = float(state["lr"]), int(state["history"])
        pairs = len(state["rho"])
        if pairs > self.history:
            raise ValueError(f"the state holds {pairs} pairs, more than history = {self.history}")
        h = self.history + 1
        self.V = None
        V = self._buffer()
        slots = state.get("slots")
        slots = list(range(pairs)) if slots is None else [int(k) for k in slots]
        if len(slots) != pairs or len(set(slots)) != pairs or not all(0 <= k < h for k in slots):
            raise ValueError(f"the state's slots {slots} are not {pairs} distinct slots in 0..{h - 1}")
        for k, s, y in zip(slots, state["s"], state["y"]):
            V[k], V[h + k] = vec(s), vec(y)
        self.order = slots
        idx = np.array(slots, dtype=np.int64)
        self.rho_slot = np.zeros(h)
        self.rho_slot[idx] = np.asarray(state["rho"], dtype=np.float64)
        self.SY, self.YY = np.zeros((h, h)), np.zeros((h, h))
        gram = state.get("gram")
        if gram is None and pairs:
            gram = np.stack([space.dots(V[idx], V[h + idx]), space.dots(V[h + idx], V[h + idx])])  # s_a.y_b, y_a.y_b
        if pairs:
            self.SY[np.ix_(idx, idx)], self.YY[np.ix_(idx, idx)] = np.asarray(gram[0]), np.asarray(gram[1])
        self.gamma = float(state["gamma"])
        self.prev_x, self.prev_g = vec(state["prev_x"]), vec(state["prev_g"])
        self.steps = int(state["steps"])

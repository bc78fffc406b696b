"""Derivatives of the stacked subdomain networks: the fast forward path and the autograd reference.

Derivatives are named by multi-indices, sorted tuples of axis numbers: ``()`` is the
value, ``(0,)`` the first derivative along axis 0, ``(0, 1)`` the mixed second
derivative.  Problems name them with their axis letters (``"u_tt"``, ``"u_xy"``);
:func:`parse` turns names into multi-indices and :func:`closure` adds the lower
orders the product rule needs.

The fast path (:func:`mlp_taylor`) carries the value and all requested derivatives
of every hidden layer forward together, so a whole step needs one batched matmul
per layer and one backward pass.  :func:`autograd_derivatives` is the slow nested
reverse-mode reference the tests compare it with.  Orders up to two are supported
by the fast path.
"""

from __future__ import annotations

import itertools

import torch

MAX_ORDER = 2


def parse(name: str, axes: tuple[str, ...]) -> tuple[int, ...]:
    """``"u"`` -> ``()``, ``"u_xt"`` -> ``(index of x, index of t)`` sorted."""
    if name == "u":
        return ()
    if not name.startswith("u_") or len(name) < 3:
        raise ValueError(f"bad derivative name {name!r}: use 'u' or 'u_' followed by axis letters {axes}")
    try:
        return tuple(sorted(axes.index(c) for c in name[2:]))
    except ValueError:
        raise ValueError(f"derivative {name!r} names an axis not in {axes}") from None


def closure(orders) -> list[tuple[int, ...]]:
    """The multi-indices in ``orders`` and all their sub-multi-indices, sorted by order.

    The value ``()`` always comes first."""
    out = {()}
    for o in orders:
        o = tuple(sorted(o))
        if len(o) > MAX_ORDER:
            raise ValueError(f"derivative of order {len(o)} requested; the fast path supports order <= {MAX_ORDER}")
        for r in range(len(o) + 1):
            out.update(itertools.combinations(o, r))
    return sorted(out, key=lambda o: (len(o), o))


def multi_index_counts(o: tuple[int, ...], dim: int) -> list[int]:
    """How often each axis occurs in ``o``."""
    return [o.count(d) for d in range(dim)]


class ProductRule:
    """Index tables for the Leibniz rule ``(f g)_a = sum_{b <= a} f_b g_{a - b}``.

    For a multi-index list ``orders`` (a closure), ``apply(f, g)`` takes two stacks
    (K, ...) and returns the stack (K, ...) of the product's derivatives.
    """

    def __init__(self, orders):
        self.orders = list(orders)
        pos = {o: k for k, o in enumerate(self.orders)}
        fi, gi, oi = [], [], []
        for k, o in enumerate(self.orders):
            # Each split of the positions of o into (b, a - b); repeated axes give the binomials.
            for r in range(len(o) + 1):
                for chosen in itertools.combinations(range(len(o)), r):
                    b = tuple(sorted(o[i] for i in chosen))
                    rest = tuple(sorted(o[i] for i in range(len(o)) if i not in chosen))
                    fi.append(pos[b])
                    gi.append(pos[rest])
                    oi.append(k)
        self.f_index = torch.tensor(fi)
        self.g_index = torch.tensor(gi)
        self.out_index = torch.tensor(oi)

    def apply(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        terms = f[self.f_index] * g[self.g_index]  # (T, ...)
        out = torch.zeros((len(self.orders),) + terms.shape[1:], dtype=terms.dtype, device=terms.device)
        return out.index_add(0, self.out_index, terms)


class Activation:
    """An activation with its first two derivatives: ``__call__(a) -> (y, y', y'')``."""

    def __init__(self, name: str):
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; available: {', '.join(ACTIVATIONS)}")
        self.name = name
        self.value = ACTIVATIONS[name]

    def __call__(self, a):
        if self.name == "tanh":
            y = torch.tanh(a)
            d1 = 1 - y * y
            return y, d1, -2 * y * d1
        if self.name == "sin":
            y = torch.sin(a)
            return y, torch.cos(a), -y
        if self.name == "gelu":  # smooth but not a closed form in y: use erf
            cdf = 0.5 * (1 + torch.erf(a * 0.7071067811865476))
            pdf = torch.exp(-0.5 * a * a) * 0.3989422804014327
            return a * cdf, cdf + a * pdf, (2 - a * a) * pdf
        raise AssertionError(self.name)


ACTIVATIONS = {"tanh": torch.tanh, "sin": torch.sin, "gelu": torch.nn.functional.gelu}


class TaylorTables:
    """Index tables that map the derivatives of one layer to those of the next.

    ``orders`` is a closure; first-order entries sit at ``first`` and every second-order
    entry ``(d, e)`` at ``second`` with its first-order parts at ``second_a``/``second_b``.
    """

    def __init__(self, orders):
        pos = {o: k for k, o in enumerate(orders)}
        assert orders[0] == ()
        self.n = len(orders)
        self.first = [pos[o] for o in orders if len(o) == 1]
        seconds = [o for o in orders if len(o) == 2]
        self.second = [pos[o] for o in seconds]
        self.second_a = [pos[(o[0],)] for o in seconds]
        self.second_b = [pos[(o[1],)] for o in seconds]
        # A closure lists the value, then the first, then the second orders: the layout
        # that the activation step below rebuilds.
        assert [0] + self.first + self.second == list(range(self.n)), orders
        # Contiguous index lists become slices: views instead of gathers (and faster compiled kernels).
        self.first, self.second, self.second_a, self.second_b = (
            _as_slice(i) for i in (self.first, self.second, self.second_a, self.second_b))


def _as_slice(index: list):
    """``[a, a+1, ..., b-1]`` as ``slice(a, b)``; any other list unchanged."""
    if index and index == list(range(index[0], index[0] + len(index))):
        return slice(index[0], index[0] + len(index))
    return index


def mlp_taylor(weights, biases, t_in: torch.Tensor, tables: TaylorTables, activation: Activation):
    """Evaluate stacked MLPs with forward-mode derivatives.

    Parameters
    ----------
    weights : list of (J, n_in, n_out) tensors, one per layer.
    biases : list of (J, 1, 1, n_out) tensors.
    t_in : (J, K, M, d) inputs and their derivatives: ``t_in[:, 0]`` are the normalised
        coordinates, first-order entries the (constant) derivatives of those.
    tables : derivative bookkeeping for the K entries.

    Returns
    -------
    (J, K, M, n_out) network output and its derivatives.
    """
    j, k, m, _ = t_in.shape
    t = t_in
    last = len(weights) - 1
    for layer, (w, b) in enumerate(zip(weights, biases)):
        t = _layer(t, w)  # (J, K, M, out)
        if k == 1:
            t = t + b
        else:
            t = torch.cat([t[:, :1] + b, t[:, 1:]], dim=1)
        if layer == last:
            break
        y, d1, d2 = activation(t[:, 0])  # (J, M, H) each
        parts = [y.unsqueeze(1)]
        if tables.first != []:
            parts.append(d1.unsqueeze(1) * t[:, tables.first])
        if tables.second != []:
            parts.append(d1.unsqueeze(1) * t[:, tables.second]
                         + d2.unsqueeze(1) * t[:, tables.second_a] * t[:, tables.second_b])
        t = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return t


SMALL_WIDTH = 4


def _layer(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(J, K, M, n_in) @ (J, n_in, n_out) per subdomain.  Layers with very few inputs or a
    single output are broadcast products instead of batched GEMMs: tiny matrix products are
    slow in BLAS, and elementwise code fuses with its neighbours when compiled."""
    j, k, m, n_in = t.shape
    if n_in <= SMALL_WIDTH:
        out = t[..., 0:1] * w[:, None, None, 0, :]
        for i in range(1, n_in):
            out = out + t[..., i:i + 1] * w[:, None, None, i, :]
        return out
    if w.shape[2] == 1:
        return (t * w[:, None, None, :, 0]).sum(-1, keepdim=True)
    return torch.bmm(t.reshape(j, k * m, n_in), w).reshape(j, k, m, -1)


def autograd_derivatives(fn, x: torch.Tensor, orders) -> dict:
    """Reference derivatives of ``fn(x) -> (N,)`` by nested reverse mode.

    Returns a dict multi-index -> (N,).  Slow; used by tests and for checking.
    """
    x = x.detach().requires_grad_(True)
    u = fn(x)
    out = {(): u}
    cache = {(): u}
    for o in sorted({tuple(sorted(o)) for o in orders}, key=len):
        for r in range(1, len(o) + 1):
            sub = o[:r]
            if sub in cache:
                continue
            parent = cache[sub[:-1]]
            if not parent.requires_grad:  # a constant: its derivatives vanish
                cache[sub] = torch.zeros_like(parent)
                continue
            g = torch.autograd.grad(parent.sum(), x, create_graph=True, allow_unused=True)[0]  # (N, d)
            cache[sub] = torch.zeros_like(parent) if g is None else g[:, sub[-1]]
        out[o] = cache[o]
    return out

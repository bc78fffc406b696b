"""Derivatives of the stacked subdomain networks: the fast forward path and the autograd reference.

Derivatives are named by multi-indices, sorted tuples of axis numbers: ``()`` is the
value, ``(0,)`` the first derivative along axis 0, ``(0, 1)`` the mixed second
derivative.  Problems name them with their axis letters (``"u_tt"``, ``"u_xy"``);
:func:`parse` turns names into multi-indices and :func:`closure` adds the lower
orders the product rule needs.

The fast path (:func:`mlp_taylor`) carries the value and all requested derivatives
of every hidden layer forward together, so a whole step needs one batched matmul
per layer and one backward pass.  :func:`autograd_derivatives` is the slow nested
reverse-mode reference the tests compare it with.

Orders up to :data:`MAX_ORDER` are supported.  Closures of order at most two take
the order-two path (one product for the first and two for the second derivatives per
layer), which carries the value, the first-order and the second-order entries as three
tensors and folds the first layer into the second: the inputs are affine in x, so the
first layer's derivative rows are constants and its K entries need not be formed
(a third to a half less work per step for a [32, 32] network with second derivatives in
three dimensions).  Higher orders take the general Taylor mode: the activation's derivatives
are combined by Faa di Bruno's formula, ``d^o y = sum_pi sigma^(|pi|)(a)
prod_{B in pi} d^{o_B} a`` over the set partitions ``pi`` of the positions of the
multi-index ``o``, with identical terms grouped under integer coefficients into
index tables built once per closure (:class:`FaaDiBruno`).

Cost of the general path: a closure with K entries multiplies the work of a layer
by K (as at order two); the activation step adds one gather and product per
partition term.  The number of terms grows like the Bell numbers of the order
(1, 2, 5, 15, 52, 203 set partitions for orders 1 to 6, fewer after grouping
repeated axes).  Counting the value as an entry: ``u_xxxx`` needs 5 entries and 11
grouped terms, every derivative to order 4 in 2-D 15 entries and 55 terms, to
order 6 28 entries and 274 terms (order two: 6 entries, 8 terms).  Order 6 is the
limit (:data:`MAX_ORDER`); the index tables are built once per closure.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools

import torch

MAX_ORDER = 6  # highest derivative order the forward-mode path provides (cost: see above)

_tracing = False  # True while a training step is traced for a compiler outside dynamo (see compiling)


def compiling() -> bool:
    """Whether the operations run now are recorded for a compiler (dynamo's ``torch.compile``, or the
    trace of a whole training step, :func:`traced_for_compiler`): the paths that suit generated
    kernels rather than eager calls are taken then."""
    return _tracing or torch.compiler.is_compiling()


@contextlib.contextmanager
def traced_for_compiler():
    """Within: :func:`compiling` is True."""
    global _tracing
    before, _tracing = _tracing, True
    try:
        yield
    finally:
        _tracing = before


def parse(name: str, axes: tuple[str, ...], fields: tuple[str, ...] = ("u",)) -> tuple[int, ...]:
    """``"u"`` -> ``()``, ``"u_xt"`` -> ``(index of x, index of t)`` sorted; the multi-index of
    a derivative name of any of ``fields`` (see :func:`split_name`)."""
    return split_name(name, tuple(axes), tuple(fields))[1]


@functools.lru_cache(maxsize=4096)  # residuals look names up at every step
def split_name(name: str, axes: tuple[str, ...], fields: tuple[str, ...] = ("u",)) -> tuple[int, tuple[int, ...]]:
    """A derivative name as (field index, multi-index): with fields ``("p", "v")``, ``"v_xt"`` ->
    ``(1, (index of x, index of t))`` and ``"p"`` -> ``(0, ())``.

    A name is a field name, alone or followed by ``_`` and one axis letter per derivative.
    Raises ValueError naming the bad name, the fields and the axes."""
    field, sep, letters = name.partition("_")
    if field not in fields or (sep and not letters):
        shown = " or ".join(repr(f) for f in fields)
        raise ValueError(f"bad derivative name {name!r}: use a field name ({shown}), alone or followed by '_' "
                         f"and axis letters {tuple(axes)} ('{fields[0]}_{axes[0]}')")
    try:
        return fields.index(field), tuple(sorted(axes.index(c) for c in letters))
    except ValueError:
        raise ValueError(f"derivative {name!r} names an axis not in {tuple(axes)}") from None


def closure(orders) -> list[tuple[int, ...]]:
    """The multi-indices in ``orders`` and all their sub-multi-indices, sorted by order.

    The value ``()`` always comes first."""
    out = {()}
    for o in orders:
        o = tuple(sorted(o))
        if len(o) > MAX_ORDER:
            raise ValueError(f"derivative of order {len(o)} requested; the forward-mode path provides "
                             f"orders up to MAX_ORDER = {MAX_ORDER}")
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

    Two equal forms: one gather, product and scatter-add over index tensors (few kernels:
    the eager path), and, while torch.compile traces, the sums written out term by term
    with constant indices (:attr:`terms`), which compile to one elementwise kernel; the
    gathers' backward would be a scatter-add, which compiled CPU code runs with atomic adds.
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
        # Per entry of the product, its distinct (f entry, g entry) pairs and how often each occurs.
        counts = collections.Counter(zip(oi, fi, gi))
        self.terms = [sorted(((f, g), c) for (o, f, g), c in counts.items() if o == k) for k in range(len(self.orders))]
        self.f_index = torch.tensor(fi)
        self.g_index = torch.tensor(gi)
        self.out_index = torch.tensor(oi)

    def apply(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if compiling():
            rows = []
            for pairs in self.terms:
                acc = None
                for (a, b), count in pairs:
                    term = f[a] * g[b] if count == 1 else count * (f[a] * g[b])
                    acc = term if acc is None else acc + term
                rows.append(acc)
            return torch.stack(rows)
        terms = f[self.f_index] * g[self.g_index]  # (T, ...)
        out = torch.zeros((len(self.orders),) + terms.shape[1:], dtype=terms.dtype, device=terms.device)
        return out.index_add(0, self.out_index, terms)


class Activation:
    """An activation with its derivatives: ``__call__(a) -> (y, y', y'')`` (the order-two path)
    and :meth:`derivatives` for any order."""

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

    def derivatives(self, a, n: int) -> list:
        """``[y, y', ..., y^(n)]`` at ``a``: the first three as :meth:`__call__` gives them, then

        - tanh: ``y^(k) = P_k(y)`` with ``P_0(y) = y``, ``P_{k+1} = P_k'(y) (1 - y^2)``;
        - sin: the cycle sin, cos, -sin, -cos;
        - gelu, ``y = a Phi(a)``: ``y^(k) = a phi^(k-1)(a) + k phi^(k-2)(a)`` with the Gaussian
          density's derivatives ``phi^(m) = (-1)^m He_m(a) phi`` (probabilists' Hermite polynomials).
        """
        out = list(self(a))[:n + 1]
        if n <= 2:
            return out
        if self.name == "tanh":
            polys = ode_polynomials([1, 0, -1], n)
            return out + [evaluate_polynomial(polys[k], out[0]) for k in range(3, n + 1)]
        if self.name == "sin":
            cycle = (out[0], out[1], -out[0], -out[1])
            return out + [cycle[k % 4] for k in range(3, n + 1)]
        if self.name == "gelu":
            pdf = torch.exp(-0.5 * a * a) * 0.3989422804014327
            he = [torch.ones_like(a), a]  # He_0, He_1, ... up to He_{n-1}
            for m in range(1, n - 1):
                he.append(a * he[m] - m * he[m - 1])
            dpdf = [(-1) ** m * h * pdf for m, h in enumerate(he)]  # phi^(m)
            return out + [a * dpdf[k - 1] + k * dpdf[k - 2] for k in range(3, n + 1)]
        raise AssertionError(self.name)


def ode_polynomials(q: list, n: int) -> list:
    """Integer coefficients (lowest power first) of ``P_0 .. P_n`` with ``f^(k) = P_k(f)`` for a
    function with ``f' = q(f)``, ``q`` a polynomial: ``P_0(y) = y``, ``P_{k+1} = P_k' q``.

    ``q = [1, 0, -1]`` gives tanh's derivatives, ``q = [0, 1, -1]`` the logistic sigmoid's."""
    polys = [[0, 1]]
    for _ in range(n):
        dp = [i * c for i, c in enumerate(polys[-1])][1:] or [0]
        prod = [0] * (len(dp) + len(q) - 1)
        for i, c in enumerate(dp):
            for j, e in enumerate(q):
                prod[i + j] += c * e
        polys.append(prod)
    return polys


def evaluate_polynomial(coeffs: list, y: torch.Tensor) -> torch.Tensor:
    """``sum_i coeffs[i] y^i`` by Horner's rule."""
    out = torch.full_like(y, float(coeffs[-1]))
    for c in reversed(coeffs[:-1]):
        out = out * y + c
    return out


ACTIVATIONS = {"tanh": torch.tanh, "sin": torch.sin, "gelu": torch.nn.functional.gelu}


class TaylorTables:
    """Index tables that map the derivatives of one layer to those of the next.

    ``orders`` is a closure, which lists the value, then the F first-order entries, then the S
    second-order ones.  Each second-order entry ``(d, e)`` has its first-order parts at
    ``pair_a`` and ``pair_b``, counted among the first-order entries (0 .. F - 1).  A closure
    of order three or more is handled by the general tables ``general`` (a
    :class:`FaaDiBruno`; None up to order two).
    """

    def __init__(self, orders):
        pos = {o: k for k, o in enumerate(orders)}
        assert orders[0] == ()
        self.n = len(orders)
        self.general = FaaDiBruno(orders) if max(len(o) for o in orders) > 2 else None
        if self.general is not None:
            return
        firsts = [o for o in orders if len(o) == 1]
        seconds = [o for o in orders if len(o) == 2]
        assert [()] + firsts + seconds == list(orders), orders
        self.n_first, self.n_second = len(firsts), len(seconds)
        # Contiguous index lists become slices: views instead of gathers (and faster compiled kernels).
        self.pair_a = _as_slice([pos[(o[0],)] - 1 for o in seconds])
        self.pair_b = _as_slice([pos[(o[1],)] - 1 for o in seconds])


class FaaDiBruno:
    """Index tables of Faa di Bruno's formula for a closure ``orders`` of any order.

    For an entry ``o`` (a multi-index of order n) of the activation's output,
    ``d^o sigma(a) = sum_pi sigma^(|pi|)(a) prod_{B in pi} d^{o_B} a`` over the set
    partitions ``pi`` of the n positions of ``o`` (a repeated axis counts once per
    position).  Partitions that give the same multiset of sub-multi-indices are one
    term with an integer coefficient.  ``terms[r]`` (for ``r`` = 2 .. max order; the
    ``r = 1`` term of every entry is ``sigma' d^o a``) holds, per term, the entries
    multiplied (T, r), the coefficient (T,) and the entry it adds to minus one (T,),
    as lists; :meth:`tensors` gives them on a device.
    """

    def __init__(self, orders):
        pos = {o: k for k, o in enumerate(orders)}
        self.n = len(orders)
        self.max_order = max(len(o) for o in orders)
        grouped = {}  # (r, out entry, sorted factor entries) -> number of partitions
        for k, o in enumerate(orders):
            for partition in set_partitions(list(range(len(o)))):
                if len(partition) < 2:
                    continue
                factors = tuple(sorted(pos[tuple(sorted(o[i] for i in block))] for block in partition))
                key = (len(partition), k, factors)
                grouped[key] = grouped.get(key, 0) + 1
        self.terms = {}
        for (r, k, factors), count in sorted(grouped.items()):
            index, coef, out = self.terms.setdefault(r, ([], [], []))
            index.append(list(factors))
            coef.append(count)
            out.append(k - 1)
        self._cache = {}

    def tensors(self, device, dtype) -> dict:
        """``terms`` as tensors: r -> (index (T, r) long, coefficients (T,) or None where all
        are one, out (T,) long); built once per device and dtype."""
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = {
                r: (torch.tensor(index, device=device),
                    None if set(coef) == {1} else torch.tensor(coef, dtype=dtype, device=device),
                    torch.tensor(out, device=device))
                for r, (index, coef, out) in self.terms.items()}
        return self._cache[key]


def set_partitions(items: list):
    """All partitions of the list ``items`` into non-empty blocks (lists), each once."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for p in set_partitions(rest):
        yield [[first]] + p
        for i in range(len(p)):
            yield p[:i] + [[first] + p[i]] + p[i + 1:]


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
        coordinates, first-order entries their derivatives, which are constant over the
        points, and higher-order entries zero (the inputs are affine in x, as
        :meth:`fbpinn.model.FBPINN.prepare` builds them).
    tables : derivative bookkeeping for the K entries.

    Returns
    -------
    (J, K, M, n_out) network output and its derivatives.
    """
    if tables.general is not None:
        return _mlp_taylor_general(weights, biases, t_in, tables.general, activation)
    if t_in.shape[1] == 1:
        t = t_in
        for layer, (w, b) in enumerate(zip(weights, biases)):
            t = _layer(t, w) + b
            if layer < len(weights) - 1:
                t = activation.value(t)
        return t
    if len(weights) == 1:  # no hidden layer: the derivatives are the constant rows dz_k W
        t = _layer(t_in, weights[0])
        return torch.cat([t[:, :1] + biases[0], t[:, 1:]], dim=1)
    return _mlp_taylor_order2(weights, biases, t_in, tables, activation)


def _mlp_taylor_order2(weights, biases, t_in: torch.Tensor, tables: TaylorTables, activation: Activation):
    """:func:`mlp_taylor` for closures of order one or two.

    The entries travel as three tensors: the value (J, M, H), the F first-order entries
    (J, M, F, H) and the S second-order ones (J, M, S, H), so that no step stores them
    stacked.  The first layer is folded into the second: its pre-activation's derivative
    along entry k is the constant row ``a_k = dz_k W_1`` (the inputs are affine), so after the
    activation the first-order entries are ``sigma' a_k`` and the second-order ones
    ``sigma'' a_p a_q``, and the second layer's pre-activation takes them as
    ``sigma' (diag(a_k) W_2)`` and ``sigma'' (diag(a_p a_q) W_2)``: matrix products over the
    points' (M, H) values sigma' and sigma'' instead of over (M, K, H) entries that would
    first have to be formed and stored.
    """
    j, k, m, _ = t_in.shape
    n_first, n_second = tables.n_first, tables.n_second
    pa, pb = tables.pair_a, tables.pair_b
    w1, w2 = weights[0], weights[1]
    z1 = _layer(t_in[:, :1], w1)[:, 0] + biases[0][:, 0]  # (J, M, H): the value's pre-activation
    rows = _layer(t_in[:, 1:1 + n_first, :1], w1)[:, :, 0]  # (J, F, H): a_k, constant over the points
    y, d1, d2 = activation(z1)  # (J, M, H) each

    def folded(coef, s):  # s (J, M, H) @ diag(coef_e) W_2 for each entry e: (J, M, E, N)
        w = (coef.unsqueeze(-1) * w2.unsqueeze(1)).transpose(1, 2).reshape(j, w2.shape[1], -1)
        return _matmul(s, w).view(j, m, coef.shape[1], w2.shape[2])

    v = _matmul(y, w2) + biases[1][:, 0]  # (J, M, N)
    f = folded(rows, d1)
    s = folded(rows[:, pa] * rows[:, pb], d2) if n_second else None
    for layer in range(2, len(weights)):
        y, d1, d2 = activation(v)
        if n_second:
            s = d1.unsqueeze(2) * s + d2.unsqueeze(2) * f[:, :, pa] * f[:, :, pb]
        f = d1.unsqueeze(2) * f
        w = weights[layer]
        v = _matmul(y, w) + biases[layer][:, 0]
        f = _matmul(f.reshape(j, m * n_first, -1), w).view(j, m, n_first, -1)
        if n_second:
            s = _matmul(s.reshape(j, m * n_second, -1), w).view(j, m, n_second, -1)
    parts = [v.unsqueeze(2), f] + ([s] if n_second else [])
    return torch.cat(parts, dim=2).transpose(1, 2)  # (J, K, M, N)


def _mlp_taylor_general(weights, biases, t_in: torch.Tensor, jet: FaaDiBruno, activation: Activation):
    """:func:`mlp_taylor` for closures of any order: the activation step is Faa di Bruno's
    formula, one batched gather and product per factor and one scatter-add per number of
    blocks ``r``, then a product with ``sigma^(r)``."""
    t = t_in
    last = len(weights) - 1
    for layer, (w, b) in enumerate(zip(weights, biases)):
        t = _layer(t, w)  # (J, K, M, out)
        t = torch.cat([t[:, :1] + b, t[:, 1:]], dim=1)
        if layer == last:
            break
        ds = activation.derivatives(t[:, 0], jet.max_order)  # (J, M, H) each
        rest = t[:, 1:]  # (J, K-1, M, H)
        acc = ds[1].unsqueeze(1) * rest
        for r, (index, coef, out) in jet.tensors(t.device, t.dtype).items():
            g = t[:, index[:, 0]]
            for i in range(1, r):
                g = g * t[:, index[:, i]]  # (J, T, M, H)
            if coef is not None:
                g = g * coef[:, None, None]
            acc = acc + ds[r].unsqueeze(1) * torch.zeros_like(acc).index_add(1, out, g)
        t = torch.cat([ds[0].unsqueeze(1), acc], dim=1)
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
    return _matmul(t.reshape(j, k * m, n_in), w).reshape(j, k, m, -1)


NARROW = 4  # compiled, a product with at most this many output columns is a broadcast product and sum


def _matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(J, R, n_in) @ (J, n_in, n_out) per subdomain; a product with a single output column is a
    broadcast product and sum (see :func:`_layer`), and so is one with up to :data:`NARROW`
    columns while torch.compile traces (the folded output layer of a one-hidden-layer network
    with its first- and second-order entries): BLAS runs such thin products, and above all their
    transposed products in the backward pass, several times slower than the compiled reduction
    (laplace 8 x 8, [2, 16, 1]: 4.8 to 3.3 ms per step on 2 cores).  Eager execution keeps the
    batched GEMM, which does not store the broadcast product."""
    if w.shape[2] == 1:
        return (x * w[:, None, :, 0]).sum(-1, keepdim=True)
    if w.shape[2] <= NARROW and compiling():
        return (x.unsqueeze(-1) * w.unsqueeze(1)).sum(-2)
    return torch.bmm(x, w)


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

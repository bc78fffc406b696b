"""The FBPINN model: windowed sums of subdomain networks, their derivatives, the constraint.

    u(x) = A(x) + B(x) * (1/L) sum_levels sum_j w_j(x) * s * NN_j((x - c_j) / h_j)

for each of the problem's fields (every network has one output per field).
``A + B * .`` is the problem's hard-constraint ansatz (``A = 0, B = 1`` without one),
``s`` its output scale and ``w_j`` the normalised windows of :mod:`fbpinn.decomposition`.

Everything that does not depend on the trainable parameters -- which subdomains
cover which point, the windows and their derivatives, the normalised inputs, the
ansatz's ``A`` and ``B`` and their derivatives -- is computed once per point set by
:meth:`FBPINN.prepare`.  A training step then runs :meth:`FBPINN.forward`: one
forward-mode pass through the stacked networks, the product rule with the windows,
a scatter-add onto the points and the ansatz.  Used by :mod:`fbpinn.trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .derivatives import Activation, ProductRule, TaylorTables, autograd_derivatives, closure
from .networks import StackedMLP


def stacked_parameters(nets):
    """``(level, name, tensor)`` for every stacked weight ``W<l>`` (J, n_in, n_out) and bias ``b<l>``
    (J, 1, 1, n_out) of each level's networks: the one place that names a model's parameters.
    Files store them as ``level<i>/<name>`` (:func:`parameter_key`)."""
    for level, net in enumerate(nets):
        for l, (w, b) in enumerate(zip(net.weights, net.biases)):
            yield level, f"W{l}", w
            yield level, f"b{l}", b


def parameter_key(level: int, name: str) -> str:
    """The key of parameter ``name`` of level ``level`` in results files and checkpoints: ``level0/W1``."""
    return f"level{level}/{name}"


@dataclass
class LevelBlock:
    """The (point, subdomain) pairs of a group of one level's subdomains, padded per subdomain to M.

    Subdomains are grouped by how many points they hold, so that edge subdomains (which
    hold a fraction of an interior one's points) are not padded to the interior count."""

    level: int
    slots: torch.Tensor | None  # (J_b,) held slots of the group's subdomains; None: all, in order
    index: torch.Tensor  # (J_b*M,) point index of each slot; N marks padding
    t_in: torch.Tensor  # (J_b, K, M, d) normalised inputs and their x-derivatives
    win: torch.Tensor  # (K, J_b, M) normalised window and its derivatives


@dataclass
class Batch:
    """A point set prepared for evaluation with the derivatives ``orders``."""

    x: torch.Tensor  # (N, d)
    orders: list
    blocks: list  # LevelBlocks: one or a few per level
    a: torch.Tensor | None  # (K, N) ansatz offset and its derivatives; (K, N, F) for F > 1 fields
    b: torch.Tensor | None  # (K, N) ansatz factor and its derivatives; (K, N, F) for F > 1 fields
    tables: TaylorTables
    rule: ProductRule
    fixed: torch.Tensor | None = None  # (K, N[, F]) summed windowed outputs of the frozen subdomains

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def to(self, device) -> "Batch":
        """The same batch with its tensors on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        blocks = [LevelBlock(b.level, move(b.slots), move(b.index), move(b.t_in), move(b.win)) for b in self.blocks]
        rule = ProductRule(self.orders)
        rule.f_index, rule.g_index, rule.out_index = (move(rule.f_index), move(rule.g_index),
                                                      move(rule.out_index))
        return Batch(move(self.x), self.orders, blocks, move(self.a), move(self.b), self.tables, rule,
                     move(self.fixed))

    def pairs(self) -> int:
        """Number of padded (point, subdomain) slots evaluated per pass."""
        return sum(b.index.numel() for b in self.blocks)


class FBPINN(nn.Module):
    """Finite-basis PINN over the levels of a decomposition.

    Parameters
    ----------
    problem : a :class:`fbpinn.problems.Problem`.
    levels : list of :class:`fbpinn.decomposition.Level`.
    hidden : hidden layer widths of every subdomain network.
    activation : activation name.
    generator : seeded torch generator for initial weights.
    held : optional list (one per level) of global subdomain indices to hold;
        all by default.
    """

    def __init__(self, problem, levels, hidden, activation: str, generator: torch.Generator,
                 dtype=torch.float32, held=None, device=None, input_scale: float = 1.0):
        super().__init__()
        self.problem = problem
        self.levels = list(levels)
        self.activation = Activation(activation)
        self.dtype = dtype
        self.fields = tuple(problem.fields)
        dim = problem.dim
        held = held or [list(range(lv.n_subdomains)) for lv in self.levels]
        self.nets = nn.ModuleList()
        self._slot, self._centres, self._inv_h = [], [], []
        for lv, ids in zip(self.levels, held):
            ids = torch.as_tensor(sorted(ids), dtype=torch.long)
            self.nets.append(StackedMLP([dim, *hidden, len(self.fields)], lv.n_subdomains, ids, generator, dtype))
            slot = torch.full((lv.n_subdomains,), -1, dtype=torch.long)
            slot[ids] = torch.arange(len(ids))
            self._slot.append(slot)
            self._centres.append(lv.centres()[ids].to(dtype))  # (J, d)
            self._inv_h.append(input_scale / lv.half_widths()[ids].to(dtype))  # (J, d): s / half-width
        self.scale = float(problem.output_scale)
        self.device = torch.device(device or "cpu")
        self.nets.to(self.device)

    # ------------------------------------------------------------------ preparation
    def prepare(self, x: torch.Tensor, orders=((),), frozen: torch.Tensor | None = None) -> Batch:
        """Precompute everything parameter-independent for points ``x`` (N, d).

        ``orders`` are the derivative multi-indices wanted; lower orders are added.
        If ``x`` requires grad the result stays differentiable in ``x`` (value only).

        ``frozen`` (J,) bool marks subdomains of the finest level whose parameters do not
        change while the batch is in use (time-marching): their windowed outputs are summed
        here, once, into ``Batch.fixed``, and :meth:`forward` runs the other subdomains only.
        Prepare again after changing a frozen subdomain's parameters.
        """
        orders = closure(orders)
        differentiable = x.requires_grad
        if differentiable and orders != [()]:
            raise ValueError("a differentiable batch carries the value only; use autograd for derivatives")
        if differentiable and frozen is not None:
            raise ValueError("a differentiable batch cannot hold frozen subdomains")
        x = x.to(self.dtype) if differentiable else x.detach().to("cpu", self.dtype)  # lookup runs on the CPU
        last = len(self.levels) - 1
        with torch.set_grad_enabled(differentiable):
            pairs = [lv.pairs(x, orders) for lv in self.levels]
            live = None if frozen is None else ~frozen.cpu()
            blocks = [b for i in range(len(self.levels))
                      for b in self._level_blocks(i, x, orders, pairs[i], live if i == last else None)]
            a = b = None
            if self.problem.has_constraint:
                a, b = (self._ansatz(x, orders, i, differentiable) for i in (0, 1))
        tables, rule = TaylorTables(orders), ProductRule(orders)
        batch = Batch(x, orders, blocks, a, b, tables, rule)
        if self.device.type != "cpu":
            batch = batch.to(self.device)
        if frozen is not None:
            held = Batch(x, orders, self._level_blocks(last, x, orders, pairs[last], frozen.cpu()), None, None,
                         tables, rule)
            if self.device.type != "cpu":
                held = held.to(self.device)
            with torch.no_grad():
                batch.fixed = self._windowed_sum(held)
        return batch

    def _ansatz(self, x: torch.Tensor, orders, i: int, differentiable: bool) -> torch.Tensor:
        """Part ``i`` of the constraint ansatz (0: A, 1: B) and its derivatives at ``x``: (K, N), or
        (K, N, F) for F > 1 fields.  ``differentiable``: the value only, differentiable in ``x``."""
        n_fields = len(self.fields)

        def part(y, f):
            v = self.problem.constraint(y)[i]
            return v if n_fields == 1 and v.dim() == 1 else v.reshape(y.shape[0], n_fields)[:, f]

        if differentiable:
            cols = [part(x, f) for f in range(n_fields)]
            return (cols[0] if n_fields == 1 else torch.stack(cols, dim=-1)).unsqueeze(0)
        with torch.enable_grad():
            cols = [torch.stack([d[o].detach() for o in orders])
                    for d in (autograd_derivatives(lambda y: part(y, f), x, orders) for f in range(n_fields))]
        return cols[0] if n_fields == 1 else torch.stack(cols, dim=-1)  # (K, N[, F])

    MAX_GROUPS = 4  # largest number of subdomain groups per level
    GROUP_FILL = 0.7  # a subdomain joins a group if it holds at least this share of the group's largest count

    @classmethod
    def _groups(cls, counts: torch.Tensor) -> list[torch.Tensor]:
        """Held slots grouped by point count, largest first; few groups, little padding.

        Slots without points are left out (switched-off and frozen subdomains); if no slot
        has any, the first one stands alone, so that the pass still reaches the parameters."""
        order = torch.argsort(counts, descending=True, stable=True)
        order = order[counts[order] > 0] if bool((counts > 0).any()) else order[:1]
        groups, start = [], 0
        values = counts[order].tolist()
        for i in range(1, len(values) + 1):
            if i == len(values) or (values[i] < cls.GROUP_FILL * values[start] and len(groups) < cls.MAX_GROUPS - 1):
                groups.append(torch.sort(order[start:i]).values)
                start = i
        return groups

    def _level_blocks(self, i: int, x: torch.Tensor, orders, pairs,
                      select: torch.Tensor | None = None) -> list[LevelBlock]:
        """Blocks of level ``i``'s ``pairs`` (from :meth:`Level.pairs`) at ``x``; ``select`` (J,) bool
        keeps some subdomains only."""
        n, dim = x.shape
        k = len(orders)
        point, sub, win = pairs
        slot = self._slot[i][sub]
        keep = slot >= 0
        if select is not None:
            keep &= select[sub]
        point, slot, win = point[keep], slot[keep], win[:, keep]
        j = self.nets[i].n_held
        counts = torch.bincount(slot, minlength=j)
        order = torch.argsort(slot, stable=True)
        point, slot, win = point[order], slot[order], win[:, order]
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(slot)) - starts[slot]
        groups = self._groups(counts)
        local = torch.full((j,), -1, dtype=torch.long)  # slot -> position within its group
        group_of = torch.zeros(j, dtype=torch.long)
        for g, members in enumerate(groups):
            local[members] = torch.arange(len(members))
            group_of[members] = g
        xz = torch.cat([x, torch.zeros(1, dim, dtype=x.dtype)])
        blocks = []
        for g, members in enumerate(groups):
            mask = group_of[slot] == g
            p, s, w, q = point[mask], local[slot[mask]], win[:, mask], pos[mask]
            jb, m = len(members), max(int(counts[members].max()), 1)
            index = torch.full((jb, m), n, dtype=torch.long)
            index[s, q] = p
            win_pad = torch.zeros(k, jb, m, dtype=x.dtype)
            if w.requires_grad:
                win_pad = win_pad.index_put((torch.arange(k)[:, None], s[None], q[None]), w)
            else:
                win_pad[:, s, q] = w
            inv_h = self._inv_h[i][members]
            z = (xz[index] - self._centres[i][members][:, None]) * inv_h[:, None]  # (J_b, M, d)
            if k == 1:
                t_in = z.unsqueeze(1)
            else:
                t_in = torch.zeros(jb, k, m, dim, dtype=x.dtype)
                t_in[:, 0] = z
                for kk, o in enumerate(orders):
                    if len(o) == 1:
                        t_in[:, kk, :, o[0]] = inv_h[:, o[0]].unsqueeze(1)
            every = len(groups) == 1 and len(members) == j
            blocks.append(LevelBlock(i, None if every else members, index.reshape(-1), t_in, win_pad))
        return blocks

    # ------------------------------------------------------------------ evaluation
    def forward(self, batch: Batch) -> torch.Tensor:
        """Fields and derivatives at the batch's points: (K, N, F), in ``batch.orders`` order and the
        problem's order of fields."""
        u = self._windowed_sum(batch)
        if batch.fixed is not None:
            u = u + batch.fixed
        if len(self.levels) > 1:
            u = u / len(self.levels)
        if batch.a is not None:
            u = batch.a + batch.rule.apply(batch.b, u)
        return u.unsqueeze(-1) if len(self.fields) == 1 else u

    def _windowed_sum(self, batch: Batch) -> torch.Tensor:
        """sum_j w_j * s * NN_j over the batch's blocks, with derivatives: (K, N), or (K, N, F) for
        F > 1 fields (one field keeps the two-dimensional layout of the fast path)."""
        from .derivatives import mlp_taylor

        k, n, n_fields = len(batch.orders), batch.n, len(self.fields)
        fields = () if n_fields == 1 else (n_fields,)
        total = torch.zeros(k, n + 1, *fields, dtype=self.dtype, device=self.device)
        for block in batch.blocks:
            net = self.nets[block.level]
            weights, biases = list(net.weights), list(net.biases)
            if block.slots is not None:
                weights = [w[block.slots] for w in weights]
                biases = [b[block.slots] for b in biases]
            out = mlp_taylor(weights, biases, block.t_in, batch.tables, self.activation)  # (J, K, M, F)
            if n_fields == 1:
                out = out[..., 0].transpose(0, 1) * self.scale  # (K, J, M)
                prod = batch.rule.apply(block.win, out).reshape(k, -1)  # (K, J*M)
            else:
                out = out.transpose(0, 1) * self.scale  # (K, J, M, F)
                prod = batch.rule.apply(block.win.unsqueeze(-1), out).reshape(k, -1, n_fields)  # (K, J*M, F)
            total = total.index_add(1, block.index, prod)
        return total[:, :n]

    def value(self, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """The fields at ``x`` (N, d) without gradients, in chunks: (N, F)."""
        with torch.no_grad():
            parts = [self.forward(self.prepare(x[i:i + chunk]))[0].cpu() for i in range(0, x.shape[0], chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self.fields), dtype=self.dtype)

    def autograd(self, x: torch.Tensor, orders, field: int = 0) -> dict:
        """Reference derivatives of field ``field`` by nested autograd through windows, networks and ansatz."""
        return autograd_derivatives(lambda y: self.forward(self.prepare(y))[0, :, field], x.to(self.dtype), orders)

    def parameter_arrays(self) -> dict:
        """Stacked weights per level and layer, as numpy arrays for the results file."""
        out = {}
        for level, name, t in stacked_parameters(self.nets):
            array = t.detach().cpu().numpy()
            out[parameter_key(level, name)] = array[:, 0, 0] if name.startswith("b") else array
        return out

"""Problems: the differential equations fbpinn solves, registered by name.

A problem is a small subclass of :class:`Problem`: its axes and domain, its fields
(``("u",)``, or several for a system: ``("p", "v")``), the derivatives its residual
needs (by name, ``"u_tt"``, ``"v_x"``), ``residual``, an optional hard-constraint
ansatz ``u = A(x) + B(x) * u_hat`` per field, the exact solution where known,
extra loss terms (soft boundary conditions, observations) and learnable constants.
Its ``Params`` dataclass lists the keys of the config's ``[problem]`` table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..domains import Box


# Ranges of problem parameters.  The domains are of unit size: a length, time, speed or
# coefficient beyond SCALE, or below 1/SCALE, makes float32 products and their squares in
# the loss overflow or lose all precision.  Loss weights stay below WEIGHT_MAX for the same
# reason (a weighted squared residual must stay far from float32's 3e38).
SCALE = 1e6
WEIGHT_MAX = 1e12

# A field's name: a letter, then letters and digits (no "_": it separates the field from the
# axis letters of a derivative name, "p_tt").  The reserved names are the results file's
# datasets beside the fields.
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
RESERVED_FIELDS = ("exact", "reference", "error")


def check_fields(fields, axes) -> str | None:
    """What is wrong with a problem's ``fields`` (given its ``axes``), or None."""
    if not isinstance(fields, tuple) or not fields:
        return f"fields must be a non-empty tuple of names, got {fields!r}"
    for f in fields:
        if not isinstance(f, str) or not FIELD_NAME.match(f) or f in RESERVED_FIELDS:
            return (f"field name {f!r} must be a letter followed by letters and digits (no '_'), and none of "
                    f"{', '.join(RESERVED_FIELDS)}")
    if len(set(fields)) != len(fields):
        return f"fields {fields} name a field twice"
    return None


@dataclass
class Params:
    """Keys every problem accepts."""

    output_scale: float | None = None  # s in u = sum w * s * NN; the problem's default if unset
    physics: bool = True  # include the residual loss (false: fit observations only)
    domain: list[list[float]] | None = None  # [[lo, hi], ...] per axis; only where configurable_domain

    def validate(self):
        """``(key, message)`` for the first bad value, or None.  Subclasses extend it."""
        if self.domain is not None:
            bad = self.check_domain()
            if bad:
                return bad
        if self.output_scale is not None and not self.output_scale > 0:
            return "output_scale", f"must be positive, got {self.output_scale}"
        if self.output_scale is not None:
            bad = self.first_out_of_range(1 / SCALE, SCALE, "output_scale")
            if bad:
                return bad
        if not self.physics and not self.has_data():
            return "physics", "false leaves nothing to fit: this problem has no observations"
        return None

    def has_data(self) -> bool:
        """Whether the problem supplies observations to fit without the physics term."""
        return False

    def resolve_paths(self, base) -> None:
        """Make the file names among the keys absolute, relative to ``base`` (the config file's
        folder, or the working folder), before :meth:`validate`; the resolved config then names
        the files wherever it is read.  Problems with file-valued keys override it."""

    def check_domain(self):
        """``("domain", message)`` unless ``domain`` is one finite ``[lo, hi]`` pair per axis with
        ``lo < hi``, bounds within [-SCALE, SCALE] and widths of at least 1/SCALE; else None.
        (How many axes it must have is the problem's to say: :mod:`fbpinn.config` checks it.)"""
        for axis, pair in enumerate(self.domain):
            if len(pair) != 2:
                return "domain", f"axis {axis}: must be a pair [lo, hi], got {pair}"
            lo, hi = pair
            if not all(abs(v) <= SCALE for v in pair):
                return "domain", f"axis {axis}: bounds must lie in [{-SCALE:g}, {SCALE:g}], got {pair}"
            if not hi - lo >= 1 / SCALE:
                return "domain", (f"axis {axis}: needs lo < hi, at least {1 / SCALE:g} apart, got {pair}")
        return None

    def first_out_of_range(self, lo, hi, *names):
        """``(key, message)`` for the first of ``names`` whose value (or any value of its list)
        lies outside ``[lo, hi]``, or None."""
        for name in names:
            value = getattr(self, name)
            for v in value if isinstance(value, list) else [value]:
                if not lo <= v <= hi:
                    return name, f"must lie in [{lo:g}, {hi:g}], got {v}"
        return None

    def first_not_positive(self, *names):
        """``(key, message)`` for the first of ``names`` whose value is not > 0, or None."""
        for name in names:
            if not getattr(self, name) > 0:
                return name, f"must be positive, got {getattr(self, name)}"
        return None


@dataclass
class Term:
    """One loss term: ``weight * sum_i (r(x_i) - target_i)^2 / n_global``."""

    name: str
    x: torch.Tensor  # (n, d)
    needs: tuple
    residual: object  # callable(x, derivs) -> (n,)
    weight: float = 1.0
    target: torch.Tensor | None = None  # (n,) values the residual should take; zero if None
    n_global: int | None = None  # points in the whole term (all processes); len(x) if None

    def to(self, device) -> "Term":
        target = None if self.target is None else self.target.to(device)
        return Term(self.name, self.x.to(device), self.needs, self.residual, self.weight, target, self.n_global)

    def select(self, mask: torch.Tensor) -> "Term":
        """The part of the term at the points ``mask`` keeps, counting all points globally."""
        target = None if self.target is None else self.target[mask]
        return Term(self.name, self.x[mask], self.needs, self.residual, self.weight, target,
                    self.n_global or self.x.shape[0])


class Derivs:
    """Named view of a (K, N, F) stack of derivatives of F fields: ``d["u"]``, ``d["u_xx"]``, ``d["v_t"]``.

    ``orders`` are the K multi-indices that were computed (those the problem's ``needs`` and its
    terms' ``needs`` name, and their lower orders); asking for another derivative is a KeyError
    that names it and says where to add it."""

    def __init__(self, stack: torch.Tensor, orders, axes, fields=("u",), problem: str = "?"):
        self.axes, self.fields, self.problem = tuple(axes), tuple(fields), problem
        self.single = len(self.fields) == 1
        self.stack = stack[..., 0] if self.single else stack  # one field: (K, N), indexed once per name
        self.pos = {o: k for k, o in enumerate(orders)}

    def __getitem__(self, name: str) -> torch.Tensor:
        from ..derivatives import split_name

        # Compiled, the names are resolved once while the graph is traced: the uncached function
        # then (torch.compile warns about, and ignores, an lru_cache wrapper).
        lookup = split_name.__wrapped__ if torch.compiler.is_compiling() else split_name
        field, order = lookup(name, self.axes, self.fields)
        if order not in self.pos:
            raise KeyError(f"problem {self.problem!r} uses {name}, which was not computed: add {name!r} to the "
                           "problem's needs (or to the needs of the loss term that uses it)")
        return self.stack[self.pos[order]] if self.single else self.stack[self.pos[order], :, field]


class Problem:
    """Base class of all problems; see the module docstring."""

    name = "?"
    axes: tuple = ("x",)
    fields: tuple = ("u",)  # the solution's fields, one network output each; names as in FIELD_NAME
    lo: tuple = (0.0,)
    hi: tuple = (1.0,)
    needs: tuple = ("u",)
    default_output_scale = 1.0
    Params = Params

    def __init__(self, params: Params | None = None, dtype=torch.float64):
        self.p = params if params is not None else self.Params()
        self.dtype = dtype

    @property
    def dim(self) -> int:
        return len(self.axes)

    configurable_domain = False  # whether problem.domain may replace lo, hi (False: the solution assumes them)

    @property
    def domain(self) -> Box:
        """The box the problem is solved on: ``problem.domain`` where set (see
        ``configurable_domain``), else the class's ``lo`` and ``hi``."""
        pairs = getattr(self.p, "domain", None)
        if pairs:
            return Box([lo for lo, _ in pairs], [hi for _, hi in pairs])
        return Box(self.lo, self.hi)

    @property
    def output_scale(self) -> float:
        return self.default_output_scale if self.p.output_scale is None else self.p.output_scale

    has_constraint = False

    def constraint(self, x: torch.Tensor):
        """Hard-constraint ansatz: ``(A, B)`` with ``u = A + B * u_hat``, each (N,) for one field or
        (N, F) for F fields (column f holds field f's ansatz; A = 0, B = 1 leaves a field free)."""
        raise NotImplementedError

    def residual(self, x: torch.Tensor, d: Derivs) -> torch.Tensor:
        """Residual of the equation at ``x`` (N, d): (N,), or for a system of E equations a tuple of E
        (N,) tensors (or one (N, E) tensor); the loss sums the squares of all of them."""
        raise NotImplementedError

    def exact(self, x: torch.Tensor):
        """Exact solution at ``x`` (N, d) as (N,), or (N, F) for F fields; None when unknown."""
        return None

    reference_name = ""  # how :meth:`reference` computes its solution, for logs and the results file

    def reference(self, axes: list):
        """Numerical reference solution where no exact one is known, or None.

        ``axes``: the full test grid's 1-D coordinate vectors (float64), one per axis.
        Returns a float64 tensor of shape ``[len(a) for a in axes]``, with a last axis of length F
        for F fields."""
        return None

    def reference_traces(self, positions, times, axes: list):
        """The numerical reference at receivers, where no exact solution is known, or None.

        ``positions``: (R, d - 1) receiver positions (float64 NumPy) along the space axes,
        ``times``: (T,) sample times, ``axes``: the test grid's coordinate vectors (which set the
        reference's grid).  Returns a float64 array (R, T), with a last axis of length F for F
        fields.  Space-time problems with a :meth:`reference` implement it for receivers."""
        return None

    def terms(self, generator: torch.Generator) -> list[Term]:
        """Loss terms besides the residual (boundary conditions, observations)."""
        return []

    def parameters(self) -> dict:
        """Learnable constants of the equation: name -> 0-d tensor requiring grad.

        Each is also the problem's attribute of that name (``self.mu``)."""
        return {}

    def to(self, device) -> None:
        """Move the learnable constants to ``device``."""
        for name, t in self.parameters().items():
            setattr(self, name, t.detach().to(device).requires_grad_(True))

    def observations(self):
        """Observed points and values ``(x (n, d), u (n,))`` used by a data term, or None."""
        return None


def all_problems() -> dict:
    """Every problem that loads, by name: the registered ones and those of the ``fbpinn.problems``
    entry points (fbpinn's own among them); :func:`fbpinn.registry.broken` lists any that fail."""
    from ..registry import load_all

    return load_all("problem")

"""Batched subdomain MLPs: the weights of all held subdomains stacked per layer.

Layer ``l`` of every subdomain network lives in one tensor ``W_l`` (J, n_in, n_out)
and one ``b_l`` (J, 1, 1, n_out), so a forward pass is one batched matmul per layer
whatever the number of subdomains.  A :class:`StackedMLP` may hold any subset of a
level's subdomains (its own plus a halo, under MPI); initial values are drawn for
the whole level from the seed and then sliced, so they do not depend on which
process holds which subdomain.  Initialisation follows ``torch.nn.Linear``:
``U(-1/sqrt(n_in), 1/sqrt(n_in))`` for weights and biases.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class StackedMLP(nn.Module):
    """MLPs of identical shape for the subdomains ``held`` (global indices) of one level.

    Parameters
    ----------
    sizes : layer widths ``[d_in, hidden..., d_out]``.
    n_total : number of subdomains in the level (for seeded initialisation).
    held : global indices of the subdomains this instance holds, sorted.
    generator : torch generator used for initial values.
    """

    def __init__(self, sizes, n_total: int, held, generator: torch.Generator, dtype=torch.float32):
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.held = torch.as_tensor(held, dtype=torch.long)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            bound = 1.0 / math.sqrt(n_in)
            w = (torch.rand(n_total, n_in, n_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            b = (torch.rand(n_total, 1, 1, n_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w[self.held].to(dtype)))
            self.biases.append(nn.Parameter(b[self.held].to(dtype)))

    @property
    def n_held(self) -> int:
        return len(self.held)

    def forward(self, z: torch.Tensor, activation) -> torch.Tensor:
        """Plain evaluation of (J, M, d_in) inputs -> (J, M, d_out)."""
        t = z
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            t = torch.bmm(t, w) + b[:, 0]
            if layer < len(self.weights) - 1:
                t = activation.value(t)
        return t

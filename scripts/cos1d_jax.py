"""The cos1d FBPINN in JAX with the reference measurement's settings, for seed studies.

A separate implementation of the study of configs/cos1d.toml -- du/dx = w cos(w x), w = 15,
on [-2 pi, 2 pi], u = tanh(w x) * sum_j phi_j NN_j / sum_j phi_j, 30 subdomains of width
2.99 x the centre spacing with both domain ends as centres, cosine windows
((1 + cos(pi z)) / 2)^2, networks [1, 16, 16, 1] initialised uniform in +-1/sqrt(fan_in),
3,000 grid points, Adam lr 1e-3, float32 -- in JAX and optax.  It shows how much the
test error after 10,000 steps varies between seeds and from step to step for this
method, independently of fbpinn's code (docs/benchmarks.md, Notes).

    pip install jax optax          # not dependencies of fbpinn
    python scripts/cos1d_jax.py 0 1 2 3 4 5 6 7 8     # seeds; about 30 s each on one core

Prints one JSON line per seed: the test relative L2 error (5,000 points) at steps 8,000,
9,000, 9,500 and 10,000, and the time per step.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    import optax
except ImportError:
    sys.exit("cos1d_jax.py needs jax and optax: pip install jax optax")

W, J, SIZES, STEPS, RECORD = 15.0, 30, (1, 16, 16, 1), 10000, (8000, 9000, 9500, 10000)
LO, HI = -2 * np.pi, 2 * np.pi
CENTRES = np.linspace(LO, HI, J).astype(np.float32)
HALF = np.float32(2.99 / 2 * (HI - LO) / (J - 1))  # half-width: 2.99 x spacing is the full width


def pairs(x: np.ndarray):
    """Per subdomain, the indices of the points inside its support, padded (mask False)."""
    inside = [np.flatnonzero(np.abs((x - c) / HALF) < 1) for c in CENTRES]
    width = max(len(i) for i in inside)
    idx = np.zeros((J, width), np.int32)
    mask = np.zeros((J, width), bool)
    for j, i in enumerate(inside):
        idx[j, :len(i)], idx[j, len(i):], mask[j, :len(i)] = i, i[0], True
    return jnp.asarray(idx), jnp.asarray(mask)


def init(seed: int):
    key = jax.random.PRNGKey(seed)
    params = []
    for layer, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        bound = 1 / np.sqrt(m)
        keys = [jax.random.split(jax.random.fold_in(jax.random.fold_in(key, j), layer)) for j in range(J)]
        w = jnp.stack([jax.random.uniform(k[0], (m, n), jnp.float32, -bound, bound) for k in keys])
        b = jnp.stack([jax.random.uniform(k[1], (n,), jnp.float32, -bound, bound) for k in keys])
        params.append((w, b))
    return params


def solution(params, x, idx, mask):
    """u at the points x (only each subdomain's own points go through its network)."""
    z = (x[idx] - CENTRES[:, None]) / HALF  # (J, K)
    inside = mask & (jnp.abs(z) < 1)
    phi = jnp.where(inside, ((1 + jnp.cos(jnp.pi * jnp.where(inside, z, 0.0))) / 2) ** 2, 0.0)
    h = z[..., None]
    for layer, (w, b) in enumerate(params):
        h = jnp.einsum("jpm,jmn->jpn", h, w) + b[:, None, :]
        if layer < len(params) - 1:
            h = jnp.tanh(h)
    num = jnp.zeros_like(x).at[idx.ravel()].add((phi * h[..., 0]).ravel())
    den = jnp.zeros_like(x).at[idx.ravel()].add(phi.ravel())
    return jnp.tanh(W * x) * num / den


def main(seeds) -> None:
    x = jnp.asarray(np.linspace(LO, HI, 3000), jnp.float32)
    x_test = jnp.asarray(np.linspace(LO, HI, 5000), jnp.float32)
    idx, mask = pairs(np.asarray(x))
    idx_test, mask_test = pairs(np.asarray(x_test))
    target, exact = W * jnp.cos(W * x), jnp.sin(W * x_test)
    opt = optax.adam(1e-3)

    def loss(params):
        dudx = jax.jvp(lambda y: solution(params, y, idx, mask), (x,), (jnp.ones_like(x),))[1]
        return jnp.mean((dudx - target) ** 2)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    @jax.jit
    def error(params):
        return jnp.linalg.norm(solution(params, x_test, idx_test, mask_test) - exact) / jnp.linalg.norm(exact)

    print(f"jax {jax.__version__}, optax {optax.__version__}", file=sys.stderr)
    for seed in seeds:
        params = init(seed)
        state = opt.init(params)
        params, state, _ = step(params, state)  # compiles
        errors, t0 = {}, time.perf_counter()
        for n in range(2, STEPS + 1):
            params, state, value = step(params, state)
            if n in RECORD:
                errors[n] = float(error(params))
        ms = (time.perf_counter() - t0) / (STEPS - 1) * 1e3
        print(json.dumps({"seed": seed, "rel_l2": errors, "final_loss": float(value), "ms_per_step": round(ms, 3)}),
              flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0])

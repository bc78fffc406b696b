"""Write a layered velocity model with a dipping interface and a smooth low-velocity lens.

The model covers [-1, 1]^2 on an evenly spaced grid (x along the first axis):

- an upper layer of speed 1.0 above an interface that dips from y = 0.45 at x = -1 to
  y = 0.05 at x = 1, and a lower layer of speed 1.5 below it; the step between them is
  smoothed over a width of 0.06 (a tanh), so that the medium is smooth at the PINN's scale;
- a Gaussian lens that lowers the speed by 35% at (-0.3, -0.2), of width 0.15.

Speeds lie between about 0.98 and 1.5.

    python scripts/make_velocity.py configs/layered.npy            # the model configs/wave2d_layered.toml reads
    python scripts/make_velocity.py model.h5 --nodes 401           # HDF5 with dimension scales x and y

A ``.npy`` file holds the array alone (its grid goes into the config: ``problem.velocity_grid =
[[-1.0, 1.0], [-1.0, 1.0]]``); an ``.h5`` file holds the dataset ``/vp`` with the coordinate
vectors ``/x`` and ``/y`` attached as its dimension scales (``problem.velocity =
"model.h5:/vp"``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

UPPER, LOWER = 1.0, 1.5  # speeds above and below the interface
INTERFACE = (0.45, 0.05)  # its depth y at x = -1 and at x = 1
SMOOTHING = 0.06  # width of the tanh step across the interface
LENS = (-0.3, -0.2, -0.35, 0.15)  # centre x, y, relative change, width


def model(nodes: int = 201) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, speed)``: the coordinates and the (nodes, nodes) speed array."""
    x = np.linspace(-1.0, 1.0, nodes)
    y = np.linspace(-1.0, 1.0, nodes)
    X, Y = np.meshgrid(x, y, indexing="ij")
    depth = INTERFACE[0] + (INTERFACE[1] - INTERFACE[0]) * (X + 1) / 2
    below = 0.5 * (1 - np.tanh((Y - depth) / SMOOTHING))  # 1 below the interface, 0 above
    c = UPPER + (LOWER - UPPER) * below
    lx, ly, change, width = LENS
    c = c * (1 + change * np.exp(-((X - lx) ** 2 + (Y - ly) ** 2) / (2 * width**2)))
    return x, y, c


def write(path: Path, nodes: int) -> None:
    """Write the model to ``path`` (.npy or .h5)."""
    x, y, c = model(nodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, c)
        return
    import h5py

    with h5py.File(path, "w") as f:
        f["x"], f["y"], f["vp"] = x, y, c
        for d, name in enumerate(("x", "y")):
            f[name].make_scale(name)
            f["vp"].dims[d].attach_scale(f[name])
        f["vp"].attrs["units"] = "speed, in the units of the problem's c0"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output file: .npy (array only) or .h5 (dataset /vp with scales x, y)")
    parser.add_argument("--nodes", type=int, default=201, help="nodes per axis (default 201: spacing 0.01)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".h5", ".hdf5"):
        print(f"make_velocity: error: {out}: use a .npy or .h5 file name", file=sys.stderr)
        return 2
    if not 4 <= args.nodes <= 10_000:
        print(f"make_velocity: error: --nodes {args.nodes}: must lie in 4..10000", file=sys.stderr)
        return 2
    write(out, args.nodes)
    print(f"wrote {out}: {args.nodes} x {args.nodes} nodes on [-1, 1]^2")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""XDMF descriptions of results files, for ParaView and VTK: ``fbpinn export RUN --xdmf``.

:func:`xdmf` writes ``run.xdmf`` beside ``run.h5``: XML (XDMF 2) that describes the test grid
as a uniform rectilinear mesh (``3DCoRectMesh``: origin and spacing, no coordinates written) and points every node attribute at a dataset of ``/solution`` in the
results file, which holds the data; nothing is copied.  The attributes are each field and, where
the file has them, its target (exact or reference) and error, named as the datasets are.

For space-time problems (last axis ``t`` after at least one space axis) the mesh spans the
space axes and the file is a temporal collection: one grid per test time, each attribute a
hyperslab of its dataset at that time.  The data is stored first axis slowest, and XDMF lists a
mesh's dimensions slowest first, so VTK's X axis is the problem's last space axis, Y the one
before and Z the first of three (one space axis lies along X; a 2-D problem in (x, y) shows y
along ParaView's X and x along its Y); the coordinates themselves are right.  Solutions split over
per-rank files are read through their virtual datasets, so the part files must stay beside
``run.h5``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .io import ResultsError, field_names, is_snapshots, read_results, read_snapshots, solution_names, staged

MAX_SPACE_AXES = 3


def xdmf(path, out=None, step: int | None = None) -> Path:
    """Write the XDMF description of the results or snapshots file ``path`` (default
    ``<path>.xdmf`` beside it; written atomically) and return its path.

    For a snapshots file, ``step`` chooses the snapshot of a space-time problem (default: the
    newest); for a problem without a time axis, every snapshot is one time step of the
    collection, its time the training step."""
    path = Path(path)
    if is_snapshots(path):
        root = _snapshots(path, out, step)
    else:
        if step is not None:
            raise ResultsError(f"{path}: --step chooses a snapshot of a snapshots file; a results file has one solution")
        root = _results(path, out)
    out = Path(out) if out else path.with_suffix(".xdmf")
    ET.indent(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged() as stage:
        stage_path = stage(out)
        stage_path.write_text('<?xml version="1.0" ?>\n' + ET.tostring(root, encoding="unicode") + "\n")
    return out


def _source(path: Path, out) -> str:
    """The data file's path as the XDMF file at ``out`` names it (relative to the XDMF's folder)."""
    out = Path(out) if out else path.with_suffix(".xdmf")
    return os.path.relpath(path.resolve(), out.resolve().parent)


def _space_time(path: Path, axes: list) -> tuple[bool, list]:
    """Whether the problem is space-time (last axis t after a space axis) and its space axes."""
    timed = len(axes) > 1 and axes[-1] == "t"
    space = axes[:-1] if timed else axes
    if len(space) > MAX_SPACE_AXES:
        raise ResultsError(f"{path}: {len(space)} space axes; XDMF meshes have at most {MAX_SPACE_AXES}")
    return timed, space


def _results(path: Path, out) -> ET.Element:
    data = read_results(path, lazy=True)  # checks the file, its part files included; reads no solution data
    axes = str(data["attrs"]["axes"]).split(",")
    timed, _ = _space_time(path, axes)
    sol = data["solution"]
    coords = [np.asarray(sol[f"axis_{a}"], dtype=np.float64) for a in axes]
    names = [n for _, *row in solution_names(field_names(data["attrs"]), sol["attrs"].get("target")) for n in row if n]
    source = _source(path, out)
    shape = [len(c) for c in coords]
    root = ET.Element("Xdmf", Version="2.0")
    domain = ET.SubElement(root, "Domain")
    if timed:
        collection = ET.SubElement(domain, "Grid", Name="solution", GridType="Collection", CollectionType="Temporal")
        for k, t in enumerate(coords[-1]):
            grid = _grid(collection, f"t{k}", coords[:-1])
            ET.SubElement(grid, "Time", Value=repr(float(t)))
            for name in names:
                _slab(_attribute(grid, name), shape, [0] * (len(shape) - 1) + [k], shape[:-1] + [1],
                      f"{source}:/solution/{name}", coords[:-1])
    else:
        grid = _grid(domain, "solution", coords)
        for name in names:
            _hdf(_attribute(grid, name), shape, f"{source}:/solution/{name}", dims=_mesh_shape(coords))
    return root


def _snapshots(path: Path, out, step) -> ET.Element:
    snap = read_snapshots(path, values=False)  # checks the file; the fields stay on disk
    axes = list(snap["axes"])
    timed, _ = _space_time(path, axes)
    coords = [np.asarray(c, dtype=np.float64) for c in snap["axes"].values()]
    steps = [int(s) for s in snap["step"]]
    if not steps:
        raise ResultsError(f"{path}: holds no snapshot yet")
    shape = [len(steps)] + [len(c) for c in coords]
    names = str(snap["attrs"]["fields"]).split(",")
    source = _source(path, out)
    root = ET.Element("Xdmf", Version="2.0")
    domain = ET.SubElement(root, "Domain")
    if not timed:  # the snapshots are the time steps, at their training step
        if step is not None:
            raise ResultsError(f"{path}: --step chooses one snapshot of a space-time problem; this problem's "
                               f"axes ({', '.join(axes)}) include no t, and every snapshot is exported")
        collection = ET.SubElement(domain, "Grid", Name="snapshots", GridType="Collection", CollectionType="Temporal")
        for i, s in enumerate(steps):
            grid = _grid(collection, f"step{s}", coords)
            ET.SubElement(grid, "Time", Value=str(s))
            for name in names:
                _slab(_attribute(grid, name), shape, [i] + [0] * len(coords), [1] + shape[1:], f"{source}:/{name}",
                      coords)
        return root
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ResultsError(f"{path}: no snapshot of step {step}; it holds steps {steps[0]} .. {steps[-1]} "
                           f"every {steps[1] - steps[0] if len(steps) > 1 else '-'} ({len(steps)} snapshots)")
    i = steps.index(step)
    collection = ET.SubElement(domain, "Grid", Name=f"step{step}", GridType="Collection", CollectionType="Temporal")
    for k, t in enumerate(coords[-1]):
        grid = _grid(collection, f"t{k}", coords[:-1])
        ET.SubElement(grid, "Time", Value=repr(float(t)))
        for name in names:
            _slab(_attribute(grid, name), shape, [i] + [0] * (len(coords) - 1) + [k], [1] + shape[1:-1] + [1],
                  f"{source}:/{name}", coords[:-1])
    return root


def _dims(values) -> str:
    return " ".join(str(v) for v in values)


def _mesh_shape(coords) -> list[int]:
    """The mesh's three dimensions, slowest first: fewer space axes get leading ones, so that VTK
    lays one axis along X and two in the XY plane."""
    n = [len(c) for c in coords]
    return [1] * (3 - len(n)) + n


def _grid(parent, name: str, coords):
    """A uniform grid of ``coords`` (one vector per space axis) under ``parent``."""
    grid = ET.SubElement(parent, "Grid", Name=name, GridType="Uniform")
    mesh = _mesh_shape(coords)
    ET.SubElement(grid, "Topology", TopologyType="3DCoRectMesh", Dimensions=_dims(mesh))
    pad = 3 - len(coords)
    origin = [0.0] * pad + [float(c[0]) for c in coords]
    spacing = [1.0] * pad + [float(c[-1] - c[0]) / (len(c) - 1) if len(c) > 1 else 1.0 for c in coords]
    geometry = ET.SubElement(grid, "Geometry", GeometryType="ORIGIN_DXDYDZ")
    for values in (origin, spacing):
        ET.SubElement(geometry, "DataItem", Format="XML", Dimensions=str(len(values))).text = \
            " ".join(repr(v) for v in values)
    return grid


def _attribute(grid, name: str):
    return ET.SubElement(grid, "Attribute", Name=name, Center="Node", AttributeType="Scalar")


def _hdf(parent, shape, where: str, dims=None):
    """A float64 DataItem of the HDF5 dataset ``where`` ("file:/path") of ``shape``."""
    ET.SubElement(parent, "DataItem", Format="HDF", NumberType="Float", Precision="8",
                  Dimensions=_dims(dims or shape)).text = where


def _slab(parent, shape, start, count, where: str, space):
    """The block of the dataset ``where`` of ``shape`` from ``start`` with ``count`` values per axis
    (stride one), laid out as the mesh of the space axes' coordinates ``space``."""
    slab = ET.SubElement(parent, "DataItem", ItemType="HyperSlab", Type="HyperSlab", Dimensions=_dims(_mesh_shape(space)))
    ET.SubElement(slab, "DataItem", Format="XML", Dimensions=f"3 {len(shape)}").text = \
        " ".join(str(v) for v in [*start, *([1] * len(shape)), *count])
    _hdf(slab, shape, where)

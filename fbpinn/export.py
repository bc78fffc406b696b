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

from .io import ResultsError, field_names, read_results, solution_names, staged

MAX_SPACE_AXES = 3


def xdmf(path, out=None) -> Path:
    """Write the XDMF description of the results file ``path`` (default ``<path>.xdmf`` beside
    it; written atomically) and return its path."""
    path = Path(path)
    data = read_results(path)  # checks the file, its part files included
    out = Path(out) if out else path.with_suffix(".xdmf")
    axes = str(data["attrs"]["axes"]).split(",")
    timed = len(axes) > 1 and axes[-1] == "t"
    space = axes[:-1] if timed else axes
    if len(space) > MAX_SPACE_AXES:
        raise ResultsError(f"{path}: {len(space)} space axes; XDMF meshes have at most {MAX_SPACE_AXES}")
    sol = data["solution"]
    coords = [np.asarray(sol[f"axis_{a}"], dtype=np.float64) for a in axes]
    names = [n for _, *row in solution_names(field_names(data["attrs"]), sol["attrs"].get("target")) for n in row if n]
    source = os.path.relpath(path.resolve(), out.resolve().parent)
    shape = [len(c) for c in coords]

    root = ET.Element("Xdmf", Version="2.0")
    domain = ET.SubElement(root, "Domain")
    if timed:
        collection = ET.SubElement(domain, "Grid", Name="solution", GridType="Collection", CollectionType="Temporal")
        for k, t in enumerate(coords[-1]):
            grid = _grid(collection, f"t{k}", coords[:-1])
            ET.SubElement(grid, "Time", Value=repr(float(t)))
            for name in names:
                _hyperslab(_attribute(grid, name), shape, k, f"{source}:/solution/{name}")
    else:
        grid = _grid(domain, "solution", coords)
        for name in names:
            _hdf(_attribute(grid, name), shape, f"{source}:/solution/{name}", dims=_mesh_shape(coords))
    ET.indent(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged() as stage:
        stage_path = stage(out)
        stage_path.write_text('<?xml version="1.0" ?>\n' + ET.tostring(root, encoding="unicode") + "\n")
    return out


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


def _hyperslab(parent, shape, k: int, where: str):
    """The slice at index ``k`` of the last axis of the dataset ``where`` of ``shape``."""
    space = _mesh_shape([range(n) for n in shape[:-1]])
    slab = ET.SubElement(parent, "DataItem", ItemType="HyperSlab", Type="HyperSlab", Dimensions=_dims(space))
    start, stride, count = [0] * (len(shape) - 1) + [k], [1] * len(shape), list(shape[:-1]) + [1]
    ET.SubElement(slab, "DataItem", Format="XML", Dimensions=f"3 {len(shape)}").text = \
        " ".join(str(v) for v in start + stride + count)
    _hdf(slab, shape, where)

"""docs/hdf5.md against real files: every group, dataset and attribute that fbpinn writes into a
results file, a per-rank part file, a checkpoint and a snapshots file is documented there, and
everything the page gives as always present is in the files."""

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest

from test_fields import ACOUSTIC, LOTKA, run_cli
from test_parallel import INVERSE, mpirun, needs_mpi, write_toml

DOC = Path(__file__).resolve().parents[1] / "docs" / "hdf5.md"

# What each placeholder of a documented name stands for; any other <placeholder> is one path segment
# (written without a literal '/', so that a pattern splits into the patterns of its path's parts).
# <field> stays "{field}" until a file's fields are known (:func:`for_fields`).
PLACEHOLDERS = {"i": r"\d+", "l": r"\d+", "rank": r"\d+", "step": r"\d+", "target": "(?:exact|reference)",
                "field": "{field}"}
CONDITIONAL = re.compile(r"\b(only|optional)\b", re.IGNORECASE)  # a row that says so is not always present


def pattern(name: str) -> str:
    """The regular expression of a documented path or attribute name, its ``<placeholders>`` as
    in :data:`PLACEHOLDERS` (e.g. ``level<i>/W<l>`` -> ``level\\d+/W\\d+``)."""
    pieces = re.split(r"<(\w+)>", name)
    return "".join(re.escape(p) if k % 2 == 0 else PLACEHOLDERS.get(p, r"[^\x2f]+") for k, p in enumerate(pieces))


@dataclass(frozen=True)
class Entry:
    """One documented item of a file kind: a group, a dataset, or an attribute of ``owner``
    (a path pattern; ``""`` the root; ``None`` every dataset), ``name`` a pattern."""

    what: str  # "group", "dataset" or "attribute"
    name: str
    owner: str | None = ""
    required: bool = False

    def matches(self, what: str, name: str, owner: str = "", owner_is_dataset: bool = False) -> bool:
        """Whether this entry documents the item ``what`` called ``name`` (of ``owner``)."""
        if what != self.what or not re.fullmatch(self.name, name):
            return False
        if what != "attribute":
            return True
        return owner_is_dataset if self.owner is None else bool(re.fullmatch(self.owner, owner))


def for_fields(entries: list[Entry], fields) -> list[Entry]:
    """``entries`` with ``<field>`` standing for one of ``fields`` (the names of a file's fields)."""
    alternatives = "(?:" + "|".join(map(re.escape, fields)) + ")"
    return [Entry(e.what, e.name.replace("{field}", alternatives),
                  e.owner if e.owner is None else e.owner.replace("{field}", alternatives), e.required)
            for e in entries]


def _join(group: str, name: str) -> str:
    """A documented name as a path from the file's root: names starting with '/' are already."""
    return name.strip("/") if name.startswith("/") else "/".join(p for p in (group, name) if p)


def _names(cell: str) -> list[str]:
    """The backticked names in a table cell or heading."""
    return re.findall(r"`([^`]+)`", cell)


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def documented_layout(text: str) -> dict[str, list[Entry]]:
    """The layout docs/hdf5.md documents, per file kind (the file name a heading gives in
    backticks: ``run.h5``, ``run_p<rank>.h5``, ``checkpoints/step_<step>.h5``, ``snapshots.h5``).

    A heading naming a file starts that file's part (until the next heading of the same or a higher
    level); a heading naming a group (```/solution```) sets the group that the names of its tables
    are relative to (a name starting with '/' is from the root), and one marked "(optional)" makes
    everything under it optional. Tables are read when their first column is "Attribute" (of the
    group, or of the datasets in an "Of" column) or "Dataset", or when they have a "Kind" column
    ("attribute", "attribute of `name`", "attribute of every dataset", "dataset" or "group"). Every
    backticked name in a row's first cell is an entry; a row whose last cell says "only" or
    "optional" is not always present. A group row whose meaning says "as in `file`" takes that
    file's entries below the group."""
    layout: dict[str, list[Entry]] = defaultdict(list)
    imports = []  # (file kind, group, source file kind)
    files: dict[int, str] = {}  # heading level -> the file named there
    group, optional, in_code = "", False, False
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        if heading := re.match(r"(#+) (.*)", line):
            level, title = len(heading[1]), heading[2]
            files = {lv: f for lv, f in files.items() if lv < level}
            named = [n for n in _names(title) if n.endswith(".h5")]
            groups = [n for n in _names(title) if n.startswith("/")]
            if named:
                files[level] = named[0]
            if groups:
                group, optional = groups[0].strip("/"), "(optional)" in title
                layout[files[max(files)]].append(Entry("group", pattern(group), required=not optional))
            elif named or level <= 2:
                group, optional = "", False
            continue
        if not (line.startswith("|") and k + 1 < len(lines) and re.fullmatch(r"\|[-| :]+\|", lines[k + 1].strip())):
            continue
        header = [c.lower() for c in _cells(line)]
        if header[0] not in ("attribute", "dataset") and "kind" not in header:
            continue
        kind = files[max(files)]
        for row in lines[k + 2:]:
            if not row.startswith("|"):
                break
            cells = _cells(row)
            required = not optional and not CONDITIONAL.search(cells[-1])
            if "kind" in header:
                what = cells[header.index("kind")]
            elif header[0] == "attribute":
                what = "attribute of " + cells[header.index("of")] if "of" in header else "attribute"
            else:
                what = "dataset"
            for name in _names(cells[0]):
                if what.startswith("attribute"):
                    owners = _names(what) if "`" in what else [None if "every dataset" in what else ""]
                    for owner in owners:
                        at = owner if owner is None else pattern(_join(group, owner) if owner else group)
                        layout[kind].append(Entry("attribute", pattern(name), at, required))
                else:
                    path = _join(group, name)
                    layout[kind].append(Entry(what.split()[0], pattern(path), required=required))
                    source = [n for n in _names(cells[-1]) if n.endswith(".h5")]
                    if what.startswith("group") and "as in" in cells[-1].lower() and source:
                        imports.append((kind, path, source[0]))
    for kind, path, source in imports:
        prefix = pattern(path) + "/"
        layout[kind] += [Entry(e.what, e.name, e.owner, False) for e in layout[source]
                         if e.name.startswith(prefix) or (e.owner or "").startswith(prefix) or
                         (e.what == "attribute" and e.owner == pattern(path))]
    for entries in layout.values():  # the groups on the way to every documented path
        for e in list(entries):
            parts = (e.name if e.what != "attribute" else e.owner or "").split("/")
            entries += [Entry("group", "/".join(parts[:n])) for n in range(1, len(parts))]
    return dict(layout)


def contents(path) -> list[tuple]:
    """Every item of an HDF5 file as (what, name, owner, owner is a dataset): its groups and
    datasets by path, and the attributes of the root, every group and every dataset."""
    items = []
    with h5py.File(path, "r") as f:
        items += [("attribute", a, "", False) for a in f.attrs]

        def visit(name, obj):
            is_dataset = isinstance(obj, h5py.Dataset)
            items.append(("dataset" if is_dataset else "group", name, None, False))
            items.extend(("attribute", a, name, is_dataset) for a in obj.attrs)

        f.visititems(visit)
    return items


def undocumented(path, entries: list[Entry]) -> list[str]:
    """The items of file ``path`` that no entry documents, as 'dataset x', 'attribute x of y'."""
    return [f"{what} {name}" + (f" of /{owner}" if what == "attribute" else "")
            for what, name, owner, is_ds in contents(path)
            if not any(e.matches(what, name, owner or "", is_ds) for e in entries)]


def missing(path, entries: list[Entry]) -> list[str]:
    """The always-present entries absent from file ``path``: a group or dataset that nothing in the
    file matches, or a required attribute absent from an owner that the file has."""
    items = contents(path)
    paths = {(what, name) for what, name, _, _ in items if what != "attribute"}
    datasets = {name for what, name in paths if what == "dataset"}
    attrs = {(owner, name) for what, name, owner, _ in items if what == "attribute"}
    out = []
    for e in entries:
        if not e.required:
            continue
        if e.what != "attribute":
            if not any(w == e.what and re.fullmatch(e.name, n) for w, n in paths):
                out.append(f"{e.what} {e.name}")
            continue
        owners = datasets if e.owner is None else {n for _, n in paths if re.fullmatch(e.owner, n)}
        owners |= {""} if e.owner == "" else set()
        for owner in sorted(owners):
            if not any(o == owner and re.fullmatch(e.name, a) for o, a in attrs):
                out.append(f"attribute {e.name} of /{owner}")
    return out


@pytest.fixture(scope="module")
def layout():
    """What docs/hdf5.md documents, per file kind."""
    return documented_layout(DOC.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real files from tiny runs: an inverse problem (observations, a learned constant, checkpoints,
    snapshots), a system of two fields, and, under MPI, a 2-rank run with per-rank output."""
    tmp = tmp_path_factory.mktemp("layout")
    tiny = {"steps": 10, "eval_every": 5}
    # The inverse run's last 3 steps use L-BFGS: its checkpoint at step 10 holds the L-BFGS state.
    inverse = write_toml({**INVERSE, "training": {**INVERSE["training"], **tiny, "lbfgs_steps": 3},
                          "test": {"points": [11]}, "checkpoint": {"every": 5}, "output": {"snapshot_every": 5}},
                         tmp / "inverse.toml")
    lotka = write_toml({**LOTKA, "training": {**LOTKA["training"], **tiny}, "checkpoint": {"every": 10}},
                       tmp / "lotka.toml")
    for cfg, out in [(inverse, "inverse"), (lotka, "lotka")]:
        proc = run_cli("train", cfg, "--out", tmp / out)
        assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp / "inverse/checkpoints/step_000000010.h5") as f:
        assert f["lbfgs/rho"].attrs["pairs"] >= 1 and "lbfgs/s0/problem/mu" in f
    return tmp


def _mpi_run(tmp) -> Path:
    """The folder of a 2-rank acoustic1d run with output.per_rank, and merged.h5 that ``fbpinn
    merge`` made of it (made once)."""
    out = tmp / "split"
    if not (out / "run.h5").exists():
        cfg = write_toml({**ACOUSTIC, "training": {**ACOUSTIC["training"], "steps": 5, "eval_every": 5}},
                         tmp / "acoustic.toml")
        proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(out), "--set", "output.per_rank=true",
                          "--set", "output.receivers=[[0.25], [0.75]]", "--set", "output.receiver_samples=7"],
                      timeout=300)
        assert proc.returncode == 0, proc.stderr
        proc = run_cli("merge", out / "run.h5", "-o", out / "merged.h5")
        assert proc.returncode == 0, proc.stderr
    return out


# (file kind as docs/hdf5.md names it, the file in the runs' folder)
SERIAL = [("run.h5", "inverse/run.h5"), ("run.h5", "lotka/run.h5"),
          ("checkpoints/step_<step>.h5", "inverse/checkpoints/step_000000010.h5"),
          ("checkpoints/step_<step>.h5", "lotka/checkpoints/step_000000010.h5"),
          ("snapshots.h5", "inverse/snapshots.h5")]
SPLIT = [("run.h5", "run.h5"), ("run_p<rank>.h5", "run_p0.h5"), ("run_p<rank>.h5", "run_p1.h5"),
         ("run.h5", "merged.h5")]


def _check(kind, path, layout):
    """Assert that file ``path`` holds only what docs/hdf5.md gives for ``kind``, and all it gives
    as always present; ``<field>`` is one of the root attribute ``fields`` (of ``run.h5`` beside a
    part file; none for a checkpoint)."""
    assert path.is_file(), path
    with h5py.File(path if not kind.startswith("run_p") else path.with_name("run.h5")) as f:
        entries = for_fields(layout[kind], f.attrs.get("fields", "").split(","))
    bad = undocumented(path, entries)
    assert not bad, f"{path.name}: not in docs/hdf5.md ({kind}):\n  " + "\n  ".join(bad)
    absent = missing(path, entries)
    assert not absent, f"{path.name}: docs/hdf5.md says always present ({kind}), but absent:\n  " + "\n  ".join(absent)


@pytest.mark.parametrize("kind,name", SERIAL, ids=[n for _, n in SERIAL])
def test_serial_files_match_the_documented_layout(runs, layout, kind, name):
    _check(kind, runs / name, layout)


@needs_mpi
@pytest.mark.parametrize("kind,name", SPLIT, ids=[n for _, n in SPLIT])
def test_per_rank_files_match_the_documented_layout(runs, layout, kind, name):
    folder = _mpi_run(runs)
    with h5py.File(folder / "run.h5") as f:
        assert f["solution/p"].is_virtual and f["solution"].attrs["parts"] == 2
    _check(kind, folder / name, layout)


def test_the_layout_is_read_from_the_tables(layout):
    assert set(layout) == {"run.h5", "run_p<rank>.h5", "checkpoints/step_<step>.h5", "snapshots.h5"}
    run = layout["run.h5"]

    def documented(kind, what, name, owner="", is_ds=False):
        return [e for e in for_fields(layout[kind], ["p", "v"]) if e.matches(what, name, owner, is_ds)]

    assert [e.required for e in documented("run.h5", "attribute", "schema_version")] == [True]
    assert [e.required for e in documented("run.h5", "attribute", "problem_module")] == [False]
    assert documented("run.h5", "dataset", "parameters/level2/W3")
    assert documented("run.h5", "dataset", "solution/exact_p") and documented("run.h5", "dataset", "solution/axis_x")
    assert not documented("run.h5", "dataset", "solution/exactly_p")  # <target> is exact or reference
    assert not documented("run.h5", "dataset", "training/u")
    assert not documented("run.h5", "attribute", "names", "training/loss")  # only of the two datasets named
    assert documented("run.h5", "attribute", "names", "training/rel_l2_fields", True)
    assert documented("run.h5", "attribute", "DIMENSION_LIST", "solution/error_v", True)
    assert not documented("run.h5", "attribute", "DIMENSION_LIST", "solution/axis_x", True)
    assert not any(e.required for e in documented("run.h5", "group", "observations"))
    assert any(e.required for e in documented("run.h5", "group", "decomposition"))
    assert documented("checkpoints/step_<step>.h5", "attribute", "sha256", "adam/steps/level0/b1", True)
    assert not documented("checkpoints/step_<step>.h5", "attribute", "sha256", "adam", False)  # datasets only
    assert documented("checkpoints/step_<step>.h5", "dataset", "provenance/segments/n_ranks")  # as in run.h5
    assert documented("checkpoints/step_<step>.h5", "attribute", "torch_version", "provenance")
    assert documented("checkpoints/step_<step>.h5", "dataset", "lbfgs/y12/problem/mu")
    assert documented("checkpoints/step_<step>.h5", "attribute", "pairs", "lbfgs/rho")
    assert not documented("snapshots.h5", "dataset", "solution/p") and documented("snapshots.h5", "dataset", "v")
    assert not documented("snapshots.h5", "dataset", "u")  # not a field of this file
    assert len([e for e in run if e.required]) >= 30


def test_an_undocumented_entry_is_reported(tmp_path, layout):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "fbpinn-snapshots"
        f.attrs["colour"] = "red"
        f["step"] = [1, 2]
        f["extra/thing"] = [0.0]
        f["step"].attrs["unit"] = "steps"
    entries = for_fields(layout["snapshots.h5"], ["u"])
    assert undocumented(path, entries) == ["attribute colour of /", "group extra",
                                                          "dataset extra/thing", "attribute unit of /step"]
    assert missing(path, entries) == [
        *(f"attribute {a} of /" for a in ("fbpinn_version", "problem", "axes", "fields", "config")),
        r"dataset axis_[^\x2f]+", "dataset time", "dataset (?:u)",
        *(f"attribute {a} of /step" for a in ("CLASS", "NAME", "REFERENCE_LIST"))]

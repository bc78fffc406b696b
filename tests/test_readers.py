"""Readers that never crash on a bad file: ``fbpinn info``, ``plot`` and ``merge`` on results
files that are damaged, inconsistent or point at other files, and ``plot`` writing all its
figures or none.

Every refusal is checked the same way (:func:`_refused`): exit status 2, a last line
``fbpinn: error: ...`` naming the file and the problem, no traceback, and no file created or
changed beside it.  The files come from one tiny cos1d run, written plain and split over two
part files as ``output.per_rank`` writes them.
"""

import random
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import fbpinn
from fbpinn import plotting
from fbpinn.cli import main
from fbpinn.io import read_results, write_part, write_results

N = 101  # test points of the tiny run
PNGS = {"solution.png", "error.png", "decomposition.png", "training.png"}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(plain, split): a finished tiny cos1d run.h5, and the same run with its solution split
    over run_p0.h5 and run_p1.h5 (virtual datasets), as MPI ranks write it."""
    cfg = fbpinn.load_config(data={
        "problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4]}, "network": {"hidden": [8]},
        "training": {"steps": 50, "points": [60], "eval_every": 25, "log_every": 10**6, "compile": False},
        "test": {"points": [N]}})
    run = fbpinn.train(cfg)
    root = tmp_path_factory.mktemp("good")
    plain = write_results(root / "plain" / "run.h5", run)
    split = root / "split" / "run.h5"
    u, exact = run.u_test, run.u_exact
    blocks = [((0,), (40,)), ((40,), (N - 40,))]
    for rank, ((o,), (m,)) in enumerate(blocks):
        write_part(split, {"rank": rank, "offset": (o,), "u": u[o:o + m], "exact": exact[o:o + m],
                           "target": run.target})
    write_results(split, run, blocks)
    return plain, split


def _copy(src: Path, folder: Path) -> Path:
    """Copy the results file ``src`` and its part files into ``folder``; the copy's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in src.parent.glob("run*.h5"):
        shutil.copy(p, folder / p.name)
    return folder / src.name


def _listing(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _refused(argv, named, capsys, message, folder=None) -> str:
    """``fbpinn argv`` exits 2 with one error line naming ``named`` and holding ``message``,
    no traceback, and leaves ``folder`` (that of ``named``) as it was; the line."""
    folder = folder or Path(named).parent
    before = _listing(folder)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("fbpinn: error: ") and str(named) in line and message in line, err
    assert _listing(folder) == before
    return line


# ----------------------------------------------------------------------------- damages
def _delete(*names):
    def damage(f, folder):
        for name in names:
            if "@" in name:
                group, attr = name.split("@")
                del f[group or "/"].attrs[attr]
            else:
                del f[name]
    return damage


def _set_attr(where, value):
    def damage(f, folder):
        group, attr = where.split("@")
        f[group or "/"].attrs[attr] = value
    return damage


def _replace(name, value):
    def damage(f, folder):
        if name in f:
            del f[name]
        f[name] = value
    return damage


def _empty(group):
    def damage(f, folder):
        for k in list(f[group]):
            del f[group][k]
    return damage


def _no_evaluations(f, folder):
    for name in ("step", "loss", "rel_l2", "time", "lr", "stage", "loss_terms"):
        shape = (0, 1) if name == "loss_terms" else (0,)
        attrs = dict(f["training"][name].attrs)
        del f["training"][name]
        f["training"][name] = np.zeros(shape, dtype=np.int64 if name in ("step", "stage") else np.float64)
        f["training"][name].attrs.update(attrs)


def _other_file(folder, name="other.h5"):
    with h5py.File(folder / name, "w") as g:
        g["u"] = np.zeros(N)
    return folder / name


def _external_link(where, target="other.h5"):
    def damage(f, folder):
        _other_file(folder)
        if where in f:
            del f[where]
        f[where] = h5py.ExternalLink(target, "/u")
    return damage


def _virtual_u(source, name="u", where="solution/u"):
    """Make ``where`` a virtual dataset of N points reading dataset ``name`` of file ``source``."""
    def damage(f, folder):
        src = source(folder) if callable(source) else source
        layout = h5py.VirtualLayout((N,), "f8")
        layout[:] = h5py.VirtualSource(str(src), name, shape=(N,))
        del f[where]
        f.create_virtual_dataset(where, layout, fillvalue=np.nan)
    return damage


def _external_storage(f, folder):
    (folder / "raw.bin").write_bytes(bytes(32))
    f.create_dataset("parameters/raw", (4,), "f8", external=[(str(folder / "raw.bin"), 0, 32)])


def _test_points(f, folder):
    f.attrs["config"] = f.attrs["config"].replace(f"points = [{N}]", "points = [7]")


ROOT_ATTRS = ["fbpinn_version", "problem", "axes", "n_ranks", "config", "start_time", "end_time", "wall_time"]
DAMAGES = [
    pytest.param(_delete("@format"), "not an fbpinn results file", id="no-format"),
    pytest.param(_delete("@schema_version"), "schema version -1", id="no-schema_version"),
    *[pytest.param(_delete(f"@{a}"), f"root attribute {a} is missing", id=f"no-{a}") for a in ROOT_ATTRS],
    *[pytest.param(_delete(g), f"missing group /{g}", id=f"no-{g}")
      for g in ("decomposition", "training", "solution", "parameters")],
    *[pytest.param(_delete(f"decomposition@{a}"), f"attribute {a} of /decomposition is missing", id=f"no-{a}")
      for a in ("n_levels", "window", "overlap", "domain_lo", "domain_hi")],
    pytest.param(_delete("decomposition/level0@shape"), "attribute shape of /decomposition/level0 is missing",
                 id="no-level-shape"),
    *[pytest.param(_delete(d), f"dataset /{d} is missing", id=f"no-{d}")
      for d in ("training/step", "training/loss", "training/rel_l2", "solution/u", "solution/axis_x",
                "decomposition/level0/centres", "decomposition/level0/half_widths")],
    pytest.param(_empty("training"), "dataset /training/step is missing", id="empty-training"),
    pytest.param(_empty("solution"), "dataset /solution/axis_x is missing", id="empty-solution"),
    pytest.param(_empty("decomposition"), "n_levels = 1 and the groups []", id="empty-decomposition"),
    pytest.param(_empty("decomposition/level0"), "/decomposition/level0/centres is missing", id="empty-level"),
    pytest.param(_no_evaluations, "/training/step is empty", id="no-evaluations"),
    pytest.param(_replace("solution/u", np.zeros(N + 1)),
                 f"/solution/u has shape ({N + 1},), expected (n_x) with n_x = {N}", id="u-too-long"),
    pytest.param(_replace("solution/u", np.zeros((N, 1))), f"/solution/u has shape ({N}, 1), expected (n_x)",
                 id="u-2d"),
    pytest.param(_replace("solution/exact", np.zeros(3)), "/solution/exact has shape (3,)", id="exact-short"),
    pytest.param(_replace("training/loss", np.zeros(2)), "expected (E) with E = 3", id="loss-short"),
    pytest.param(_replace("training/loss_per_step", np.zeros((50, 2))), "/training/loss_per_step has shape",
                 id="loss-per-step-2d"),
    pytest.param(_set_attr("training/loss_terms@names", "physics,extra"), "has 1 column(s) but its names",
                 id="loss-term-names"),
    pytest.param(_replace("decomposition/level0/centres", np.zeros((4, 2))), "expected (J0, d) with d = 1",
                 id="centres-width"),
    pytest.param(_replace("decomposition/level0/half_widths", np.zeros((5, 1))), "with J0 = 4",
                 id="half-widths-rows"),
    pytest.param(_set_attr("decomposition/level0@shape", np.array([5])), "subdomain grid [5] but 4 centres",
                 id="level-grid"),
    pytest.param(_set_attr("decomposition@domain_lo", np.zeros(2)), "domain_lo of /decomposition has shape (2,)",
                 id="domain-width"),
    pytest.param(_set_attr("decomposition@n_levels", 2), "n_levels = 2 and the groups [level0]", id="n-levels"),
    pytest.param(_set_attr("@axes", "y"), "dataset /solution/axis_y is missing", id="axes-other"),
    pytest.param(_set_attr("@axes", "x,x"), "has shape (1,), expected (d) with d = 2", id="axes-twice"),
    pytest.param(_test_points, "test.points = [7], does not match the solution's shape (101,)", id="test-points"),
    pytest.param(_delete("solution/exact", "solution/error"), "target = 'exact' but no dataset", id="no-target"),
    pytest.param(_set_attr("solution@target", "bogus"), "target = 'bogus'", id="bad-target"),
    pytest.param(_set_attr("@wall_time", "fast"), "root attribute wall_time holds str, expected real",
                 id="str-wall-time"),
    pytest.param(_set_attr("@n_ranks", 1.5), "root attribute n_ranks holds real, expected int", id="real-n-ranks"),
    pytest.param(_set_attr("@problem", 3), "root attribute problem holds int, expected str", id="int-problem"),
    pytest.param(_set_attr("@config", np.arange(3)), "root attribute config holds int", id="array-config"),
    pytest.param(_set_attr("@schema_version", "1"), "schema version '1'", id="str-schema-version"),
    pytest.param(_set_attr("decomposition@overlap", "wide"), "overlap of /decomposition holds str", id="str-overlap"),
    pytest.param(_replace("training/loss", np.array([b"a", b"b", b"c"])), "/training/loss holds data of type |S1",
                 id="str-loss"),
    pytest.param(_replace("training/step", np.array([1.0, 25.0, 50.0])), "/training/step holds real, expected int",
                 id="real-step"),
    pytest.param(_replace("learned/mu", "fast"), "/learned/mu holds data of type object", id="str-learned"),
    pytest.param(_replace("observations/x", np.zeros((3, 1))), "dataset /observations/u is missing",
                 id="half-observations"),
    pytest.param(_replace("training/attrs", 1), "/training/attrs: fbpinn writes no object of that name",
                 id="reserved-name"),
    pytest.param(_replace("parameters/t", np.dtype("f8")), "/parameters/t is a Datatype", id="datatype"),
    # files from elsewhere
    pytest.param(_external_link("parameters/ext"), "/parameters/ext is an external link to other.h5:/u",
                 id="external-link"),
    pytest.param(_external_link("solution/u"), "/solution/u is an external link to other.h5", id="external-u"),
    pytest.param(_external_link("ext", "run_p0.h5"), "/ext is an external link to run_p0.h5", id="external-part"),
    pytest.param(_external_link("ext", "/etc/hostname"), "/ext is an external link to /etc/hostname",
                 id="external-absolute"),
    pytest.param(_replace("training/alias", h5py.SoftLink("/training/loss")), "/training/alias is a soft link",
                 id="soft-link"),
    pytest.param(_replace("solution/u", h5py.SoftLink("/nowhere")), "/solution/u is a soft link", id="dangling"),
    pytest.param(lambda f, folder: f["parameters/level0"].__setitem__("loop", f["parameters"]),
                 "nested deeper than 8 groups", id="hard-link-loop"),
    pytest.param(_external_storage, "/parameters/raw keeps its data in the external file(s)", id="external-raw"),
    pytest.param(_virtual_u(lambda folder: _other_file(folder).resolve()), "reading from '/", id="virtual-absolute"),
    pytest.param(_virtual_u("../x.h5"), "reading from '../x.h5'", id="virtual-parent"),
    pytest.param(_virtual_u("run_p0.h5"), "reading from 'run_p0.h5'", id="virtual-part-name-unsplit"),
    pytest.param(_virtual_u("other.h5", where="training/loss_per_step"),
                 "/training/loss_per_step is a virtual dataset", id="virtual-outside-solution"),
]


@pytest.mark.parametrize("damage, message", DAMAGES)
def test_damaged_file_is_refused(good, tmp_path, capsys, damage, message):
    """info, plot and merge each refuse the file with the same one line; nothing is written."""
    path = _copy(good[0], tmp_path / "r")
    with h5py.File(path, "r+") as f:
        if "learned" not in f:
            f.create_group("learned")["mu"] = 1.0  # so that learned values are checked too
        damage(f, tmp_path / "r")
    line = _refused(["info", path], path, capsys, message)
    assert _refused(["plot", path], path, capsys, message) == line
    assert _refused(["merge", path], path, capsys, message) == line


def test_parameters_are_not_needed(good, tmp_path, capsys):
    """An empty /parameters (fbpinn info and plot do not use the weights) still reads."""
    path = _copy(good[0], tmp_path / "r")
    with h5py.File(path, "r+") as f:
        _empty("parameters")(f, None)
    assert main(["info", str(path)]) == 0
    assert read_results(path)["parameters"] == {"attrs": {}}


def _signatures(data: bytes) -> list[int]:
    """Offsets of the first B-tree, local heap, symbol table node and global heap of an HDF5 file."""
    found = [data.find(sig) for sig in (b"TREE", b"HEAP", b"SNOD", b"GCOL")]
    assert all(o > 0 for o in found), found
    return found


@pytest.mark.parametrize("which", ["superblock", "b-tree", "local-heap", "symbol-table", "global-heap"])
def test_garbled_metadata_is_refused(good, tmp_path, capsys, which):
    """256 random bytes over one of the file's metadata structures: a one-line refusal."""
    path = _copy(good[0], tmp_path / "r")
    data = bytearray(path.read_bytes())
    offset = ([0] + _signatures(bytes(data)))[["superblock", "b-tree", "local-heap", "symbol-table",
                                               "global-heap"].index(which)]
    data[offset:offset + 256] = random.Random(offset).randbytes(256)
    path.write_bytes(bytes(data))
    for command in ("info", "plot", "merge"):
        _refused([command, path], path, capsys, "")


def test_garbled_file_in_a_subprocess(good, tmp_path):
    """The console command itself: one line on standard error, status 2."""
    path = _copy(good[0], tmp_path / "r")
    data = bytearray(path.read_bytes())
    offset = _signatures(bytes(data))[2]
    data[offset:offset + 256] = bytes(256)
    path.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "fbpinn", "info", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"fbpinn: error: {path}: damaged or unreadable") and proc.stderr.count("\n") == 1


def test_random_corruptions(good, tmp_path, capsys):
    """60 seeded random byte-span corruptions (1 to 256 bytes anywhere), each through info and
    plot: exit 0 (the span hit only data) or 2 with one error line, never a traceback; a
    refused plot writes nothing, an accepted one all four figures."""
    source = good[0].read_bytes()
    rng = random.Random(12)
    outcomes = {("info", 0): 0, ("info", 2): 0, ("plot", 0): 0, ("plot", 2): 0}
    for i in range(60):
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        n = rng.randint(1, 256)
        offset = rng.randrange(len(source) - n)
        data = bytearray(source)
        data[offset:offset + n] = rng.randbytes(n)
        path = folder / "run.h5"
        path.write_bytes(bytes(data))
        for command in ("info", "plot"):
            capsys.readouterr()
            code = main([command, str(path)])
            err = capsys.readouterr().err
            assert code in (0, 2) and "Traceback" not in err, (i, offset, n, err)
            outcomes[(command, code)] += 1
            if code == 2:
                assert err.strip().splitlines()[-1].startswith(f"fbpinn: error: {path}"), err
            if command == "plot":
                assert {p.name for p in folder.iterdir()} == ({"run.h5"} | PNGS if code == 0 else {"run.h5"})
    print("random corruptions (command, exit status): count", outcomes)
    # With this seed both outcomes occur often; a reader that crashed or refused everything would not pass.
    assert outcomes[("info", 2)] >= 15 and outcomes[("info", 0)] >= 15
    assert outcomes[("plot", 2)] >= outcomes[("info", 2)]


def test_random_corruptions_of_split_files(good, tmp_path, capsys):
    """60 seeded random byte-span corruptions of run.h5 or one of its two part files, each
    through info and merge: exit 0 or 2 with one error line, never a traceback; merge writes
    its file only when it exits 0."""
    names = ["run.h5", "run_p0.h5", "run_p1.h5"]
    rng = random.Random(7)
    outcomes = {("info", 0): 0, ("info", 2): 0, ("merge", 0): 0, ("merge", 2): 0}
    for i in range(60):
        path = _copy(good[1], tmp_path / f"c{i}")
        victim = path.parent / rng.choice(names)
        data = bytearray(victim.read_bytes())
        n = rng.randint(1, 256)
        offset = rng.randrange(len(data) - n)
        data[offset:offset + n] = rng.randbytes(n)
        victim.write_bytes(bytes(data))
        for command in ("info", "merge"):
            capsys.readouterr()
            code = main([command, str(path)])
            err = capsys.readouterr().err
            assert code in (0, 2) and "Traceback" not in err, (i, victim.name, offset, n, err)
            outcomes[(command, code)] += 1
            if code == 2:
                assert err.strip().splitlines()[-1].startswith("fbpinn: error: "), err
        assert (path.parent / "run_merged.h5").exists() == (code == 0)
    print("random corruptions of split files (command, exit status): count", outcomes)
    assert outcomes[("info", 2)] >= 10 and outcomes[("info", 0)] >= 10
    assert outcomes[("merge", 2)] == outcomes[("info", 2)]


# ----------------------------------------------------------------------------- split files
def test_split_file_reads_plots_and_merges(good, tmp_path, capsys):
    plain, split = read_results(good[0]), read_results(good[1])
    assert np.array_equal(split["solution"]["u"], plain["solution"]["u"])
    assert np.array_equal(split["solution"]["error"], plain["solution"]["error"])
    path = _copy(good[1], tmp_path / "s")
    assert main(["info", str(path)]) == 0
    assert main(["plot", str(path)]) == 0
    assert PNGS <= {p.name for p in path.parent.iterdir()}
    assert main(["merge", str(path)]) == 0
    merged = read_results(path.with_name("run_merged.h5"))
    assert "parts" not in merged["solution"]["attrs"]
    assert np.array_equal(merged["solution"]["u"], plain["solution"]["u"])
    assert merged["training"]["loss_terms.attrs"] == plain["training"]["loss_terms.attrs"]
    with h5py.File(path.with_name("run_merged.h5")) as f:
        assert not f["solution/u"].is_virtual


def _part(rank, change):
    """A damage of part file ``rank``: ``change(h5py.File)``."""
    def damage(folder):
        with h5py.File(folder / f"run_p{rank}.h5", "r+") as f:
            change(f)
    return damage


def _resource(name, sources, dataset="u"):
    """Rebuild /solution/``name`` of run.h5 reading ``dataset`` of the files ``sources``
    (file name, offset, length)."""
    def damage(folder):
        with h5py.File(folder / "run.h5", "r+") as f:
            layout = h5py.VirtualLayout((N,), "f8")
            for file_name, o, m in sources:
                layout[o:o + m] = h5py.VirtualSource(file_name(folder) if callable(file_name) else file_name,
                                                     dataset, shape=(m,))
            del f["solution"][name]
            f["solution"].create_virtual_dataset(name, layout, fillvalue=np.nan)
    return damage


def _symlinked_part(folder):
    elsewhere = folder.parent / "elsewhere"
    elsewhere.mkdir()
    (folder / "run_p1.h5").rename(elsewhere / "run_p1.h5")
    (folder / "run_p1.h5").symlink_to(elsewhere / "run_p1.h5")


def _garbage_part(folder):
    (folder / "run_p1.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))


def _replace_in(rank, name, value):
    def change(f):
        del f[name]
        f[name] = value
    return _part(rank, change)


SPLIT_DAMAGES = [
    pytest.param(lambda folder: (folder / "run_p1.h5").unlink(), "run.h5", "these are missing: run_p1.h5",
                 id="part-missing"),
    pytest.param(_replace_in(1, "u", np.zeros(N - 40 + 3)), "run_p1.h5", f"/u is ({N - 37},) of float64",
                 id="part-long"),
    pytest.param(_replace_in(0, "exact", np.zeros((40, 2))), "run_p0.h5", "/exact is (40, 2)", id="part-2d"),
    pytest.param(_part(1, lambda f: f.__delitem__("error")), "run_p1.h5", "dataset /error is missing",
                 id="part-no-dataset"),
    pytest.param(_replace_in(1, "u", np.array([b"x"] * (N - 40))), "run_p1.h5", "of |S1", id="part-strings"),
    pytest.param(_part(0, lambda f: f.attrs.__delitem__("format")), "run_p0.h5", "not an fbpinn part file",
                 id="part-no-format"),
    pytest.param(_part(1, lambda f: f.attrs.__setitem__("offset", np.array([0]))), "run_p1.h5",
                 "offset [0], but", id="part-offset"),
    pytest.param(_part(1, lambda f: f.attrs.__setitem__("rank", 0)), "run_p1.h5", "rank 0's block, expected rank 1",
                 id="part-rank"),
    pytest.param(_part(1, lambda f: f.__setitem__("ext", h5py.ExternalLink("/etc/hostname", "/x"))), "run_p1.h5",
                 "/ext is an external link to /etc/hostname", id="part-external-link"),
    pytest.param(_part(0, lambda f: f.__setitem__("s", h5py.SoftLink("/u"))), "run_p0.h5", "/s is a soft link",
                 id="part-soft-link"),
    pytest.param(_symlinked_part, "run_p1.h5", "is a symbolic link", id="part-symlink"),
    pytest.param(_garbage_part, "run_p1.h5", "not a readable HDF5 file", id="part-garbage"),
    pytest.param(_resource("u", [(lambda folder: str((folder / "run_p0.h5").resolve()), 0, N)]), "run.h5",
                 "reading from '/", id="source-absolute"),
    pytest.param(_resource("u", [("../s/run_p0.h5", 0, 40), ("run_p1.h5", 40, N - 40)]), "run.h5",
                 "reading from '../s/run_p0.h5'", id="source-parent"),
    pytest.param(_resource("u", [("./run_p0.h5", 0, 40), ("run_p1.h5", 40, N - 40)]), "run.h5",
                 "reading from './run_p0.h5'", id="source-dot"),
    pytest.param(_resource("u", [("run_p0.h5", 0, 40), ("run_p2.h5", 40, N - 40)]), "run.h5",
                 "reading from 'run_p2.h5'", id="source-beyond-parts"),
    pytest.param(_resource("u", [("run_p0.h5", 0, 40), ("run_p1.h5", 40, N - 40)], "exact"), "run.h5",
                 "reads dataset 'exact' of run_p0.h5; expected its own name", id="source-other-dataset"),
    pytest.param(_resource("u", [("run_p0.h5", 0, 40)]), "run.h5", "the part files cover 40 of the 101 points",
                 id="source-gap"),
]


@pytest.mark.parametrize("damage, named, message", SPLIT_DAMAGES)
def test_damaged_split_file_is_refused(good, tmp_path, capsys, damage, named, message):
    path = _copy(good[1], tmp_path / "s")
    damage(path.parent)
    for command in ("info", "plot", "merge"):
        _refused([command, path], path.parent / named, capsys, message)


# ----------------------------------------------------------------------------- plot writes all or nothing
def test_plot_failing_midway_leaves_no_figure(good, tmp_path, capsys, monkeypatch):
    """A figure that fails on the data: status 2 naming it, no new figure or temporary, and
    the figures of an earlier plot untouched."""
    path = _copy(good[0], tmp_path / "r")
    (path.parent / "solution.png").write_bytes(b"earlier figure")

    def fail(data, target):
        raise ValueError("cannot draw this")

    monkeypatch.setattr(plotting, "_plot_training", fail)
    _refused(["plot", path], path, capsys, "cannot draw training.png from its data (ValueError: cannot draw this)")
    assert (path.parent / "solution.png").read_bytes() == b"earlier figure"


def test_plot_failing_to_write_leaves_no_figure(good, tmp_path, capsys, monkeypatch):
    path = _copy(good[0], tmp_path / "r")

    def full(data, target):
        Path(target).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plotting, "_plot_decomposition", full)
    _refused(["plot", path], path.parent / "decomposition.png", capsys, "No space left on device")


def test_compare_onto_unwritable_paths(good, tmp_path, capsys):
    a = _copy(good[0], tmp_path / "a")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _refused(["plot", a, a, "--compare", blocker / "sub" / "c.png"], blocker / "sub" / "c.png", capsys,
             "cannot write", folder=tmp_path)
    (tmp_path / "dir.png").mkdir()
    _refused(["plot", a, a, "--compare", tmp_path / "dir.png"], tmp_path / "dir.png", capsys,
             "Is a directory", folder=tmp_path)
    _refused(["plot", a, "--compare", tmp_path / "c.xyz"], tmp_path / "c.xyz", capsys,
             "matplotlib writes no .xyz files", folder=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "dir.png", "file"]


def test_compare_failing_removes_the_folders_it_made(good, tmp_path, capsys, monkeypatch):
    a = _copy(good[0], tmp_path / "a")
    monkeypatch.setattr(plotting, "_ylim_to", lambda ax, target: 1 / 0)
    _refused(["plot", a, a, "--compare", tmp_path / "new" / "deeper" / "c.png"], a, capsys,
             "cannot draw c.png from its data (ZeroDivisionError", folder=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    monkeypatch.undo()
    assert main(["plot", str(a), "--compare", str(tmp_path / "new" / "c.png")]) == 0
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["c.png"]


def test_compare_unwritable_in_a_subprocess(good, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "fbpinn", "plot", str(good[0]), "--compare",
                           str(blocker / "c.png")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"fbpinn: error: cannot write {blocker / 'c.png'}: ") and \
        proc.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- merge
def test_merge_replaces_only_with_overwrite(good, tmp_path, capsys):
    path = _copy(good[1], tmp_path / "s")
    out = tmp_path / "s" / "run_merged.h5"
    out.write_bytes(b"the user's file")
    _refused(["merge", path], out, capsys, "exists; pass --overwrite to replace it")
    _refused(["merge", path, "-o", path.parent / "run_p1.h5", "--overwrite"], path.parent / "run_p1.h5", capsys,
             "must differ from its source and the source's part files")
    (tmp_path / "folder.h5").mkdir()
    _refused(["merge", path, "-o", tmp_path / "folder.h5", "--overwrite"], tmp_path / "folder.h5", capsys,
             "cannot write", folder=tmp_path)
    assert main(["merge", str(path), "--overwrite"]) == 0
    assert np.array_equal(read_results(out)["solution"]["u"], read_results(path)["solution"]["u"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.h5", "run_merged.h5", "run_p0.h5", "run_p1.h5"]


def test_merge_refuses_a_moved_file(good, tmp_path, capsys):
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(good[1], moved / "run.h5")
    _refused(["merge", moved / "run.h5"], moved / "run.h5", capsys, "missing: run_p0.h5, run_p1.h5")


def test_library_merge_refuses_existing_output(good, tmp_path):
    path = _copy(good[1], tmp_path / "s")
    (tmp_path / "one.h5").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        fbpinn.io.merge(path, tmp_path / "one.h5")
    assert (tmp_path / "one.h5").read_bytes() == b"x"
    assert fbpinn.io.merge(path, tmp_path / "one.h5", overwrite=True) == tmp_path / "one.h5"

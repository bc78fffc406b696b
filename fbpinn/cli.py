"""The ``fbpinn`` command line: ``train``, ``plot``, ``info``, ``eval``, ``merge``, ``problems``.

Every command has ``--help``.  Bad input (config, results file, argument) prints
one line ``fbpinn: error: ...`` and exits with status 2; a run that fails while
training exits with status 1; a run stopped by SIGTERM or SIGUSR1 writes a checkpoint
and exits with status 75 (under MPI, a rank that cannot reach the others after the signal
aborts the job with status 124: :mod:`fbpinn.signals`).  No results file is written unless
training finished.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import tomllib
from pathlib import Path

logger = logging.getLogger("fbpinn")

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_STOPPED = 75  # stopped by SIGTERM or SIGUSR1 after writing a checkpoint (EX_TEMPFAIL: run again)


def _setup_logging(verbose: bool, rank: int = 0, size: int = 1) -> None:
    """Rank 0 logs at INFO (DEBUG with -v); other ranks only warnings, tagged with their rank."""
    tag = f"{rank}/{size} " if size > 1 else ""
    level = (logging.DEBUG if verbose else logging.INFO) if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s {tag}%(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stdout, force=True)


@dataclasses.dataclass
class _Plan:
    """What the pre-flight of ``fbpinn train`` decided, the same on every rank."""

    cfg: object
    out: Path
    estimate: object  # this rank's preflight.MemoryEstimate
    chosen: str | None = None  # checkpoint to resume from
    state: dict | None = None  # its verified contents (read by every rank)
    replaced: list = dataclasses.field(default_factory=list)  # (step, path) of checkpoints --overwrite removes


def _preflight(args, ctx) -> _Plan:
    """Every rank checks the config, the environment, the paths it will write, its device and
    its memory, and all ranks agree on the first error found anywhere (a config file missing
    on one node, an unwritable folder, too little memory), so that all stop together instead
    of some waiting for the others forever.  Nothing is created.  Rank 0 chooses the
    checkpoint to resume from; every rank verifies it."""
    from . import checkpoint as ckpt
    from . import preflight, signals
    from .config import ConfigError, check_environment, load_config
    from .io import part_name
    from .parallel import select_device

    plan, problem = None, None
    try:
        try:
            timeout = signals.stop_timeout()
        except ValueError as e:
            raise UsageError(str(e)) from None
        if ctx.parallel:  # from here on a stop request cannot leave this rank waiting for a dead peer
            signals.watch(ctx.comm.Abort, f"{ctx.rank}/{ctx.size}", timeout)
        cfg = load_config(args.config, args.set)
        check_environment()
        out = Path(args.out or cfg.output.dir or Path("results") / Path(args.config).stem)
        part = out / part_name(out / "run.h5", ctx.rank) if ctx.parallel and cfg.output.per_rank else None
        preflight.check_paths(out, resume=args.resume, overwrite=args.overwrite, part=part)
        plan = _Plan(cfg, out, preflight.check_memory(cfg, ctx, select_device(ctx, cfg.training.device)))
        if ctx.rank == 0:
            folder = out / "checkpoints"
            # --overwrite without --resume starts over: the replaced run's checkpoints go too, so
            # that a later --resume cannot pick up one of them.
            plan.replaced = ckpt.listing(folder) if args.overwrite and not args.resume else []
            if not plan.replaced:
                plan.chosen, plan.state = _choose_checkpoint(folder, cfg, args.resume, args.allow_module_change)
            if plan.chosen is None and (out / "run.h5").is_file() and not args.overwrite:
                raise UsageError(f"{out / 'run.h5'} holds a finished run and {folder} no checkpoint to go on "
                                 "from; train into another --out folder, or pass --overwrite to replace it")
    except (ConfigError, UsageError, ckpt.CheckpointError, preflight.PreflightError) as e:
        problem = str(e)
    problem = ctx.first_error(problem)
    if problem:
        raise AgreedError(problem)
    plan.chosen = ctx.bcast(plan.chosen)
    if plan.chosen is not None and ctx.parallel:
        # The other ranks read the checkpoint themselves and verify it too; all agree on any failure.
        digest = ctx.bcast(plan.state["digest"] if ctx.rank == 0 else None)
        if ctx.rank != 0:
            try:
                plan.state = ckpt.read(plan.chosen)
                if plan.state["digest"] != digest:
                    problem = (f"{plan.chosen} changed while it was read (its state checksum differs on rank "
                               f"{ctx.rank})")
            except ckpt.CheckpointError as e:
                problem = f"rank {ctx.rank} could not use the checkpoint rank 0 verified: {e}"
        problem = ctx.first_error(problem)
        if problem:
            raise AgreedError(problem)
    return plan


def cmd_train(args) -> int:
    from . import checkpoint as ckpt
    from .io import new_folders, remove_temporaries, write_part, write_results
    from .trainer import TrainingError, train

    ctx = args.ctx
    plan = _preflight(args, ctx)
    cfg, out, estimate = plan.cfg, plan.out, plan.estimate
    folder = out / "checkpoints"
    creating = new_folders(out, inner=("checkpoints",)) if ctx.rank == 0 else contextlib.nullcontext()
    with creating:  # a run that ends before writing anything leaves no folder behind
        if ctx.rank == 0:
            for leftover in remove_temporaries(out) + remove_temporaries(folder):
                logger.info("removed %s, left by an interrupted write", leftover)
            for _, old in plan.replaced:
                old.unlink(missing_ok=True)
                logger.info("removed %s of the run that --overwrite replaces", old)
        ctx.barrier()  # the folder exists before any rank goes on
        checkpoints = ckpt.Checkpoints(folder, cfg.checkpoint.every, cfg.checkpoint.keep)
        if plan.chosen is not None:
            checkpoints.last = Path(plan.chosen)
        logger.info("config %s -> %s", args.config, out / "run.h5")
        logger.debug("memory estimate for rank %d: %s", ctx.rank, estimate.text())
        try:
            run = train(cfg, ctx, checkpoints, plan.state)
        except (MemoryError, torch_out_of_memory()) as e:
            raise OutOfMemory(f"ran out of memory ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                              f"the estimate was {estimate.text()}; lower training.points or the network's size, "
                              "or use more ranks") from None
        kept = f"; the trained state is in {checkpoints.last}: --resume writes it" if checkpoints.last else ""
        blocks = None
        if run.block is not None:  # output.per_rank: every rank writes its part, rank 0 the virtual master
            failed = None
            try:
                write_part(out / "run.h5", run.block)
            except OSError as e:
                failed = f"rank {ctx.rank} could not write its part of the results to {out}: {e.strerror or e}"
            failed = ctx.first_error(failed)  # all ranks stop together
            if failed:
                raise TrainingError(failed + kept)
            blocks = ctx.gather((run.block["offset"], run.block["shape"]))
        if ctx.rank != 0:
            return 0
        try:
            path = write_results(out / "run.h5", run, blocks)
        except OSError as e:
            raise TrainingError(f"could not write the results to {out}: {e.strerror or e}{kept}") from None
    final = run.history["rel_l2"][-1]
    learned = "".join(f", learned {k} = {v:.6g}" for k, v in run.learned.items())
    logger.info("wrote %s (rel_l2 %.3e%s, %.1f s)", path, final, learned, run.wall_time)
    return 0


class OutOfMemory(RuntimeError):
    """This rank could not allocate what training needed."""


def torch_out_of_memory() -> type:
    """torch's out-of-memory exception class (an alias of RuntimeError's subclass in older releases)."""
    import torch

    return getattr(torch, "OutOfMemoryError", MemoryError)


def cmd_plot(args) -> int:
    from . import plotting
    from .io import is_snapshots, read_results

    try:
        if len(args.files) == 1 and not args.compare and is_snapshots(args.files[0]):
            written = plotting.plot_snapshots(args.files[0], args.out_dir, args.format, args.dpi)
            for path in written:
                logger.info("wrote %s", path)
            return 0
    except plotting.PlotError as e:
        raise UsageError(str(e)) from None
    try:
        if len(args.files) > 1 or args.compare:
            for p in args.files:
                read_results(p)  # validates every file before drawing anything
            out = Path(args.compare or Path(args.files[0]).with_name("compare.png"))
            written = [plotting.plot_compare(args.files, out)]
        else:
            written = plotting.plot_run(args.files[0], args.out_dir, args.format, args.dpi)
    except plotting.PlotError as e:
        raise UsageError(str(e)) from None
    for path in written:
        logger.info("wrote %s", path)
    return 0


def cmd_info(args) -> int:
    from . import checkpoint
    from .io import file_format, read_results, trace_error

    kind = file_format(args.file)
    if kind == "fbpinn-snapshots":
        return _info_snapshots(args)
    if kind == checkpoint.FORMAT:
        return _info_checkpoint(args)
    data = read_results(args.file)
    record = _provenance_of(args.file, data.get("provenance"))
    a, tr = data["attrs"], data["training"]
    print(f"{args.file}: problem {a['problem']}, fbpinn {a['fbpinn_version']}, schema {a['schema_version']}, "
          f"{a['n_ranks']} rank(s)")
    print(f"  ran {a['start_time']} .. {a['end_time']} ({float(a['wall_time']):.1f} s)")
    if a.get("problem_module"):
        print(f"  problem module {a['problem_module']} (sha256 {a.get('problem_module_sha256') or 'unknown'})")
    for name, g in data["decomposition"].items():
        if name.startswith("level"):
            print(f"  {name}: {len(g['centres'])} subdomains, grid {g['attrs']['shape'].tolist()}")
    sol = data["solution"]["attrs"]
    versus = f" against the reference ({sol.get('reference_method', '')})" if sol.get("target") == "reference" else ""
    _print_history(tr["step"], tr["loss"], tr["rel_l2"], tr.get("rel_l2_fields"), a, versus)
    for name, value in data.get("learned", {}).items():
        if name != "attrs":
            print(f"  learned {name} = {float(value):.6g}")
    if "receivers" in data:
        rec = data["receivers"]
        kind, err = trace_error(data)
        print(f"  receivers: {len(rec['positions'])} trace(s) of {len(rec['t'])} samples"
              + (f", rel_l2 {err:.4e} against the {kind}" if kind else ""))
    _print_tail(record, a["config"] if args.config else None)
    return 0


def _print_history(steps, loss, rel_l2, per_field, attrs, versus: str = "") -> None:
    """The last row of a run's history: step, loss and errors (per field for several fields)."""
    from .io import field_names

    print(f"  steps {int(steps[-1])}, final loss {loss[-1]:.4e}, final rel_l2 {rel_l2[-1]:.4e}{versus}")
    if per_field is not None and len(per_field):
        print("  final rel_l2 per field: " + ", ".join(f"{f} {e:.4e}" for f, e in zip(field_names(attrs),
                                                                                     per_field[-1])))


def _provenance_of(path, group):
    """The provenance record of a file's /provenance (None where it has none); a damaged one is a
    ResultsError naming the file."""
    from . import provenance
    from .io import ResultsError

    if group is None:
        return None
    try:
        return provenance.read(group)
    except (KeyError, TypeError, ValueError) as e:  # UnicodeDecodeError among them: damaged strings
        raise ResultsError(f"{path}: damaged /provenance ({type(e).__name__}: {e})") from None


def _print_tail(record, config: str | None) -> None:
    """What every kind of file ends its summary with: the provenance and, if asked, the config."""
    from . import provenance

    if record is not None:
        print("provenance:")
        print("\n".join(provenance.describe(record)))
    if config is not None:
        print(config)


def _info_snapshots(args) -> int:
    from .io import read_snapshots

    snap = read_snapshots(args.file)
    a, steps = snap["attrs"], snap["step"]
    grid = " x ".join(f"{len(v)} {k}" for k, v in snap["axes"].items())
    span = f", steps {int(steps[0])} .. {int(steps[-1])}, {float(snap['time'][-1]):.1f} s of training" \
        if len(steps) else ""
    print(f"{args.file}: snapshots of problem {a.get('problem', '?')}, fields {a.get('fields', '?')}, "
          f"fbpinn {a.get('fbpinn_version', '?')}")
    print(f"  {len(steps)} snapshot(s) on a grid of {grid}{span}")
    _print_tail(snap.get("provenance"), a.get("config", "") if args.config else None)
    return 0


def _info_checkpoint(args) -> int:
    from . import checkpoint
    from .config import load_config
    from .io import ResultsError

    try:
        state = checkpoint.read(args.file)
    except checkpoint.CheckpointError as e:
        raise ResultsError(str(e)) from None
    cfg = load_config(data=tomllib.loads(state["config"]), stored=True)
    hist = state["history"]
    print(f"{args.file}: checkpoint of problem {cfg.problem_name} at step {state['step']} of "
          f"{cfg.training.steps} (schedule stage {state['stage']}), fbpinn {state['fbpinn_version'] or '?'}, "
          f"{state['n_ranks']} rank(s)")
    print(f"  written {state['written'] or '?'}, {float(state['wall_time']):.1f} s of training; verified "
          f"(sha256 {state['digest'][:16]}...)")
    if state.get("problem_module"):
        print(f"  problem module {state['problem_module']} (sha256 {state.get('problem_module_sha256') or 'unknown'})")
    for level, shape in enumerate(cfg.decomposition.level_shapes()):
        print(f"  level{level}: {math.prod(shape)} subdomains, grid {list(shape)}")
    _print_history(hist["step"], hist["loss"], hist["rel_l2"], hist.get("rel_l2_fields"),
                   {"fields": ",".join(checkpoint.problem_fields(cfg))})
    for key, value in state["arrays"].items():
        if key.startswith("parameters/problem/"):
            print(f"  learned {key.rsplit('/', 1)[1]} = {float(value):.6g}")
    _print_tail(state.get("provenance"), state["config"] if args.config else None)
    return 0


def cmd_export(args) -> int:
    from .export import xdmf

    try:
        path = xdmf(args.file, args.out, args.step)
    except OSError as e:
        raise UsageError(f"cannot write {e.filename or args.out}: {e.strerror or e}") from None
    logger.info("wrote %s", path)
    return 0


def cmd_compare(args) -> int:
    from .compare import compare, table

    print(table(compare(args.files, force=args.force)))
    if args.figure:
        from . import plotting

        try:
            logger.info("wrote %s", plotting.plot_differences(args.files, args.figure, args.force))
        except plotting.PlotError as e:
            raise UsageError(str(e)) from None
    return 0


def cmd_eval(args) -> int:
    """Evaluate a results file's or checkpoint's model at points (a file or a grid) into HDF5 or CSV."""
    from . import checkpoint
    from .solution import Solution

    out = Path(args.out)
    if out.suffix.lower() not in (".h5", ".hdf5", ".csv"):
        raise UsageError(f"--out {out}: unknown extension {out.suffix or '(none)'}; use .h5 (HDF5) or .csv")
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: torch sees no CUDA device here")
    try:
        sol = Solution.load(args.file, device=device)
    except checkpoint.CheckpointError as e:
        raise UsageError(str(e)) from None
    fields = _names(args.fields) if args.fields is not None else list(sol.fields)
    for name in fields:
        if name not in sol.fields:
            raise UsageError(f"--fields: {name!r} is not a field of {args.file} (fields: {', '.join(sol.fields)})")
    names = list(dict.fromkeys(fields + _names(args.derivatives or "")))
    if not names:
        raise UsageError("nothing to evaluate: --fields and --derivatives name no quantity")
    grid, traces = None, None
    if args.samples is not None and args.traces is None:
        raise UsageError("--samples sets the times of --traces; give --traces POSITIONS too")
    if args.grid is not None:
        grid = _grid_shape(args.grid, sol)
        x = sol.model.problem.domain.grid(grid).numpy()  # first axis slowest, as the test grid
    elif args.traces is not None:
        x, traces = _trace_points(args, sol)
    else:
        x = _read_points(args.points, sol.axes)
    try:
        values = sol(x, *names, chunk=args.chunk)
    except ValueError as e:
        raise UsageError(f"{args.file}: {e}") from None
    try:
        if out.suffix.lower() == ".csv":
            _write_csv(out, sol.axes, names, x, values)
        else:
            _write_eval_h5(out, sol, args.file, names, x, values, grid, traces)
    except OSError as e:
        raise UsageError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    logger.info("wrote %s: %d point(s), %s", out, x.shape[0], ", ".join(names))
    return 0


def _trace_points(args, sol):
    """The points of ``--traces POSITIONS --samples N``: every receiver position at N times evenly
    over the time axis (receiver-major), and ``(positions, times)``."""
    import numpy as np

    from .points import PointsError, read

    axes = tuple(sol.axes)
    if len(axes) < 2 or axes[-1] != "t":
        raise UsageError(f"--traces: traces u(r, t) need a problem whose last axis is t; {args.file} has axes "
                         f"{', '.join(axes)}")
    try:
        positions = read(args.traces, axes[:-1], f"--traces {args.traces}")
    except PointsError as e:
        raise UsageError(str(e)) from None
    samples = 101 if args.samples is None else args.samples
    if not 2 <= samples <= 10**7:
        raise UsageError(f"--samples {samples}: must lie in 2..10000000")
    times = np.linspace(sol.domain[0][-1], sol.domain[1][-1], samples)
    r, k = np.meshgrid(np.arange(len(positions)), np.arange(samples), indexing="ij")
    return np.concatenate([positions[r.ravel()], times[k.ravel(), None]], axis=1), (positions, times)


def _names(text: str) -> list:
    """A comma-separated list of names, blanks dropped."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _grid_shape(text: str, sol) -> list:
    """``--grid 101,51``: points per axis (at least 1 each, one per axis of ``sol``)."""
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--grid {text!r}: give whole numbers of points per axis, e.g. "
                         f"{','.join(['101'] * len(sol.axes))}") from None
    if len(shape) != len(sol.axes) or min(shape) < 1:
        raise UsageError(f"--grid {text!r}: give {len(sol.axes)} positive number(s) of points, one per axis "
                         f"({', '.join(sol.axes)})")
    return shape


def _read_points(spec: str, axes):
    """Points of ``--points`` (:func:`fbpinn.points.read`); UsageError naming what is wrong."""
    from .points import PointsError, read

    try:
        return read(spec, axes, f"--points {spec}")
    except PointsError as e:
        raise UsageError(str(e)) from None


def _write_csv(out: Path, axes, names, x, values) -> None:
    """CSV, atomically: a header of the axis names and the quantities, then one row per point."""
    import numpy as np

    from .io import staged

    out.parent.mkdir(parents=True, exist_ok=True)
    with staged() as stage:
        np.savetxt(stage(out), np.concatenate([x, values], axis=1), delimiter=",", fmt="%.17g",
                   header=",".join([*axes, *names]), comments="")


def _write_eval_h5(out: Path, sol, source, names, x, values, grid, traces=None) -> None:
    """HDF5, atomically: ``x`` (N, d) and one (N,) dataset per quantity; attributes name the source.
    With ``traces`` (positions (R, d - 1), times (T,)): also ``positions`` and ``t``, and every
    quantity as (R, T)."""
    import numpy as np

    from . import __version__
    from .io import write_atomic

    def fill(f):
        f.attrs["format"] = "fbpinn-eval"
        f.attrs["fbpinn_version"] = __version__
        f.attrs["source"] = str(Path(source).absolute())
        f.attrs["step"] = sol.step
        f.attrs["problem"] = sol.problem
        f.attrs["axes"] = ",".join(sol.axes)
        f.attrs["fields"] = ",".join(sol.fields)
        f.attrs["quantities"] = ",".join(names)
        if grid is not None:
            f.attrs["grid"] = np.asarray(grid, dtype=np.int64)
        f["x"] = x
        shape = (-1,) if traces is None else (len(traces[0]), len(traces[1]))
        if traces is not None:
            f["positions"], f["t"] = traces
            f.attrs["traces"] = np.asarray(shape, dtype=np.int64)
        for c, name in enumerate(names):
            f[name] = values[:, c].reshape(shape)

    write_atomic(out, fill)


def cmd_merge(args) -> int:
    from .io import merge

    try:
        path = merge(args.file, args.output, overwrite=args.overwrite)
    except FileExistsError as e:
        raise UsageError(f"{e.filename} exists; pass --overwrite to replace it") from None
    except OSError as e:
        raise UsageError(f"cannot write {e.filename or args.output}: {e.strerror or e}") from None
    logger.info("wrote %s", path)
    return 0


def cmd_problems(args) -> int:
    from . import registry
    from .problems import all_problems

    try:
        problems = all_problems()
    except registry.RegistryError as e:
        raise UsageError(str(e)) from None
    for name, cls in sorted(problems.items()):
        doc = ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        print(f"{name:30s} {doc}")
    for why in registry.broken("problem").values():  # the others are listed all the same
        print(f"fbpinn: warning: {why}", file=sys.stderr)
    return 0


class UsageError(ValueError):
    pass


def _choose_checkpoint(folder: Path, cfg, resume: bool, allow_module_change: bool = False) \
        -> tuple[str | None, dict | None]:
    """The checkpoint to go on from and its state: with ``--resume``, the newest one that passes
    verification (None, None if there are no checkpoint files; UsageError if all are damaged);
    without it, refuse to start over a folder that holds another run's checkpoints.
    ``allow_module_change``: go on although ``problem.module``'s source changed (a warning)."""
    from . import checkpoint as ckpt

    found = ckpt.listing(folder)
    if not resume:
        if found:
            raise UsageError(f"{folder} holds checkpoints of an earlier run (newest: step {found[0][0]}); "
                             "continue it with --resume, or train into another --out folder")
        return None, None
    # Newest first; a damaged one (it fails verification) is skipped with its reason.  A config
    # that does not fit the run is the user's to fix: check_compatible raises, nothing is skipped.
    failed = []
    for step, path in found:
        try:
            state = ckpt.read(path)
        except ckpt.CheckpointError as e:
            logger.warning("skipping damaged checkpoint %s", e)
            failed.append(path.name)
            continue
        ckpt.check_compatible(state, cfg, path, allow_module_change)
        if failed:
            logger.warning("resuming from %s, the newest checkpoint that passes verification", path)
        return str(path), state
    if found:
        raise UsageError(f"--resume: none of the {len(found)} checkpoint(s) in {folder} passes verification "
                         f"({', '.join(failed)}; the reasons are logged above); nothing was trained. Move them "
                         "away to start again from step 1")
    logger.info("no checkpoint in %s: starting at step 1", folder)
    return None, None


class AgreedError(UsageError):
    """Bad input that every rank has seen (see ``Context.first_error``)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fbpinn", description="Finite Basis PINNs: train, plot and inspect runs.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a TOML config",
                       description="Train the model a TOML config describes and write DIR/run.h5.")
    t.add_argument("config", help="TOML config file (see docs/config.md)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.steps=2000 (repeatable)")
    t.add_argument("--out", metavar="DIR", help="results folder (default: output.dir or results/<config stem>)")
    t.add_argument("--resume", action="store_true",
                   help="go on from the newest checkpoint in DIR/checkpoints that passes verification (from step 1 "
                        "if there is none at all; status 2 if all are damaged); training.steps is the total, so a "
                        "larger value trains on")
    t.add_argument("--overwrite", action="store_true",
                   help="replace a finished DIR/run.h5 (without it, train refuses to start over one)")
    t.add_argument("--allow-module-change", action="store_true",
                   help="with --resume: go on although the source of problem.module changed since the checkpoint "
                        "was written (a warning); without it such a resume stops with status 2")
    t.set_defaults(func=cmd_train)

    pl = sub.add_parser("plot", help="draw figures (PNG, GIF) from results files",
                        description="With one file: PNGs beside it (solution vs exact or reference, error, "
                                    "subdomains and windows, loss and test error; time slices for space-time "
                                    "problems) and an animated GIF of 2-D wavefields. With several, or "
                                    "--compare: one figure overlaying their solutions.")
    pl.add_argument("files", nargs="+", help="run.h5 files")
    pl.add_argument("--compare", metavar="PNG", help="write a comparison figure of all files to PNG")
    pl.add_argument("--out-dir", metavar="DIR", help="write one file's figures to DIR (created if missing) "
                    "instead of beside the file")
    pl.add_argument("--format", default="png", help="format of the still figures: png (default), pdf or svg; "
                    "the wavefield animation stays a GIF")
    pl.add_argument("--dpi", type=int, default=120, help="resolution of the still figures (20..1200; default 120)")
    pl.set_defaults(func=cmd_plot)

    x = sub.add_parser("export", help="describe a results or snapshots file for ParaView/VTK (XDMF)",
                       description="Write RUN.xdmf beside RUN (a run.h5 or a snapshots.h5): an XDMF 2 description of "
                                   "the grid and the solution datasets of RUN, which ParaView and VTK open; the data "
                                   "stays in RUN.")
    x.add_argument("file", help="run.h5 or snapshots.h5 file")
    x.add_argument("--xdmf", action="store_true", help="write XDMF (the default and only format)")
    x.add_argument("--out", metavar="FILE", help="where to write it (default: the file's name with .xdmf)")
    x.add_argument("--step", type=int, metavar="S",
                   help="snapshots of a space-time problem: the training step of the snapshot to describe (default: "
                        "the newest)")
    x.set_defaults(func=cmd_export)

    c = sub.add_parser("compare", help="tabulate several runs: errors, times, differences between solutions",
                       description="Print one row per results file: problem, steps, final relative L2 error, "
                                   "training time, and the relative difference between its solution and the "
                                   "first file's on the first file's test grid (any dimension; other grids are "
                                   "interpolated).")
    c.add_argument("files", nargs="+", help="run.h5 files (at least two); the first is the baseline")
    c.add_argument("--force", action="store_true", help="tabulate runs of different problems too (without "
                   "differences)")
    c.add_argument("--figure", metavar="PNG", help="also draw the runs against the first: lines in 1-D, heat maps "
                   "of the differences in 2-D and space-time (the suffix picks the format)")
    c.set_defaults(func=cmd_compare)

    i = sub.add_parser("info", help="summarise a results file", description="Print a summary of a run.h5 file.")
    i.add_argument("file", help="run.h5 file")
    i.add_argument("--config", action="store_true", help="also print the resolved config")
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("eval", help="evaluate a trained model at points: fields and derivatives to HDF5 or CSV",
                       description="Rebuild the model of a results file or checkpoint (no config file needed) and "
                                   "evaluate its fields and derivatives at points from a file or on a grid over "
                                   "the domain; writes OUT (.h5 or .csv).")
    e.add_argument("file", metavar="RUN", help="run.h5 (merged or per-rank) or a checkpoint step_*.h5")
    where = e.add_mutually_exclusive_group(required=True)
    where.add_argument("--points", metavar="FILE", help="points: FILE.npy of shape (N, d), FILE.csv with one column "
                       "per axis (an optional header of axis names), or FILE.h5:/dataset")
    where.add_argument("--grid", metavar="N,N", help="a grid over the whole domain, ends included: points per axis, "
                       "e.g. 101,51")
    where.add_argument("--traces", metavar="FILE", help="receivers for traces u(r, t) (space-time problems): their "
                       "positions along the space axes, in a file read as --points is; see --samples")
    e.add_argument("--samples", type=int, metavar="N", help="with --traces: times per trace, evenly over the time "
                   "axis, ends included (default 101)")
    e.add_argument("--fields", metavar="NAMES", help="fields to write, comma-separated (default: all; '' for none)")
    e.add_argument("--derivatives", metavar="NAMES", help="derivatives to write, e.g. u_x,u_tt")
    e.add_argument("--out", required=True, metavar="FILE", help="output: .h5 or .csv (replaced if it exists)")
    e.add_argument("--device", default="cpu", help="torch device to evaluate on (default cpu)")
    e.add_argument("--chunk", type=int, default=65536, help="points evaluated at a time (default 65536)")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("merge", help="make one self-contained file from a per-rank results file",
                       description="Copy a run.h5 whose solution is split over per-rank files (output.per_rank) "
                                   "into one self-contained file, reading the virtual datasets through.")
    m.add_argument("file", help="run.h5 file written with output.per_rank = true")
    m.add_argument("-o", "--output", metavar="FILE", help="merged file (default: <name>_merged.h5 beside it)")
    m.add_argument("--overwrite", action="store_true", help="replace the merged file if it exists")
    m.set_defaults(func=cmd_merge)

    pr = sub.add_parser("problems", help="list the registered problems", description="List the problems by name.")
    pr.set_defaults(func=cmd_problems)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        # Before torch and the rest of fbpinn are imported (fbpinn.signals imports nothing slow):
        # from here on, SIGTERM and SIGUSR1 stop training with a checkpoint, even during start-up.
        from . import signals

        with signals.stop_signals():
            status = _run(args)
            if getattr(args, "ctx", None) is not None and args.ctx.parallel:
                signals.exiting()  # a launcher's SIGTERM while this rank exits must not change its status
            return status
    try:
        return _run(args)
    except BrokenPipeError:  # the reader went away (fbpinn info run.h5 | head): not an error of ours
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):  # no descriptor behind sys.stdout: nothing is flushed at exit
            pass
        return 0


def _run(args) -> int:
    from .config import ConfigError
    from .io import ResultsError
    from .trainer import Stopped, TrainingError

    from .parallel import Context, LaunchError

    try:
        ctx = args.ctx = Context.from_environment() if args.command == "train" else Context(None)
    except LaunchError as e:  # every process is a job of its own here: each says so
        print(f"fbpinn: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.verbose, ctx.rank, ctx.size)
    try:
        return args.func(args)
    except (ConfigError, ResultsError, UsageError) as e:
        if ctx.parallel and not isinstance(e, AgreedError):
            # Found by this rank alone (e.g. no GPU on its node): the others must not wait for it.
            ctx.abort(f"error: {e}; aborting all ranks", EXIT_USAGE)
        if ctx.rank == 0:
            print(f"fbpinn: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Stopped as e:
        # Every rank agreed on the stop at the same step and the checkpoint is complete.
        if ctx.rank == 0:
            print(f"fbpinn: {e}; go on with --resume", file=sys.stderr)
        return EXIT_STOPPED
    except OutOfMemory as e:  # found by this rank alone
        if ctx.parallel:
            ctx.abort(f"{e}; aborting all ranks", EXIT_FAILED)
        print(f"fbpinn: training failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except TrainingError as e:
        # The loss is reduced over all ranks, so every rank stops at the same step.
        if ctx.rank == 0:
            print(f"fbpinn: training failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if not ctx.parallel:
            print("fbpinn: interrupted; no results written", file=sys.stderr)
            return 130
        ctx.abort("interrupted; no results written", 130)
    except Exception as e:
        if not ctx.parallel:
            raise
        # One rank failing must not leave the others waiting in a collective forever.
        import traceback

        ctx.abort(f"{type(e).__name__}: {e}; aborting all ranks\n{traceback.format_exc()}", EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())

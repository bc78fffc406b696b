"""Ablations of the wave studies: train a shipped config with a few overrides per row, record the
final error, the trace error (with receivers) and the time, and keep a table in docs/benchmarks.md.

Every row is one ``fbpinn train`` command; rows run as separate processes, ``--jobs`` at a time
(each with ``training.threads = --threads``), and each finished row is appended to
``results/ablation/<study>.jsonl`` at once, so an interrupted study keeps what it finished. The
table of a study (section "Wave ablation: <study>") lists every row in that file.

    python scripts/ablation.py wave1d base "causal 0.1=training.causal=0.1"
    python scripts/ablation.py wave1d --table            # rewrite the table from the log only

A row is ``NAME=KEY=VALUE[;KEY=VALUE...]`` (or ``base``: the config as shipped). Studies are the
shipped configs by stem (``wave1d`` is ``configs/wave1d.toml``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import h5py
import numpy as np

from mdsection import replace_section

ROOT = Path(__file__).resolve().parent.parent


def parse_row(text: str) -> tuple[str, list[str]]:
    """``(name, overrides)`` of ``NAME=KEY=VALUE;KEY=VALUE`` (or ``base``)."""
    if text == "base":
        return "as shipped", []
    name, _, rest = text.partition("=")
    if not rest:
        raise SystemExit(f"ablation: row {text!r} is neither 'base' nor NAME=KEY=VALUE[;KEY=VALUE...]")
    return name, [o.strip() for o in rest.split(";") if o.strip()]


def run_row(study: str, name: str, overrides: list[str], threads: int, jobs: int = 1) -> dict:
    """Train one row and return its record."""
    config = ROOT / "configs" / f"{study}.toml"
    out = ROOT / "results" / "ablation" / study / name.replace(" ", "_").replace("/", "_")
    command = [sys.executable, "-m", "fbpinn", "train", str(config), "--out", str(out), "--overwrite",
               "--set", f"training.threads={threads}", *[a for o in overrides for a in ("--set", o)]]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    shown = " ".join(["fbpinn train", f"configs/{study}.toml", *[f"--set {o}" for o in overrides]])
    record = {"study": study, "name": name, "command": shown, "overrides": overrides, "threads": threads,
              "jobs": jobs, "wall": wall, "returncode": proc.returncode, "date": date.today().isoformat()}
    if proc.returncode != 0:
        record["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return record
    with h5py.File(out / "run.h5") as f:
        record["rel_l2"] = float(f["training/rel_l2"][-1])
        record["train_time"] = float(f.attrs["wall_time"])
        record["steps"] = int(f["training/step"][-1])
        if "receivers" in f and "error" in f["receivers"]:
            g = f["receivers"]
            target = g.attrs["target"]
            record["traces_rel_l2"] = float(np.sqrt((g["error"][()] ** 2).sum() / (g[target][()] ** 2).sum()))
    return record


def table(study: str) -> list[str]:
    """The Markdown lines of a study's log."""
    log = ROOT / "results" / "ablation" / f"{study}.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    body = [f"Each row: the command, run with `--set training.threads=T` by `python scripts/ablation.py {study} ... "
            f"--jobs J --threads T` on {platform.machine()}, {os.cpu_count()} CPU cores, J rows at once; error: final "
            "relative L2 error on the test grid; traces: of the receivers' traces, where the config has receivers; "
            "time: training time in the results file (J rows sharing the cores: compare times within a study).", "",
            "| row | command | T x J | rel. L2 error | traces | time (s) | date |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("returncode"):
            body.append(f"| {r['name']} | `{r['command']}` | {r['threads']} x {r.get('jobs', 1)} | failed: "
                        f"{r.get('error', '?')} | | | {r['date']} |")
            continue
        traces = f"{r['traces_rel_l2']:.2e}" if "traces_rel_l2" in r else ""
        body.append(f"| {r['name']} | `{r['command']}` | {r['threads']} x {r.get('jobs', 1)} | {r['rel_l2']:.2e} | "
                    f"{traces} | {r['train_time']:.0f} | {r['date']} |")
    return body


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a shipped config's stem, e.g. wave1d")
    parser.add_argument("rows", nargs="*", help="rows: base, or NAME=KEY=VALUE[;KEY=VALUE...]")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at once (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="training.threads of each row (default 0: all)")
    parser.add_argument("--table", action="store_true", help="only rewrite the table from the log")
    args = parser.parse_args(argv)
    if not (ROOT / "configs" / f"{args.study}.toml").is_file():
        raise SystemExit(f"ablation: no configs/{args.study}.toml")
    log = ROOT / "results" / "ablation" / f"{args.study}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    if not args.table:
        rows = [parse_row(r) for r in args.rows]

        def one(row):
            record = run_row(args.study, *row, args.threads, args.jobs)
            with open(log, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
            return record

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(one, rows))
    replace_section(ROOT / "docs" / "benchmarks.md", "Benchmarks", f"Wave ablation: {args.study}", table(args.study))
    return 0


if __name__ == "__main__":
    sys.exit(main())

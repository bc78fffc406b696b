"""Peak memory of post-processing a large per-rank output: ``fbpinn merge`` for a few chunk
sizes, then ``plot``, ``eval``, ``export`` and ``load_results``.

Trains ``acoustic1d`` for one step on 2 ranks with a 1415 x 1415 test grid (2.0 million points,
two fields: six datasets of 16 MB split over two part files), then runs each operation in a
fresh process and records how much the process's peak resident memory grew during it.  The
tables go to the section "Merge memory" of docs/benchmarks.md.

    python scripts/merge_memory.py            # about a minute on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
from datetime import date
from pathlib import Path

from mdsection import replace_section

ROOT = Path(__file__).resolve().parents[1]
POINTS = 1415
CHUNKS = [2**16, 2**20, 2**22]
CONFIG = f"""
[problem]
name = "acoustic1d"
[decomposition]
subdomains = [4, 4]
overlap = 1.9
[network]
hidden = [8]
[training]
steps = 1
dtype = "float32"
points = [10, 10]
[test]
points = [{POINTS}, {POINTS}]
[output]
per_rank = true
"""
MEASURE = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    import fbpinn, fbpinn.export, fbpinn.io as io, fbpinn.plotting
    source, out, what = sys.argv[1], sys.argv[2], sys.argv[3]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if what == "plot":
        fbpinn.plotting.plot_run(source, out)
    elif what == "eval":
        sol = fbpinn.Solution.load(source)
        sol(np.random.default_rng(0).uniform(0.0, 1.0, (100_000, 2)))
    elif what == "export":
        fbpinn.export.xdmf(source, out + ".xdmf")
    elif what == "load_results lazy":
        data = fbpinn.load_results(source, lazy=True)
        data["solution"]["p"][::100, ::100]
    elif what == "load_results":
        fbpinn.load_results(source)
    else:
        io.merge(source, out, overwrite=True, chunk=int(what))
    print(json.dumps({"kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
""")
OPERATIONS = [("plot", "`fbpinn plot` (all figures, drawn from one point in 3 along each axis: 472 x 472)"),
              ("eval", "`fbpinn.Solution.load` and 100,000 points evaluated"),
              ("export", "`fbpinn export --xdmf`"),
              ("load_results lazy", "`fbpinn.load_results(path, lazy=True)` and a strided slice of one field"),
              ("load_results", "`fbpinn.load_results(path)`: everything in memory, for comparison")]


def main() -> None:
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "big.toml"
        cfg.write_text(CONFIG)
        subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "fbpinn", "train", str(cfg), "--out",
                        f"{tmp}/run"], check=True, capture_output=True)
        source = Path(tmp) / "run" / "run.h5"
        data_mib = sum(p.stat().st_size for p in source.parent.glob("run_p*.h5")) / 2**20
        def grown(what: str, out: str) -> float:
            proc = subprocess.run([sys.executable, "-c", MEASURE, str(source), out, what], check=True,
                                  capture_output=True, text=True)
            return json.loads(proc.stdout.strip().splitlines()[-1])["kib"] / 1024

        rows, others = [], []
        for chunk in CHUNKS:
            rows.append(f"| {chunk:,} | {chunk * 8 / 2**20:.1f} | {grown(str(chunk), f'{tmp}/merged.h5'):.1f} |")
            print(rows[-1], flush=True)
        for what, text in OPERATIONS:
            target = Path(tmp) / what.replace(" ", "_")
            others.append(f"| {text} | {grown(what, str(target)):.1f} |")
            print(others[-1], flush=True)
    body = [f"Measured {date.today().isoformat()} with `python scripts/merge_memory.py` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores: `fbpinn merge` of a per-rank "
            f"output of {POINTS}² = {POINTS**2:,} test points, two fields (six solution datasets, {data_mib:.0f} MiB in "
            "two part files). Growth: how much the merging process's peak resident memory rose during the merge. "
            "`fbpinn merge` uses the default chunk, 2^20 values; a slab is also at most one part file's block. "
            "Before merge copied in slabs it read the whole solution into memory: 108 MiB of growth on this output "
            "(2026-12-01, measured the same way).", "",
            "| chunk (values) | chunk (MiB of float64) | peak growth (MiB) |", "|---|---|---|", *rows, "",
            "The other post-processing commands on the same output (peak growth of a fresh process; the "
            "solution's datasets are left on disk and read only where needed). Before `plot` read the grid with "
            "a stride it grew by 1,231 MiB here (the whole grid read, and drawn by matplotlib; 2026-12-01, "
            "measured the same way).", "",
            "| operation | peak growth (MiB) |", "|---|---|", *others]
    replace_section(ROOT / "docs" / "benchmarks.md", "Benchmarks", "Merge memory", body)


if __name__ == "__main__":
    main()

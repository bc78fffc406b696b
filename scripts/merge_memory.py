"""Peak memory of ``fbpinn merge`` on a large per-rank output, for a few chunk sizes.

Trains ``acoustic1d`` for one step on 2 ranks with a 1415 x 1415 test grid (2.0 million points,
two fields: six datasets of 16 MB split over two part files), then merges it in fresh
processes with ``fbpinn.io.merge(..., chunk=C)`` and records how much the process's peak
resident memory grew during the merge.  The table goes to the section "Merge memory" of
docs/benchmarks.md.

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
    import fbpinn.io as io
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    io.merge(sys.argv[1], sys.argv[2], overwrite=True, chunk=int(sys.argv[3]))
    print(json.dumps({"kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
""")


def main() -> None:
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "big.toml"
        cfg.write_text(CONFIG)
        subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "fbpinn", "train", str(cfg), "--out",
                        f"{tmp}/run"], check=True, capture_output=True)
        source = Path(tmp) / "run" / "run.h5"
        data_mib = sum(p.stat().st_size for p in source.parent.glob("run_p*.h5")) / 2**20
        rows = []
        for chunk in CHUNKS:
            proc = subprocess.run([sys.executable, "-c", MEASURE, str(source), f"{tmp}/merged.h5", str(chunk)],
                                  check=True, capture_output=True, text=True)
            grew = json.loads(proc.stdout.strip().splitlines()[-1])["kib"] / 1024
            rows.append(f"| {chunk:,} | {chunk * 8 / 2**20:.1f} | {grew:.1f} |")
            print(rows[-1], flush=True)
    body = [f"Measured {date.today().isoformat()} with `python scripts/merge_memory.py` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores: `fbpinn merge` of a per-rank "
            f"output of {POINTS}² = {POINTS**2:,} test points, two fields (six solution datasets, {data_mib:.0f} MiB in "
            "two part files). Growth: how much the merging process's peak resident memory rose during the merge. "
            "`fbpinn merge` uses the default chunk, 2^20 values; a slab is also at most one part file's block. "
            "Before merge copied in slabs it read the whole solution into memory: 108 MiB of growth on this output "
            "(2026-12-01, measured the same way).", "",
            "| chunk (values) | chunk (MiB of float64) | peak growth (MiB) |", "|---|---|---|", *rows]
    replace_section(ROOT / "docs" / "benchmarks.md", "Benchmarks", "Merge memory", body)


if __name__ == "__main__":
    main()

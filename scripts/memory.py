"""The pre-flight's memory estimate against the memory a training step really takes, on the CPU.

For each case (a shipped config with its collocation points raised so that the batch
dominates), a fresh process builds the trainer and takes two steps; its peak resident memory
above what it held before building is the measurement.  The estimate is
:func:`fbpinn.preflight.estimate_memory` for the same config.  Writes the section
"Memory estimate" of docs/benchmarks.md.

    python scripts/memory.py            # about a minute on two cores
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

from fbpinn import preflight
from fbpinn.config import load_config
from fbpinn.parallel import Context

from mdsection import replace_section

ROOT = Path(__file__).resolve().parents[1]

CASES = [("cos1d", "[80000]"), ("laplace2d_multiscale", "[300,300]"), ("burgers", "[200,200]"),
         ("harmonic_oscillator", "[50000]"), ("wave2d_small", "[30,30,30]"), ("acoustic1d", "[300,300]"),
         ("lotka_volterra", "[100000]"), ("beam", "[200,200]")]
MEASURE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from fbpinn.config import load_config
    from fbpinn.trainer import Trainer
    torch.set_num_threads(1)
    cfg = load_config(sys.argv[1], sys.argv[2:])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer = Trainer(cfg)
    trainer.step(1)
    trainer.step(2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"kib": peak - before, "pairs": trainer.pairs()}))
""")


def main() -> None:
    rows = []
    for name, points in CASES:
        dim = points.count(",") + 1
        overrides = [f"training.points={points}", f"test.points={[2] * dim}", "training.compile=false",
                     'schedule.kind="all_active"']
        config = ROOT / "configs" / f"{name}.toml"
        proc = subprocess.run([sys.executable, "-c", MEASURE, str(config), *overrides], capture_output=True,
                              text=True, check=True)
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        est = preflight.estimate_memory(load_config(config, overrides), Context(None))
        measured = got["kib"] * 1024
        rows.append(f"| {name} | {points} | {got['pairs']:,} | {est.pairs:,} | {measured / 2**20:,.0f} | "
                    f"{est.total / 2**20:,.0f} | {est.total / measured:.2f} |")
        print(rows[-1], flush=True)
    body = [f"Measured {date.today().isoformat()} on the two-core machine (CPU, float32, one thread) with "
            "`python scripts/memory.py`. Peak: the resident memory a fresh process gained while building the "
            "trainer and taking two steps. The estimate is what `fbpinn train` compares with the memory "
            "available before it starts (docs/cli.md, pre-flight).", "",
            "| config | training.points | pairs | estimated pairs | peak (MiB) | estimate (MiB) | estimate / peak |",
            "|---|---|---|---|---|---|---|", *rows]
    replace_section(ROOT / "docs" / "benchmarks.md", "Benchmarks", "Memory estimate", body)


if __name__ == "__main__":
    main()

"""scripts/alphabeta.py: the latency-bandwidth fit and the exchanges its prediction counts."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ab():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("alphabeta", ROOT / "scripts" / "alphabeta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fit_recovers_latency_and_bandwidth(ab):
    times = {n: 2.5 + n / (12.0 * 1e3) for n in ab.SIZES}  # 2.5 us, 12 GB/s
    alpha, bandwidth = ab.fit(times)
    assert alpha == pytest.approx(2.5, rel=1e-9) and bandwidth == pytest.approx(12.0, rel=1e-9)


def test_exchanges_follow_the_halo(ab):
    # 1-D, 3 ranks of 4 subdomains: the middle rank talks to both neighbours, and its one round moves
    # whole subdomains (``params`` float32 numbers each): those it shares with each of them.
    ex = ab.exchanges((12,), 3, 2.99, params=10)
    assert ex["neighbours"] == 2 and ex["rounds"] == 1
    from fbpinn.decomposition import Level
    from fbpinn.domains import Box
    from fbpinn.parallel import Partition

    part = Partition(Level(Box([0.0], [1.0]), (12,), 2.99), 3)
    held = [set(part.owned(r)) | set(part.halo(r)) for r in range(3)]
    assert ex["bytes"] == (len(held[1] & held[0]) + len(held[1] & held[2])) * 10 * 4 > 0
    # 2 x 2 blocks: a corner subdomain is held by all four ranks, so each talks to the diagonal one too.
    assert ab.exchanges((8, 8), 4, 1.9, params=10)["neighbours"] == 3
    # More ranks of the same block: the busiest rank's round does not grow.
    assert ab.exchanges((48,), 12, 2.99, params=10) == ex
    # One rank: nothing to exchange, efficiency 1.
    assert ab.predict(5.0, {"neighbours": 0, "bytes": 0.0}, 2.0, 20.0) == 1.0
    # One round of (2 alpha + bytes / bandwidth) against 5 ms.
    expected = 5.0 / (5.0 + (2 * 2.0 + ex["bytes"] / 20e3) * 1e-3)
    assert ab.predict(5.0, ex, 2.0, 20.0) == pytest.approx(expected, rel=1e-12)


def test_fit_from_a_file_writes_the_section(ab, tmp_path):
    measured = {"ranks": 2, "allreduce_us": 4.0, "machine": "test", "date": "2026-12-02",
                "pingpong": {str(n): 3.0 + n / 5e3 for n in ab.SIZES}}
    (tmp_path / "m.json").write_text(json.dumps(measured))
    out = tmp_path / "scaling.md"
    out.write_text("# Scaling\n\n## Notes\n\nkept\n")
    assert ab.main(["--fit", str(tmp_path / "m.json"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "alpha = 3.00 µs, bandwidth = 5.0 GB/s" in text and text.rstrip().endswith("kept")
    rows = [line for line in text.splitlines() if line.startswith("| cos1d, 128")]
    assert len(rows) == 1 and all(0.9 < float(c) <= 1.0 for c in rows[0].split("|")[3:9])
    assert ab.main(["--fit", str(tmp_path / "missing.json"), "--out", str(out)]) == 2

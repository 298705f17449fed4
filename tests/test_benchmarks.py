"""The benchmark harness runs end to end (``python -m benchmarks --quick``).

Checks only that every scenario ran and converged, for every engine installed;
no timing is asserted (CI machines differ, and the numbers are for people).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _peer_installed() -> bool:
    return all(importlib.util.find_spec(m) for m in ("pycrdt", "hypercorn", "httpx_ws"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_benchmarks_complete_and_converge(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (tmp_path / "quick.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["type"] == "meta"
    runs = [r for r in records if r["type"] == "run"]
    assert {r["scenario"] for r in runs} == {1, 2, 3, 4, 5, 6}
    engines = {"ours", "peer-hypercorn", "peer-websockets"} if _peer_installed() else {"ours"}
    for scenario in (1, 2, 3, 4, 5):
        assert {r["engine"] for r in runs if r["scenario"] == scenario} == engines
    assert {r["variant"] for r in runs if r["scenario"] == 6} == {"none", "observed"}
    bad = [r for r in runs if not r["converged"] or r.get("error")]
    assert not bad, json.dumps(bad, indent=1)[:3000]
    assert (tmp_path / "quick.md").read_text().startswith("# Benchmark results (quick run)")

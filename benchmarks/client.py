"""The client process: ``python -m benchmarks.client ENGINE SCENARIO --url URL --n N ...``.

Runs one scenario against a server in another process and prints one RESULT line
(JSON) on stdout, with this process's peak RSS added. A failure is reported in the
result (``error``), not as a traceback the harness has to parse.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import traceback
from typing import Any

from .workload import RESULT_PREFIX, emit, peak_rss_mib

ENGINES = ("ours", "peer-hypercorn", "peer-websockets", "machine")
SCENARIOS = ("each", "one_txn", "latency", "catch_up", "idle", "observing", "limits")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.client")
    p.add_argument("engine", choices=ENGINES)
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--url", required=True, help="the server's address")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120.0, help="give up on convergence after")
    p.add_argument("--stall", type=float, default=10.0, help="non-converged after this long idle")
    p.add_argument("--rounds", type=int, default=1, help="observing: rounds of four runs")
    p.add_argument("--workdir", default=None, help="where realm files go (default: a temp dir)")
    args = p.parse_args(argv)
    # The harness stops a stuck client with SIGTERM: unwind, so its own children
    # (the limits' relays) are stopped and its directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    result: dict[str, Any]
    with tempfile.TemporaryDirectory(prefix="rs-bench-", dir=args.workdir) as workdir:
        try:
            if args.engine == "machine":
                from . import limits

                result = limits.run(args.n, workdir)
            elif args.engine == "ours":
                from . import ours

                result = ours.run(
                    args.scenario, args.url, workdir, args.n, args.timeout, args.stall, args.rounds
                )
            else:
                from . import peer

                transport = args.engine.removeprefix("peer-")
                result = peer.run(
                    args.scenario, transport, args.url, args.n, args.timeout, args.stall
                )
        except Exception as exc:
            result = {
                "converged": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8),
            }
    result["client_peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["client_wall_seconds"] = round(time.perf_counter() - started, 3)
    emit(RESULT_PREFIX, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

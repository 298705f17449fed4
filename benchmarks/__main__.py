"""``python -m benchmarks [--quick] [--out DIR] [--scenarios 1,2] [--engines ...] [--profile]``.

Runs our engine and the peer side by side (see benchmarks/README.md), writes
``<name>.jsonl`` (one JSON line per run, after a meta line) and ``<name>.md``
(the tables) to ``--out`` (default benchmarks/results/), and prints the tables.
The name is ``latest`` for a full run and ``quick`` for ``--quick``.
Exit status: 1 when a run could not complete or ours did not converge (a peer
that does not converge is a result, not a failure), else 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path

from .harness import ALL, MACHINE, OURS, plan, run_plan
from .report import render

RESULTS = Path(__file__).resolve().parent / "results"


def _peer_available() -> bool:
    return (
        all(importlib.util.find_spec(m) is not None for m in ("pycrdt", "hypercorn", "httpx_ws"))
        and importlib.util.find_spec("pycrdt.websocket") is not None
    )


README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _update_readme(report: str) -> None:
    """Put a full run's tables into benchmarks/README.md, between the markers."""
    text = README.read_text()
    if START not in text or END not in text:
        return
    body = report.split("\n", 1)[1].lstrip("\n")  # without the report's own title
    body = body.replace("\n## ", "\n### ")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{START}\n{body}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat (< 1 min)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    p.add_argument("--name", default=None, help="file name stem (default latest / quick)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per engine and size")
    p.add_argument(
        "--scenarios", default=None, help="comma-separated subset, e.g. 1,3 (0: the limits)"
    )
    p.add_argument(
        "--engines", default=None, help=f"comma-separated subset of {','.join((*ALL, MACHINE))}"
    )
    p.add_argument("--profile", action="store_true", help="profile ours in scenarios 1 and 2")
    p.add_argument("--keep-raw", action="store_true", help="with --profile: keep py-spy stacks")
    p.add_argument("--report", type=Path, default=None, help="only re-render this .jsonl")
    args = p.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server and client started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.report is not None:
        records = [json.loads(line) for line in args.report.read_text().splitlines() if line]
        print(render(records))
        return 0
    if args.profile:
        from .profiling import profile

        print(f"wrote {profile(args.out, quick=args.quick, keep_raw=args.keep_raw)}")
        return 0

    cases = plan(args.quick, args.repeats)
    if args.scenarios:
        wanted = {int(s) for s in args.scenarios.split(",")}
        cases = [c for c in cases if c.scenario in wanted]
    engines = set(args.engines.split(",")) if args.engines else {*ALL, MACHINE}
    if not _peer_available():
        print(
            "pycrdt / pycrdt-websocket / hypercorn / httpx-ws are not installed: ours only "
            "(pip install -e '.[bench]')",
            file=sys.stderr,
        )
        engines = ({OURS, MACHINE} & engines) or {OURS}
    cases = [replace(c, engines=tuple(e for e in c.engines if e in engines)) for c in cases]
    cases = [c for c in cases if c.engines]

    name = args.name or ("quick" if args.quick else "latest")
    jsonl = args.out / f"{name}.jsonl"
    records = run_plan(cases, jsonl, quick=args.quick)
    report = render(records)
    (args.out / f"{name}.md").write_text(report)
    if not args.quick and args.out == RESULTS and not (args.scenarios or args.engines):
        _update_readme(report)
    print()
    print(report)
    runs = [r for r in records if r.get("type") == "run"]
    # A peer that does not converge is a result; ours not converging, or any run
    # the harness could not complete, is a failure.
    failed = [r for r in runs if r.get("error") or (r["engine"] == OURS and not r.get("converged"))]
    for r in runs:
        if not r.get("converged") or r.get("error"):
            print(
                f"{'FAILED' if r in failed else 'not converged'}: s{r['scenario']} {r['kind']} "
                f"n={r['n']} {r['engine']}: {r.get('error') or r.get('note') or 'B lacks records'}",
                file=sys.stderr,
            )
    ok = not failed
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

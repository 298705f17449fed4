"""The markdown report: one table per scenario, and where each target stands.

Cells read ``median (min–max)`` over the converged runs of that engine and size;
``k/n`` counts converged runs. Ratios compare medians with the *best* peer
transport at that size (the one with the best median among its converged runs),
written so that above 1 means ours is better: throughput ours ÷ peer, times and
latencies peer ÷ ours.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .harness import MACHINE, OURS, PEERS
from .workload import BULK_PART, IDLE_WARM

__all__ = ["render"]

LABEL = {
    OURS: "ours",
    "peer-hypercorn": "peer (Hypercorn + httpx-ws)",
    "peer-websockets": "peer (websockets)",
}
SHORT = {OURS: "ours", "peer-hypercorn": "peer/hc", "peer-websockets": "peer/ws"}

Runs = list[dict[str, Any]]


def _group(records: Iterable[dict[str, Any]]) -> dict[tuple[int, str, int, str], Runs]:
    out: dict[tuple[int, str, int, str], Runs] = defaultdict(list)
    for r in records:
        if r.get("type") == "run":
            out[(r["scenario"], r["variant"], r["n"], r["engine"])].append(r)
    return out


def _values(runs: Runs, key: str | Callable[[dict[str, Any]], Any]) -> list[float]:
    get = key if callable(key) else (lambda r: r.get(key))
    out = []
    for r in runs:
        if not r.get("converged"):
            continue
        v = get(r)
        if isinstance(v, int | float) and not math.isnan(v):
            out.append(float(v))
    return out


def _fmt(v: float, digits: int) -> str:
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _cell(runs: Runs, key: str | Callable[[dict[str, Any]], Any], digits: int = 0) -> str:
    if not runs:
        return "not run"
    vals = _values(runs, key)
    conv = sum(1 for r in runs if r.get("converged"))
    tag = "" if conv == len(runs) else f" ({conv}/{len(runs)} converged)"
    if not vals:
        err = next((r.get("error") for r in runs if r.get("error")), None)
        return "did not converge" + (f": {err[:60]}" if err else "") + tag
    med = statistics.median(vals)
    if len(vals) == 1:
        return _fmt(med, digits) + tag
    return f"{_fmt(med, digits)} ({_fmt(min(vals), digits)}–{_fmt(max(vals), digits)}){tag}"


def _median(runs: Runs, key: str | Callable[[dict[str, Any]], Any]) -> float | None:
    vals = _values(runs, key)
    return statistics.median(vals) if vals else None


def _machine_median(
    g: dict[tuple[int, str, int, str], Runs], key: str, **match: Any
) -> float | None:
    """The median of ``key`` over this machine's limit runs of the largest size
    measured (a full run's, where a file holds a quick run's too), among those
    whose fields equal ``match``."""
    sizes = _sizes(g, 0)
    if not sizes:
        return None
    runs = g.get((0, "", max(sizes), MACHINE), [])
    return _median([r for r in runs if all(r.get(k) == v for k, v in match.items())], key)


def _best_peer(
    g: dict[tuple[int, str, int, str], Runs],
    scenario: int,
    n: int,
    key: str | Callable[[dict[str, Any]], Any],
    higher_better: bool,
    every_run: bool = False,
) -> tuple[str | None, float | None]:
    """The peer transport with the best median over its converged runs; with
    ``every_run``, only among transports that converged in every run."""
    best: tuple[str | None, float | None] = (None, None)
    for peer in PEERS:
        runs = g.get((scenario, "", n, peer), [])
        if every_run and not all(r.get("converged") for r in runs):
            continue
        m = _median(runs, key)
        if m is None:
            continue
        if best[1] is None or (m > best[1] if higher_better else m < best[1]):
            best = (peer, m)
    return best


def _ratio(ours: float | None, peer: float | None, higher_better: bool) -> float | None:
    if ours is None or peer is None or ours == 0 or peer == 0:
        return None
    return ours / peer if higher_better else peer / ours


def _ratio_text(ratio: float | None, peer: str | None) -> str:
    if ratio is None:
        return "n/a (no converged peer run)" if peer is None else "n/a"
    return f"{ratio:.2f}× (vs {SHORT[peer or '']})"


def _conv(
    g: dict[tuple[int, str, int, str], Runs], scenario: int, n: int, variant: str = ""
) -> str:
    parts = []
    for e in (OURS, *PEERS):
        runs = g.get((scenario, variant, n, e))
        if runs:
            parts.append(f"{sum(1 for r in runs if r.get('converged'))}/{len(runs)}")
        else:
            parts.append("–")
    return " · ".join(parts)


def _sizes(g: dict[tuple[int, str, int, str], Runs], scenario: int, variant: str = "") -> list[int]:
    return sorted({n for (s, v, n, _) in g if s == scenario and v == variant})


def _rate(r: dict[str, Any]) -> float | None:
    s = r.get("seconds")
    return r["n"] / s if s else None


def _throughput_table(g: dict[tuple[int, str, int, str], Runs], scenario: int) -> list[str]:
    lines = [
        f"| N | {LABEL[OURS]} | {LABEL['peer-hypercorn']} | {LABEL['peer-websockets']} "
        "| ours ÷ best peer | converged (ours · hc · ws) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for n in _sizes(g, scenario):
        cells = [_cell(g.get((scenario, "", n, e), []), _rate) for e in (OURS, *PEERS)]
        peer, best = _best_peer(g, scenario, n, _rate, True)
        ratio = _ratio(_median(g.get((scenario, "", n, OURS), []), _rate), best, True)
        conv = _conv(g, scenario, n)
        lines.append(f"| {n:,} | {' | '.join(cells)} | {_ratio_text(ratio, peer)} | {conv} |")
    return lines


def render(records: list[dict[str, Any]]) -> str:
    """The whole markdown report for one invocation's records."""
    meta = next((r for r in records if r.get("type") == "meta"), {})
    runs = [r for r in records if r.get("type") == "run"]
    g = _group(runs)
    loads = [r["load_before"] for r in runs if isinstance(r.get("load_before"), int | float)]
    v = meta.get("versions", {})
    out = [
        f"# Benchmark results ({meta.get('mode', '?')} run)",
        "",
        f"Started {meta.get('started', '?')}, finished {meta.get('finished', '?')}; "
        f"commit {meta.get('commit', '?')}"
        + (" plus uncommitted engine changes" if meta.get("engine_uncommitted_changes") else "")
        + f" (realmsync_nb/ hash {meta.get('engine_code_hash', '?')}); "
        f"{meta.get('cpus', '?')} CPUs "
        f"({meta.get('machine', '?')}); Python {v.get('python', '?')}; "
        f"pycrdt {v.get('pycrdt', '?')}, pycrdt-websocket {v.get('pycrdt-websocket', '?')}, "
        f"hypercorn {v.get('hypercorn', '?')}, httpx-ws {v.get('httpx-ws', '?')}, "
        f"websockets {v.get('websockets', '?')}. "
        + (
            f"1-minute load average before each run: median {statistics.median(loads):.1f}, "
            f"max {max(loads):.1f}."
            if loads
            else ""
        ),
        "",
        "Cells: median (min–max) over converged runs; `k/n` = converged runs. Ratios use",
        "medians against the best peer transport at that size; above 1 means ours is better.",
        "",
    ]
    if _sizes(g, 1):
        out += [
            "## 1. One transaction per write: records/s, A → server → B",
            "",
            *_throughput_table(g, 1),
            "",
        ]
    if _sizes(g, 2):
        out += [
            "## 2. One transaction of N writes: records/s, A → server → B",
            "",
            *_throughput_table(g, 2),
            "",
            *_write_phase(g),
        ]
    for n in _sizes(g, 3):
        out += [
            f"## 3. Latency: {n} sequential single writes, A's commit → B notified (ms)",
            "",
            f"| | {LABEL[OURS]} | {LABEL['peer-hypercorn']} | {LABEL['peer-websockets']} "
            "| best peer ÷ ours |",
            "|---|---:|---:|---:|---:|",
        ]
        for key in ("p50_ms", "p99_ms"):
            cells = [_cell(g.get((3, "", n, e), []), key, 3) for e in (OURS, *PEERS)]
            peer, best = _best_peer(g, 3, n, key, False)
            ratio = _ratio(_median(g.get((3, "", n, OURS), []), key), best, False)
            out.append(f"| {key[:3]} | {' | '.join(cells)} | {_ratio_text(ratio, peer)} |")
        out += [f"| converged | {_conv(g, 3, n).replace(' · ', ' | ')} | |", ""]
    for n in _sizes(g, 4):
        ours = g.get((4, "", n, OURS), [])
        out += [
            f"## 4. Catch-up: B offline while A writes {n:,}; B back → all integrated (s)",
            "",
            f"| | {LABEL[OURS]} | {LABEL['peer-hypercorn']} | {LABEL['peer-websockets']} "
            "| best peer ÷ ours |",
            "|---|---:|---:|---:|---:|",
        ]
        cells = [_cell(g.get((4, "", n, e), []), "seconds", 3) for e in (OURS, *PEERS)]
        peer, best = _best_peer(g, 4, n, "seconds", False)
        ratio = _ratio(_median(ours, "seconds"), best, False)
        out.append(f"| seconds | {' | '.join(cells)} | {_ratio_text(ratio, peer)} |")
        out.append(
            f"| download progress events | {_cell(ours, 'progress_events')} "
            "| none (no progress API) | none (no progress API) | |"
        )
        out += [f"| converged | {_conv(g, 4, n).replace(' · ', ' | ')} | |", ""]
        sample = next((r for r in ours if r.get("progress_samples")), None)
        if sample:
            points = ", ".join(
                f"{p['t']:.2f} s: {100 * p['estimate']:.0f}%" for p in sample["progress_samples"]
            )
            out += [
                f"Ours, download progress seen in one run (time since resume: estimate): {points}.",
                "",
            ]
    out += _memory_tables(g)
    out += _observe_table(g)
    out += _limits_table(g)
    out += _targets(g)
    return "\n".join(out) + "\n"


def _write_phase(g: dict[tuple[int, str, int, str], Runs]) -> list[str]:
    """How much of each scenario 2 run ours spent in A's transaction alone."""
    parts = []
    for n in _sizes(g, 2):
        runs = g.get((2, "", n, OURS), [])
        write = _median(runs, "write_seconds")
        total = _median(runs, "seconds")
        if write is not None and total:
            parts.append(f"{write:.3f} s of {total:.3f} s at {n:,} ({100 * write / total:.0f}%)")
    if not parts:
        return []
    return [
        "Ours, A's transaction alone (building the objects and committing them locally, "
        "before anything is sent), median: " + "; ".join(parts) + ".",
        "",
    ]


# What issue 5 states for its own machine (the "Limits" paragraph), for comparison.
_ISSUE_LIMITS = {
    "ws_echo_msgs_per_s": "about 105,000",
    "sqlite_commits_per_s": "about 85,000",
    "sqlite_rows_per_s_one_txn": "about 1,000,000",
    "sqlite_full_commits_per_s": "not given",
}


def _floor_parts(runs: Runs) -> str:
    """Scenario 2's floor split into A's and B's medians, for its limits cell."""
    a, b = _median(runs, "bulk_floor_a_s"), _median(runs, "bulk_floor_b_s")
    return "" if a is None or b is None else f" (A {a:.3f}; B {b:.3f})"


def _limits_table(g: dict[tuple[int, str, int, str], Runs]) -> list[str]:
    lines: list[str] = []
    for n in _sizes(g, 0):
        runs = g.get((0, "", n, MACHINE), [])
        rows = [
            (
                "websockets echo, 100-byte messages, 100 in flight (messages/s)",
                "ws_echo_msgs_per_s",
                0,
            ),
            (
                "SQLite commits/s, one ~100-byte row each (WAL, synchronous=NORMAL)",
                "sqlite_commits_per_s",
                0,
            ),
            ("SQLite rows/s in one transaction (`executemany`)", "sqlite_rows_per_s_one_txn", 0),
            (
                "SQLite commits/s with synchronous=FULL (an fsync each: what a commit needs "
                "to survive a power cut; not used by either engine)",
                "sqlite_full_commits_per_s",
                0,
            ),
        ]
        lines += [
            "## L. This machine's limits and floors (measured in this run)",
            "",
            "| | this machine | issue 5's machine |",
            "|---|---:|---:|",
        ]
        for label, key, digits in rows:
            if any(key in r for r in runs):  # runs recorded before a limit was added lack it
                lines.append(f"| {label} | {_cell(runs, key, digits)} | {_ISSUE_LIMITS[key]} |")
        floor_n = _median(runs, "bulk_floor_n")
        if floor_n is not None:
            lines.append(
                f"| scenario 2's floor at {floor_n:,.0f} records: A's rows and changesets, "
                f"then B's (s) | {_cell(runs, 'bulk_floor_s', 3)}{_floor_parts(runs)} | |"
            )
        for transport, name in (("tcp", "plain TCP"), ("ws", "websockets")):
            for q in ("p50", "p99"):
                lines.append(
                    f"| latency floor over {name}, {q} (ms) | "
                    f"{_cell(runs, f'floor_{transport}_{q}_ms', 3)} | |"
                )
        lines += [
            "",
            f"The latency floor is scenario 3's path with nothing but its three SQLite "
            f"commits (WAL, synchronous=NORMAL, as ours) and the transport ({n} sequential "
            "writes): A's thread commits a row "
            "and hands it to an event loop on another thread, a relay process commits it "
            "and forwards it, B's loop commits it and timestamps that commit "
            "(benchmarks/limits.py).",
            "",
        ]
        if floor_n is not None:
            lines += [
                "Scenario 2's floor is the least A and B do with the records, one after "
                "the other, in one process with no server and no network: A builds them, "
                "inserts them with `executemany` and stores each part of "
                f"{BULK_PART:,} as a JSON changeset, in one transaction; B reads the "
                "changesets from A's history (standing in for the server, whose own commit "
                "and the transfer are left out), decodes them and inserts the rows in one "
                "transaction. No objects, no validation, no protocol.",
                "",
            ]
    return lines


def _memory_tables(g: dict[tuple[int, str, int, str], Runs]) -> list[str]:
    out: list[str] = []
    idle = _sizes(g, 5)
    for n in idle:
        out += [
            f"## 5a. Server memory with {n:,} connected idle sessions",
            "",
            f"| | server RSS empty (MiB) | with the first {IDLE_WARM} sessions (MiB) "
            f"| with all the sessions (MiB) | KiB per session after the first {IDLE_WARM} "
            "| client RSS (MiB) | connected |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for e in (OURS, *PEERS):
            runs = g.get((5, "", n, e), [])
            if not runs:
                continue
            out.append(
                f"| {LABEL[e]} | {_cell(runs, 'server_empty_rss_mib', 1)} "
                f"| {_cell(runs, 'server_base_rss_mib', 1)} "
                f"| {_cell(runs, 'server_idle_rss_mib', 1)} "
                f"| {_cell(runs, 'server_kib_per_session', 1)} "
                f"| {_cell(runs, 'client_idle_rss_mib', 1)} "
                f"| {sum(1 for r in runs if r.get('converged'))}/{len(runs)} |"
            )
        out.append("")
    rows = sorted({(s, v, n) for (s, v, n, _) in g if s in (1, 2, 4)})
    if rows:
        out += [
            "## 5b. Peak RSS per process (MiB, the largest over repeats): server · client",
            "",
            "| scenario | N | " + " | ".join(LABEL[e] for e in (OURS, *PEERS)) + " |",
            "|---|---:|---:|---:|---:|",
        ]
        for s, v, n in rows:
            cells = []
            for e in (OURS, *PEERS):
                runs = g.get((s, v, n, e), [])
                srv = [r["server_peak_rss_mib"] for r in runs if r.get("server_peak_rss_mib")]
                cli = [r["client_peak_rss_mib"] for r in runs if r.get("client_peak_rss_mib")]
                cells.append(f"{max(srv):,.0f} · {max(cli):,.0f}" if srv and cli else "–")
            out.append(f"| {s} | {n:,} | {' | '.join(cells)} |")
        out.append("")
    return out


@dataclass(frozen=True)
class _Observing:
    """Scenario 6 at one N: both ways of comparing throughput, and the direct count."""

    none: Runs
    seen: Runs
    failed: Runs  # one per client whose rounds stopped early (benchmarks/harness.py)
    by_medians: float | None  # throughput lost, median against median
    pairs: list[float]  # throughput lost in each round or pair (see _paired_costs)
    direct: float | None  # share of a run in the observers' own code (_direct_cost)

    @property
    def by_pairs(self) -> float | None:
        return statistics.median(self.pairs) if self.pairs else None

    @property
    def unit(self) -> str:
        """What one comparison is: a round of four runs (since they were run in
        rounds), or a pair of runs in fresh processes (records from before)."""
        return "round" if any("round" in r for r in self.seen) else "pair"

    @property
    def counted(self) -> str:
        """How many comparisons, in words: "3 rounds"."""
        k = len(self.pairs)
        return f"{k} {self.unit}{'' if k == 1 else 's'}"

    def spread(self) -> str:
        """The middle half of the comparisons, as text ("" with fewer than 4)."""
        if len(self.pairs) < 4:
            return ""
        lo, _, hi = statistics.quantiles(self.pairs, n=4)
        return f"; middle half {100 * lo:.1f}% to {100 * hi:.1f}%"

    @property
    def converged(self) -> bool:
        return not self.failed and all(r.get("converged") for r in (*self.none, *self.seen))

    @property
    def failures(self) -> str:
        """The clients that stopped early, with the first one's error ("" if none)."""
        if not self.failed:
            return ""
        k = len(self.failed)
        return f"{k} client{'' if k == 1 else 's'} stopped early ({self.failed[0].get('error')})"


def _observing(g: dict[tuple[int, str, int, str], Runs], n: int) -> _Observing:
    none = g.get((6, "none", n, OURS), [])
    seen = g.get((6, "observed", n, OURS), [])
    failed = g.get((6, "failed", n, OURS), [])
    a, b = _median(none, _rate), _median(seen, _rate)
    lost = 1 - b / a if a and b else None
    return _Observing(none, seen, failed, lost, _paired_costs(g, n), _direct_cost(seen))


def _observe_sizes(g: dict[tuple[int, str, int, str], Runs]) -> list[int]:
    """Scenario 6's sizes: any with a run, or a client that stopped early."""
    return sorted({n for v in ("none", "observed", "failed") for n in _sizes(g, 6, v)})


def _observe_table(g: dict[tuple[int, str, int, str], Runs]) -> list[str]:
    out: list[str] = []
    for n in _observe_sizes(g):
        o = _observing(g, n)
        none, seen, pairs, direct = o.none, o.seen, o.pairs, o.direct
        cost = "n/a" if o.by_medians is None else f"{100 * o.by_medians:.1f}%"
        paired = (
            f"{100 * statistics.median(pairs):.1f}% "
            f"(slower in {sum(c > 0 for c in pairs)} of {o.counted}{o.spread()})"
            if pairs
            else "n/a"
        )
        out += [
            f"## 6. The cost of observing: scenario 1 at {n:,}, ours (records/s)",
            "",
            "| nothing attached | SessionWidget ×2 + EventLog | throughput lost, medians "
            f"| throughput lost, {o.unit} by {o.unit} | time in the observers' own code |",
            "|---:|---:|---:|---:|---:|",
            f"| {_cell(none, _rate)} | {_cell(seen, _rate)} | {cost} | {paired} "
            f"| {'n/a' if direct is None else f'{100 * direct:.1f}% of the run'} |",
            *(["", f"Not counted: {o.failures}."] if o.failed else []),
            "",
            "Runs vary by about ±15 % from one to the next, so either comparison of",
            *(
                [
                    "throughput is uncertain by several percent. Round by round compares",
                    "the observed runs of each round of four (plain, observed, observed,",
                    "plain, or the other way round, on one pair of sessions) with its",
                    "plain ones, mean against mean, and takes the median over the rounds;",
                ]
                if o.unit == "round"
                else [
                    "throughput is uncertain by several percent. Pair by pair compares each",
                    "observed run with the plain run beside it (median of the pairs);",
                ]
            ),
            "the verdict uses it. The observers' own code is the time their stream",
            "callbacks, their throttled renders, and the events and progress values",
            "built only for them took, as a share of each observed run (median):",
            "wall time on the thread running each, so it holds that thread's waits",
            "for the GIL, but not the waits it causes other threads.",
            "",
        ]
    return out


def _lost_updates(g: dict[tuple[int, str, int, str], Runs], scenario: int, n: int) -> str:
    """For each peer transport that lost updates at ``n``: in how many runs, how
    many arrived, and how fast they came until the last one (beside ours)."""
    out = ""
    ours = _median(g.get((scenario, "", n, OURS), []), _rate)
    for peer in PEERS:
        runs = g.get((scenario, "", n, peer), [])
        lost = [r for r in runs if not r.get("converged")]
        if not lost:
            continue
        got = [r.get("received", 0) for r in lost]
        rates = [
            r["received"] / r["last_arrival_seconds"]
            for r in lost
            if r.get("received") and r.get("last_arrival_seconds")
        ]
        out += (
            f"; {SHORT[peer]} lost updates in {len(lost)} of {len(runs)} runs "
            f"(received {min(got):,}–{max(got):,} of {n:,})"
        )
        if rates:
            rate = statistics.median(rates)
            out += f", at {rate:,.0f}/s until its last update arrived"
            if ours:
                out += f" (ours {ours / rate:.2f}× that)"
    return out


def _paired_costs(g: dict[tuple[int, str, int, str], Runs], n: int) -> list[float]:
    """Scenario 6: the throughput lost in each round, the mean rate of its observed
    runs against the mean of its plain ones (a round's runs follow each other on
    one pair of sessions, so they share the machine's state of the moment).

    A round is a repeat and a ``round`` number; records from before the rounds
    have no ``round``, and a repeat holds one plain and one observed run.
    """
    rates: dict[tuple[Any, Any], tuple[list[float], list[float]]] = {}
    for variant, side in (("none", 0), ("observed", 1)):
        for r in g.get((6, variant, n, OURS), []):
            rate = _rate(r) if r.get("converged") and r.get("repeat") is not None else None
            if rate:
                rates.setdefault((r["repeat"], r.get("round")), ([], []))[side].append(rate)
    return [
        1 - statistics.fmean(seen) / statistics.fmean(plain)
        for _, (plain, seen) in sorted(rates.items(), key=lambda kv: str(kv[0]))
        if plain and seen
    ]


def _direct_cost(runs: Runs) -> float | None:
    """Median share of an observed run spent in the observers' own code."""
    shares = [
        r["observer_seconds"] / r["seconds"]
        for r in runs
        if r.get("observer_seconds") is not None and r.get("seconds")
    ]
    return statistics.median(shares) if shares else None


def _targets(g: dict[tuple[int, str, int, str], Runs]) -> list[str]:
    lines = ["## Targets (issue 5)", "", "| target | measured | status |", "|---|---|---|"]

    def status(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**not met**")

    def ratio_at(
        s: int, n: int, key: Any, hb: bool, every_run: bool = False
    ) -> tuple[float | None, str | None]:
        peer, best = _best_peer(g, s, n, key, hb, every_run)
        return _ratio(_median(g.get((s, "", n, OURS), []), key), best, hb), peer

    if (1, "", 100_000, OURS) in g:
        r, peer = ratio_at(1, 100_000, _rate, True)
        all_conv = all(
            r_.get("converged")
            for (s, _, _, e), rs in g.items()
            if s == 1 and e == OURS
            for r_ in rs
        )
        ok = None if r is None else (r >= 3 and all_conv)
        measured = _ratio_text(r, peer)
        verdict = status(ok)
        peer_runs = g.get((1, "", 100_000, peer or ""), [])
        if peer is not None and not all(x.get("converged") for x in peer_runs):
            # The best peer lost updates in some runs: say so, and give the ratio
            # against the best peer that delivered everything every time as well.
            done = sum(1 for x in peer_runs if x.get("converged"))
            measured += f", which converged in {done} of {len(peer_runs)} runs"
            r2, peer2 = ratio_at(1, 100_000, _rate, True, every_run=True)
            if r2 is not None:
                measured += f"; {_ratio_text(r2, peer2)}, the best peer that converged every time"
                if not ok and r2 >= 3 and all_conv:
                    verdict += " (met against every peer that converged every time)"
        measured += _lost_updates(g, 1, 100_000)
        lines.append(
            f"| S1 at 100k ≥ 3× the best peer, 100% converged at every N | "
            f"{measured}; ours converged at every N: {all_conv} | {verdict} |"
        )
    if (2, "", 100_000, OURS) in g:
        r, peer = ratio_at(2, 100_000, _rate, True)
        measured = _ratio_text(r, peer)
        best = _best_peer(g, 2, 100_000, _rate, True)[1]
        write = _median(g.get((2, "", 100_000, OURS), []), "write_seconds")
        if best and write is not None:
            # What the target leaves for the whole run, next to the local write alone.
            measured += (
                f"; 2× needs the whole run within {100_000 / (2 * best):.2f} s, and A's "
                f"transaction alone took {write:.2f} s"
            )
        # The least that A and B must do with the records (measured at this size only).
        floor = _machine_median(g, "bulk_floor_s", bulk_floor_n=100_000)
        if floor is not None:
            measured += f"; scenario 2's floor took {floor:.2f} s"
        lines.append(
            f"| S2 at 100k ≥ 2× the peer | {measured} | {status(None if r is None else r >= 2)} |"
        )
    big = g.get((2, "", 1_000_000, OURS))
    if big:
        conv = all(r.get("converged") for r in big)
        peak = max(
            (
                max(r.get("server_peak_rss_mib") or 0, r.get("client_peak_rss_mib") or 0)
                for r in big
            ),
            default=0,
        )
        lines.append(
            f"| S2 at 1M completes, peak RSS < 300 MiB per process | converged: {conv}; "
            f"largest peak RSS {peak:,.0f} MiB | {status(conv and peak < 300)} |"
        )
    for n in _sizes(g, 3):
        ours = _median(g.get((3, "", n, OURS), []), "p50_ms")
        peer, best = _best_peer(g, 3, n, "p50_ms", False)
        ok = None if ours is None or best is None else ours <= best
        floors = [
            (name, _machine_median(g, f"floor_{t}_p50_ms"))
            for t, name in (("tcp", "plain TCP"), ("ws", "websockets"))
        ]
        floor_text = "; ".join(f"{name} {v:.3f} ms" for name, v in floors if v is not None)
        lines.append(
            "| S3 p50 no worse than the peer's (ours committed to SQLite at both ends, "
            "WAL + synchronous=NORMAL) | "
            f"ours {ours if ours is None else round(ours, 3)} ms vs {SHORT.get(peer or '', '?')} "
            f"{best if best is None else round(best, 3)} ms"
            + (
                f" (this machine's floor with three SQLite commits: {floor_text})"
                if floor_text
                else ""
            )
            + f" | {status(ok)} |"
        )
    for n in _observe_sizes(g):
        o = _observing(g, n)
        cost, all_conv, direct = o.by_pairs, o.converged, o.direct
        medians = "" if o.by_medians is None else f"; {100 * o.by_medians:.1f}% by the medians"
        counted = (
            "" if direct is None else f"; the observers' own code {100 * direct:.1f}% of a run"
        )
        lost = (
            "n/a"
            if cost is None
            else f"{100 * cost:.1f}% {o.unit} by {o.unit} ({o.counted}{o.spread()})"
        )
        ok = (
            None if cost is None and not o.failed else cost is not None and cost < 0.05 and all_conv
        )
        lines.append(
            f"| S6 observing costs < 5% of throughput | {lost}{medians}{counted}"
            f"{'' if all_conv else '; some runs did not converge'}"
            f"{'; ' + o.failures if o.failed else ''} | {status(ok)} |"
        )
    return [*lines, ""]

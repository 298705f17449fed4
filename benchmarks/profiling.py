"""Profile our engine in scenarios 1 and 2: ``python -m benchmarks --profile``.

py-spy samples every thread of both processes (server, and the client with A and
B) while the scenario runs, without touching their code. Only samples where a
thread was running Python (not idle) count. For each process the summary lists
the functions with the most *self* time (the line being executed was in them)
and the most *inclusive* time (they were anywhere on the stack), as a share of
that process's busy samples. Raw collapsed stacks are kept next to the notes
(``profile-*.txt``, loadable by speedscope or flamegraph.pl) when ``--keep-raw``.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import ClientProcess, ServerProcess, frozen_engine

__all__ = ["profile", "summarize"]

RATE = 250  # samples per second per process


@dataclass
class Profile:
    samples: int
    self_time: collections.Counter[str]
    inclusive: collections.Counter[str]
    threads: collections.Counter[str]
    lines: collections.Counter[str]


def _frame_name(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)', lines folded together."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.replace("\\", "/").split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarize(raw: str) -> Profile:
    """Self and inclusive counts per function from py-spy's raw (collapsed) output."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else ""
        if thread:
            frames = frames[1:]
            if frames and frames[0].startswith("thread"):
                thread = frames[0]
                frames = frames[1:]
            threads[thread] += count
        names = [_frame_name(f) for f in frames]
        if not names:
            continue
        total += count
        self_time[names[-1]] += count
        leaf = frames[-1]
        lines[f"{names[-1]} line {leaf.rstrip(')').rsplit(':', 1)[-1]}"] += count
        for name in set(names):
            inclusive[name] += count
    return Profile(total, self_time, inclusive, threads, lines)


def _start_spy(pid: int, out: Path, gil: bool = False) -> subprocess.Popen[bytes]:
    cmd = ["py-spy", "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw"]
    cmd += ["--threads", "--nonblocking", "--output", str(out)]
    if gil:
        cmd.append("--gil")  # only the thread holding the GIL, at each sample
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_spy(spy: subprocess.Popen[bytes]) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


def profile_run(
    scenario: str, n: int, outdir: Path, label: str, gil: bool = False
) -> tuple[dict[str, Profile], dict[str, object]]:
    """Run one scenario of ours with py-spy on both processes."""
    profiles: dict[str, Profile] = {}
    with ServerProcess("ours") as server:
        assert server.proc is not None
        server_out = outdir / f"profile-{label}-server.txt"
        server_spy = _start_spy(server.proc.pid, server_out, gil)
        client = ClientProcess("ours", scenario, server.url, n, timeout=300)
        client_out = outdir / f"profile-{label}-client.txt"
        client_spy = _start_spy(client.proc.pid, client_out, gil)
        result = client.result(600)
        time.sleep(0.2)
        _stop_spy(server_spy)
        _stop_spy(client_spy)
    for name, path in (("server", server_out), ("client", client_out)):
        if path.exists():
            profiles[name] = summarize(path.read_text())
    return profiles, result


# Frames on nearly every stack (thread start-up, the event loop, the harness's own
# entry points) say nothing about the engine; left out of the inclusive table.
_PLUMBING = (
    "(threading.py)",
    "(<frozen runpy>)",
    "(asyncio/runners.py)",
    "BaseEventLoop.run_",
    "BaseEventLoop._run_once",
    "(benchmarks/client.py)",
    "run (benchmarks/ours.py)",
    "main (realmsync_nb/__main__.py)",
    "main (server/cli.py)",
    "<module> (realmsync_nb/__main__.py)",
    "SyncThread._run",
)


def _table(
    p: Profile,
    counter: collections.Counter[str],
    top: int,
    skip_plumbing: bool = False,
    of: str = "busy samples",
) -> list[str]:
    lines = [f"| % of {of} | function |", "|---:|---|"]
    shown = 0
    for name, count in counter.most_common():
        if skip_plumbing and any(mark in name for mark in _PLUMBING):
            continue
        lines.append(f"| {100 * count / max(1, p.samples):.1f} | `{name}` |")
        shown += 1
        if shown == top:
            break
    return lines


def profile(outdir: Path, quick: bool = False, keep_raw: bool = False) -> Path:
    """Profile scenarios 1 and 2 of ours; write ``profile-notes.md`` in ``outdir``."""
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    outdir.mkdir(parents=True, exist_ok=True)
    runs = [
        ("s1-each", "each", 1_000 if quick else 10_000, "scenario 1: one transaction per write"),
        ("s2-one-txn", "one_txn", 10_000 if quick else 100_000, "scenario 2: one transaction"),
    ]
    doc = [
        "# Profile notes: our engine, scenarios 1 and 2",
        "",
        "Written by `python -m benchmarks --profile` (benchmarks/profiling.py): py-spy",
        f"at {RATE} Hz on every thread of the server process and of the client process",
        "(A and B, one App), busy samples only (idle threads are not counted).",
        "*Self* is where the executing line was; *inclusive* is anywhere on the stack.",
        "Percentages are of that process's busy samples (all threads summed, so a",
        "process using two threads at once can have more samples than wall seconds).",
        "",
    ]
    with frozen_engine() as code_hash:
        for label, scenario, n, title in runs:
            doc += _profile_section(outdir, label, scenario, n, title, keep_raw)
    doc[1:1] = ["", f"Engine code: {_describe_code(code_hash)}."]
    notes = outdir / "profile-notes.md"
    notes.write_text("\n".join(doc) + "\n")
    return notes


def _describe_code(code_hash: str) -> str:
    from .harness import _git_commit, _git_dirty

    dirty = _git_dirty()
    state = " plus uncommitted changes" if dirty else ""
    return f"commit {_git_commit()}{state} (realmsync_nb/ hash {code_hash})"


def _profile_section(
    outdir: Path, label: str, scenario: str, n: int, title: str, keep_raw: bool
) -> list[str]:
    doc: list[str] = []
    profiles, result = profile_run(scenario, n, outdir, label)
    seconds = result.get("seconds")
    rate = n / seconds if isinstance(seconds, float) and seconds > 0 else float("nan")
    doc += [
        f"## {title}, N = {n:,}",
        "",
        f"Run under the profiler: {seconds if seconds is None else round(seconds, 2)} s, "
        f"{rate:,.0f} records/s, converged: {result.get('converged')}"
        + (f", error: {result['error']}" if "error" in result else ""),
        "",
    ]
    for proc in ("client", "server"):
        p = profiles.get(proc)
        if p is None:
            doc += [f"(no {proc} profile: py-spy wrote nothing)", ""]
            continue
        threads = ", ".join(
            f"{t.split(': ', 1)[-1]} {100 * c / p.samples:.0f}%"
            for t, c in p.threads.most_common(5)
        )
        doc += [
            f"### {proc} process ({p.samples} busy samples; by thread: {threads})",
            "",
            "Top self time:",
            "",
            *_table(p, p.self_time, 25),
            "",
            "Hottest lines (self):",
            "",
            *_table(p, p.lines, 12),
            "",
            "Top inclusive time:",
            "",
            *_table(p, p.inclusive, 30, skip_plumbing=True),
            "",
        ]
    # The same run again, sampling only the thread that holds the GIL: in a
    # GIL-bound process that is the time that counts, and waits for the GIL (which
    # show up above on the line a thread resumes at, often a select or a queue
    # get) drop out.
    gil_profiles, _ = profile_run(scenario, n, outdir, f"{label}-gil", gil=True)
    for proc in ("client", "server"):
        p = gil_profiles.get(proc)
        if p is None:
            continue
        doc += [
            f"### {proc} process, GIL holder only ({p.samples} samples, a second run)",
            "",
            *_table(p, p.self_time, 15, of="GIL-holding samples"),
            "",
            "Inclusive:",
            "",
            *_table(p, p.inclusive, 20, skip_plumbing=True, of="GIL-holding samples"),
            "",
        ]
    if not keep_raw:
        for stem in (label, f"{label}-gil"):
            for proc in ("client", "server"):
                path = outdir / f"profile-{stem}-{proc}.txt"
                if path.exists():
                    os.unlink(path)
    return doc

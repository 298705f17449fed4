"""Our engine's side of every scenario, run inside the client process.

Clients A and B are two realms (two files, two sessions, two WebSocket
connections) of one App, so they share its sync thread, as the peer's two
providers share one asyncio loop. A writes on the calling thread.

How B's arrival is learned (scenarios 1, 2, 3, 6): a listener on B's
``session.events`` timestamps every DOWNLOAD_INTEGRATED event. That event is
emitted on the sync thread right after the SQLite transaction that integrated a
DOWNLOAD has committed, so it is B's own notification that data is in its file,
and it says how many objects that download changed (``objects``). The time of the
run is the timestamp of the event that brought the sum to N (see
:meth:`Arrivals.wait_rows`), minus the time just before A's first write. B's file
is read once, at the end, to check that it holds all N. Counting objects rather
than changesets keeps this right however the engine splits or merges
transactions into changesets.
"""

from __future__ import annotations

import bisect
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import realmsync_nb as rs

from .workload import (
    CATCH_UP_BATCH,
    IDLE_WARM,
    READY_PREFIX,
    emit,
    peak_rss_mib,
    percentile,
    record,
)

__all__ = ["Rec", "run"]


class Rec(rs.Model):
    """The ~100-byte, six-field benchmark record."""

    id: int = rs.primary_key()
    a: str = ""
    b: str = ""
    c: int = 0
    d: float = 0.0
    e: bool = False


class Arrivals:
    """B's DOWNLOAD_INTEGRATED events: the moment the listener saw each, and the
    number of objects B's downloads had changed by then."""

    def __init__(self, session: rs.Session) -> None:
        self.stamps: list[float] = []  # perf_counter of each event, in order
        self.totals: list[int] = []  # objects changed by this event and all before it
        self.missed = False  # see wait_rows
        self._cond = threading.Condition()
        self._sub = session.events.listen(self._on_event)

    def _on_event(self, event: rs.SyncEvent) -> None:
        if event.kind is not rs.EventKind.DOWNLOAD_INTEGRATED:
            return
        stamp = time.perf_counter()
        with self._cond:
            self.stamps.append(stamp)
            self.totals.append((self.totals[-1] if self.totals else 0) + (event.objects or 0))
            self._cond.notify_all()

    @property
    def events(self) -> int:
        return len(self.stamps)

    def wait_rows(
        self, realm: rs.Realm, n: int, timeout: float, stall: float, held: int | None = None
    ) -> tuple[bool, float]:
        """Until B's downloads have changed ``n`` objects, then check B holds ``held``
        (default ``n``: B's file held none before).

        Returns (arrived, time of the event that brought the sum to ``n``). Waits on
        the events alone, so nothing reads B's file while the data is on its way.
        False on ``timeout``, after ``stall`` seconds without any event, or when B's
        file holds fewer than ``n`` once the events say they all came. Should B's
        file hold all ``n`` at the stall although the events never added up (an
        event lost), the run counts as arrived at that moment, which overstates its
        time, and :attr:`missed` says so.
        """
        held = n if held is None else held
        deadline = time.perf_counter() + timeout
        last_change = time.perf_counter()
        with self._cond:
            seen = len(self.stamps)
            while not self.totals or self.totals[-1] < n:
                now = time.perf_counter()
                wait = min(deadline - now, stall - (now - last_change), 1.0)
                if wait <= 0:
                    if len(realm.all(Rec)) >= held:
                        self.missed = True
                        return True, now
                    return False, now
                self._cond.wait(wait)
                if len(self.stamps) != seen:
                    seen, last_change = len(self.stamps), time.perf_counter()
            end = self.stamps[bisect.bisect_left(self.totals, n)]  # the totals only rise
        return len(realm.all(Rec)) >= held, end

    def close(self) -> None:
        self._sub.cancel()


class _ObserverClock:
    """Time the observers spend in their own code during a run (scenario 6): their
    stream callbacks, which run on the sync thread, and their throttled renders.

    It wraps the one place each kind of call goes through, for the life of the
    run. This is the cost counted directly, beside the throughput the run loses,
    which the machine's run-to-run noise blurs. It is wall time on the thread that
    runs the code, so it also holds that thread's waits for the GIL.

    ``build`` makes the observers; every subscription made meanwhile is theirs.
    """

    def __init__(self, build: Callable[[], list[Any]]) -> None:
        from realmsync_nb.client.loop import Stream, Subscription
        from realmsync_nb.client.session import Session
        from realmsync_nb.notebook.throttle import Throttle

        self.seconds = 0.0
        self._lock = threading.Lock()
        self._inside = threading.local()  # a render inside a callback counts once
        subs: set[int] = set()  # id() of every subscription the observers made
        listen = Stream.listen

        def recording_listen(stream: Any, callback: Any, **kwargs: Any) -> Any:
            sub = listen(stream, callback, **kwargs)
            subs.add(id(sub))
            return sub

        Stream.listen = recording_listen  # type: ignore[method-assign]
        try:
            self.observers = build()
        finally:
            Stream.listen = listen  # type: ignore[method-assign]

        def theirs(sink: Any) -> bool:
            return id(sink) in subs

        self._restore = [
            (Subscription, "push"),
            (Throttle, "_emit"),
            (Session, "_emit"),
            (Session, "_report"),
        ]
        self._saved = [getattr(cls, name) for cls, name in self._restore]
        push, render, event, report = self._saved

        def timed_push(sub: Any, item: Any) -> None:
            # Only the observers' own callbacks: bound methods of their objects.
            if theirs(sub):
                self._timed(push, sub, item)
            else:
                push(sub, item)

        def timed_render(throttle: Any, seq: int, value: Any) -> None:
            self._timed(render, throttle, seq, value)

        def timed_event(session: Any, kind: Any, **fields: Any) -> None:
            # A session builds an event only while something listens: when only the
            # observers do, building it is part of their cost too.
            sinks = session._event_sinks
            if sinks and all(map(theirs, sinks)):
                self._timed(event, session, kind, **fields)
            else:
                event(session, kind, **fields)

        def timed_report(session: Any, reg: Any) -> None:
            # A progress stream's value is worked out for its listener alone.
            if theirs(reg.sink):
                self._timed(report, session, reg)
            else:
                report(session, reg)

        Subscription.push = timed_push  # type: ignore[method-assign]
        Throttle._emit = timed_render  # type: ignore[method-assign]
        Session._emit = timed_event  # type: ignore[method-assign]
        Session._report = timed_report  # type: ignore[method-assign]

    def _timed(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(self._inside, "active", False):
            fn(*args, **kwargs)
            return
        self._inside.active = True
        t = time.perf_counter()
        try:
            fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t
            self._inside.active = False
            with self._lock:
                self.seconds += dt

    def close(self) -> None:
        for (cls, name), fn in zip(self._restore, self._saved, strict=True):
            setattr(cls, name, fn)


class _ErrorLog:
    """The first few distinct errors A's and B's sessions report (from ``session.errors``)."""

    def __init__(self, pair: Pair) -> None:
        self.seen: list[str] = []
        self._subs = [
            r.sync_session.errors.listen(lambda e, name=name: self._add(f"{name}: {e}"))
            for name, r in (("A", pair.a), ("B", pair.b))
        ]

    def _add(self, text: str) -> None:
        if text not in self.seen and len(self.seen) < 5:
            self.seen.append(text[:300])

    def close(self) -> dict[str, Any]:
        for sub in self._subs:
            sub.cancel()
        return {"session_errors": self.seen} if self.seen else {}


class Pair:
    """One App with two realms, A and B, in ``workdir``."""

    def __init__(self, url: str, workdir: str, timeout: float) -> None:
        self.app = rs.App(url)
        user = self.app.log_in(rs.Credentials.anonymous()).result(timeout)
        self.a = self._open(user, workdir, "A")
        self.b = self._open(user, workdir, "B")
        for realm in (self.a, self.b):  # both bound before anything is timed
            realm.sync_session.wait_for_download().result(timeout)

    @staticmethod
    def _open(user: rs.User, workdir: str, name: str) -> rs.Realm:
        path = os.path.join(workdir, f"{name}.realm")
        return rs.Realm(rs.Configuration.flexible_sync(user, [Rec], path=path, name=name))

    def close(self) -> None:
        self.app.close()


def _write_each(realm: rs.Realm, start: int, n: int) -> None:
    for i in range(start, start + n):
        with realm.write():
            realm.add(Rec(**record(i)))


def _write_one_txn(realm: rs.Realm, start: int, n: int) -> None:
    with realm.write():
        for i in range(start, start + n):
            realm.add(Rec(**record(i)))


def _write_batches(realm: rs.Realm, n: int, batch: int) -> None:
    for start in range(0, n, batch):
        _write_one_txn(realm, start, min(batch, n - start))


def throughput(
    pair: Pair,
    n: int,
    *,
    one_txn: bool,
    timeout: float,
    stall: float,
    observe: bool = False,
    start: int = 0,
) -> dict[str, Any]:
    """Scenarios 1, 2 and 6: A writes n records; time until B's events report them all.

    ``start`` is the first record's id: B's file already holds the ``start``
    records of earlier runs of this pair (scenario 6).
    """
    clock = None
    if observe:
        from realmsync_nb.notebook import EventLog, SessionWidget

        sessions = [pair.a.sync_session, pair.b.sync_session]
        clock = _ObserverClock(lambda: [*map(SessionWidget, sessions), EventLog(sessions)])
    try:
        arrivals = Arrivals(pair.b.sync_session)
        errors = _ErrorLog(pair)
        t0 = time.perf_counter()
        (_write_one_txn if one_txn else _write_each)(pair.a, start, n)
        written = time.perf_counter() - t0
        arrived, end = arrivals.wait_rows(pair.b, n, timeout, stall, held=start + n)
        received = len(pair.b.all(Rec)) - start
        arrivals.close()
        result: dict[str, Any] = {
            "converged": arrived and received == n,
            "received": received,
            "seconds": end - t0,
            "write_seconds": written,
            "download_events": arrivals.events,
            # When the last download that did arrive came (a run that lost some).
            "last_arrival_seconds": arrivals.stamps[-1] - t0 if arrivals.stamps else None,
            **errors.close(),
        }
        if arrivals.missed:
            result["note"] = "B held every record but no event completed the sum"
        if clock is not None:
            result["observer_seconds"] = clock.seconds
            result["observed_events"] = len(clock.observers[-1].to_dataframe())
        return result
    finally:
        if clock is not None:
            clock.close()
            for o in clock.observers:
                o.close()


def observing(pair: Pair, n: int, rounds: int, *, timeout: float, stall: float) -> dict[str, Any]:
    """Scenario 6: scenario 1 at ``n``, with the observers attached and without,
    alternating on one pair of sessions, in rounds of four runs.

    A round runs plain, observed, observed, plain (the next one the other way
    round), so a drift of the machine's speed within a round weighs on both sides
    alike. Each run writes new records (ids after the last run's), on the same
    realms and connections, as a notebook user attaches a widget to a live session.
    One plain and one observed run first, not counted, pay what happens once
    (the notebook libraries' first use, SQLite's caches). After each run, untimed,
    a full garbage collection clears what the run left (an observed run's closed
    widgets are reference cycles), so no run pays for the one before it.

    Stops at the first run that does not converge, or whose events never added
    up to ``n`` (B held the records anyway): its last event may still come, and
    the next run would count it.

    Returns ``runs``: one result per counted run, with its ``variant`` ("none" or
    "observed") and ``round``; and ``error`` when the rounds stopped early.
    """
    start = 0
    runs: list[dict[str, Any]] = []

    def one(observed: bool) -> dict[str, Any]:
        nonlocal start
        result = throughput(
            pair, n, one_txn=False, timeout=timeout, stall=stall, observe=observed, start=start
        )
        gc.collect()
        start += n
        result["variant"] = "observed" if observed else "none"
        return result

    def stopped(what: str, result: dict[str, Any]) -> str | None:
        if not result["converged"]:
            return f"the {what} received {result['received']:,} of {n:,}"
        if "note" in result:
            return f"the {what}: {result['note']}"
        return None

    for warm in (False, True):
        error = stopped(f"{'observed' if warm else 'plain'} warm-up run", one(warm))
        if error:
            return {"converged": False, "error": error, "runs": []}
    for r in range(rounds):
        for observed in (False, True, True, False) if r % 2 == 0 else (True, False, False, True):
            result = one(observed)
            result["round"] = r
            runs.append(result)
            error = stopped(f"run {len(runs)} (round {r})", result)
            if error:
                return {"converged": False, "error": f"{error}; the rounds stop", "runs": runs}
    return {"converged": True, "runs": runs}


def latency(pair: Pair, n: int, *, timeout: float, stall: float) -> dict[str, Any]:
    """Scenario 3: n sequential single writes; A's commit start → B's event, each."""
    arrivals = Arrivals(pair.b.sync_session)
    samples: list[float] = []
    converged = True
    for i in range(n):
        t0 = time.perf_counter()
        with pair.a.write():
            pair.a.add(Rec(**record(i)))
        arrived, end = arrivals.wait_rows(pair.b, i + 1, timeout, stall)
        if not arrived or arrivals.missed:  # a lost event: no sample can be timed now
            converged = False
            break
        samples.append(end - t0)
    received = len(pair.b.all(Rec))
    arrivals.close()
    ms = [s * 1000 for s in samples]
    return {
        **({"note": "B held the record but no event said so"} if arrivals.missed else {}),
        "converged": converged and received == n,
        "received": received,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        "seconds": sum(samples),
    }


def catch_up(pair: Pair, n: int, *, timeout: float) -> dict[str, Any]:
    """Scenario 4: B paused while A writes n (CATCH_UP_BATCH per transaction); B resumes.

    Timed from ``resume()`` until ``wait_for_download()`` completes. Every download
    progress value B's REPORT_INDEFINITELY stream yields meanwhile is kept; not the
    value it starts with (delivered as it attaches, before the resume).
    """
    b = pair.b.sync_session
    b.pause()
    t0 = time.perf_counter()
    _write_batches(pair.a, n, CATCH_UP_BATCH)
    pair.a.sync_session.wait_for_upload().result(timeout)
    upload_seconds = time.perf_counter() - t0
    seen: list[tuple[float, int, int, float]] = []
    stream = b.get_progress_stream(
        rs.ProgressDirection.DOWNLOAD, rs.ProgressMode.REPORT_INDEFINITELY
    )
    t0 = time.perf_counter()
    sub = stream.listen(
        lambda p: seen.append(
            (
                time.perf_counter() - t0,
                p.transferred_bytes,
                p.transferable_bytes,
                p.progress_estimate,
            )
        )
    )
    del seen[:]  # the stream's value at attach time, before B knows what waits
    b.resume()
    converged = True
    try:
        b.wait_for_download().result(timeout)
    except TimeoutError:
        converged = False
    seconds = time.perf_counter() - t0
    sub.cancel()
    received = len(pair.b.all(Rec))
    # A dozen evenly spaced samples describe the curve; the count says how many there were.
    step = max(1, len(seen) // 12)
    shown = seen[::step] + ([seen[-1]] if seen and (len(seen) - 1) % step else [])
    return {
        "converged": converged and received == n,
        "received": received,
        "seconds": seconds,
        "writer_seconds": upload_seconds,
        "progress_events": len(seen),
        "progress_samples": [
            {"t": round(t, 4), "transferred": d, "transferable": tot, "estimate": round(e, 4)}
            for t, d, tot, e in shown
        ],
    }


def idle_sessions(url: str, workdir: str, n: int, *, timeout: float) -> dict[str, Any]:
    """Scenario 5b: open n realms (one App, one user), each connected, then idle.

    Prints a READY line once the first IDLE_WARM sessions have completed a download
    round trip, and another once all have, each time waiting for a line on stdin
    (the harness measures the server meanwhile).
    """
    t0 = time.perf_counter()
    app = rs.App(url)
    try:
        user = app.log_in(rs.Credentials.anonymous()).result(timeout)
        realms: list[rs.Realm] = []
        connected = 0
        opened = 0.0  # seconds spent connecting, not waiting for the harness
        for upto in (min(IDLE_WARM, n), n):
            deadline = time.perf_counter() + timeout
            opening = []
            for i in range(len(realms), upto):
                path = os.path.join(workdir, f"idle-{i}.realm")
                config = rs.Configuration.flexible_sync(user, [Rec], path=path, name=f"idle{i}")
                opening.append(rs.Realm(config))
            realms += opening
            for fut in [r.sync_session.wait_for_download() for r in opening]:
                try:
                    fut.result(max(0.1, deadline - time.perf_counter()))
                    connected += 1
                except TimeoutError:
                    pass
            opened += time.perf_counter() - t0
            emit(READY_PREFIX, {"connected": connected, "client_rss_mib": peak_rss_mib()})
            sys.stdin.readline()
            t0 = time.perf_counter()
        still = sum(r.sync_session.connection_state is rs.ConnectionState.CONNECTED for r in realms)
        return {
            "converged": connected == n and still == n,
            "received": connected,
            "seconds": opened,
        }
    finally:
        app.close()


def run(
    scenario: str, url: str, workdir: str, n: int, timeout: float, stall: float, rounds: int = 1
) -> dict[str, Any]:
    """Run one scenario of ours; returns its result fields."""
    if scenario == "idle":
        return idle_sessions(url, workdir, n, timeout=timeout)
    pair = Pair(url, workdir, timeout)
    try:
        if scenario == "each":
            return throughput(pair, n, one_txn=False, timeout=timeout, stall=stall)
        if scenario == "one_txn":
            return throughput(pair, n, one_txn=True, timeout=timeout, stall=stall)
        if scenario == "observing":
            return observing(pair, n, rounds, timeout=timeout, stall=stall)
        if scenario == "latency":
            return latency(pair, n, timeout=timeout, stall=stall)
        if scenario == "catch_up":
            return catch_up(pair, n, timeout=timeout)
        raise ValueError(f"unknown scenario {scenario!r}")
    finally:
        pair.close()

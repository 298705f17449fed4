"""The sync session (API.md, "The sync session"): real clients through a real server.

One test (or a few, sharing the member's name as prefix) per row of the session
table, plus the wait/pause interaction and the event stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gc
import os
import threading
import time
import types
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

import realmsync_nb as rs
from tests.client.syncing import (
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    Recorder,
    add_task,
    connected,
    pending_bytes,
    server_history,
    sqlite,
)
from tests.conftest import FAST, OpenRealm
from tests.helpers import T, Task, wait_until

UP, DOWN = rs.ProgressDirection.UPLOAD, rs.ProgressDirection.DOWNLOAD
INDEFINITELY = rs.ProgressMode.REPORT_INDEFINITELY
OUTSTANDING = rs.ProgressMode.FOR_CURRENTLY_OUTSTANDING_WORK
P = rs.SyncProgress
Change = rs.ConnectionStateChange


def settle() -> None:
    """Give the sync thread a moment, for asserting that something does *not* happen."""
    time.sleep(T(0.2))


def wait_outcomes(events: list[rs.SyncEvent], direction: str) -> list[str | None]:
    return [e.outcome for e in events if e.kind is rs.EventKind.WAIT and e.direction == direction]


# -- state ----------------------------------------------------------------------------


def test_state(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    s = a.sync_session
    # ACTIVE from the start: the session is logically on even before the network is.
    assert s.state is rs.SessionState.ACTIVE
    connected(a)
    s.pause()
    assert s.state is rs.SessionState.PAUSED
    s.resume()
    assert s.state is rs.SessionState.ACTIVE
    a.close()
    assert s.state is rs.SessionState.INACTIVE
    assert s.connection_state is DISCONNECTED
    # An inactive session refuses new waits instead of leaving them pending forever.
    with pytest.raises(rs.SessionInactiveError):
        s.wait_for_upload().result(T(2))
    with pytest.raises(rs.SessionInactiveError):
        s.wait_for_download().result(T(2))


# -- connection_state -------------------------------------------------------------------


def test_connection_state(server: rs.SyncServer, open_realm: OpenRealm, app: rs.App) -> None:
    a = open_realm("A")
    s = a.sync_session
    assert isinstance(s.connection_state, rs.ConnectionState)
    connected(a)
    events = Recorder(s.events)

    s.pause()
    assert s.connection_state is DISCONNECTED  # pause disconnects before it returns
    s.resume()
    connected(a)

    # The network going away changes connection_state, not the session state.
    port, data_dir = int(server.url.rsplit(":", 1)[1]), server.data_dir
    server.stop()
    wait_until(lambda: s.connection_state is not CONNECTED, what="the client to notice")
    assert s.state is rs.SessionState.ACTIVE
    wait_until(
        lambda: any(e.kind is rs.EventKind.RECONNECT_SCHEDULED for e in events.items),
        what="a reconnect to be scheduled",
    )
    errors = [e for e in events.items if e.kind is rs.EventKind.ERROR]
    assert errors and all(e.message for e in errors), errors

    # ... and the session reconnects by itself once the server is back.
    add_task(a, "written-offline")
    again = rs.SyncServer(data_dir=data_dir, port=port, scrypt_n=2**10).start()
    try:
        connected(a, timeout=10)
        s.wait_for_upload().result(T(5))
        assert "written-offline" in again.snapshot()["Task"]
    finally:
        a.close()
        again.stop()


# -- pause / resume ---------------------------------------------------------------------


def test_pause(server: rs.SyncServer, open_realm: OpenRealm) -> None:
    a, b, c = open_realm("A"), open_realm("B"), open_realm("C")
    connected(a, b, c)
    sa = a.sync_session
    a_events = Recorder(sa.events)
    b_changes = Recorder(b.sync_session.connection_state_changes)

    sa.pause()
    sa.pause()  # idempotent
    assert sa.state is rs.SessionState.PAUSED
    assert sa.connection_state is DISCONNECTED
    kinds = [e.kind for e in a_events.items]
    assert kinds.count(rs.EventKind.PAUSE) == 1, kinds
    assert kinds.count(rs.EventKind.CONNECTION) == 1, kinds

    # Paused stops uploads: A's write stays local.
    add_task(a, "from-a")
    # Only A is paused: B and C keep syncing with each other.
    add_task(b, "from-b")
    b.sync_session.wait_for_upload().result(T(5))
    c.sync_session.wait_for_download().result(T(5))
    assert c.find(Task, "from-b") is not None
    settle()
    # Paused stops downloads: A does not get B's write.
    assert a.find(Task, "from-b") is None
    assert "from-a" not in server.snapshot()["Task"]
    assert b.sync_session.state is rs.SessionState.ACTIVE
    assert b.sync_session.connection_state is CONNECTED
    assert b_changes.items == []  # B's connection was never touched
    assert sa.state is rs.SessionState.PAUSED


def test_resume(server: rs.SyncServer, open_realm: OpenRealm) -> None:
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    sa = a.sync_session
    a_events = Recorder(sa.events)
    b_changes = Recorder(b.sync_session.connection_state_changes)

    # resume() on an active, connected session changes nothing.
    sa.resume()
    settle()
    assert sa.state is rs.SessionState.ACTIVE
    assert sa.connection_state is CONNECTED
    assert [e for e in a_events.items if e.kind is rs.EventKind.CONNECTION] == []

    sa.pause()
    add_task(a, "from-a")
    add_task(b, "from-b")
    b.sync_session.wait_for_upload().result(T(5))

    sa.resume()
    sa.resume()  # idempotent
    assert sa.state is rs.SessionState.ACTIVE
    connected(a)
    kinds = [e.kind for e in a_events.items]
    assert kinds.count(rs.EventKind.RESUME) == 1, kinds
    # Both directions run again: the paused write goes up, B's write comes down.
    sa.wait_for_upload().result(T(5))
    assert "from-a" in server.snapshot()["Task"]
    sa.wait_for_download().result(T(5))
    assert a.find(Task, "from-b") is not None
    b.sync_session.wait_for_download().result(T(5))
    assert b.find(Task, "from-a") is not None
    # Pausing and resuming A never touched B.
    assert b_changes.items == []


# -- wait_for_upload ----------------------------------------------------------------------


def test_wait_for_upload_completes_at_once_when_nothing_is_pending(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    connected(a)
    a.sync_session.wait_for_upload().result(T(1))


def test_wait_for_upload_covers_changes_committed_before_the_call(
    server: rs.SyncServer, open_realm: OpenRealm
) -> None:
    a = open_realm("A")
    connected(a)
    s = a.sync_session
    s.pause()
    for i in range(3):
        add_task(a, f"t{i}", priority=i)
    with a.write():
        a.find(Task, "t0").title = "changed"  # type: ignore[union-attr]
    s.resume()
    fut = s.wait_for_upload()
    assert isinstance(fut, rs.SyncFuture)
    assert fut.result(T(5)) is None
    # Acknowledged means the server has it all.
    tasks = server.snapshot()["Task"]
    assert sorted(tasks) == ["t0", "t1", "t2"]
    assert tasks["t0"]["title"] == "changed"
    # The file trims acknowledged history soon after (acknowledgements are stored in
    # batches, ACK_STORE_DELAY apart).
    wait_until(lambda: pending_bytes(a) == 0, T(5))


def test_close_stores_the_acknowledgement_and_cursor_of_a_writer(
    server: rs.SyncServer, open_realm: OpenRealm
) -> None:
    """A writer's acknowledgements, and the server version moving past its own
    changesets, are stored in batches; closing stores the last of them, so the next
    open neither re-uploads nor re-asks for anything."""
    a = open_realm("A")
    connected(a)
    for i in range(3):
        add_task(a, f"t{i}")
    a.sync_session.wait_for_upload().result(T(5))
    path = a.path
    a.close()
    with sqlite(path) as c:
        meta = dict(c.execute("SELECT key, value FROM _meta").fetchall())
        assert c.execute("SELECT count(*) FROM _history").fetchone() == (0,)
    assert (meta["upload_cursor"], meta["download_cursor"]) == (3, 3)


def assert_cancel_removes_the_waiter(
    s: rs.Session, events: Recorder[rs.SyncEvent], direction: str
) -> None:
    """On a paused session: a cancelled wait is dropped by the session, not just ignored."""
    start = s.wait_for_upload if direction == "upload" else s.wait_for_download
    fut = start()
    settle()
    assert not fut.done()  # nothing can complete while paused
    assert fut.cancel() is True
    assert fut.cancelled()
    wait_until(
        lambda: wait_outcomes(events.items, direction) == ["started", "cancelled"],
        what="the session to drop the cancelled waiter",
    )
    # Nothing keeps the cancelled future alive: the waiter is gone, not just ignored.
    ref = weakref.ref(fut)
    del fut
    gc.collect()
    assert ref() is None
    # The session carries on: a new wait completes, and the old one left no trace.
    s.resume()
    start().result(T(5))
    assert wait_outcomes(events.items, direction) == ["started", "cancelled", "started", "done"]


def test_wait_for_upload_cancel_removes_the_waiter(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    connected(a)
    s = a.sync_session
    events = Recorder(s.events)
    s.pause()
    add_task(a, "t1")
    assert_cancel_removes_the_waiter(s, events, "upload")


def test_wait_for_upload_is_awaitable(server: rs.SyncServer, open_realm: OpenRealm) -> None:
    a = open_realm("A")
    add_task(a, "t1")

    async def main() -> str:
        # The caller's loop keeps running while the sync thread does the work.
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        try:
            await a.sync_session.wait_for_upload()
        finally:
            ticker.cancel()
        return "done" if ticks > 0 else "loop was blocked"

    assert asyncio.run(asyncio.wait_for(main(), T(5))) == "done"
    assert "t1" in server.snapshot()["Task"]


# -- wait_for_download --------------------------------------------------------------------


def test_wait_for_download(open_realm: OpenRealm) -> None:
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    # Nothing new on the server: completes promptly.
    b.sync_session.wait_for_download().result(T(2))

    for i in range(3):
        add_task(a, f"t{i}", title=f"from A {i}")
    a.sync_session.wait_for_upload().result(T(5))
    fut = b.sync_session.wait_for_download()
    assert isinstance(fut, rs.SyncFuture)
    fut.result(T(5))
    # Integrated locally by the time the wait completes: no polling needed.
    assert [t.title for t in b.all(Task)] == ["from A 0", "from A 1", "from A 2"]


def test_wait_for_download_cancel_removes_the_waiter(open_realm: OpenRealm) -> None:
    b = open_realm("B")
    connected(b)
    s = b.sync_session
    events = Recorder(s.events)
    s.pause()
    assert_cancel_removes_the_waiter(s, events, "download")


# -- waits and pause ------------------------------------------------------------------------


def test_pause_fails_pending_waits(server: rs.SyncServer, open_realm: OpenRealm) -> None:
    a = open_realm("A")
    connected(a)
    s = a.sync_session
    # With the server gone, neither wait can complete: both are pending at pause().
    server.stop()
    wait_until(lambda: s.connection_state is not CONNECTED, what="the client to notice")
    add_task(a, "t1")
    up = s.wait_for_upload()
    down = s.wait_for_download()
    settle()
    assert not up.done() and not down.done()

    s.pause()
    with pytest.raises(rs.SessionPausedError, match="resume"):
        up.result(T(2))

    async def await_it() -> None:
        await down

    with pytest.raises(rs.SessionPausedError):
        asyncio.run(asyncio.wait_for(await_it(), T(2)))
    assert isinstance(up.exception(), rs.SessionError)


def test_waits_started_while_paused_complete_after_resume(
    server: rs.SyncServer, open_realm: OpenRealm
) -> None:
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    sa, sb = a.sync_session, b.sync_session
    sa.pause()
    sb.pause()
    add_task(a, "t1")
    up = sa.wait_for_upload()
    down = sb.wait_for_download()
    time.sleep(T(0.3))
    assert not up.done(), "an upload wait completed while paused"
    assert not down.done(), "a download wait completed while paused"

    sa.resume()
    up.result(T(5))
    assert "t1" in server.snapshot()["Task"]
    assert not down.done()  # B is still paused
    sb.resume()
    down.result(T(5))
    assert b.find(Task, "t1") is not None


# -- get_progress_stream ---------------------------------------------------------------------


@pytest.mark.parametrize("direction", [UP, DOWN])
def test_get_progress_stream_first_yields_current_progress(
    open_realm: OpenRealm, direction: rs.ProgressDirection
) -> None:
    a = open_realm("A")
    connected(a)
    s = a.sync_session
    indefinite = Recorder(s.get_progress_stream(direction, INDEFINITELY))
    outstanding = Recorder(s.get_progress_stream(direction, OUTSTANDING))
    # At once, with nothing outstanding: complete.
    assert indefinite.wait_for(1, timeout=1) == [P(0, 0, 1.0)]
    assert outstanding.wait_for(1, timeout=1) == [P(0, 0, 1.0)]
    wait_until(lambda: outstanding.done == 1, 1, "the outstanding-work stream to close")
    settle()
    assert outstanding.items == [P(0, 0, 1.0)] and outstanding.done == 1
    assert indefinite.done == 0  # REPORT_INDEFINITELY never closes by itself
    indefinite.cancel()


def test_get_progress_stream_blocking_and_async_iteration(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    connected(a)
    s = a.sync_session
    # The outstanding-work stream closes by itself, so plain loops over it end.
    assert list(s.get_progress_stream(UP, OUTSTANDING)) == [P(0, 0, 1.0)]

    async def collect() -> list[rs.SyncProgress]:
        return [p async for p in s.get_progress_stream(DOWN, OUTSTANDING)]

    assert asyncio.run(asyncio.wait_for(collect(), T(5))) == [P(0, 0, 1.0)]


@pytest.fixture
def small_batches(server: rs.SyncServer) -> Iterator[rs.App]:
    """An app whose sessions upload at most ~300 bytes per UPLOAD message."""
    app = rs.App(rs.AppConfiguration(server.url, sync_timeouts=FAST, upload_batch_bytes=300))
    yield app
    app.close()


def test_get_progress_stream_upload_for_currently_outstanding_work(
    open_realm: OpenRealm, small_batches: rs.App
) -> None:
    a = open_realm("A", target_app=small_batches)
    connected(a)
    s = a.sync_session
    s.pause()
    for i in range(6):
        add_task(a, f"t{i}", title="x" * 150)
    outstanding = pending_bytes(a)
    assert outstanding > 900
    rec = Recorder(s.get_progress_stream(UP, OUTSTANDING))
    assert rec.wait_for(1) == [P(0, outstanding, 0.0)]
    # Work committed after registration is not part of this stream's target.
    add_task(a, "late", title="y" * 150)
    s.resume()
    wait_until(lambda: rec.done == 1, what="the stream to close")
    s.wait_for_upload().result(T(5))
    settle()
    items = list(rec.items)
    assert rec.done == 1
    assert all(p.transferable_bytes == outstanding for p in items), items
    estimates = [p.progress_estimate for p in items]
    assert estimates == sorted(estimates), f"estimates decreased: {items}"
    assert [p.transferred_bytes for p in items] == sorted(p.transferred_bytes for p in items)
    # It closes right after yielding 1.0, exactly once, and yields nothing after.
    assert items[-1] == P(outstanding, outstanding, 1.0)
    assert estimates.count(1.0) == 1
    assert len(items) >= 3, f"several batches should report intermediate progress: {items}"


def test_get_progress_stream_upload_report_indefinitely(
    server: rs.SyncServer, open_realm: OpenRealm
) -> None:
    a = open_realm("A")
    connected(a)
    s = a.sync_session
    rec = Recorder(s.get_progress_stream(UP, INDEFINITELY))
    rec.wait_for(1)
    add_task(a, "t1", title="first")
    s.wait_for_upload().result(T(5))
    (_, _, _, body) = server_history(server)[0]
    n = len(body)  # bytes are encoded changeset bytes
    wait_until(lambda: len(rec.items) >= 3, what="progress for the commit and the ack")
    assert rec.items == [P(0, 0, 1.0), P(0, n, 0.0), P(n, n, 1.0)]
    # It does not close on reaching 1.0; it yields on the next change.
    add_task(a, "t2", title="second")
    s.wait_for_upload().result(T(5))
    wait_until(lambda: len(rec.items) >= 5, what="progress for the second commit")
    assert rec.items[-1].progress_estimate == 1.0
    assert rec.done == 0
    # Until cancelled.
    rec.cancel()
    seen = len(rec.items)
    add_task(a, "t3")
    s.wait_for_upload().result(T(5))
    settle()
    assert len(rec.items) == seen
    assert rec.done == 0


def test_get_progress_stream_download_is_exact(tmp_path: Path, open_realm: OpenRealm) -> None:
    # Small server batches: the download arrives in several DOWNLOAD messages.
    with rs.SyncServer(
        data_dir=str(tmp_path / "batched"), scrypt_n=2**10, download_batch_bytes=200
    ) as srv:
        app = rs.App(rs.AppConfiguration(srv.url, sync_timeouts=FAST))
        try:
            a, b = open_realm("A", target_app=app), open_realm("B", target_app=app)
            connected(a, b)
            sb = b.sync_session
            sb.pause()
            for i in range(6):
                add_task(a, f"t{i}", title="x" * 100)
            a.sync_session.wait_for_upload().result(T(5))
            bodies = [h[3] for h in server_history(srv)]
            total = sum(len(body) for body in bodies)
            assert len(bodies) == 6

            outstanding: list[Recorder[rs.SyncProgress]] = []

            def first_partial(p: rs.SyncProgress) -> None:
                # Register a second stream mid-download, from the sync thread, so it
                # captures a known amount of outstanding work.
                if not outstanding and 0 < p.progress_estimate < 1:
                    outstanding.append(Recorder(sb.get_progress_stream(DOWN, OUTSTANDING)))

            indefinite = Recorder(sb.get_progress_stream(DOWN, INDEFINITELY), first_partial)
            assert indefinite.wait_for(1) == [P(0, 0, 1.0)]
            sb.resume()
            sb.wait_for_download().result(T(5))
            wait_until(lambda: indefinite.items[-1].progress_estimate == 1.0)
            items = indefinite.items[1:]
            # Exact: the server tells what remains, so the total is known from the start
            # (at the latest from the first batch; the BIND acknowledgement may say it).
            assert all(p.transferable_bytes == total for p in items), (total, items)
            done = [p.transferred_bytes for p in items if p.transferred_bytes]
            # One report per DOWNLOAD batch, each adding that batch's changeset bytes.
            assert done == [sum(len(x) for x in bodies[: i + 1]) for i in range(6)], items
            assert items[-1] == P(total, total, 1.0)

            assert outstanding, "no partial download progress was reported"
            rec = outstanding[0]
            wait_until(lambda: rec.done == 1, what="the outstanding-work stream to close")
            got = list(rec.items)
            target = got[0].transferable_bytes
            assert got[0] == P(0, target, 0.0)
            assert target == total - done[0]  # registered right after the first batch
            assert [p.progress_estimate for p in got] == sorted(p.progress_estimate for p in got)
            assert got[-1] == P(target, target, 1.0)
            assert [p.progress_estimate for p in got].count(1.0) == 1
        finally:
            app.close()


# -- connection_state_changes -------------------------------------------------------------------


def test_connection_state_changes(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    connected(a)
    s = a.sync_session
    rec = Recorder(s.connection_state_changes)
    s.pause()
    assert rec.items == [Change(CONNECTED, DISCONNECTED)]
    settle()
    assert rec.items == [Change(CONNECTED, DISCONNECTED)]
    s.resume()
    rec.wait_for(3)
    settle()
    assert rec.items == [
        Change(CONNECTED, DISCONNECTED),
        Change(DISCONNECTED, CONNECTING),
        Change(CONNECTING, CONNECTED),
    ]
    # It does not close by itself; later changes keep coming.
    assert rec.done == 0
    s.pause()
    assert rec.items[-1] == Change(CONNECTED, DISCONNECTED)
    assert rec.done == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.items[0].current = CONNECTING  # type: ignore[misc]


# -- user, realm_path, identity ------------------------------------------------------------------


def test_user(app: rs.App, open_realm: OpenRealm) -> None:
    app.email_password_auth.register_user("ann@example.com", "secret-pw").result(T(10))
    ann = app.log_in(rs.Credentials.email_password("ann@example.com", "secret-pw")).result(T(10))
    a = open_realm("A", user=ann)
    assert a.sync_session.user is ann
    assert a.sync_session.user.id == ann.id
    anon = open_realm("B")
    assert anon.sync_session.user.id != ann.id


def test_realm_path(tmp_path: Path, open_realm: OpenRealm) -> None:
    a = open_realm("A")
    assert a.sync_session.realm_path == a.path == str(tmp_path / "A.realm")
    assert os.path.isfile(a.sync_session.realm_path)


def test_sync_session_is_the_same_object(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    assert a.sync_session is a.sync_session
    assert isinstance(a.sync_session, rs.Session)
    a.close()
    with pytest.raises(rs.RealmClosedError):
        _ = a.sync_session


# -- events ---------------------------------------------------------------------------------------


def test_a_download_committed_after_its_connection_went_is_still_reported(
    server: rs.SyncServer, open_realm: OpenRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pausing while the worker integrates a DOWNLOAD cancels the connection, but the
    worker commits: its DOWNLOAD_INTEGRATED event must still come, or an event log
    (and anything counting objects from it) misses data that is in the file."""
    from realmsync_nb.client import session as session_mod

    monkeypatch.setattr(session_mod, "INLINE_INTEGRATE_BYTES", 0)  # every download on the worker
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    file = b.sync_session._file
    integrate = file.integrate
    started = threading.Event()

    def slow_integrate(*args: object) -> object:
        started.set()
        time.sleep(0.3)  # the pause below lands while this runs
        return integrate(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(file, "integrate", slow_integrate)
    rec = Recorder(b.sync_session.events)

    def downloaded() -> int:  # the session's count of downloaded bytes, as a stream gives it
        values = Recorder(b.sync_session.get_progress_stream(DOWN, INDEFINITELY))
        wait_until(lambda: bool(values.items), T(5), "the progress stream's current value")
        return values.items[0].transferred_bytes

    before = downloaded()
    add_task(a, "late", title="x")
    assert started.wait(T(5))
    b.sync_session.pause()
    wait_until(
        lambda: any(e.kind is rs.EventKind.DOWNLOAD_INTEGRATED for e in rec.items),
        T(5),
        "the DOWNLOAD_INTEGRATED event of the integration the pause interrupted",
    )
    (down,) = [e for e in rec.items if e.kind is rs.EventKind.DOWNLOAD_INTEGRATED]
    assert (down.changesets, down.objects) == (1, 1)
    assert b.find(Task, "late") is not None
    assert downloaded() == before + down.bytes  # counted as downloaded, too


def test_events(server: rs.SyncServer, open_realm: OpenRealm) -> None:
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    sa = a.sync_session
    start = dt.datetime.now(dt.UTC)
    rec = Recorder(sa.events)

    add_task(a, "from-a", title="a" * 20)
    sa.wait_for_upload().result(T(5))
    add_task(b, "from-b", title="b" * 40)
    b.sync_session.wait_for_upload().result(T(5))
    sa.wait_for_download().result(T(5))
    sa.pause()
    sa.resume()
    connected(a)
    wait_until(
        lambda: any(
            e.kind is rs.EventKind.CONNECTION and e.current == "connected" for e in rec.items
        )
    )
    end = dt.datetime.now(dt.UTC)
    events = list(rec.items)
    (_, _, _, a_body), (_, _, _, b_body) = server_history(server)

    kinds = {e.kind for e in events}
    for k in ("CONNECTION", "UPLOAD_SENT", "UPLOAD_ACKED", "DOWNLOAD_INTEGRATED", "PROGRESS"):
        assert rs.EventKind[k] in kinds, k
    for e in events:
        assert isinstance(e, rs.SyncEvent)
        assert e.session == "A"
        assert e.time.utcoffset() == dt.timedelta(0), e
        assert start <= e.time <= end, e
    assert [e.time for e in events] == sorted(e.time for e in events)

    def of(kind: rs.EventKind) -> list[rs.SyncEvent]:
        return [e for e in events if e.kind is kind]

    sent, acked = of(rs.EventKind.UPLOAD_SENT), of(rs.EventKind.UPLOAD_ACKED)
    assert [(e.bytes, e.changesets) for e in sent] == [(len(a_body), 1)]
    assert [(e.bytes, e.changesets) for e in acked] == [(len(a_body), 1)]
    assert acked[0].latency is not None and acked[0].latency >= 0
    (down,) = of(rs.EventKind.DOWNLOAD_INTEGRATED)
    assert (down.bytes, down.changesets, down.remaining_bytes) == (len(b_body), 1, 0)
    assert down.objects == 1  # B's one new object
    progress = of(rs.EventKind.PROGRESS)
    assert {e.direction for e in progress} == {"upload", "download"}
    assert progress[-1].estimate is not None
    assert all(
        0.0 <= (e.estimate or 0) <= 1.0 and (e.transferred or 0) <= (e.transferable or 0)
        for e in progress
    )
    assert [(e.previous, e.current) for e in of(rs.EventKind.CONNECTION)] == [
        ("connected", "disconnected"),
        ("disconnected", "connecting"),
        ("connecting", "connected"),
    ]
    pause, resume = of(rs.EventKind.PAUSE), of(rs.EventKind.RESUME)
    assert len(pause) == len(resume) == 1
    assert pause[0].current == "paused" and resume[0].current == "active"
    assert events.index(pause[0]) < events.index(resume[0])
    for e in events:
        assert e.describe()  # every event has a human summary


# -- how commits reach the uploader ----------------------------------------------------


def _uploads(rec: Recorder[rs.SyncEvent]) -> list[int]:
    return [e.changesets or 0 for e in rec.items if e.kind is rs.EventKind.UPLOAD_SENT]


def test_a_lone_commit_is_uploaded_without_waiting_for_the_commit_poll(
    server: rs.SyncServer, open_realm: OpenRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first commit after a quiet moment wakes the sync thread at once; only the
    commits that follow it wait for the poll (here: a minute, longer than the test)."""
    from realmsync_nb.client import session as session_module

    monkeypatch.setattr(session_module, "COMMIT_POLL_FIRST", 60.0)
    monkeypatch.setattr(session_module, "COMMIT_POLL_MAX", 60.0)
    a = open_realm("A")
    connected(a)
    rec = Recorder(a.sync_session.events)
    add_task(a, "lone")
    a.sync_session.wait_for_upload().result(T(5))
    assert _uploads(rec) == [1]
    assert "lone" in server.snapshot()["Task"]


def test_a_stream_of_commits_is_uploaded_in_batches_and_all_arrive(
    server: rs.SyncServer, open_realm: OpenRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits made while the sync thread is due to look again join one UPLOAD instead
    of waking it (and costing an UPLOAD) each; none is lost or reordered."""
    from realmsync_nb.client import session as session_module

    monkeypatch.setattr(session_module, "COMMIT_POLL_FIRST", 0.5)
    monkeypatch.setattr(session_module, "COMMIT_POLL_MAX", 0.5)
    a = open_realm("A")
    connected(a)
    rec = Recorder(a.sync_session.events)
    n = 30
    for i in range(n):
        add_task(a, f"t{i:02}", priority=i)
        time.sleep(0.003)  # longer than a round trip: each acknowledgement comes back
    a.sync_session.wait_for_upload().result(T(10))
    uploads = _uploads(rec)
    assert sum(uploads) == n
    # The first commit (with any made before the uploader ran), then the rest at the
    # next look; woken by each commit, the sync thread would send about n.
    assert len(uploads) <= 4, uploads
    tasks = server.snapshot()["Task"]
    assert [tasks[f"t{i:02}"]["priority"] for i in range(n)] == list(range(n))


def test_a_commit_counted_after_its_acknowledgement_counts_as_uploaded(
    open_realm: OpenRealm,
) -> None:
    """Two threads' commits can be counted out of order, and the server may
    acknowledge the earlier one (uploaded from the history) before the sync thread
    counts it. It is then uploaded already: counting it as outstanding would leave
    upload progress short of its total for good. (White-box: the race is replayed
    on the sync thread, in the order the two threads can produce.)"""
    a = open_realm("A")
    connected(a)
    add_task(a, "first")
    s = a.sync_session
    s.wait_for_upload().result(T(5))
    s.pause()

    def replay() -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int]]]:
        before = s._up
        version = s._upload_ack + 1
        s._upload_ack = version  # the server acknowledged it ...
        with s._commit_lock:  # ... before its commit was counted
            s._commits.append((version, 100))
        s._apply_commits()
        after = s._up
        pending = list(s._pending_sizes)
        return (
            before.transferred,
            before.transferable,
            after.transferred,
            after.transferable,
            pending,
        )

    done0, total0, done1, total1, pending = s._thread.run_sync(replay)
    assert (done1, total1) == (done0 + 100, total0 + 100)
    assert pending == []


def test_the_heartbeat_gives_up_when_a_link_goes_silent_after_a_late_message() -> None:
    """A message that arrives after the PING moves the PONG deadline (the link is
    alive, only slow); when the link then goes silent, the heartbeat must still
    declare it dead at the moved deadline. It used to spin on the sync thread
    instead, for ever and without yielding, freezing every session of the App and
    its close(). (The heartbeat is driven alone, with a link that answers nothing.)"""
    from realmsync_nb.client.session import Session

    timeouts = rs.SyncTimeoutOptions(ping_interval=0.05, pong_timeout=0.2)
    state = types.SimpleNamespace(
        _timeouts=timeouts, _pong=None, _ping_sent=0.0, _last_received=0.0
    )

    class Link:
        async def send(self, data: bytes) -> None:
            # Something from the server arrives just after the PING, then nothing.
            state._last_received = time.monotonic() + 0.01

    class Proto:
        def ping(self, nonce: int) -> bytes:
            return b""

    outcome: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(Session._heartbeat(state, Link(), Proto()))  # type: ignore[arg-type]
        except BaseException as exc:  # reported below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)  # a spinning one cannot be stopped
    thread.start()
    thread.join(T(5))
    assert not thread.is_alive(), "the heartbeat spun instead of giving up"
    assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError), outcome
    assert "no PONG" in str(outcome[0])

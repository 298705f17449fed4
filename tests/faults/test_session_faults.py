"""The sync session under network faults: real sessions, a real server, the fault proxy.

Every app in this module reaches the server through ``proxy`` (tests/faults/conftest.py
overrides ``app``), with the FAST timeouts: ping every 1 s, PONG within 2 s, backoff
from 0.1 s doubling to 1 s with up to 25 % jitter. Measured figures are printed
(``pytest -s``) for docs/reliability.md.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

import realmsync_nb as rs
from realmsync_nb.faults import FaultProxy
from realmsync_nb.protocol.messages import ErrorCode
from tests.client.syncing import (
    CONNECTED,
    Recorder,
    add_task,
    client_id,
    connected,
    server_history,
    sync_all,
)
from tests.conftest import FAST, OpenRealm
from tests.helpers import T, Task, wait_until

K = rs.EventKind


def kinds(events: Recorder[rs.SyncEvent], kind: rs.EventKind) -> list[rs.SyncEvent]:
    return [e for e in events.items if e.kind is kind]


def delays(events: Recorder[rs.SyncEvent]) -> list[float]:
    return [e.delay for e in kinds(events, K.RECONNECT_SCHEDULED) if e.delay is not None]


def write_tasks(realm: rs.Realm, prefix: str, n: int, size: int = 0) -> None:
    """``n`` tasks, each in its own transaction (its own changeset)."""
    for i in range(n):
        add_task(realm, f"{prefix}-{i}", title="x" * size)


def assert_uploaded_exactly_once(server: rs.SyncServer, realm: rs.Realm, n: int) -> None:
    """The server holds each of ``realm``'s ``n`` local changesets once: none lost, none twice."""
    cid = client_id(realm)
    versions = [cv for _, origin, cv, _ in server_history(server) if origin == cid]
    dupes = [cv for cv, count in Counter(versions).items() if count > 1]
    assert not dupes, f"changesets stored twice: {dupes}"
    assert sorted(versions) == list(range(1, n + 1)), versions


# -- heartbeats ---------------------------------------------------------------------------


def test_heartbeat_detects_a_blackhole_and_the_session_comes_back(
    proxy: FaultProxy, open_realm: OpenRealm, server: rs.SyncServer
) -> None:
    a = open_realm("A")
    s = a.sync_session
    connected(a)
    events = Recorder(s.events)
    proxy.watch(s)

    start = time.monotonic()
    proxy.update(blackhole=True)
    bound = FAST.ping_interval + FAST.pong_timeout
    wait_until(lambda: s.connection_state is not CONNECTED, bound + 3, "the blackhole noticed")
    detected = time.monotonic() - start
    print(f"\nblackhole detected after {detected:.2f} s (bound {bound:.1f} s)")
    # Nothing was reset: TCP saw a healthy connection, only the missing PONG told.
    assert FAST.pong_timeout - 0.1 <= detected <= bound + T(0.5)
    errors = kinds(events, K.ERROR)
    assert errors and "no PONG" in (errors[0].message or ""), errors
    assert s.state is rs.SessionState.ACTIVE  # a network fault is not fatal

    add_task(a, "written-in-the-dark")
    time.sleep(T(0.3))  # reconnect attempts go into the dark too
    assert s.connection_state is not CONNECTED
    lifted = time.monotonic()
    proxy.update(blackhole=False)
    connected(a, timeout=FAST.connect_timeout + 2)
    print(f"reconnected {time.monotonic() - lifted:.2f} s after the blackhole lifted")
    s.wait_for_upload().result(T(5))
    assert "written-in-the-dark" in server.snapshot()["Task"]
    messages = [e.message for e in kinds(events, K.CONDITIONS)]
    assert messages == ["blackhole off → on", "blackhole on → off"]


# -- backoff ------------------------------------------------------------------------------


def test_backoff_grows_while_offline_and_resume_or_a_connect_resets_it(
    proxy: FaultProxy, open_realm: OpenRealm
) -> None:
    a = open_realm("A")
    s = a.sync_session
    connected(a)
    events = Recorder(s.events)

    proxy.update(offline=True)
    proxy.cut()
    wait_until(lambda: len(delays(events)) >= 5, 10, "five reconnect delays")
    got = delays(events)[:5]
    print("\nbackoff while offline:", [round(d, 3) for d in got], "s")
    for n, delay in enumerate(got):
        base = min(FAST.backoff_initial * FAST.backoff_multiplier**n, FAST.backoff_max)
        assert base * (1 - FAST.backoff_jitter) - 1e-9 <= delay <= base, (n, got)
    assert got[3] > 2 * got[1]  # it grows, whatever the jitter drew
    assert s.state is rs.SessionState.ACTIVE  # offline is not fatal: it keeps trying

    s.resume()  # on an active session: try now, from the first delay
    seen = len(delays(events))
    wait_until(lambda: len(delays(events)) > seen, 5, "a delay after resume()")
    assert delays(events)[seen] <= FAST.backoff_initial

    wait_until(lambda: len(delays(events)) > seen + 2, 5, "the delays to grow again")
    proxy.update(offline=False)
    connected(a, timeout=FAST.backoff_max + 3)
    seen = len(delays(events))
    proxy.cut()
    wait_until(lambda: len(delays(events)) > seen, 5, "a delay after the cut")
    assert delays(events)[seen] <= FAST.backoff_initial  # the connect reset it
    connected(a)


# -- slow networks ------------------------------------------------------------------------


def test_latency_and_a_bandwidth_cap_slow_sync_but_do_not_break_it(
    proxy: FaultProxy, open_realm: OpenRealm, server: rs.SyncServer
) -> None:
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    a_events, b_events = Recorder(a.sync_session.events), Recorder(b.sync_session.events)
    proxy.watch(a.sync_session, b.sync_session)
    latency, rate = 0.05, 100_000
    proxy.update(latency=latency, bandwidth=rate)

    with a.write():
        for i in range(100):
            a.add(Task(id=f"t{i}", title="x" * 1000))
    start = time.monotonic()
    a.sync_session.wait_for_upload().result(T(20))
    b.sync_session.wait_for_download().result(T(20))
    took = time.monotonic() - start
    payload = sum(e.bytes or 0 for e in kinds(a_events, K.UPLOAD_SENT))  # changeset bytes
    assert payload > 100_000

    # The bytes crossed the capped link twice (up from A, down to B), one after the
    # other: the server integrates an UPLOAD only once all of it has arrived.
    expected = 2 * payload / rate
    print(f"\n{payload} B through a {rate} B/s link twice: {took:.2f} s (≥ {expected:.2f} s)")
    assert took >= 0.8 * expected
    assert b.snapshot() == a.snapshot()
    assert server.snapshot()["Task"].keys() == a.snapshot()["Task"].keys()
    # Slow, not broken: no connection was lost on the way, and the session saw the
    # latency (a heartbeat crosses the link both ways).
    for events in (a_events, b_events):
        assert kinds(events, K.ERROR) == []
        assert [e.message for e in kinds(events, K.CONDITIONS)] == [
            "latency up 0 ms → 50 ms; latency down 0 ms → 50 ms; "
            "bandwidth up unlimited → 100 kB/s; bandwidth down unlimited → 100 kB/s"
        ]
    rtts = [e.latency for e in kinds(a_events, K.HEARTBEAT) if e.latency is not None]
    assert rtts and min(rtts) >= 2 * latency


# -- broken connections -------------------------------------------------------------------


def test_cut_connections_reconnect_and_nothing_is_lost(
    proxy: FaultProxy, open_realm: OpenRealm, server: rs.SyncServer
) -> None:
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    a_events, b_events = Recorder(a.sync_session.events), Recorder(b.sync_session.events)

    def connects(events: Recorder[rs.SyncEvent]) -> int:
        return sum(e.current == "connected" for e in kinds(events, K.CONNECTION))

    # 100 ms each way, so every cut finds changesets in flight: cut at 50 ms, A's
    # UPLOADs are still on their way (A must send them again); cut at 150 ms, they
    # have arrived but the acks have not (the server must not apply them twice).
    proxy.update(latency=0.1)
    for round_ in range(6):
        wait_until(lambda n=round_: connects(a_events) == connects(b_events) == n, 5, "reconnects")
        write_tasks(a, f"r{round_}", 20, size=200)
        time.sleep(0.05 if round_ % 2 == 0 else 0.15)
        assert proxy.cut() == 2
    add_task(b, "from-b")
    sync_all(a, b)
    drops = [
        e
        for e in kinds(a_events, K.CONNECTION)
        if (e.previous, e.current) == ("connected", "disconnected")
    ]
    assert len(drops) == 6
    assert_uploaded_exactly_once(server, a, 120)
    assert len(b.all(Task)) == 121
    assert a.snapshot() == b.snapshot()


def test_close_after_bytes_mid_upload_loses_and_duplicates_nothing(
    proxy: FaultProxy, open_realm: OpenRealm, server: rs.SyncServer
) -> None:
    # Small UPLOAD messages, so that each connection gets some of them through
    # before it is reset in the middle of the next one.
    small = rs.App(rs.AppConfiguration(proxy.url, sync_timeouts=FAST, upload_batch_bytes=4096))
    try:
        a = open_realm("A", target_app=small)
        connected(a)
        proxy.update(close_after_bytes=20_000)
        write_tasks(a, "t", 100, size=1000)
        a.sync_session.wait_for_upload().result(T(30))
        print(f"\n100 kB uploaded over {proxy.stats.cut} connections reset after 20 kB")
        assert_uploaded_exactly_once(server, a, 100)
        assert proxy.stats.cut >= 4
        proxy.update(close_after_bytes=None)
        b = open_realm("B")
        b.sync_session.wait_for_download().result(T(10))
        assert b.snapshot() == a.snapshot()
    finally:
        small.close()


def test_sliced_writes_still_sync(
    proxy: FaultProxy, open_realm: OpenRealm, server: rs.SyncServer
) -> None:
    proxy.update(slice_writes=7)  # log in, bind and sync with every message in pieces
    a, b = open_realm("A"), open_realm("B")
    write_tasks(a, "t", 20, size=100)
    add_task(b, "from-b")
    sync_all(a, b)
    assert a.snapshot() == b.snapshot()
    assert len(server.snapshot()["Task"]) == 21
    stats = proxy.stats
    assert stats.writes_up >= stats.bytes_up // 7


# -- fatal errors ---------------------------------------------------------------------------


def test_a_deleted_user_ends_the_session_for_good(
    proxy: FaultProxy, open_realm: OpenRealm, app: rs.App, server: rs.SyncServer, tmp_path: Path
) -> None:
    # The user is deleted from another device (straight to the server) while this
    # one's connection is blackholed, with an upload waiting for its acknowledgement.
    other_device = rs.App(rs.AppConfiguration(server.url, sync_timeouts=FAST))
    try:
        other_device.email_password_auth.register_user("gone@example.com", "secret1").result(10)
        creds = rs.Credentials.email_password("gone@example.com", "secret1")
        here = app.log_in(creds).result(T(10))
        there = other_device.log_in(creds).result(T(10))
        a = open_realm("A", user=here)
        s = a.sync_session
        connected(a)
        events, errors = Recorder(s.events), Recorder(s.errors)

        proxy.update(blackhole=True)
        add_task(a, "never-acknowledged")
        pending = s.wait_for_upload()
        there.delete().result(T(5))
        proxy.update(blackhole=False)  # the server's USER_DISABLED comes through

        with pytest.raises(rs.SessionInactiveError) as failed:
            pending.result(T(5))
        assert isinstance(failed.value.cause, rs.SyncServerError)
        assert failed.value.cause.code == ErrorCode.USER_DISABLED
        assert s.state is rs.SessionState.INACTIVE
        assert s.connection_state is rs.ConnectionState.DISCONNECTED
        (error,) = errors.items
        assert isinstance(error, rs.SyncServerError)
        assert (error.code, error.fatal) == (ErrorCode.USER_DISABLED, True)
        fatal = [e for e in kinds(events, K.ERROR) if e.fatal]
        assert [e.code for e in fatal] == [ErrorCode.USER_DISABLED]
        with pytest.raises(rs.SessionInactiveError):
            s.wait_for_download().result(T(2))  # later waits fail at once

        # Not retried: no reconnect scheduled, no new connection, for longer than
        # the longest backoff delay.
        accepted = proxy.stats.accepted
        time.sleep(FAST.backoff_max + T(0.5))
        assert kinds(events, K.RECONNECT_SCHEDULED) == []
        assert [e for e in kinds(events, K.CONNECTION) if e.current == "connecting"] == []
        assert proxy.stats.accepted == accepted
        # The upload still in flight when the user was deleted was not applied.
        assert "never-acknowledged" not in server.snapshot().get("Task", {})

        # A session of the deleted user that binds afterwards is refused just as
        # finally (its access token is still well-formed; the server says no).
        b = open_realm("B", user=here)
        wait_until(lambda: b.sync_session.state is rs.SessionState.INACTIVE, 5, "B to stop")
        assert isinstance(b.sync_session.last_error, rs.SyncServerError)
        assert b.sync_session.last_error.code == ErrorCode.USER_DISABLED
    finally:
        other_device.close()


def test_a_saturated_uplink_is_not_mistaken_for_a_dead_connection(
    proxy: FaultProxy, open_realm: OpenRealm, server: rs.SyncServer
) -> None:
    """A PING queued behind our own UPLOADs on a slow uplink arrives late; the server
    keeps acknowledging uploads meanwhile, so the connection is alive. Counting only
    PONGs made such a link reconnect again and again (11 times for 200 kB at 20 kB/s)."""
    a = open_realm("A")
    s = a.sync_session
    connected(a)
    events = Recorder(s.events)
    proxy.update(bandwidth_up=20_000)
    write_tasks(a, "slow", 60, size=1_000)  # 60 kB: three seconds at the cap
    s.wait_for_upload().result(T(30))
    assert kinds(events, K.RECONNECT_SCHEDULED) == [], "a live, busy link was dropped"
    assert_uploaded_exactly_once(server, a, 60)


def test_a_backlog_on_a_slow_uplink_goes_in_uploads_sized_to_the_link(
    proxy: FaultProxy, open_realm: OpenRealm, server: rs.SyncServer
) -> None:
    """100 kB written while paused is a backlog the uploader may send in one UPLOAD
    (up to upload_batch_bytes, 1 MiB). At 20 kB/s that message alone would take 5 s,
    far longer than pong_timeout (2 s), with nothing coming back meanwhile. UPLOADs start
    at 16 KiB on a new connection and adapt to how fast the server acknowledges
    them, so the link stays visibly alive."""
    a = open_realm("A")
    s = a.sync_session
    connected(a)
    s.pause()
    write_tasks(a, "backlog", 100, size=1_000)
    events = Recorder(s.events)
    proxy.update(bandwidth_up=20_000)
    s.resume()
    s.wait_for_upload().result(T(30))
    assert kinds(events, K.RECONNECT_SCHEDULED) == [], "a live, busy link was dropped"
    sizes = [e.bytes or 0 for e in kinds(events, K.UPLOAD_SENT)]
    assert max(sizes) <= 16 * 1024 + 1_200, sizes  # the cap, or one changeset over it
    assert_uploaded_exactly_once(server, a, 100)

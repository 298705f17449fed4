"""The server test-command channel (docs/protocol.md 6.8), observed from a real client.

Each command is sent with ``Session.send_test_command`` over the session's own
connection to a server started with ``enable_test_commands``, and checked by what
the session then does: the server's retry hints are obeyed, a fatal error ends the
session for good, paused uploads are not acknowledged until resumed, paused
downloads do not arrive until resumed, a closed connection comes back. A server
without test commands refuses them and stores nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import realmsync_nb as rs
from realmsync_nb.protocol import messages as m
from realmsync_nb.protocol.client import ClientProtocol
from realmsync_nb.server import test_commands
from tests.client.syncing import (
    CONNECTED,
    DISCONNECTED,
    Recorder,
    add_task,
    client_id,
    connected,
    server_history,
)
from tests.conftest import OpenRealm
from tests.helpers import T, Task, wait_until
from tests.server.test_bad_input import assert_nothing_persisted, server_state

EV = rs.EventKind


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"enable_test_commands": True}


def command(realm: rs.Realm, name: str, argument: Any = "") -> str:
    arg = argument if isinstance(argument, str) else json.dumps(argument)
    return realm.sync_session.send_test_command(name, arg).result(T(5))


def kinds(events: Recorder[rs.SyncEvent], kind: rs.EventKind) -> list[rs.SyncEvent]:
    return [e for e in events.items if e.kind is kind]


# -- send_error ----------------------------------------------------------------------


def test_the_servers_retry_hints_are_obeyed(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    connected(a)
    events = Recorder(a.sync_session.events)
    errors = Recorder(a.sync_session.errors)
    hint = 2.5
    sent = time.monotonic()
    assert command(a, "send_error", {"code": 401, "message": "busy", "backoff": hint}) == "ok"

    (err,) = errors.wait_for(1)
    assert isinstance(err, rs.SyncServerError)
    assert (err.code, str(err), err.retry, err.backoff, err.fatal) == (
        401,
        "busy",
        True,
        hint,
        False,
    )
    wait_until(lambda: kinds(events, EV.RECONNECT_SCHEDULED), 5, "a reconnect to be scheduled")
    assert kinds(events, EV.RECONNECT_SCHEDULED)[0].delay == hint  # not the client's own backoff
    (error_event,) = kinds(events, EV.ERROR)
    assert (error_event.code, error_event.retry, error_event.fatal) == (401, True, False)

    connected(a, timeout=hint + 5)  # it does come back, by itself ...
    assert time.monotonic() - sent >= hint  # ... but not before the server asked
    assert a.sync_session.state is rs.SessionState.ACTIVE
    add_task(a, "after")
    a.sync_session.wait_for_upload().result(T(5))


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            {"code": 204, "message": "deleted", "retry": False, "fatal": True}, id="fatal"
        ),
        pytest.param({"code": 499, "message": "no retry", "retry": False}, id="no retry"),
    ],
)
def test_a_fatal_server_error_ends_the_session_without_retrying(
    open_realm: OpenRealm, error: dict[str, Any]
) -> None:
    a = open_realm("A")
    connected(a)
    s = a.sync_session
    events = Recorder(s.events)
    errors = Recorder(s.errors)
    command(a, "pause_uploads")
    add_task(a, "pending")  # keep an upload wait pending while the error arrives
    wait = s.wait_for_upload()
    assert command(a, "send_error", error) == "ok"

    (err,) = errors.wait_for(1)
    assert isinstance(err, rs.SyncServerError) and err.code == error["code"]
    wait_until(lambda: s.state is rs.SessionState.INACTIVE, 5, "the session to become INACTIVE")
    with pytest.raises(rs.SessionInactiveError) as info:
        wait.result(T(5))
    assert info.value.cause is err
    time.sleep(T(1.5))  # longer than FAST's whole backoff range: nothing retries
    assert s.connection_state is DISCONNECTED
    assert kinds(events, EV.RECONNECT_SCHEDULED) == []
    assert [e.current for e in kinds(events, EV.CONNECTION)] == ["disconnected"]
    s.resume()  # resume() does not revive a failed session either
    time.sleep(T(0.3))
    assert s.state is rs.SessionState.INACTIVE and s.connection_state is DISCONNECTED


def test_send_error_arguments_are_checked(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    connected(a)
    changes = Recorder(a.sync_session.connection_state_changes)
    for bad, why in [
        ("not json", "JSON"),
        ("[1]", "JSON object"),
        ('{"colour": 1}', "unknown keys"),
        ('{"code": -1}', "code"),
        ('{"backoff": 1e9}', "outside"),
        ('{"retry": "yes"}', "true or false"),
    ]:
        with pytest.raises(rs.SyncServerError, match=why) as info:
            command(a, "send_error", bad)
        assert info.value.code == m.ErrorCode.TEST_ERROR
    with pytest.raises(rs.SyncServerError, match="does not know the test command 'explode'"):
        command(a, "explode")
    with pytest.raises(rs.SyncServerError, match="takes no argument"):
        command(a, "pause_uploads", "now")
    time.sleep(T(0.2))
    assert changes.items == []  # a refused command leaves the connection alone


# -- pause and resume the upload side --------------------------------------------------


def test_paused_uploads_are_held_until_resumed(
    server: rs.SyncServer, open_realm: OpenRealm
) -> None:
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    assert command(a, "pause_uploads") == "ok"
    for i in range(5):
        add_task(a, f"held-{i}", priority=i)
    wait = a.sync_session.wait_for_upload()
    time.sleep(T(0.5))
    assert not wait.done(), "an upload was acknowledged while the server held uploads"
    assert server_history(server) == []
    assert "Task" not in server.snapshot() or server.snapshot()["Task"] == {}
    # The connection stays up and downloads still flow while uploads are held.
    add_task(b, "from-b")
    b.sync_session.wait_for_upload().result(T(5))
    wait_until(lambda: a.find(Task, "from-b") is not None, 5, "B's write to reach A")

    assert command(a, "resume_uploads") == "ok"
    wait.result(T(5))
    origin = client_id(a)
    assert [cv for _, o, cv, _ in server_history(server) if o == origin] == [1, 2, 3, 4, 5]
    b.sync_session.wait_for_download().result(T(5))
    assert b.snapshot() == a.snapshot() == server.snapshot()


def test_held_uploads_are_bounded(
    server: rs.SyncServer, open_realm: OpenRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(test_commands, "MAX_HELD_UPLOAD_BYTES", 2_000)
    a = open_realm("A")
    connected(a)
    errors = Recorder(a.sync_session.errors)
    command(a, "pause_uploads")
    for i in range(40):
        add_task(a, f"big-{i}", title="x" * 100)
    (err,) = errors.wait_for(1)
    assert isinstance(err, rs.SyncServerError)
    assert err.code == m.ErrorCode.TRY_AGAIN_LATER and err.retry and not err.fatal
    # The next connection starts with uploads running; everything arrives once.
    a.sync_session.wait_for_upload().result(T(10))
    origin = client_id(a)
    assert [cv for _, o, cv, _ in server_history(server) if o == origin] == list(range(1, 41))


# -- pause and resume the download side ------------------------------------------------


def test_paused_downloads_hold_back_other_devices_writes(open_realm: OpenRealm) -> None:
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    assert command(b, "pause_downloads") == "ok"
    add_task(a, "t1", title="from A")
    a.sync_session.wait_for_upload().result(T(5))  # the server has it
    wait = b.sync_session.wait_for_download()
    time.sleep(T(0.5))
    assert b.find(Task, "t1") is None, "a download arrived while the server held them"
    assert not wait.done()
    assert b.sync_session.connection_state is CONNECTED

    assert command(b, "resume_downloads") == "ok"
    wait.result(T(5))
    found = b.find(Task, "t1")
    assert found is not None and found.title == "from A"


# -- close_connection -------------------------------------------------------------------


def test_close_connection_drops_the_connection_and_the_session_comes_back(
    open_realm: OpenRealm,
) -> None:
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    changes = Recorder(a.sync_session.connection_state_changes)
    command(a, "pause_downloads")  # this connection's state ends with it
    assert command(a, "close_connection") == "ok"
    changes.wait_for(3)
    assert [(c.previous, c.current) for c in changes.items[:3]] == [
        (CONNECTED, DISCONNECTED),
        (DISCONNECTED, rs.ConnectionState.CONNECTING),
        (rs.ConnectionState.CONNECTING, CONNECTED),
    ]
    assert a.sync_session.state is rs.SessionState.ACTIVE
    add_task(b, "after-close")
    b.sync_session.wait_for_upload().result(T(5))
    a.sync_session.wait_for_download().result(T(5))  # downloads run on the new connection
    assert a.find(Task, "after-close") is not None


# -- refused unless enabled --------------------------------------------------------------


class TestDisabled:
    @pytest.fixture
    def server_config(self) -> dict[str, Any]:
        return {}

    def test_a_server_without_test_commands_refuses_them(
        self, server: rs.SyncServer, open_realm: OpenRealm
    ) -> None:
        a = open_realm("A")
        add_task(a, "before")
        a.sync_session.wait_for_upload().result(T(5))
        before = server_state(server)
        errors = Recorder(a.sync_session.errors)
        for name in ("pause_uploads", "send_error", "close_connection"):
            with pytest.raises(rs.SyncServerError, match="test commands are disabled") as info:
                command(a, name)
            assert info.value.code == m.ErrorCode.UNEXPECTED_MESSAGE
        assert_nothing_persisted(server, before)
        # The session treats the refusal as any retryable server error and carries on.
        assert errors.items and all(
            isinstance(e, rs.SyncServerError) and e.retry for e in errors.items
        )
        add_task(a, "after")
        a.sync_session.wait_for_upload().result(T(5))
        assert a.sync_session.state is rs.SessionState.ACTIVE


# -- the client side of the channel --------------------------------------------------------


def test_commands_wait_for_a_connection_and_fail_like_waits(
    server: rs.SyncServer, open_realm: OpenRealm
) -> None:
    a = open_realm("A")
    s = a.sync_session
    s.pause()
    queued = s.send_test_command("pause_downloads")
    time.sleep(T(0.2))
    assert not queued.done()  # a command started while paused waits for resume()
    s.resume()
    assert queued.result(T(5)) == "ok"

    server.stop()
    wait_until(lambda: s.connection_state is not CONNECTED, 5, "the session to notice")
    pending = s.send_test_command("pause_downloads")
    s.pause()  # a command pending at pause() fails, as a wait does
    with pytest.raises(rs.SessionPausedError):
        pending.result(T(5))
    a.close()
    with pytest.raises(rs.SessionInactiveError):
        s.send_test_command("pause_downloads").result(T(5))


def test_the_client_protocol_accepts_only_replies_it_asked_for() -> None:
    p = ClientProtocol(0, 0, 0)
    p.receive(m.encode(m.Download(0, 0, 0, ())))  # the bind acknowledgement
    p.test_command(7, "pause_uploads")
    assert p.receive(m.encode(m.TestCommand(7, "ok"))) == m.TestCommand(7, "ok")
    with pytest.raises(rs.ProtocolError) as info:
        p.receive(m.encode(m.TestCommand(7, "ok")))  # answered already
    assert info.value.code == m.ErrorCode.UNEXPECTED_MESSAGE

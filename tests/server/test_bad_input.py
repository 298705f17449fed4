"""Bad input against a real server: raw WebSocket clients on /sync and /auth.

For every bad message the client gets an ERROR with the documented code
(protocol/messages.py ErrorCode) and a message saying what was wrong, the server
closes that connection (on /auth, a wrong password or token is answered with an
ERROR reply instead: the request was well formed), keeps serving everybody else (a
real Realm session on the same server syncs on, never disconnected), and nothing
from the bad message is persisted (checked in the server's SQLite file).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

import realmsync_nb as rs
from realmsync_nb.protocol import messages as m
from realmsync_nb.protocol.changeset import (
    Changeset,
    Instruction,
    NewObjects,
    Op,
    encode_changeset,
)
from realmsync_nb.protocol.messages import ErrorCode as E
from realmsync_nb.protocol.schema import FieldSchema, TableSchema, ValueType
from realmsync_nb.server import auth
from tests.client.syncing import (
    Recorder,
    add_task,
    client_id,
    connected,
    server_db,
    sqlite,
)
from tests.conftest import FAST, OpenRealm
from tests.helpers import Note, T, Task, open_raw

SCHEMA = (Task.__table_schema__, Note.__table_schema__)
PK = FieldSchema("id", ValueType.STR, primary_key=True)
RAW_CLIENT_ID = 4242


# -- raw clients -------------------------------------------------------------------------


def recv(ws: ClientConnection) -> m.Message:
    try:
        data = ws.recv(timeout=T(5))
    except TimeoutError:
        raise AssertionError(f"the server sent nothing within {T(5):.1f} s") from None
    assert isinstance(data, bytes), f"the server sent a text frame: {data!r}"
    return m.decode(data)


def expect_error(ws: ClientConnection, code: int, fragment: str) -> m.Error:
    """The next ERROR (skipping DOWNLOADs), then the server closing the connection."""
    while True:
        msg = recv(ws)
        if not isinstance(msg, m.Download):
            break
    assert isinstance(msg, m.Error), f"expected an ERROR, got {msg}"
    assert msg.code == code, f"expected {E(code)!r}, got {msg.code} ({msg.message})"
    assert fragment.lower() in msg.message.lower(), msg.message
    if code in m.FATAL_CODES:
        assert msg.fatal and not msg.retry, msg
    with pytest.raises(ConnectionClosed):
        while True:
            recv(ws)
    assert ws.close_code is not None, "the server did not close the connection"
    return msg


def body(origin: int, *instructions: Instruction) -> bytes:
    return encode_changeset(Changeset(time.time_ns() // 1000, origin, instructions))


def group_body(fields: tuple[str, ...], keys: tuple[Any, ...], columns: tuple[Any, ...]) -> bytes:
    """A changeset of one NewObjects group of Task (the bulk form of CREATEs)."""
    g = NewObjects("Task", fields, keys, columns)
    return encode_changeset(Changeset(time.time_ns() // 1000, RAW_CLIENT_ID, (), (g,)))


def create(pk: str = "evil", table: str = "Task", **values: Any) -> Instruction:
    return Instruction(Op.CREATE, table, pk, tuple(values.items()) or (("title", "evil"),))


def upload(*changesets: tuple[int, bytes]) -> bytes:
    return m.encode(m.Upload(tuple(m.UploadChangeset(cv, b) for cv, b in changesets)))


def unchecked_table(name: str, *fields: FieldSchema) -> TableSchema:
    """A TableSchema that skips validation: what a hostile client can put on the wire."""
    t = object.__new__(TableSchema)
    object.__setattr__(t, "name", name)
    object.__setattr__(t, "fields", fields)
    return t


def raw_login(server: rs.SyncServer) -> m.AuthResponse:
    with open_raw(server, "/auth") as ws:
        ws.send(m.encode(m.AuthRequest(m.AuthOp.LOGIN_ANONYMOUS)))
        reply = recv(ws)
    assert isinstance(reply, m.AuthResponse), reply
    return reply


# -- the world around the bad client ------------------------------------------------------


@dataclass
class Witness:
    """Two real realms syncing on the same server, before and after the bad input."""

    a: rs.Realm
    b: rs.Realm
    changes: Recorder[rs.ConnectionStateChange] = field(init=False)
    writes: int = 0

    def __post_init__(self) -> None:
        connected(self.a, self.b)
        self.changes = Recorder(self.a.sync_session.connection_state_changes)
        self.still_serving()

    def still_serving(self) -> None:
        self.writes += 1
        pk = f"witness-{self.writes}"
        add_task(self.a, pk, title="still syncing")
        self.a.sync_session.wait_for_upload().result(T(5))
        self.b.sync_session.wait_for_download().result(T(5))
        assert self.b.find(Task, pk) is not None, "the server stopped serving other clients"
        assert self.changes.items == [], "a good client lost its connection"


@pytest.fixture
def witness(open_realm: OpenRealm) -> Witness:
    return Witness(open_realm("A"), open_realm("B"))


def server_state(server: rs.SyncServer) -> dict[str, Any]:
    """Everything the server has persisted, read from its SQLite file."""
    with sqlite(server_db(server)) as c:
        return {
            "history": c.execute("SELECT * FROM _history ORDER BY server_version").fetchall(),
            "users": c.execute(
                "SELECT id, email, hash, disabled FROM _users ORDER BY id"
            ).fetchall(),
            "clients": c.execute(
                "SELECT client_id, user_id, last_client_version FROM _clients ORDER BY client_id"
            ).fetchall(),
            "schema": json.loads(
                c.execute("SELECT value FROM _meta WHERE key='schema'").fetchone()[0]
            ),
            "sql": c.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall(),
            "snapshot": server.snapshot(),
        }


def assert_nothing_persisted(
    server: rs.SyncServer, before: dict[str, Any], new_client: tuple[int, str] | None = None
) -> None:
    after = server_state(server)
    if new_client is not None:
        # Binding (validly) registers the client file, with nothing integrated.
        after["clients"] = [c for c in after["clients"] if c != (*new_client, 0)]
    for key in before:
        assert after[key] == before[key], f"the bad input changed the server's {key}"


# -- /sync ------------------------------------------------------------------------------------


@dataclass
class Ctx:
    server: rs.SyncServer
    witness: Witness
    login: m.AuthResponse  # the raw client's own, valid user
    bound: bool = False

    def bind(self, ws: ClientConnection, **overrides: Any) -> None:
        fields: dict[str, Any] = {
            "protocol_version": m.PROTOCOL_VERSION,
            "access_token": self.login.access_token,
            "client_id": RAW_CLIENT_ID,
            "download_cursor": 0,
            "upload_cursor": 0,
            "schema": SCHEMA,
        }
        fields.update(overrides)
        ws.send(m.encode(m.Bind(**fields)))

    def bind_ok(self, ws: ClientConnection) -> None:
        self.bind(ws)
        assert isinstance(recv(ws), m.Download)  # the bind acknowledgement
        self.bound = True

    @property
    def witness_client(self) -> int:
        return client_id(self.witness.a)


Send = Callable[[Ctx, ClientConnection], None]


def after_bind(send: Callable[[Ctx, ClientConnection], Any]) -> Send:
    def run(c: Ctx, ws: ClientConnection) -> None:
        c.bind_ok(ws)
        send(c, ws)

    return run


def good(c: Ctx, pk: str = "evil") -> bytes:
    return body(RAW_CLIENT_ID, create(pk))


SYNC_CASES = [
    # Frames that are not messages.
    ("garbage", lambda c, ws: ws.send(b"\xff\x00 not a message"), E.MALFORMED_MESSAGE, "malformed"),
    ("empty frame", lambda c, ws: ws.send(b""), E.MALFORMED_MESSAGE, "malformed"),
    (
        "truncated BIND",
        lambda c, ws: ws.send(m.encode(m.Bind(1, c.login.access_token, 1, 0, 0, SCHEMA))[:-3]),
        E.MALFORMED_MESSAGE,
        "malformed",
    ),
    ("text frame", lambda c, ws: ws.send("hello"), E.MALFORMED_MESSAGE, "text frames"),
    (
        "oversized frame",
        lambda c, ws: ws.send(bytes(m.MAX_MESSAGE_SIZE + 1)),
        E.MESSAGE_TOO_LARGE,
        "exceeds",
    ),
    # Messages out of place.
    (
        "wrong protocol version",
        lambda c, ws: c.bind(ws, protocol_version=m.PROTOCOL_VERSION + 1),
        E.UNSUPPORTED_VERSION,
        f"protocol version {m.PROTOCOL_VERSION + 1}",
    ),
    (
        "UPLOAD before BIND",
        lambda c, ws: ws.send(upload((1, good(c)))),
        E.UNKNOWN_SESSION,
        "before BIND",
    ),
    (
        "MARK before BIND",
        lambda c, ws: ws.send(m.encode(m.Mark(1))),
        E.UNKNOWN_SESSION,
        "before BIND",
    ),
    (
        "a server message from a client",
        lambda c, ws: ws.send(m.encode(m.Download(0, 0, 0, ()))),
        E.UNEXPECTED_MESSAGE,
        "Download",
    ),
    ("second BIND", after_bind(lambda c, ws: c.bind(ws)), E.UNEXPECTED_MESSAGE, "Bind"),
    (
        "test command on a production server",
        lambda c, ws: ws.send(m.encode(m.TestCommand(1, "pause_downloads"))),
        E.UNEXPECTED_MESSAGE,
        "disabled",
    ),
    # Tokens.
    (
        "missing token",
        lambda c, ws: c.bind(ws, access_token=""),
        E.TOKEN_INVALID,
        "no access token",
    ),
    (
        "malformed token",
        lambda c, ws: c.bind(ws, access_token="x.y.z"),
        E.TOKEN_INVALID,
        "malformed",
    ),
    (
        "forged token",
        lambda c, ws: c.bind(
            ws, access_token=auth.issue_token(os.urandom(32), c.login.user_id, "access", 600)
        ),
        E.TOKEN_INVALID,
        "signature",
    ),
    (
        "refresh token as access token",
        lambda c, ws: c.bind(ws, access_token=c.login.refresh_token),
        E.TOKEN_INVALID,
        "refresh token",
    ),
    # Client files.
    ("client id 0", lambda c, ws: c.bind(ws, client_id=0), E.BAD_CLIENT_FILE, "client id"),
    (
        "client id over 63 bits",
        lambda c, ws: c.bind(ws, client_id=2**63),
        E.BAD_CLIENT_FILE,
        "client id",
    ),
    (
        "another user's client file",
        lambda c, ws: c.bind(ws, client_id=c.witness_client),
        E.BAD_CLIENT_FILE,
        "another user",
    ),
    (
        "unknown client file claiming history",
        lambda c, ws: c.bind(ws, download_cursor=1, upload_cursor=1),
        E.CLIENT_RESET_REQUIRED,
        "reset",
    ),
    # Schemas.
    (
        "schema conflict",
        lambda c, ws: c.bind(
            ws, schema=(TableSchema("Task", (PK, FieldSchema("title", ValueType.INT))),)
        ),
        E.SCHEMA_MISMATCH,
        "title",
    ),
    (
        "new table in a rejected BIND",
        lambda c, ws: c.bind(ws, client_id=0, schema=(TableSchema("Extra", (PK,)),)),
        E.BAD_CLIENT_FILE,
        "client id",
    ),
    (
        "table named like a server table",
        lambda c, ws: c.bind(
            ws, schema=(unchecked_table("_users", PK, FieldSchema("x", ValueType.INT)),)
        ),
        E.MALFORMED_MESSAGE,
        "_users",
    ),
    (
        "table named like an SQLite table",
        lambda c, ws: c.bind(ws, schema=(unchecked_table("sqlite_master", PK),)),
        E.MALFORMED_MESSAGE,
        "sqlite_master",
    ),
    (
        "table name differing only in case",
        lambda c, ws: c.bind(
            ws, schema=(TableSchema("task", (PK, FieldSchema("title", ValueType.INT))),)
        ),
        E.SCHEMA_MISMATCH,
        "task",
    ),
    (
        "field names differing only in case",
        lambda c, ws: c.bind(
            ws,
            schema=(
                TableSchema(
                    "Extra", (PK, FieldSchema("a", ValueType.INT), FieldSchema("A", ValueType.INT))
                ),
            ),
        ),
        E.SCHEMA_MISMATCH,
        "A",
    ),
    # Changesets that break the schema or the rules.
    (
        "wrong value type",
        after_bind(lambda c, ws: ws.send(upload((1, body(RAW_CLIENT_ID, create(title=5)))))),
        E.BAD_CHANGESET,
        "title expects str",
    ),
    (
        "unknown table",
        after_bind(lambda c, ws: ws.send(upload((1, body(RAW_CLIENT_ID, create(table="Ghost")))))),
        E.BAD_CHANGESET,
        "unknown table",
    ),
    (
        "unknown field",
        after_bind(lambda c, ws: ws.send(upload((1, body(RAW_CLIENT_ID, create(colour="red")))))),
        E.BAD_CHANGESET,
        "unknown field",
    ),
    (
        "a group whose column has the wrong type",
        after_bind(
            lambda c, ws: ws.send(upload((1, group_body(("title",), ("g1", "g2"), (("ok", 5),)))))
        ),
        E.BAD_CHANGESET,
        "title expects str",
    ),
    (
        "a group naming an object twice",
        after_bind(
            lambda c, ws: ws.send(upload((1, group_body(("title",), ("g1", "g1"), (("a", "b"),)))))
        ),
        E.BAD_CHANGESET,
        "appears twice",
    ),
    (
        "a group with a lone surrogate in a string",
        after_bind(
            # The encoder refuses a lone surrogate; a hostile client writes it itself.
            lambda c, ws: ws.send(
                upload(
                    (
                        1,
                        group_body(("title",), ("g1",), (("XXXXXX",),)).replace(
                            b"XXXXXX", b"\\ud800"
                        ),
                    )
                )
            )
        ),
        E.BAD_CHANGESET,
        "invalid UTF-8",
    ),
    (
        "a group with a column too short",
        after_bind(
            lambda c, ws: ws.send(upload((1, group_body(("title",), ("g1", "g2"), (("a",),)))))
        ),
        E.BAD_CHANGESET,
        "does not decode",
    ),
    (
        "undecodable changeset",
        after_bind(lambda c, ws: ws.send(upload((1, b"\x01\x02")))),
        E.BAD_CHANGESET,
        "does not decode",
    ),
    (
        "origin is not the bound client",
        after_bind(lambda c, ws: ws.send(upload((1, body(c.witness_client, create()))))),
        E.BAD_CHANGESET,
        "origin",
    ),
    (
        "a valid changeset then a bad one",
        after_bind(
            lambda c, ws: ws.send(
                upload((1, good(c)), (2, body(RAW_CLIENT_ID, create("evil2", title=5))))
            )
        ),
        E.BAD_CHANGESET,
        "changeset 2",
    ),
    (
        "decreasing client versions",
        after_bind(lambda c, ws: ws.send(upload((2, good(c)), (1, good(c, "evil2"))))),
        E.BAD_PROGRESS,
        "increasing",
    ),
    (
        "repeated client version",
        after_bind(lambda c, ws: ws.send(upload((1, good(c)), (1, good(c, "evil2"))))),
        E.BAD_PROGRESS,
        "increasing",
    ),
    (
        "client version 0",
        after_bind(lambda c, ws: ws.send(upload((0, good(c))))),
        E.BAD_PROGRESS,
        "increasing",
    ),
    (
        "client version over 63 bits",
        after_bind(lambda c, ws: ws.send(upload((2**63, good(c))))),
        E.BAD_PROGRESS,
        "client version",
    ),
]


@pytest.mark.parametrize(
    ("send", "code", "fragment"),
    [pytest.param(s, c, f, id=name) for name, s, c, f in SYNC_CASES],
)
def test_bad_sync_input(
    server: rs.SyncServer, witness: Witness, send: Send, code: E, fragment: str
) -> None:
    ctx = Ctx(server, witness, raw_login(server))
    before = server_state(server)
    with open_raw(server) as ws:
        send(ctx, ws)
        expect_error(ws, code, fragment)
    assert_nothing_persisted(
        server, before, (RAW_CLIENT_ID, ctx.login.user_id) if ctx.bound else None
    )
    witness.still_serving()


def test_resending_an_acknowledged_changeset_is_acked_not_applied(
    server: rs.SyncServer, witness: Witness
) -> None:
    ctx = Ctx(server, witness, raw_login(server))
    with open_raw(server) as ws:
        ctx.bind_ok(ws)
        ws.send(upload((1, good(ctx))))
        while not (isinstance(msg := recv(ws), m.Download) and msg.upload_ack == 1):
            pass
    assert "evil" in server.snapshot()["Task"]
    before = server_state(server)
    # A new connection whose client never saw the acknowledgement (it crashed, say)
    # sends version 1 again: the server acknowledges it, without error, and does not
    # apply it a second time, even though this copy differs.
    with open_raw(server) as ws:
        ctx.bind(ws)
        ack = recv(ws)
        assert isinstance(ack, m.Download) and ack.upload_ack == 1
        ws.send(upload((1, body(RAW_CLIENT_ID, create(title="changed")))))
        ws.send(m.encode(m.Mark(7)))
        while not (isinstance(msg := recv(ws), m.Mark) and msg.request_id == 7):
            assert not isinstance(msg, m.Error), msg
    assert_nothing_persisted(server, before)
    witness.still_serving()


def test_expired_access_token(tmp_path: Path, open_realm: OpenRealm) -> None:
    ttl = T(1)
    with rs.SyncServer(
        data_dir=str(tmp_path / "short-tokens"), scrypt_n=2**10, access_token_ttl=ttl
    ) as srv:
        app = rs.App(rs.AppConfiguration(srv.url, sync_timeouts=FAST))
        try:
            witness = Witness(open_realm("A", target_app=app), open_realm("B", target_app=app))
            login = raw_login(srv)
            time.sleep(ttl + 0.2)
            before = server_state(srv)
            with open_raw(srv) as ws:
                Ctx(srv, witness, login).bind(ws)
                err = expect_error(ws, E.TOKEN_EXPIRED, "expired")
            # Not fatal: refresh the token and come back.
            assert err.retry and not err.fatal
            assert_nothing_persisted(srv, before)
            witness.still_serving()
        finally:
            app.close()


# -- /auth ------------------------------------------------------------------------------------


AUTH_CASES = [
    ("garbage", b"\xff\x00", E.MALFORMED_MESSAGE, "malformed"),
    ("text frame", "hello", E.MALFORMED_MESSAGE, "malformed"),
    (
        "a sync message on /auth",
        m.encode(m.Bind(m.PROTOCOL_VERSION, "", 1, 0, 0, SCHEMA)),
        E.UNEXPECTED_MESSAGE,
        "/auth",
    ),
]


@pytest.mark.parametrize(
    ("frame", "code", "fragment"),
    [pytest.param(f, c, s, id=name) for name, f, c, s in AUTH_CASES],
)
def test_bad_auth_input(
    server: rs.SyncServer, witness: Witness, frame: bytes | str, code: E, fragment: str
) -> None:
    before = server_state(server)
    with open_raw(server, "/auth") as ws:
        ws.send(frame)
        expect_error(ws, code, fragment)
    assert_nothing_persisted(server, before)
    witness.still_serving()


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        pytest.param(
            lambda r: m.AuthRequest(m.AuthOp.REFRESH, token=r.access_token),
            E.TOKEN_INVALID,
            "refresh token is needed",
            id="refresh with an access token",
        ),
        pytest.param(
            lambda r: m.AuthRequest(
                m.AuthOp.REFRESH,
                token=auth.issue_token(os.urandom(32), r.user_id, "refresh", 600),
            ),
            E.TOKEN_INVALID,
            "signature",
            id="refresh with a forged token",
        ),
        pytest.param(
            lambda r: m.AuthRequest(m.AuthOp.DELETE_USER, token=""),
            E.TOKEN_INVALID,
            "no access token",
            id="delete user without a token",
        ),
    ],
)
def test_bad_auth_tokens(
    server: rs.SyncServer,
    witness: Witness,
    request_: Callable[[m.AuthResponse], m.AuthRequest],
    code: E,
    fragment: str,
) -> None:
    login = raw_login(server)
    before = server_state(server)
    with open_raw(server, "/auth") as ws:
        ws.send(m.encode(request_(login)))
        reply = recv(ws)
    assert isinstance(reply, m.Error), reply
    assert reply.code == code and fragment in reply.message, reply
    assert_nothing_persisted(server, before)
    witness.still_serving()


def test_log_in_with_bad_credentials(server: rs.SyncServer, app: rs.App, witness: Witness) -> None:
    app.email_password_auth.register_user("ann@example.com", "right-password").result(T(10))
    before = server_state(server)
    for creds in (
        rs.Credentials.email_password("ann@example.com", "wrong-password"),
        rs.Credentials.email_password("nobody@example.com", "right-password"),
    ):
        with pytest.raises(rs.AuthError) as info:
            app.log_in(creds).result(T(10))
        assert info.value.code == E.INVALID_CREDENTIALS
        # The same answer for both: the server does not tell which emails exist.
        assert str(info.value) == "wrong email or password"
    assert_nothing_persisted(server, before)
    user = app.log_in(rs.Credentials.email_password("ann@example.com", "right-password")).result(
        T(10)
    )
    assert user.id
    witness.still_serving()


def test_register_existing_email(server: rs.SyncServer, app: rs.App, witness: Witness) -> None:
    reg = app.email_password_auth
    reg.register_user("ann@example.com", "first-password").result(T(10))
    before = server_state(server)
    for email in ("ann@example.com", "  Ann@Example.COM "):
        with pytest.raises(rs.AuthError, match="already exists") as info:
            reg.register_user(email, "second-password").result(T(10))
        assert info.value.code == E.USER_EXISTS
    for email, password in (("not-an-email", "long-enough"), ("bob@example.com", "short")):
        with pytest.raises(rs.AuthError, match="password of at least 6") as info:
            reg.register_user(email, password).result(T(10))
        assert info.value.code == E.INVALID_CREDENTIALS
    assert_nothing_persisted(server, before)
    # The first registration stands untouched.
    app.log_in(rs.Credentials.email_password("ann@example.com", "first-password")).result(T(10))
    with pytest.raises(rs.AuthError):
        app.log_in(rs.Credentials.email_password("ann@example.com", "second-password")).result(
            T(10)
        )
    witness.still_serving()


def test_server_restart_after_bad_input_keeps_everything(
    server: rs.SyncServer, witness: Witness
) -> None:
    # The nastiest inputs above, then a restart on the same data: state reads back whole.
    ctx = Ctx(server, witness, raw_login(server))
    for send in (
        lambda ws: ctx.bind(ws, schema=(unchecked_table("_history", PK),)),
        lambda ws: ctx.bind(ws, schema=(TableSchema("task", (PK,)),)),
        lambda ws: ctx.bind(ws, client_id=2**64 - 1),
    ):
        with open_raw(server) as ws:
            send(ws)
            while True:
                try:
                    recv(ws)
                except ConnectionClosed:
                    break
    before = server_state(server)
    data_dir = server.data_dir
    witness.a.close()
    witness.b.close()
    server.stop()
    with rs.SyncServer(data_dir=data_dir, scrypt_n=2**10) as again:
        after = server_state(again)
    assert after == before

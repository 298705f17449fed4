"""Fuzzing the server's message handling over a real socket: inputs and the oracle.

Shared by the Hypothesis test (test_protocol_fuzz.py) and the atheris harness
(fuzz_server.py). One case is one WebSocket frame sent to ``/sync`` of a real server,
on a fresh connection, either first thing or right after a valid BIND, followed by a
PING. The server must answer (it never hangs or dies), and:

- if it rejects the frame, it says so with an ERROR carrying a documented code (a
  connection dropped without one means an exception escaped the message handling),
  and nothing it stores changed: history, clients and their cursors, users, schema
  and objects;
- if it accepts the frame (the PONG comes back without an ERROR), the frame really is
  a well-formed message, and any changeset in it that is not a re-send decodes and
  carries the session's own origin: the server never takes in garbage.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

import realmsync_nb as rs
from realmsync_nb.errors import ProtocolError
from realmsync_nb.protocol import messages as m
from realmsync_nb.protocol.changeset import Changeset, Instruction, Op, encode_changeset
from realmsync_nb.protocol.changeset import decode_changeset as _decode_changeset
from realmsync_nb.protocol.wire import DecodeError
from tests.helpers import Note, T, Task, open_raw

SCHEMA = (Task.__table_schema__, Note.__table_schema__)
FUZZ_CLIENT_ID = 7_777_777
PING_NONCE = 424_242


# -- the server side -----------------------------------------------------------------


def persisted(server: rs.SyncServer) -> tuple[Any, ...]:
    """Everything the server stores that a message could change."""
    c = sqlite3.connect(os.path.join(server.data_dir, "server.sqlite"))
    try:
        state = (
            c.execute(
                "SELECT count(*), max(server_version), sum(cum_size) FROM _history"
            ).fetchone(),
            c.execute("SELECT client_id, user_id, last_client_version FROM _clients").fetchall(),
            c.execute("SELECT count(*), sum(disabled) FROM _users").fetchone(),
            json.loads(c.execute("SELECT value FROM _meta WHERE key='schema'").fetchone()[0]),
        )
    finally:
        c.close()
    return (*state, server.snapshot())


@dataclass
class Target:
    """A server to fuzz and a valid login of the fuzzing client's own user."""

    server: rs.SyncServer
    token: str

    @classmethod
    def prepare(cls, server: rs.SyncServer) -> Target:
        with open_raw(server, "/auth") as ws:
            ws.send(m.encode(m.AuthRequest(m.AuthOp.LOGIN_ANONYMOUS)))
            reply = m.decode(_recv(ws))
        assert isinstance(reply, m.AuthResponse), reply
        target = cls(server, reply.access_token)
        with open_raw(server) as ws:  # register the client file once, up front
            target.bind(ws)
        return target

    def bind(self, ws: ClientConnection) -> None:
        ws.send(m.encode(m.Bind(m.PROTOCOL_VERSION, self.token, FUZZ_CLIENT_ID, 0, 0, SCHEMA)))
        ack = m.decode(_recv(ws))
        assert isinstance(ack, m.Download), ack

    def run_case(self, after_bind: bool, spec: FrameSpec) -> bool:
        """Send one case and check the oracle; returns whether the server accepted it."""
        with open_raw(self.server) as ws:
            if after_bind:
                self.bind(ws)
            before = persisted(self.server)
            last = max(cv for cid, _, cv in before[1] if cid == FUZZ_CLIENT_ID)
            frame = spec.build(last)
            accepted = _exchange(ws, frame)
        if accepted:
            assert well_formed(frame, last), f"the server accepted a malformed frame {frame!r}"
        else:
            assert persisted(self.server) == before, (
                f"a rejected frame changed the server: {frame!r}"
            )
        return accepted


def _recv(ws: ClientConnection) -> bytes:
    try:
        data = ws.recv(timeout=T(5))
    except TimeoutError:
        raise AssertionError(f"the server did not answer within {T(5):.0f} s") from None
    assert isinstance(data, bytes), f"the server sent a text frame: {data!r}"
    return data


def _exchange(ws: ClientConnection, frame: bytes | str) -> bool:
    """Send ``frame`` then a PING: True if the PONG came back with no ERROR before it,
    False if an ERROR came. A connection dropped without an ERROR fails the case: the
    server met an exception it does not handle (websockets closes with 1011)."""
    try:
        ws.send(frame)
        ws.send(m.encode(m.Ping(PING_NONCE)))
    except ConnectionClosed:
        pass  # the server answered and closed already; its ERROR is still to be read
    try:
        while True:
            msg = m.decode(_recv(ws))
            if isinstance(msg, m.Error):
                assert msg.code in m.ErrorCode._value2member_map_, msg
                return False
            if isinstance(msg, m.Pong) and msg.nonce == PING_NONCE:
                return True
    except ConnectionClosed as exc:
        raise AssertionError(
            f"the server closed the connection without an ERROR ({exc}) after {frame!r}"
        ) from None


def well_formed(frame: bytes | str, last_integrated: int) -> bool:
    """What the oracle expects of an accepted frame (computed with the codec alone).

    Changesets at or below the client's ``last_integrated`` version are re-sends: the
    server acknowledges them without reading them (docs/protocol.md 6.2).
    """
    if isinstance(frame, str):
        return False
    try:
        msg = m.decode(frame)
    except ProtocolError:
        return False
    if isinstance(msg, m.Upload):
        for u in msg.changesets:
            if u.client_version <= last_integrated:
                continue
            try:
                if _decode_changeset(u.body).origin != FUZZ_CLIENT_ID:
                    return False
            except DecodeError:
                return False
    return True


# -- the inputs ----------------------------------------------------------------------------


Mutation = tuple[str, float, int, bytes]  # (kind, where in 0..1, a number, bytes to add)


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """Byte-level damage: flip a bit, set a byte, insert, delete, truncate, extend."""
    out = bytearray(data)
    for kind, where, n, extra in mutations:
        at = min(int(where * len(out)), max(len(out) - 1, 0))
        if kind == "flip" and out:
            out[at] ^= 1 << (n % 8)
        elif kind == "set" and out:
            out[at] = n % 256
        elif kind == "insert":
            out[at:at] = extra
        elif kind == "delete" and out:
            del out[at : at + 1 + n % 8]
        elif kind == "truncate":
            del out[at:]
        elif kind == "extend":
            out += extra
    return bytes(out)


@dataclass(frozen=True)
class FrameSpec:
    """One fuzzed frame, built when it is sent: UPLOADs number their changesets from
    the client's current version (``offset`` 0 or less is a re-send, 1 the next one),
    so uploads stay new however many earlier cases the server integrated."""

    kind: str  # "raw", "text", "message" or "upload"
    raw: bytes = b""
    text: str = ""
    message: m.Message | None = None
    upload: tuple[tuple[int, Changeset | bytes], ...] = ()
    mutations: tuple[Mutation, ...] = ()

    def build(self, last_client_version: int) -> bytes | str:
        if self.kind == "text":
            return self.text
        if self.kind == "raw":
            data = self.raw
        elif self.kind == "message":
            assert self.message is not None
            data = m.encode(self.message)
        else:
            changesets = []
            for offset, cs in self.upload:
                cv = max(0, last_client_version + offset)
                body = cs if isinstance(cs, bytes) else _encode_or_garbage(cs)
                changesets.append(m.UploadChangeset(cv, body))
            data = m.encode(m.Upload(tuple(changesets)))
        return mutate(data, list(self.mutations))


def _encode_or_garbage(cs: Changeset) -> bytes:
    try:
        return encode_changeset(cs)
    except (TypeError, ValueError, OverflowError):  # a value no encoder takes
        return b"\x01\xff"


def _messages() -> st.SearchStrategy[m.Message]:
    from tests.protocol.test_messages import MESSAGES

    return MESSAGES


_GOOD_TASK_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "title": st.text(max_size=8),
        "done": st.booleans(),
        "priority": st.integers(-(2**63), 2**63 - 1),
    },
)
_ANY_VALUES = st.dictionaries(
    st.sampled_from(["title", "done", "priority", "due", "text", "id", "nope"]),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=12),
        st.binary(max_size=12),
    ),
    max_size=3,
)


@st.composite
def _instructions(draw: st.DrawFn) -> Instruction:
    if draw(st.booleans()):  # a valid instruction, as a real client writes it
        if draw(st.booleans()):
            op = draw(st.sampled_from([Op.CREATE, Op.UPDATE]))
            values = tuple(draw(_GOOD_TASK_VALUES).items())
            return Instruction(op, "Task", draw(st.text(max_size=3)), values)
        return Instruction(Op.DELETE, "Note", draw(st.integers(0, 3)), ())
    op = draw(st.sampled_from(Op))
    table = draw(st.sampled_from(["Task", "Note", "Ghost"]))
    pk = draw(st.one_of(st.text(max_size=3), st.integers(-3, 3), st.none(), st.floats()))
    values = () if op is Op.DELETE else tuple(draw(_ANY_VALUES).items())
    return Instruction(op, table, pk, values)


_CHANGESETS = st.builds(
    Changeset,
    st.integers(0, 2**64 - 1),
    st.sampled_from([FUZZ_CLIENT_ID, FUZZ_CLIENT_ID, FUZZ_CLIENT_ID, 1, 0]),
    st.lists(_instructions(), max_size=3).map(tuple),
)
_OFFSETS = st.one_of(st.integers(1, 3), st.integers(-2, 0), st.just(2**63), st.just(2**64 - 1))
_MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]),
        st.floats(0, 1),
        st.integers(0, 255),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=4,
).map(tuple)
_UPLOAD_PARTS = st.lists(
    st.tuples(_OFFSETS, st.one_of(_CHANGESETS, _CHANGESETS, st.binary(max_size=24))),
    max_size=3,
).map(lambda parts: tuple(sorted(parts, key=lambda p: p[0])))  # mostly in order

FRAMES = st.one_of(
    st.builds(FrameSpec, st.just("raw"), raw=st.binary(max_size=120)),
    st.builds(
        FrameSpec,
        st.just("raw"),
        raw=st.builds(
            lambda t, rest: bytes([t]) + rest, st.integers(0, 12), st.binary(max_size=80)
        ),
    ),
    st.builds(FrameSpec, st.just("text"), text=st.text(max_size=20)),
    st.builds(FrameSpec, st.just("message"), message=st.deferred(_messages)),
    st.builds(FrameSpec, st.just("message"), message=st.deferred(_messages), mutations=_MUTATIONS),
    st.builds(FrameSpec, st.just("upload"), upload=_UPLOAD_PARTS),
    st.builds(FrameSpec, st.just("upload"), upload=_UPLOAD_PARTS),
    st.builds(FrameSpec, st.just("upload"), upload=_UPLOAD_PARTS, mutations=_MUTATIONS),
)
CASES = st.tuples(st.booleans(), FRAMES)

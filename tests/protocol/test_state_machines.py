"""The connection state machines (protocol/server.py, protocol/client.py), with no I/O.

Totality: every state × every message either transitions as the table says or
raises ProtocolError with a documented code, and a failed machine stays closed.
Then the specific orders and cursor rules each side enforces.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realmsync_nb.errors import ProtocolError
from realmsync_nb.protocol import messages as m
from realmsync_nb.protocol.client import TRANSITIONS as CLIENT_TABLE
from realmsync_nb.protocol.client import ClientConnectionState, ClientProtocol
from realmsync_nb.protocol.server import TRANSITIONS as SERVER_TABLE
from realmsync_nb.protocol.server import ServerConnectionState, ServerProtocol
from tests.protocol.test_messages import MESSAGES

E = m.ErrorCode
DOCUMENTED = {int(c) for c in E}
SS = ServerConnectionState
CS = ClientConnectionState


def server_in(state: ServerConnectionState) -> ServerProtocol:
    p = ServerProtocol()
    if state is SS.BOUND:
        p.receive(m.encode(m.Bind(m.PROTOCOL_VERSION, "t", 1, 0, 0, ())))
    elif state is SS.CLOSED:
        p.close()
    assert p.state is state
    return p


def client_in(state: ClientConnectionState) -> ClientProtocol:
    p = ClientProtocol(download_cursor=0, upload_cursor=0, latest_client_version=0)
    if state is CS.ACTIVE:
        p.receive(m.encode(m.Download(0, 0, 0, ())))
    elif state is CS.CLOSED:
        p.close()
    assert p.state is state
    return p


@given(state=st.sampled_from(SS), msg=MESSAGES)
def test_server_every_state_and_message_transitions_or_fails_as_documented(
    state: ServerConnectionState, msg: m.Message
) -> None:
    p = server_in(state)
    try:
        got = p.receive(m.encode(msg))
    except ProtocolError as exc:
        assert exc.code in DOCUMENTED
        assert p.state is SS.CLOSED  # a failed connection takes no more input
        with pytest.raises(ProtocolError):
            p.receive(m.encode(m.Ping(1)))
        return
    assert got == msg
    assert (state, type(msg)) in SERVER_TABLE
    assert p.state is SERVER_TABLE[(state, type(msg))]


@given(state=st.sampled_from(CS), msg=MESSAGES)
def test_client_every_state_and_message_transitions_or_fails_as_documented(
    state: ClientConnectionState, msg: m.Message
) -> None:
    p = client_in(state)
    try:
        got = p.receive(m.encode(msg))
    except ProtocolError as exc:
        assert exc.code in DOCUMENTED
        assert p.state is CS.CLOSED
        return
    assert got == msg
    assert p.state is CLIENT_TABLE[(state, type(msg))]


@given(data=st.binary(max_size=64))
def test_garbage_fails_only_with_protocol_errors(data: bytes) -> None:
    for p in (ServerProtocol(), client_in(CS.ACTIVE)):
        try:
            p.receive(data)
        except ProtocolError as exc:
            assert exc.code in DOCUMENTED


# -- the server side -------------------------------------------------------------


def test_session_messages_before_bind_are_an_unknown_session() -> None:
    for msg in (m.Upload(()), m.Mark(1)):
        with pytest.raises(ProtocolError) as info:
            ServerProtocol().receive(m.encode(msg))
        assert info.value.code == E.UNKNOWN_SESSION


def test_a_second_bind_is_unexpected() -> None:
    p = server_in(SS.BOUND)
    with pytest.raises(ProtocolError) as info:
        p.receive(m.encode(m.Bind(m.PROTOCOL_VERSION, "t", 1, 0, 0, ())))
    assert info.value.code == E.UNEXPECTED_MESSAGE


def test_another_protocol_version_is_refused_with_both_versions_named() -> None:
    with pytest.raises(ProtocolError, match=r"version 2.*speaks 1") as info:
        ServerProtocol().receive(m.encode(m.Bind(2, "t", 1, 0, 0, ())))
    assert info.value.code == E.UNSUPPORTED_VERSION


def test_upload_client_versions_must_increase_within_and_across_messages() -> None:
    p = server_in(SS.BOUND)
    p.bound(3)  # the client said the server acknowledged up to 3
    up = m.Upload((m.UploadChangeset(4, b""), m.UploadChangeset(6, b"")))
    assert p.receive(m.encode(up)) == up
    for bad in ((7, 7), (5,), (6,)):
        q = server_in(SS.BOUND)
        q.bound(6)
        with pytest.raises(ProtocolError) as info:
            q.receive(m.encode(m.Upload(tuple(m.UploadChangeset(v, b"") for v in bad))))
        assert info.value.code == E.BAD_PROGRESS


def test_messages_a_server_sends_are_refused_from_a_client() -> None:
    for msg in (m.Download(0, 0, 0, ()), m.Pong(1), m.Error(1, "x", False)):
        with pytest.raises(ProtocolError) as info:
            server_in(SS.BOUND).receive(m.encode(msg))
        assert info.value.code == E.UNEXPECTED_MESSAGE


# -- the client side ---------------------------------------------------------------


def test_first_download_acknowledges_the_bind() -> None:
    p = client_in(CS.AWAIT_BIND_ACK)
    with pytest.raises(ProtocolError):
        client_in(CS.AWAIT_BIND_ACK).receive(m.encode(m.Mark(1)))
    p.receive(m.encode(m.Download(0, 0, 10, ())))
    assert p.state is CS.ACTIVE


def test_download_cursor_never_goes_back() -> None:
    p = ClientProtocol(download_cursor=5, upload_cursor=0, latest_client_version=0)
    with pytest.raises(ProtocolError) as info:
        p.receive(m.encode(m.Download(4, 0, 0, ())))
    assert info.value.code == E.BAD_PROGRESS


def test_changeset_versions_must_lie_between_the_old_and_new_cursor() -> None:
    for versions, cursor in (((3, 3), 4), ((5,), 4), ((2,), 4), ((4, 3), 4)):
        p = ClientProtocol(download_cursor=2, upload_cursor=0, latest_client_version=0)
        cs = tuple(m.ServerChangeset(v, 9, b"") for v in versions)
        with pytest.raises(ProtocolError) as info:
            p.receive(m.encode(m.Download(cursor, 0, 0, cs)))
        assert info.value.code == E.BAD_PROGRESS
    p = ClientProtocol(download_cursor=2, upload_cursor=0, latest_client_version=0)
    p.receive(m.encode(m.Download(4, 0, 0, (m.ServerChangeset(3, 9, b""),))))
    assert p.download_cursor == 4


def test_acks_stay_between_the_known_ack_and_what_was_sent() -> None:
    p = ClientProtocol(download_cursor=0, upload_cursor=2, latest_client_version=5)
    p.receive(m.encode(m.Download(0, 5, 0, ())))  # a previous process sent up to 5
    assert p.upload_ack == 5
    with pytest.raises(ProtocolError):
        p.receive(m.encode(m.Download(0, 4, 0, ())))  # backwards
    q = ClientProtocol(download_cursor=0, upload_cursor=0, latest_client_version=1)
    with pytest.raises(ProtocolError):
        q.receive(m.encode(m.Download(0, 2, 0, ())))  # never sent
    r = ClientProtocol(download_cursor=0, upload_cursor=0, latest_client_version=0)
    r.upload([(1, b"a"), (2, b"b")])
    r.receive(m.encode(m.Download(0, 2, 0, ())))
    assert r.upload_ack == 2


def test_mark_must_answer_a_request_once() -> None:
    p = client_in(CS.ACTIVE)
    p.mark(7)
    assert p.receive(m.encode(m.Mark(7, 3))) == m.Mark(7, 3)
    with pytest.raises(ProtocolError) as info:
        p.receive(m.encode(m.Mark(7, 3)))
    assert info.value.code == E.UNEXPECTED_MESSAGE


def test_server_error_closes_the_client_side() -> None:
    p = client_in(CS.ACTIVE)
    p.receive(m.encode(m.Error(E.TRY_AGAIN_LATER, "busy", True, 2.0)))
    assert p.state is CS.CLOSED

"""Tests for realmsync_nb.protocol.messages: the codec round trips and fails only as documented."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from realmsync_nb.errors import ProtocolError, RealmSyncError
from realmsync_nb.protocol import messages as m
from realmsync_nb.protocol.schema import FieldSchema, TableSchema, ValueType
from realmsync_nb.protocol.wire import Writer

U64 = st.integers(0, 2**64 - 1)
# Small and boundary values are where varint bugs live; plain integers() rarely hits them.
UINT = st.one_of(U64, st.integers(0, 300), st.sampled_from([127, 128, 2**63 - 1, 2**63, 2**64 - 1]))
TEXT = st.text(max_size=30)
BODY = st.binary(max_size=64)

# -- strategies for every message type ----------------------------------------------

_ident_start = st.characters(categories=("Lu", "Ll", "Lo"))
_ident_rest = st.characters(categories=("Lu", "Ll", "Lo", "Nd"), include_characters="_")
IDENT = st.builds(lambda a, b: a + b, _ident_start, st.text(_ident_rest, max_size=8)).filter(
    str.isidentifier
)


@st.composite
def table_schemas(draw: st.DrawFn) -> TableSchema:
    names = draw(st.lists(IDENT, min_size=1, max_size=6, unique=True))
    pk_type = draw(st.sampled_from([ValueType.INT, ValueType.STR, ValueType.UUID]))
    fields = [FieldSchema(names[0], pk_type, optional=False, primary_key=True)]
    for name in names[1:]:
        fields.append(
            FieldSchema(name, draw(st.sampled_from(ValueType)), optional=draw(st.booleans()))
        )
    return TableSchema(draw(IDENT), tuple(fields))


BINDS = st.builds(
    m.Bind,
    protocol_version=UINT,
    access_token=TEXT,
    client_id=UINT,
    download_cursor=UINT,
    upload_cursor=UINT,
    schema=st.lists(table_schemas(), max_size=3).map(tuple),
)
UPLOADS = st.builds(
    m.Upload,
    st.lists(st.builds(m.UploadChangeset, UINT, BODY), max_size=5).map(tuple),
)
DOWNLOADS = st.builds(
    m.Download,
    download_cursor=UINT,
    upload_ack=UINT,
    remaining_bytes=UINT,
    changesets=st.lists(st.builds(m.ServerChangeset, UINT, UINT, BODY), max_size=5).map(tuple),
)
MARKS = st.builds(m.Mark, UINT, UINT)
ERRORS = st.builds(
    m.Error,
    code=st.one_of(st.sampled_from(m.ErrorCode), UINT),
    message=TEXT,
    retry=st.booleans(),
    backoff=st.none() | st.floats(0, 86400),
    fatal=st.booleans(),
)
PINGS = st.builds(m.Ping, UINT)
PONGS = st.builds(m.Pong, UINT)
AUTH_REQUESTS = st.builds(
    m.AuthRequest, st.sampled_from(m.AuthOp), email=TEXT, password=TEXT, token=TEXT
)
AUTH_RESPONSES = st.builds(
    m.AuthResponse,
    user_id=TEXT,
    access_token=TEXT,
    refresh_token=TEXT,
    expires_in=st.floats(allow_nan=False),
)
TEST_COMMANDS = st.builds(m.TestCommand, UINT, TEXT, TEXT)

STRATEGIES: dict[type, st.SearchStrategy[m.Message]] = {
    m.Bind: BINDS,
    m.Upload: UPLOADS,
    m.Download: DOWNLOADS,
    m.Mark: MARKS,
    m.Error: ERRORS,
    m.Ping: PINGS,
    m.Pong: PONGS,
    m.AuthRequest: AUTH_REQUESTS,
    m.AuthResponse: AUTH_RESPONSES,
    m.TestCommand: TEST_COMMANDS,
}
MESSAGES = st.one_of(*STRATEGIES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(m.Message.__args__)
    assert len(STRATEGIES) == len(m.MessageType)


def test_protocol_constants() -> None:
    assert m.PROTOCOL_VERSION == 1
    assert m.SUBPROTOCOL == "realmsync.v1"
    assert m.MAX_MESSAGE_SIZE == 16 * 1024 * 1024


# -- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip_each_type(cls: type, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    encoded = m.encode(msg)
    decoded = m.decode(encoded)
    assert type(decoded) is cls
    assert decoded == msg
    # The encoding is canonical: encoding the decoded message gives the same bytes.
    assert m.encode(decoded) == encoded


@given(MESSAGES)
def test_first_byte_is_the_message_type(msg: m.Message) -> None:
    expected = m.MessageType[
        {
            "AuthRequest": "AUTH_REQUEST",
            "AuthResponse": "AUTH_RESPONSE",
            "TestCommand": "TEST_COMMAND",
        }.get(type(msg).__name__, type(msg).__name__.upper())
    ]
    assert m.encode(msg)[0] == expected


@given(MESSAGES)
def test_decode_accepts_bytearray_and_memoryview(msg: m.Message) -> None:
    encoded = m.encode(msg)
    assert m.decode(bytearray(encoded)) == msg  # type: ignore[arg-type]
    assert m.decode(memoryview(encoded)) == msg  # type: ignore[arg-type]


def test_error_without_backoff_round_trips_as_none() -> None:
    msg = m.Error(m.ErrorCode.TRY_AGAIN_LATER, "busy", retry=True)
    decoded = m.decode(m.encode(msg))
    assert isinstance(decoded, m.Error)
    assert decoded.backoff is None
    assert decoded.code == 401
    assert decoded.retry is True and decoded.fatal is False


def test_expires_in_infinity_round_trips() -> None:
    msg = m.AuthResponse("u", "a", "r", math.inf)
    assert m.decode(m.encode(msg)) == msg


# -- malformed and hostile input ----------------------------------------------------


def _decode_or_protocol_error(data: bytes) -> m.Message | None:
    """Decode ``data``; the only acceptable failure is a MALFORMED_MESSAGE ProtocolError."""
    try:
        msg = m.decode(data)
    except ProtocolError as exc:
        assert exc.code == m.ErrorCode.MALFORMED_MESSAGE
        assert str(exc)
        return None
    # Anything that decodes is a valid message: it encodes and decodes to itself
    # (compared as bytes so a NaN expires_in still counts as equal).
    again = m.encode(msg)
    assert m.encode(m.decode(again)) == again
    return msg


@given(st.binary(max_size=200))
def test_fuzzed_bytes_fail_only_with_protocol_error(data: bytes) -> None:
    _decode_or_protocol_error(data)


@given(st.sampled_from(m.MessageType), st.binary(max_size=120))
def test_fuzzed_bodies_behind_each_type_byte(t: m.MessageType, body: bytes) -> None:
    _decode_or_protocol_error(bytes([t]) + body)


@given(MESSAGES, st.data())
def test_every_strict_prefix_is_malformed(msg: m.Message, data: st.DataObject) -> None:
    encoded = m.encode(msg)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(ProtocolError) as info:
        m.decode(encoded[:cut])
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


@given(MESSAGES, st.binary(min_size=1, max_size=16))
def test_appended_bytes_are_malformed(msg: m.Message, extra: bytes) -> None:
    with pytest.raises(ProtocolError, match="trailing") as info:
        m.decode(m.encode(msg) + extra)
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


@given(MESSAGES, st.data())
def test_bit_flips_fail_only_with_protocol_error(msg: m.Message, data: st.DataObject) -> None:
    buf = bytearray(m.encode(msg))
    flips = data.draw(st.lists(st.integers(0, len(buf) * 8 - 1), min_size=1, max_size=4))
    for bit in flips:
        buf[bit // 8] ^= 1 << (bit % 8)
    _decode_or_protocol_error(bytes(buf))


@given(MESSAGES, st.data())
def test_byte_replacements_fail_only_with_protocol_error(
    msg: m.Message, data: st.DataObject
) -> None:
    buf = bytearray(m.encode(msg))
    i = data.draw(st.integers(0, len(buf) - 1))
    buf[i] = data.draw(st.integers(0, 255))
    _decode_or_protocol_error(bytes(buf))


def test_unknown_type_bytes() -> None:
    for t in (0, 11, 255):
        with pytest.raises(ProtocolError, match="unknown message type") as info:
            m.decode(bytes([t]))
        assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


def test_empty_input_is_malformed() -> None:
    with pytest.raises(ProtocolError) as info:
        m.decode(b"")
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


@pytest.mark.parametrize("data", ["text frame", 42, None, [1, 2]])
def test_non_binary_frames_are_malformed(data: object) -> None:
    with pytest.raises(ProtocolError, match="binary frame") as info:
        m.decode(data)  # type: ignore[arg-type]
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


def test_protocol_error_is_part_of_the_error_tree() -> None:
    with pytest.raises(RealmSyncError):
        m.decode(b"\xff")


def _with_count(type_byte: int, prefix_uints: int, count: int) -> bytes:
    w = Writer()
    w.byte(type_byte)
    for _ in range(prefix_uints):
        w.uint(0)
    w.uint(count)
    return w.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        _with_count(m.MessageType.UPLOAD, 0, 2**40),
        _with_count(m.MessageType.UPLOAD, 0, 2**64 - 1),
        _with_count(m.MessageType.DOWNLOAD, 3, 2**40),
        # BIND: version, token "", client id, two cursors, then a huge table count.
        _with_count(m.MessageType.BIND, 5, 2**40),
    ],
)
def test_huge_counts_are_refused_without_allocating(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="exceeds the message size") as info:
        m.decode(data)
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


def test_length_prefix_past_the_end() -> None:
    data = bytes([m.MessageType.TEST_COMMAND, 0]) + Writer().getvalue() + b"\x7fabc"
    with pytest.raises(ProtocolError) as info:
        m.decode(data)
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


def _error_frame(flags: int, backoff: float | None = None) -> bytes:
    w = Writer()
    w.byte(m.MessageType.ERROR)
    w.uint(100)
    w.str_("x")
    w.byte(flags)
    if backoff is not None:
        w.f64(backoff)
    return w.getvalue()


@pytest.mark.parametrize("backoff", [-1.0, 86400.5, math.inf, math.nan])
def test_error_backoff_out_of_range_is_malformed(backoff: float) -> None:
    with pytest.raises(ProtocolError, match="backoff") as info:
        m.decode(_error_frame(4, backoff))
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


def test_error_flag_bits() -> None:
    assert m.decode(_error_frame(7, 2.5)) == m.Error(100, "x", True, 2.5, True)
    assert m.decode(_error_frame(2)) == m.Error(100, "x", False, None, True)
    with pytest.raises(ProtocolError, match="flags"):
        m.decode(_error_frame(8))


def test_unknown_auth_op_is_malformed() -> None:
    data = bytes([m.MessageType.AUTH_REQUEST, 9, 0, 0, 0])
    with pytest.raises(ProtocolError, match="auth operation"):
        m.decode(data)
    assert m.decode(bytes([m.MessageType.AUTH_REQUEST, 2, 0, 0, 0])) == m.AuthRequest(
        m.AuthOp.LOGIN_ANONYMOUS
    )


def _bind_with_table(name: str, fields: list[tuple[str, int, int]]) -> bytes:
    w = Writer()
    w.byte(m.MessageType.BIND)
    w.uint(1)  # protocol version
    w.str_("token")
    w.uint(7)
    w.uint(0)
    w.uint(0)
    w.uint(1)
    w.str_(name)
    w.uint(len(fields))
    for fname, ftype, flags in fields:
        w.str_(fname)
        w.byte(ftype)
        w.byte(flags)
    return w.getvalue()


@pytest.mark.parametrize(
    ("table", "fields", "why"),
    [
        ("T", [("id", 99, 2)], "unknown field type"),
        ("T", [("id", 3, 4)], "invalid field flags"),
        ("T", [("id", 3, 0)], "invalid schema"),  # first field is not the key
        ("T", [("id", 3, 3)], "invalid schema"),  # optional primary key
        ("T", [("id", 2, 2)], "invalid schema"),  # float primary key
        ("T", [("id", 3, 2), ("id", 1, 0)], "invalid schema"),  # duplicate field
        ("T", [("id", 3, 2), ("x", 1, 2)], "invalid schema"),  # two keys
        ("1T", [("id", 3, 2)], "invalid schema"),  # table name not an identifier
        ("T", [("id", 3, 2), ("_x", 1, 0)], "invalid schema"),  # reserved field name
        ("T", [], "invalid schema"),
    ],
)
def test_invalid_bind_schema_is_malformed(
    table: str, fields: list[tuple[str, int, int]], why: str
) -> None:
    with pytest.raises(ProtocolError, match=why) as info:
        m.decode(_bind_with_table(table, fields))
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


def test_valid_hand_built_bind() -> None:
    msg = m.decode(_bind_with_table("Task", [("id", 3, 2), ("title", 3, 0), ("due", 6, 1)]))
    assert msg == m.Bind(
        1,
        "token",
        7,
        0,
        0,
        (
            TableSchema(
                "Task",
                (
                    FieldSchema("id", ValueType.STR, primary_key=True),
                    FieldSchema("title", ValueType.STR),
                    FieldSchema("due", ValueType.DATETIME, optional=True),
                ),
            ),
        ),
    )


# -- size limits --------------------------------------------------------------------


def test_oversized_input_is_message_too_large() -> None:
    data = bytes([m.MessageType.PING]) + b"\x00" * m.MAX_MESSAGE_SIZE
    with pytest.raises(ProtocolError, match="exceeds the limit") as info:
        m.decode(data)
    assert info.value.code == m.ErrorCode.MESSAGE_TOO_LARGE


@given(MESSAGES)
def test_max_size_is_inclusive(msg: m.Message) -> None:
    encoded = m.encode(msg)
    assert m.decode(encoded, max_size=len(encoded)) == msg
    assume(len(encoded) > 1)
    with pytest.raises(ProtocolError) as info:
        m.decode(encoded, max_size=len(encoded) - 1)
    assert info.value.code == m.ErrorCode.MESSAGE_TOO_LARGE


def test_size_is_checked_before_parsing() -> None:
    # Garbage over the limit is reported as too large, not as malformed.
    with pytest.raises(ProtocolError) as info:
        m.decode(b"\xff" * 11, max_size=10)
    assert info.value.code == m.ErrorCode.MESSAGE_TOO_LARGE


def test_a_large_valid_upload_decodes() -> None:
    body = b"x" * (m.MAX_MESSAGE_SIZE // 2)
    msg = m.Upload((m.UploadChangeset(1, body), m.UploadChangeset(2, b"")))
    assert m.decode(m.encode(msg)) == msg


# -- error codes --------------------------------------------------------------------


def test_error_code_ranges_and_fatal_set() -> None:
    values = [c.value for c in m.ErrorCode]
    assert len(set(values)) == len(values)
    for code in m.ErrorCode:
        assert 100 <= code < 500
    assert m.FATAL_CODES.issubset(set(m.ErrorCode))
    assert m.ErrorCode.BAD_CHANGESET in m.FATAL_CODES
    assert m.ErrorCode.CLIENT_RESET_REQUIRED in m.FATAL_CODES
    assert m.ErrorCode.TRY_AGAIN_LATER not in m.FATAL_CODES
    assert m.ErrorCode.MALFORMED_MESSAGE not in m.FATAL_CODES

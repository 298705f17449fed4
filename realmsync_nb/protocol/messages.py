"""Protocol messages: frozen dataclasses and their binary encoding.

One WebSocket binary frame carries one message: a type byte, then the fields in
declaration order (see docs/protocol.md for the table). :func:`decode` raises
:class:`~realmsync_nb.errors.ProtocolError` with code ``MALFORMED_MESSAGE`` or
``MESSAGE_TOO_LARGE`` for any bad input, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ..errors import ProtocolError
from .schema import FieldSchema, TableSchema, ValueType
from .wire import DecodeError, Reader, Writer

__all__ = [
    "MAX_MESSAGE_SIZE",
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "AuthOp",
    "AuthRequest",
    "AuthResponse",
    "Bind",
    "Download",
    "Error",
    "ErrorCode",
    "Mark",
    "Message",
    "Ping",
    "Pong",
    "ServerChangeset",
    "TableSchema",
    "TestCommand",
    "Upload",
    "UploadChangeset",
    "decode",
    "encode",
]

PROTOCOL_VERSION = 1
SUBPROTOCOL = f"realmsync.v{PROTOCOL_VERSION}"
MAX_MESSAGE_SIZE = 16 * 1024 * 1024


class ErrorCode(IntEnum):
    """Error codes; 1xx: the connection's input, 2xx: auth, 3xx: session, 4xx: server."""

    MALFORMED_MESSAGE = 100
    MESSAGE_TOO_LARGE = 101
    UNEXPECTED_MESSAGE = 102  # out of order for the connection's state
    UNSUPPORTED_VERSION = 103
    UNKNOWN_SESSION = 104  # a session message before BIND
    BAD_CHANGESET = 105  # undecodable, or breaks the schema
    BAD_PROGRESS = 106  # versions or cursors out of order
    SCHEMA_MISMATCH = 107
    INVALID_CREDENTIALS = 200
    TOKEN_INVALID = 201
    TOKEN_EXPIRED = 202
    USER_EXISTS = 203
    USER_DISABLED = 204
    BAD_CLIENT_FILE = 300  # the client file is unknown here or belongs to another user
    CLIENT_RESET_REQUIRED = 301  # the server lost history the client has
    SESSION_CLOSED = 302
    INTERNAL_ERROR = 400
    TRY_AGAIN_LATER = 401
    TEST_ERROR = 499


FATAL_CODES = frozenset(
    {
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.SCHEMA_MISMATCH,
        ErrorCode.BAD_CHANGESET,
        ErrorCode.USER_DISABLED,
        ErrorCode.BAD_CLIENT_FILE,
        ErrorCode.CLIENT_RESET_REQUIRED,
    }
)


class MessageType(IntEnum):
    BIND = 1
    UPLOAD = 2
    DOWNLOAD = 3
    MARK = 4
    ERROR = 5
    PING = 6
    PONG = 7
    AUTH_REQUEST = 8
    AUTH_RESPONSE = 9
    TEST_COMMAND = 10


@dataclass(frozen=True, slots=True)
class Bind:
    """Client → server, first message of a sync connection: who, which file, where to resume."""

    protocol_version: int
    access_token: str
    client_id: int  # the client file's peer id (random 63-bit, chosen by the client)
    download_cursor: int  # last server version integrated locally
    upload_cursor: int  # last client version the server acknowledged
    schema: tuple[TableSchema, ...]


@dataclass(frozen=True, slots=True)
class UploadChangeset:
    client_version: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Upload:
    """Client → server: local changesets in increasing client-version order."""

    changesets: tuple[UploadChangeset, ...]


@dataclass(frozen=True, slots=True)
class ServerChangeset:
    server_version: int
    origin: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Download:
    """Server → client: changesets, the new download cursor, the upload ack, bytes still to come.

    ``download_cursor`` is the server version this message brings the client to;
    ``remaining_bytes`` is exactly how many changeset bytes the server has for this
    client after this message; ``upload_ack`` is the highest client version integrated.
    """

    download_cursor: int
    upload_ack: int
    remaining_bytes: int
    changesets: tuple[ServerChangeset, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    """Download completion round trip: the server echoes it after sending all it had."""

    request_id: int
    server_version: int = 0


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str
    retry: bool
    backoff: float | None = None  # seconds to wait before reconnecting
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


class AuthOp(IntEnum):
    REGISTER = 1
    LOGIN_ANONYMOUS = 2
    LOGIN_EMAIL = 3
    REFRESH = 4
    DELETE_USER = 5


@dataclass(frozen=True, slots=True)
class AuthRequest:
    op: AuthOp
    email: str = ""
    password: str = ""
    token: str = ""  # refresh token (REFRESH) or access token (DELETE_USER)


@dataclass(frozen=True, slots=True)
class AuthResponse:
    user_id: str
    access_token: str
    refresh_token: str
    expires_in: float


@dataclass(frozen=True, slots=True)
class TestCommand:
    """Test hooks, refused unless the server enables them (docs/protocol.md)."""

    __test__ = False  # not a pytest test class

    request_id: int
    command: str
    argument: str = ""


Message = (
    Bind | Upload | Download | Mark | Error | Ping | Pong | AuthRequest | AuthResponse | TestCommand
)


def encode(msg: Message) -> bytes:
    w = Writer()
    if isinstance(msg, Upload):
        w.byte(MessageType.UPLOAD)
        w.uint(len(msg.changesets))
        for u in msg.changesets:
            w.uint(u.client_version)
            w.bytes_(u.body)
    elif isinstance(msg, Download):
        w.byte(MessageType.DOWNLOAD)
        w.uint(msg.download_cursor)
        w.uint(msg.upload_ack)
        w.uint(msg.remaining_bytes)
        w.uint(len(msg.changesets))
        for s in msg.changesets:
            w.uint(s.server_version)
            w.uint(s.origin)
            w.bytes_(s.body)
    elif isinstance(msg, Bind):
        w.byte(MessageType.BIND)
        w.uint(msg.protocol_version)
        w.str_(msg.access_token)
        w.uint(msg.client_id)
        w.uint(msg.download_cursor)
        w.uint(msg.upload_cursor)
        w.uint(len(msg.schema))
        for t in msg.schema:
            w.str_(t.name)
            w.uint(len(t.fields))
            for f in t.fields:
                w.str_(f.name)
                w.byte(f.type)
                w.byte(f.optional | (f.primary_key << 1))
    elif isinstance(msg, Mark):
        w.byte(MessageType.MARK)
        w.uint(msg.request_id)
        w.uint(msg.server_version)
    elif isinstance(msg, Error):
        w.byte(MessageType.ERROR)
        w.uint(msg.code)
        w.str_(msg.message)
        w.byte(msg.retry | (msg.fatal << 1) | ((msg.backoff is not None) << 2))
        if msg.backoff is not None:
            w.f64(msg.backoff)
    elif isinstance(msg, Ping):
        w.byte(MessageType.PING)
        w.uint(msg.nonce)
    elif isinstance(msg, Pong):
        w.byte(MessageType.PONG)
        w.uint(msg.nonce)
    elif isinstance(msg, AuthRequest):
        w.byte(MessageType.AUTH_REQUEST)
        w.byte(msg.op)
        w.str_(msg.email)
        w.str_(msg.password)
        w.str_(msg.token)
    elif isinstance(msg, AuthResponse):
        w.byte(MessageType.AUTH_RESPONSE)
        w.str_(msg.user_id)
        w.str_(msg.access_token)
        w.str_(msg.refresh_token)
        w.f64(msg.expires_in)
    elif isinstance(msg, TestCommand):
        w.byte(MessageType.TEST_COMMAND)
        w.uint(msg.request_id)
        w.str_(msg.command)
        w.str_(msg.argument)
    else:  # pragma: no cover - the union above is exhaustive
        raise TypeError(f"not a protocol message: {msg!r}")
    return w.getvalue()


def decode(data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """Decode one message.

    Raises:
        ProtocolError: ``MESSAGE_TOO_LARGE`` or ``MALFORMED_MESSAGE``, saying why.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(
            f"expected a binary frame, got {type(data).__name__}", code=ErrorCode.MALFORMED_MESSAGE
        )
    data = bytes(data)
    if len(data) > max_size:
        raise ProtocolError(
            f"message of {len(data)} bytes exceeds the limit of {max_size}",
            code=ErrorCode.MESSAGE_TOO_LARGE,
        )
    try:
        r = Reader(data)
        msg = _decode(r, len(data))
        r.expect_end()
        return msg
    except DecodeError as exc:
        raise ProtocolError(f"malformed message: {exc}", code=ErrorCode.MALFORMED_MESSAGE) from None


def _count(r: Reader, limit: int) -> int:
    n = r.uint()
    if n > limit:  # every element takes at least one byte
        raise DecodeError(f"count {n} exceeds the message size")
    return n


def _decode(r: Reader, size: int) -> Message:
    t = r.byte()
    if t == MessageType.UPLOAD:
        n = _count(r, size)
        return Upload(tuple(UploadChangeset(r.uint(), r.bytes_()) for _ in range(n)))
    if t == MessageType.DOWNLOAD:
        cursor, ack, remaining = r.uint(), r.uint(), r.uint()
        n = _count(r, size)
        return Download(
            cursor,
            ack,
            remaining,
            tuple(ServerChangeset(r.uint(), r.uint(), r.bytes_()) for _ in range(n)),
        )
    if t == MessageType.BIND:
        version, token, client_id = r.uint(), r.str_(), r.uint()
        dl, ul = r.uint(), r.uint()
        tables = []
        for _ in range(_count(r, size)):
            name = r.str_()
            fields = []
            for _ in range(_count(r, size)):
                fname = r.str_()
                ftype = r.byte()
                if ftype not in ValueType._value2member_map_:
                    raise DecodeError(f"unknown field type {ftype}")
                flags = r.byte()
                if flags > 3:
                    raise DecodeError(f"invalid field flags {flags}")
                fields.append(
                    FieldSchema(fname, ValueType(ftype), bool(flags & 1), bool(flags & 2))
                )
            try:
                tables.append(TableSchema(name, tuple(fields)))
            except ValueError as exc:
                raise DecodeError(f"invalid schema: {exc}") from None
        return Bind(version, token, client_id, dl, ul, tuple(tables))
    if t == MessageType.MARK:
        return Mark(r.uint(), r.uint())
    if t == MessageType.ERROR:
        code, message, flags = r.uint(), r.str_(), r.byte()
        if flags > 7:
            raise DecodeError(f"invalid error flags {flags}")
        backoff = r.f64() if flags & 4 else None
        if backoff is not None and not 0 <= backoff <= 86400:
            raise DecodeError(f"backoff {backoff} outside [0, 86400] seconds")
        return Error(code, message, bool(flags & 1), backoff, bool(flags & 2))
    if t == MessageType.PING:
        return Ping(r.uint())
    if t == MessageType.PONG:
        return Pong(r.uint())
    if t == MessageType.AUTH_REQUEST:
        op = r.byte()
        if op not in AuthOp._value2member_map_:
            raise DecodeError(f"unknown auth operation {op}")
        return AuthRequest(AuthOp(op), r.str_(), r.str_(), r.str_())
    if t == MessageType.AUTH_RESPONSE:
        return AuthResponse(r.str_(), r.str_(), r.str_(), r.f64())
    if t == MessageType.TEST_COMMAND:
        return TestCommand(r.uint(), r.str_(), r.str_())
    raise DecodeError(f"unknown message type {t}")

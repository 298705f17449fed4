"""The client side of one sync connection, as a state machine without I/O.

It checks what the server sends: a DOWNLOAD may not move a cursor backwards, may
not acknowledge a client version never sent, and a MARK or a TEST_COMMAND reply
must answer a request.
"""

from __future__ import annotations

from enum import Enum

from ..errors import ProtocolError
from .messages import (
    PROTOCOL_VERSION,
    Bind,
    Download,
    Error,
    ErrorCode,
    Mark,
    Message,
    Ping,
    Pong,
    TableSchema,
    TestCommand,
    Upload,
    UploadChangeset,
    decode,
    encode,
)

__all__ = ["TRANSITIONS", "ClientConnectionState", "ClientProtocol"]


class ClientConnectionState(Enum):
    AWAIT_BIND_ACK = "await_bind_ack"  # BIND sent; the first DOWNLOAD acknowledges it
    ACTIVE = "active"
    CLOSED = "closed"


C = ClientConnectionState
TRANSITIONS: dict[tuple[ClientConnectionState, type], ClientConnectionState] = {
    (C.AWAIT_BIND_ACK, Download): C.ACTIVE,
    (C.AWAIT_BIND_ACK, Error): C.CLOSED,
    (C.AWAIT_BIND_ACK, Pong): C.AWAIT_BIND_ACK,
    (C.ACTIVE, Download): C.ACTIVE,
    (C.ACTIVE, Mark): C.ACTIVE,
    (C.ACTIVE, Pong): C.ACTIVE,
    (C.ACTIVE, Error): C.CLOSED,
    (C.ACTIVE, TestCommand): C.ACTIVE,  # a reply; commands are only sent once bound
}


class ClientProtocol:
    """Builds what the client sends and validates what it receives."""

    def __init__(
        self, download_cursor: int, upload_cursor: int, latest_client_version: int
    ) -> None:
        self.state = C.AWAIT_BIND_ACK
        self.download_cursor = download_cursor
        self.upload_ack = upload_cursor
        # A previous connection may have sent (and the server integrated) anything
        # in the local history, so an ack up to the latest local version is valid.
        self.highest_sent = max(upload_cursor, latest_client_version)
        self.pending_marks: set[int] = set()
        self.pending_test_commands: set[int] = set()

    def bind(self, token: str, client_id: int, schema: tuple[TableSchema, ...]) -> bytes:
        return encode(
            Bind(
                PROTOCOL_VERSION,
                token,
                client_id,
                self.download_cursor,
                self.upload_ack,
                schema,
            )
        )

    def upload(self, changesets: list[tuple[int, bytes]]) -> bytes:
        if changesets:
            self.highest_sent = max(self.highest_sent, changesets[-1][0])
        return encode(Upload(tuple(UploadChangeset(cv, body) for cv, body in changesets)))

    def mark(self, request_id: int) -> bytes:
        self.pending_marks.add(request_id)
        return encode(Mark(request_id))

    def test_command(self, request_id: int, command: str, argument: str = "") -> bytes:
        """A TEST_COMMAND request; the server's reply echoes ``request_id``."""
        self.pending_test_commands.add(request_id)
        return encode(TestCommand(request_id, command, argument))

    def ping(self, nonce: int) -> bytes:
        return encode(Ping(nonce))

    def receive(self, data: bytes) -> Message:
        """Decode and check one frame from the server.

        Raises:
            ProtocolError: malformed, unexpected, or moving a cursor backwards.
        """
        try:
            msg = decode(data)
            nxt = TRANSITIONS.get((self.state, type(msg)))
            if nxt is None:
                raise ProtocolError(
                    f"server sent {type(msg).__name__} in state {self.state.value}",
                    code=ErrorCode.UNEXPECTED_MESSAGE,
                )
            if isinstance(msg, Download):
                self._check_download(msg)
            elif isinstance(msg, Mark):
                if msg.request_id not in self.pending_marks:
                    raise ProtocolError(
                        f"MARK {msg.request_id} answers no request",
                        code=ErrorCode.UNEXPECTED_MESSAGE,
                    )
                self.pending_marks.discard(msg.request_id)
            elif isinstance(msg, TestCommand):
                if msg.request_id not in self.pending_test_commands:
                    raise ProtocolError(
                        f"TEST_COMMAND reply {msg.request_id} answers no request",
                        code=ErrorCode.UNEXPECTED_MESSAGE,
                    )
                self.pending_test_commands.discard(msg.request_id)
        except ProtocolError:
            self.state = C.CLOSED
            raise
        self.state = nxt
        return msg

    def _check_download(self, msg: Download) -> None:
        if msg.download_cursor < self.download_cursor:
            raise ProtocolError(
                f"download cursor went back from {self.download_cursor} to {msg.download_cursor}",
                code=ErrorCode.BAD_PROGRESS,
            )
        if msg.upload_ack < self.upload_ack or msg.upload_ack > self.highest_sent:
            raise ProtocolError(
                f"upload ack {msg.upload_ack} outside [{self.upload_ack}, {self.highest_sent}]",
                code=ErrorCode.BAD_PROGRESS,
            )
        prev = self.download_cursor
        for s in msg.changesets:
            if not prev < s.server_version <= msg.download_cursor:
                raise ProtocolError(
                    f"server version {s.server_version} out of order (after {prev}, "
                    f"cursor {msg.download_cursor})",
                    code=ErrorCode.BAD_PROGRESS,
                )
            prev = s.server_version
        self.download_cursor = msg.download_cursor
        self.upload_ack = msg.upload_ack

    def close(self) -> None:
        self.state = C.CLOSED

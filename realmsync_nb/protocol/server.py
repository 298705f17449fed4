"""The server side of one sync connection, as a state machine without I/O.

``receive(data)`` decodes a frame and checks it against the transition table;
anything the table does not allow raises :class:`ProtocolError` with the code
the I/O layer sends back before closing.
"""

from __future__ import annotations

from enum import Enum

from ..errors import ProtocolError
from .messages import (
    PROTOCOL_VERSION,
    Bind,
    ErrorCode,
    Mark,
    Message,
    Ping,
    TestCommand,
    Upload,
    decode,
)

__all__ = ["TRANSITIONS", "ServerConnectionState", "ServerProtocol"]


class ServerConnectionState(Enum):
    AWAIT_BIND = "await_bind"
    BOUND = "bound"
    CLOSED = "closed"


S = ServerConnectionState
# (state, message type) -> next state. Missing pairs are protocol errors.
TRANSITIONS: dict[tuple[ServerConnectionState, type], ServerConnectionState] = {
    (S.AWAIT_BIND, Bind): S.BOUND,
    (S.AWAIT_BIND, Ping): S.AWAIT_BIND,
    (S.AWAIT_BIND, TestCommand): S.AWAIT_BIND,
    (S.BOUND, Upload): S.BOUND,
    (S.BOUND, Mark): S.BOUND,
    (S.BOUND, Ping): S.BOUND,
    (S.BOUND, TestCommand): S.BOUND,
}
SESSION_MESSAGES = (Upload, Mark)


class ServerProtocol:
    """Validates what a client sends on one connection."""

    def __init__(self) -> None:
        self.state = S.AWAIT_BIND
        self.last_client_version = 0  # highest client version seen on this connection

    def receive(self, data: bytes) -> Message:
        """Decode and check one frame; returns the message.

        Raises:
            ProtocolError: malformed, unexpected for the state, or out of order.
        """
        if self.state is S.CLOSED:
            raise ProtocolError("connection already failed", code=ErrorCode.UNEXPECTED_MESSAGE)
        try:
            msg = decode(data)
            nxt = TRANSITIONS.get((self.state, type(msg)))
            if nxt is None:
                if self.state is S.AWAIT_BIND and isinstance(msg, SESSION_MESSAGES):
                    raise ProtocolError(
                        f"{type(msg).__name__} before BIND: no session is bound on this connection",
                        code=ErrorCode.UNKNOWN_SESSION,
                    )
                raise ProtocolError(
                    f"{type(msg).__name__} is not allowed in state {self.state.value}",
                    code=ErrorCode.UNEXPECTED_MESSAGE,
                )
            if isinstance(msg, Bind) and msg.protocol_version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"client speaks protocol version {msg.protocol_version}; "
                    f"this server speaks {PROTOCOL_VERSION}",
                    code=ErrorCode.UNSUPPORTED_VERSION,
                )
            if isinstance(msg, Upload):
                self._check_upload(msg)
        except ProtocolError:
            self.state = S.CLOSED
            raise
        self.state = nxt
        return msg

    def bound(self, last_integrated_client_version: int) -> None:
        """Record what the server already integrated from this client file."""
        self.last_client_version = last_integrated_client_version

    def _check_upload(self, msg: Upload) -> None:
        last = self.last_client_version
        for u in msg.changesets:
            if u.client_version <= last:
                raise ProtocolError(
                    f"client version {u.client_version} does not follow {last}; "
                    "uploads must be in increasing client-version order",
                    code=ErrorCode.BAD_PROGRESS,
                )
            last = u.client_version
        self.last_client_version = last

    def close(self) -> None:
        self.state = S.CLOSED

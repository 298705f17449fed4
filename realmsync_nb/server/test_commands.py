"""TEST_COMMAND handling: a test suite steers the server side of its own session.

A client sends ``TEST_COMMAND(request_id, command, argument)`` on its ``/sync``
connection; the server answers ``TEST_COMMAND(request_id, "ok", "")`` or
``TEST_COMMAND(request_id, "error" | "unknown", why)``. Servers refuse every test
command unless started with ``enable_test_commands`` (``ServerConfig``, the CLI's
``--enable-test-commands``): tests need to make a server misbehave on cue (send an
error with chosen retry hints, hold uploads or downloads back, drop a connection),
and production servers must never let a client do that.

Everything a command changes belongs to the one connection it arrived on: a new
connection of the same client starts with both sides running. Commands and their
arguments are listed in docs/protocol.md, section 6.8.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError
from ..protocol.messages import Error, ErrorCode, TestCommand, Upload, encode

if TYPE_CHECKING:
    from .core import ServerSession

__all__ = ["COMMANDS", "MAX_HELD_UPLOAD_BYTES", "hold_upload", "run_test_command"]

# Uploads held back by ``pause_uploads`` stay in memory, so they are bounded: past
# this many changeset bytes the server gives up on the connection with a retryable
# TRY_AGAIN_LATER (the client re-sends everything unacknowledged after reconnecting).
MAX_HELD_UPLOAD_BYTES = 8 * 1024 * 1024


class CommandError(ValueError):
    """A test command that cannot be carried out; its text goes back in the reply."""


# A handler does its work and may return a coroutine function to run after the
# "ok" reply is sent (commands that end the connection must answer first).
After = Callable[[], Awaitable[None]] | None
Handler = Callable[["ServerSession", str], Awaitable[After]]


def _no_argument(name: str, argument: str) -> None:
    if argument:
        raise CommandError(f"{name} takes no argument, got {argument!r}")


def _parse_error(argument: str) -> Error:
    """The ERROR that ``send_error`` sends, from its JSON argument."""
    try:
        spec: Any = json.loads(argument) if argument else {}
    except json.JSONDecodeError as exc:
        raise CommandError(f"send_error takes a JSON object: {exc}") from None
    if not isinstance(spec, dict):
        raise CommandError("send_error takes a JSON object")
    unknown = set(spec) - {"code", "message", "retry", "backoff", "fatal"}
    if unknown:
        raise CommandError(f"send_error: unknown keys {sorted(unknown)}")
    code = spec.get("code", int(ErrorCode.TEST_ERROR))
    message = spec.get("message", "error sent by a test command")
    retry = spec.get("retry", True)
    fatal = spec.get("fatal", False)
    backoff = spec.get("backoff")
    if type(code) is not int or not 0 <= code < 1 << 64:
        raise CommandError(f"send_error: code must be an unsigned integer, got {code!r}")
    if not isinstance(message, str):
        raise CommandError(f"send_error: message must be a string, got {message!r}")
    if type(retry) is not bool or type(fatal) is not bool:
        raise CommandError("send_error: retry and fatal must be true or false")
    if backoff is not None:
        if type(backoff) not in (int, float) or not math.isfinite(backoff):
            raise CommandError(f"send_error: backoff must be a number, got {backoff!r}")
        if not 0 <= backoff <= 86400:
            raise CommandError(f"send_error: backoff {backoff} is outside 0..86400 seconds")
        backoff = float(backoff)
    return Error(code, message, retry=retry, backoff=backoff, fatal=fatal)


async def _send_error(session: ServerSession, argument: str) -> After:
    err = _parse_error(argument)

    async def after() -> None:
        await session._send_error_and_close(err)

    return after


async def _close_connection(session: ServerSession, argument: str) -> After:
    _no_argument("close_connection", argument)

    async def after() -> None:
        await session.ws.close(1001, "closed by a test command")

    return after


async def _pause_uploads(session: ServerSession, argument: str) -> After:
    _no_argument("pause_uploads", argument)
    session.uploads_paused = True
    return None


async def _resume_uploads(session: ServerSession, argument: str) -> After:
    _no_argument("resume_uploads", argument)
    session.uploads_paused = False
    held, session.held_uploads = session.held_uploads, []
    session.held_upload_bytes = 0
    for msg in held:  # in arrival order; a bad one ends the connection as it would have
        session._integrate(msg)
    return None


async def _pause_downloads(session: ServerSession, argument: str) -> After:
    _no_argument("pause_downloads", argument)
    session.downloads_paused = True
    return None


async def _resume_downloads(session: ServerSession, argument: str) -> After:
    _no_argument("resume_downloads", argument)
    session.downloads_paused = False
    session.wake()
    return None


COMMANDS: dict[str, Handler] = {
    "send_error": _send_error,
    "close_connection": _close_connection,
    "pause_uploads": _pause_uploads,
    "resume_uploads": _resume_uploads,
    "pause_downloads": _pause_downloads,
    "resume_downloads": _resume_downloads,
}


def hold_upload(session: ServerSession, msg: Upload) -> None:
    """Queue an UPLOAD while uploads are paused (neither integrated nor acknowledged).

    Raises:
        ProtocolError: ``TRY_AGAIN_LATER`` once the held bytes pass
            :data:`MAX_HELD_UPLOAD_BYTES`; the connection closes and nothing held
            is integrated.
    """
    session.held_upload_bytes += sum(len(u.body) for u in msg.changesets)
    if session.held_upload_bytes > MAX_HELD_UPLOAD_BYTES:
        session.held_uploads = []
        raise ProtocolError(
            f"more than {MAX_HELD_UPLOAD_BYTES} bytes of uploads are held back by "
            "pause_uploads; reconnect and send them again",
            code=ErrorCode.TRY_AGAIN_LATER,
        )
    session.held_uploads.append(msg)


async def run_test_command(session: ServerSession, msg: TestCommand) -> None:
    """Carry out one (enabled) test command and reply to it."""
    handler = COMMANDS.get(msg.command)
    if handler is None:
        await session.ws.send(encode(TestCommand(msg.request_id, "unknown", msg.command)))
        return
    try:
        after = await handler(session, msg.argument)
    except CommandError as exc:
        await session.ws.send(encode(TestCommand(msg.request_id, "error", str(exc))))
        return
    await session.ws.send(encode(TestCommand(msg.request_id, "ok", "")))
    if after is not None:
        await after()

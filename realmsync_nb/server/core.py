"""The sync server: WebSocket connections driving protocol.server over a storage engine.

Two paths: ``/auth`` answers AUTH_REQUESTs (register, log in, refresh) and ``/sync``
carries one sync session per connection. Each session has a sender task that
streams the durable history from the client's download cursor in bounded batches;
``await ws.send`` applies backpressure, so a slow or stalled client holds at most
one batch in memory and nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..errors import AuthError, ProtocolError
from ..protocol.changeset import Changeset, decode_changeset, validate_changeset
from ..protocol.messages import (
    FATAL_CODES,
    AuthOp,
    AuthRequest,
    AuthResponse,
    Bind,
    Download,
    Error,
    ErrorCode,
    Mark,
    Message,
    Ping,
    Pong,
    ServerChangeset,
    TestCommand,
    Upload,
    decode,
    encode,
)
from ..protocol.schema import merge_schemas
from ..protocol.server import ServerProtocol
from ..protocol.wire import DecodeError
from . import auth
from .storage import ServerStorage
from .test_commands import hold_upload, run_test_command

__all__ = ["ServerConfig", "SyncServerCore"]

logger = logging.getLogger("realmsync_nb.server")

# When new history reaches the server's object copy (see SyncServerCore._schedule_apply):
# at once below APPLY_AT_ONCE_BYTES; else once uploads pause for APPLY_IDLE seconds,
# and at the latest APPLY_MAX_WAIT seconds after the first change that waits.
APPLY_AT_ONCE_BYTES = 64 * 1024
APPLY_IDLE = 0.05
APPLY_MAX_WAIT = 0.5

# How far ahead of the server's clock a changeset's timestamp may be (microseconds).
# A replica that integrates a changeset moves its hybrid clock up to that timestamp,
# so one changeset clocked in the far future would drag every replica's clock (and
# so every later write) there, and past 2**63 their local writes would fail.
MAX_CLOCK_AHEAD_US = 24 * 3600 * 1_000_000


@dataclass(frozen=True)
class ServerConfig:
    access_token_ttl: float = 30 * 60.0
    refresh_token_ttl: float = 60 * 24 * 3600.0
    download_batch_bytes: int = 256 * 1024
    download_batch_count: int = 10_000
    enable_test_commands: bool = False
    scrypt_n: int = auth.SCRYPT_N


class SyncServerCore:
    """Connection handling for one server; all on the server's event loop."""

    def __init__(self, storage: ServerStorage, config: ServerConfig | None = None) -> None:
        self.storage = storage
        self.config = config or ServerConfig()
        self.sessions: set[ServerSession] = set()
        self._apply_handle: asyncio.Handle | None = None
        self._apply_deadline: float | None = None

    async def handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        try:
            if path.rstrip("/") == "/auth":
                await self._serve_auth(ws)
            elif path.rstrip("/") in ("/sync", ""):
                session = ServerSession(self, ws)
                self.sessions.add(session)
                try:
                    await session.run()
                finally:
                    self.sessions.discard(session)
            else:
                await ws.close(4004, f"unknown path {path}; use /sync or /auth")
        except ConnectionClosed:
            pass

    def changes_committed(self, writer: ServerSession) -> None:
        """New history: wake every sender, the writer's own (its acknowledgement) last,
        so the changes reach the other devices first."""
        for s in self.sessions:
            if s is not writer:
                s.wake()
        writer.wake()
        self._schedule_apply()

    def _schedule_apply(self) -> None:
        """Apply new history to the server's object copy after the senders just woken
        have run, so the copy is never on the path of a change (see
        storage.apply_pending). A few small changes are applied on the loop's next
        turn, while they travel. Larger amounts wait until uploads pause for
        APPLY_IDLE, so a bulk upload is integrated and forwarded part after part
        without stopping to apply each, but never longer than APPLY_MAX_WAIT, so a
        steady trickle of uploads cannot hold the copy back."""
        loop = asyncio.get_running_loop()
        if self.storage.unapplied_bytes() <= APPLY_AT_ONCE_BYTES:
            if self._apply_handle is None:
                self._apply_handle = loop.call_soon(self._apply_pending)
            return
        now = loop.time()
        if self._apply_deadline is None:
            self._apply_deadline = now + APPLY_MAX_WAIT
        if self._apply_handle is not None:
            self._apply_handle.cancel()
        self._apply_handle = loop.call_at(
            min(now + APPLY_IDLE, self._apply_deadline), self._apply_pending
        )

    def _apply_pending(self) -> None:
        """One chunk of the apply, then the loop's next turn for the rest: uploads
        and downloads go on between chunks."""
        self._apply_handle = None
        self._apply_deadline = None
        try:
            more = self.storage.apply_pending(chunk=True)
        except Exception:
            # The file failed (a changeset that fails is left out by the storage);
            # the history is intact, and the next upload or the next start retries.
            logger.exception("applying integrated changesets to the server's objects failed")
            return
        if more:
            self._apply_handle = asyncio.get_running_loop().call_soon(self._apply_pending)

    # -- auth ---------------------------------------------------------------------

    async def _serve_auth(self, ws: ServerConnection) -> None:
        async for data in ws:
            try:
                msg = decode(data if isinstance(data, bytes) else data.encode())
                if not isinstance(msg, AuthRequest):
                    raise ProtocolError(
                        f"{type(msg).__name__} sent to /auth", code=ErrorCode.UNEXPECTED_MESSAGE
                    )
                reply: Message = self._auth(msg)
            except AuthError as exc:
                reply = Error(exc.code, str(exc), retry=False)
            except ProtocolError as exc:
                await ws.send(encode(Error(exc.code, str(exc), retry=False, fatal=True)))
                await ws.close(1002, "protocol error")
                return
            await ws.send(encode(reply))

    def _auth(self, req: AuthRequest) -> AuthResponse:
        st, cfg = self.storage, self.config
        key = st.signing_key
        if req.op == AuthOp.LOGIN_ANONYMOUS:
            user = st.add_user(None, None, None)
        elif req.op == AuthOp.REGISTER:
            email = req.email.strip().lower()
            if "@" not in email or len(req.password) < 6:
                raise AuthError(
                    "registration needs an email address and a password of at least 6 characters",
                    code=ErrorCode.INVALID_CREDENTIALS,
                )
            if st.find_user(email) is not None:
                raise AuthError(
                    f"a user with email {email} already exists", code=ErrorCode.USER_EXISTS
                )
            salt = auth.new_salt()
            user = st.add_user(email, salt, auth.hash_password(req.password, salt, cfg.scrypt_n))
        elif req.op == AuthOp.LOGIN_EMAIL:
            found = st.find_user(req.email.strip().lower())
            if (
                found is None
                or found.salt is None
                or found.hash is None
                or not auth.verify_password(req.password, found.salt, found.hash, cfg.scrypt_n)
            ):
                raise AuthError("wrong email or password", code=ErrorCode.INVALID_CREDENTIALS)
            user = found
        elif req.op == AuthOp.REFRESH:
            claims = auth.verify_token(key, req.token, "refresh")
            found = st.get_user(claims.user_id)
            if found is None:
                raise AuthError("the user no longer exists", code=ErrorCode.USER_DISABLED)
            user = found
        elif req.op == AuthOp.DELETE_USER:
            claims = auth.verify_token(key, req.token, "access")
            st.disable_user(claims.user_id)
            for s in list(self.sessions):
                if s.user_id == claims.user_id:
                    s.fail(
                        Error(
                            ErrorCode.USER_DISABLED, "the user was deleted", retry=False, fatal=True
                        )
                    )
            return AuthResponse(claims.user_id, "", "", 0.0)
        else:  # pragma: no cover - decode only produces known ops
            raise AuthError(f"unknown auth operation {req.op}", code=ErrorCode.INVALID_CREDENTIALS)
        if user.disabled:
            raise AuthError("this user was deleted or disabled", code=ErrorCode.USER_DISABLED)
        return AuthResponse(
            user.id,
            auth.issue_token(key, user.id, "access", cfg.access_token_ttl),
            auth.issue_token(key, user.id, "refresh", cfg.refresh_token_ttl),
            cfg.access_token_ttl,
        )


class ServerSession:
    """One client's sync session on one connection."""

    def __init__(self, core: SyncServerCore, ws: ServerConnection) -> None:
        self.core = core
        self.storage = core.storage
        self.ws = ws
        self.protocol = ServerProtocol()
        self.user_id: str | None = None
        self.client_id = 0
        self.cursor = 0  # highest server version sent (or skipped as the client's own)
        self.acked = 0  # highest client version integrated
        self.ack_sent = -1
        self.marks: list[int] = []
        self._wake = asyncio.Event()
        self.failed = False  # fail() was called; see there
        self._sender: asyncio.Task[None] | None = None
        # Test hooks (docs/protocol.md, TEST_COMMAND): the server side can hold back
        # downloads or leave uploads unintegrated to imitate a busy server.
        self.downloads_paused = False
        self.uploads_paused = False
        self.held_uploads: list[Upload] = []  # arrived while paused, in order
        self.held_upload_bytes = 0

    def wake(self) -> None:
        self._wake.set()

    def fail(self, err: Error) -> None:
        """Send ``err`` and close, from outside the session's own tasks.

        From here on nothing more the client sent is applied: bytes still in flight
        (an UPLOAD from a user deleted a moment ago) must not land after the verdict.
        """
        self.failed = True
        asyncio.get_running_loop().create_task(self._send_error_and_close(err))

    async def _send_error_and_close(self, err: Error) -> None:
        try:
            await self.ws.send(encode(err))
            await self.ws.close(1008 if err.fatal else 1011, err.message[:100])
        except ConnectionClosed:
            pass

    async def run(self) -> None:
        try:
            async for data in self.ws:
                if not isinstance(data, bytes):
                    raise ProtocolError(
                        "text frames are not part of the protocol", code=ErrorCode.MALFORMED_MESSAGE
                    )
                msg = self.protocol.receive(data)
                await self._dispatch(msg)
        except ProtocolError as exc:
            logger.info("client %s: protocol error %s: %s", self.client_id, exc.code, exc)
            fatal = exc.code in FATAL_CODES
            await self._send_error_and_close(
                Error(exc.code, str(exc), retry=not fatal, fatal=fatal)
            )
        except AuthError as exc:
            fatal = exc.code != ErrorCode.TOKEN_EXPIRED
            await self._send_error_and_close(
                Error(exc.code, str(exc), retry=not fatal, fatal=fatal)
            )
        finally:
            self.protocol.close()
            if self._sender is not None:
                self._sender.cancel()
                try:
                    await self._sender
                except (asyncio.CancelledError, ConnectionClosed):
                    pass

    async def _dispatch(self, msg: Message) -> None:
        if self.failed:
            return
        if isinstance(msg, Upload) and self.uploads_paused:
            hold_upload(self, msg)
        elif isinstance(msg, Upload):
            self._integrate(msg)
            # Let the sender acknowledge this upload before the next one is read:
            # otherwise a client streaming many UPLOADs hears nothing until the last,
            # and its progress jumps from 0 to 100 %.
            await asyncio.sleep(0)
        elif isinstance(msg, Mark):
            self.marks.append(msg.request_id)
            self.wake()
        elif isinstance(msg, Ping):
            await self.ws.send(encode(Pong(msg.nonce)))
        elif isinstance(msg, Bind):
            self._bind(msg)
        elif isinstance(msg, TestCommand):
            await self._test_command(msg)

    def _bind(self, msg: Bind) -> None:
        st = self.storage
        claims = auth.verify_token(st.signing_key, msg.access_token, "access")
        user = st.get_user(claims.user_id)
        if user is None or user.disabled:
            raise AuthError("this user was deleted or disabled", code=ErrorCode.USER_DISABLED)
        # Every check comes before anything is stored: a rejected BIND leaves no
        # trace (no schema change, no client record).
        try:
            merge_schemas(st.schema(), msg.schema)
        except ValueError as exc:
            raise ProtocolError(f"schema mismatch: {exc}", code=ErrorCode.SCHEMA_MISMATCH) from None
        if not 0 < msg.client_id < 1 << 63:  # a 63-bit peer id, stored as SQLite INTEGER
            raise ProtocolError(
                f"client id {msg.client_id} is outside 1..2**63-1", code=ErrorCode.BAD_CLIENT_FILE
            )
        client = st.get_client(msg.client_id)
        if client is None:
            if msg.download_cursor or msg.upload_cursor:
                raise ProtocolError(
                    "this server has no record of the client file, which claims to have "
                    "synced before (was the server's data reset?); the local file must be "
                    "reset",
                    code=ErrorCode.CLIENT_RESET_REQUIRED,
                )
        elif client.user_id != user.id:
            raise ProtocolError(
                "this client file belongs to another user; open a separate realm path per user",
                code=ErrorCode.BAD_CLIENT_FILE,
            )
        last = client.last_client_version if client is not None else 0
        if msg.download_cursor > st.latest_version() or msg.upload_cursor > last:
            raise ProtocolError(
                f"the client file is ahead of the server (download cursor "
                f"{msg.download_cursor} > {st.latest_version()} or upload cursor "
                f"{msg.upload_cursor} > {last}); the server lost data "
                "and the local file must be reset",
                code=ErrorCode.CLIENT_RESET_REQUIRED,
            )
        st.merge_schema(msg.schema)
        if client is None:
            client = st.add_client(msg.client_id, user.id)
        self.user_id = user.id
        self.client_id = msg.client_id
        self.cursor = msg.download_cursor
        self.acked = client.last_client_version
        # Order is checked from what the client says it knows: after a lost ack it
        # re-sends changesets the server already has; _integrate skips and re-acks them.
        self.protocol.bound(msg.upload_cursor)
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())
        self.wake()

    def _integrate(self, msg: Upload) -> None:
        # Decode and validate everything first: a bad changeset rejects the whole
        # message, and nothing from it is persisted.
        schema = self.storage.schema()
        batch: list[tuple[int, Changeset, bytes]] = []
        latest_ts = time.time_ns() // 1000 + MAX_CLOCK_AHEAD_US
        for u in msg.changesets:
            if u.client_version >= 1 << 63:  # stored as SQLite INTEGER
                raise ProtocolError(
                    f"client version {u.client_version} is beyond 2**63-1",
                    code=ErrorCode.BAD_PROGRESS,
                )
            if u.client_version <= self.acked:
                continue  # integrated before; the client missed the ack
            try:
                cs = decode_changeset(u.body)
            except DecodeError as exc:
                raise ProtocolError(
                    f"changeset {u.client_version} does not decode: {exc}",
                    code=ErrorCode.BAD_CHANGESET,
                ) from None
            if cs.origin != self.client_id:
                raise ProtocolError(
                    f"changeset {u.client_version} claims origin {cs.origin}, but this "
                    f"session's client is {self.client_id}",
                    code=ErrorCode.BAD_CHANGESET,
                )
            if cs.ts > latest_ts:
                raise ProtocolError(
                    f"changeset {u.client_version} is clocked "
                    f"{(cs.ts - latest_ts) / 1e6 + MAX_CLOCK_AHEAD_US / 1e6:.0f} s ahead of the "
                    f"server (at most {MAX_CLOCK_AHEAD_US // 1_000_000} s); set the device's clock",
                    code=ErrorCode.BAD_CHANGESET,
                )
            problem = validate_changeset(cs, schema)
            if problem is not None:
                raise ProtocolError(
                    f"changeset {u.client_version} breaks the schema: {problem}",
                    code=ErrorCode.BAD_CHANGESET,
                )
            batch.append((u.client_version, cs, u.body))
        if batch:
            self.acked = self.storage.integrate(self.client_id, batch)
            self.core.changes_committed(self)
        else:
            self.wake()  # re-acknowledge duplicates

    async def _send_loop(self) -> None:
        st, cfg = self.storage, self.core.config
        # The bind acknowledgement: no changesets yet, but the exact number of bytes
        # to come, so the client's download progress starts at 0 of the real total.
        await self._send_download(self.cursor, st.remaining_bytes(self.client_id, self.cursor), [])
        while True:
            await self._wake.wait()
            self._wake.clear()
            while not self.downloads_paused:
                sent = False
                if self.cursor < st.latest_version():
                    batch = st.read_history(
                        self.cursor,
                        self.client_id,
                        cfg.download_batch_bytes,
                        cfg.download_batch_count,
                    )
                    remaining = st.remaining_bytes(self.client_id, batch.cursor)
                    await self._send_download(batch.cursor, remaining, batch.changesets)
                    sent = True
                    continue
                if self.ack_sent != self.acked:
                    await self._send_download(self.cursor, 0, [])
                    sent = True
                if self.marks:
                    marks, self.marks = self.marks, []
                    for m in marks:
                        await self.ws.send(encode(Mark(m, self.cursor)))
                if not sent:
                    break

    async def _send_download(
        self, cursor: int, remaining: int, changesets: list[tuple[int, int, bytes]]
    ) -> None:
        ack = self.acked
        await self.ws.send(
            encode(
                Download(
                    cursor,
                    ack,
                    remaining,
                    tuple(ServerChangeset(sv, o, b) for sv, o, b in changesets),
                )
            )
        )
        self.cursor = cursor
        self.ack_sent = ack

    async def _test_command(self, msg: TestCommand) -> None:
        if not self.core.config.enable_test_commands:
            raise ProtocolError(
                "test commands are disabled on this server (start it with "
                "enable_test_commands=True)",
                code=ErrorCode.UNEXPECTED_MESSAGE,
            )
        await run_test_command(self, msg)

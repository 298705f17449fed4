"""Session: one realm's sync session, running on the app's sync thread.

State lives in two tables (see :data:`SESSION_TRANSITIONS`): the logical session
state, which only ``pause()``/``resume()``, token refresh, fatal errors and
``close`` change, and the connection state, which follows the network. All
mutation happens on the sync thread; public getters read plain attributes.

The connection loop (:meth:`Session._run`) connects, binds, then runs three tasks
until one fails: the reader (integrates DOWNLOADs, answers MARKs and PONGs), the
uploader (sends local history in batches) and the heartbeat (PING every
``ping_interval``; no PONG within ``pong_timeout`` means the connection is dead).
Then it waits out the backoff delay and tries again.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException

from ..errors import (
    AuthError,
    ProtocolError,
    RealmSyncError,
    SessionError,
    SessionInactiveError,
    SessionPausedError,
    SyncServerError,
)
from ..observe import EventKind, SyncEvent, now
from ..protocol.backoff import Backoff
from ..protocol.client import ClientProtocol
from ..protocol.messages import (
    FATAL_CODES,
    MAX_MESSAGE_SIZE,
    SUBPROTOCOL,
    Download,
    Error,
    ErrorCode,
    Mark,
    Pong,
    TestCommand,
)
from ..protocol.progress import Counters, IndefiniteView, OutstandingView
from ..protocol.wire import DecodeError
from ..store.realm_file import IntegrateResult, RealmFile
from .loop import Stream, StreamSink, SyncFuture
from .types import (
    ConnectionState,
    ConnectionStateChange,
    ProgressDirection,
    ProgressMode,
    SessionState,
    SyncProgress,
)

if TYPE_CHECKING:
    from .app import App, User
    from .realm import Realm

__all__ = ["CONNECTION_TRANSITIONS", "SESSION_TRANSITIONS", "Session"]

logger = logging.getLogger("realmsync_nb.session")
T = TypeVar("T")

# DOWNLOADs up to this size are integrated on the sync thread's event loop itself
# when no local write holds the file (a few hundred microseconds of SQLite at most);
# larger ones, or any that would wait for a user's transaction, go to the session's
# database worker so the loop keeps serving heartbeats and the other sessions.
INLINE_INTEGRATE_BYTES = 64 * 1024
# Bytes of small commits' bodies kept in memory for the uploader, at most (beyond
# that, e.g. while paused or offline, the uploader reads them from the history).
MAX_HANDED_BYTES = 4 * 1024 * 1024
# Seconds acknowledgements wait before they are stored, so a stream of UPLOADs
# costs one file transaction per interval instead of one per acknowledgement.
ACK_STORE_DELAY = 0.05
# Seconds between the sync thread's looks for new local commits while a stream of
# them goes on: the first look after a wake-up, and the most it doubles to (see
# Session._look_for_commits). A lone commit wakes the thread immediately.
COMMIT_POLL_FIRST = 0.0002
COMMIT_POLL_MAX = 0.01
# Bytes of changesets in one UPLOAD when a connection starts, and the least it
# shrinks to (see Session._adapt_upload_cap); it grows up to upload_batch_bytes.
UPLOAD_CAP_START = 16 * 1024
UPLOAD_CAP_MIN = 4 * 1024

SS, CS = SessionState, ConnectionState
# (state, event) -> next state; events not listed leave the state as it is.
SESSION_TRANSITIONS: dict[tuple[SessionState, str], SessionState] = {
    (SS.ACTIVE, "pause"): SS.PAUSED,
    (SS.WAITING_FOR_ACCESS_TOKEN, "pause"): SS.PAUSED,
    (SS.PAUSED, "resume"): SS.ACTIVE,
    (SS.ACTIVE, "token_needed"): SS.WAITING_FOR_ACCESS_TOKEN,
    (SS.WAITING_FOR_ACCESS_TOKEN, "token_refreshed"): SS.ACTIVE,
    (SS.ACTIVE, "fatal_error"): SS.INACTIVE,
    (SS.WAITING_FOR_ACCESS_TOKEN, "fatal_error"): SS.INACTIVE,
    (SS.PAUSED, "fatal_error"): SS.INACTIVE,
    (SS.ACTIVE, "close"): SS.INACTIVE,
    (SS.PAUSED, "close"): SS.INACTIVE,
    (SS.WAITING_FOR_ACCESS_TOKEN, "close"): SS.INACTIVE,
}
CONNECTION_TRANSITIONS: dict[tuple[ConnectionState, str], ConnectionState] = {
    (CS.DISCONNECTED, "connect"): CS.CONNECTING,
    (CS.CONNECTING, "bound"): CS.CONNECTED,
    (CS.CONNECTING, "lost"): CS.DISCONNECTED,
    (CS.CONNECTED, "lost"): CS.DISCONNECTED,
}

_NETWORK_ERRORS = (OSError, WebSocketException, TimeoutError, InvalidURI, DecodeError)


class _Fatal(Exception):
    """Ends the connection loop for good (the session becomes INACTIVE)."""

    def __init__(self, error: RealmSyncError) -> None:
        super().__init__(str(error))
        self.error = error


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a (possibly nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class _ProgressReg:
    __slots__ = ("direction", "last", "outstanding", "sink")

    def __init__(
        self,
        sink: StreamSink[SyncProgress],
        direction: ProgressDirection,
        outstanding: OutstandingView | None,
    ) -> None:
        self.sink = sink
        self.direction = direction
        self.outstanding = outstanding
        self.last: SyncProgress | None = None


class Session:
    """The sync session of one realm (``realm.sync_session``). See API.md."""

    def __init__(self, realm: Realm, app: App, user: User, file: RealmFile, name: str) -> None:
        self._realm = realm
        self._app = app
        self.user = user
        self._file = file
        self.name = name
        self._thread = app._thread
        self._timeouts = app.config.sync_timeouts
        self._state = SS.ACTIVE
        self._conn_state = CS.DISCONNECTED
        self._db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="realmsync-db")
        self._runner: asyncio.Task[None] | None = None
        self._wake_reconnect = asyncio.Event()
        self._upload_wake = asyncio.Event()
        t = self._timeouts
        self._backoff = Backoff(
            t.backoff_initial, t.backoff_max, t.backoff_multiplier, t.backoff_jitter
        )
        # Sinks of the three streams, and waiters.
        self._event_sinks: list[StreamSink[SyncEvent]] = []
        self._conn_sinks: list[StreamSink[ConnectionStateChange]] = []
        self._error_sinks: list[StreamSink[RealmSyncError]] = []
        self._progress: list[_ProgressReg] = []
        self._upload_waiters: list[tuple[int, SyncFuture[None]]] = []
        self._download_waiters: list[SyncFuture[None]] = []  # no MARK sent for them yet
        self._marks: dict[int, list[SyncFuture[None]]] = {}
        self._mark_ids = itertools.count(1)
        # TEST_COMMAND requests (send_test_command): queued until connected, then
        # awaiting the reply on the connection they were sent on.
        self._test_ids = itertools.count(1)
        self._test_unsent: list[tuple[int, str, str, SyncFuture[str]]] = []
        self._test_sent: dict[int, SyncFuture[str]] = {}
        self._ws: ClientConnection | None = None
        self._protocol: ClientProtocol | None = None
        self._sent_at: dict[int, float] = {}  # client version -> when its UPLOAD was sent
        # (last client version, when sending began) of each UPLOAD not yet acknowledged,
        # and the byte cap those UPLOADs adapt (see _adapt_upload_cap).
        self._in_flight: collections.deque[tuple[int, float]] = collections.deque()
        self._upload_cap = UPLOAD_CAP_START
        self._last_ack_at = 0.0  # when the last acknowledgement of an UPLOAD arrived
        self.last_error: RealmSyncError | None = None
        # Counters (cumulative bytes); set from the file in _start.
        self._up = Counters(0, 0)
        self._down = Counters(0, 0)
        self._up_view = IndefiniteView(self._up)
        self._down_view = IndefiniteView(self._down)
        # Acknowledgements: the server's word counts at once (waits, progress); storing
        # it can lag, batched, because a re-sent changeset is only re-acknowledged.
        self._upload_ack = 0  # highest client version the server acknowledged
        self._stored_ack = 0  # highest acknowledgement written to the file
        # (client version, bytes) of every unacknowledged local changeset, in order.
        self._pending_sizes: collections.deque[tuple[int, int]] = collections.deque()
        self._ack_flusher: asyncio.Task[None] | None = None
        self._download_cursor = 0  # the server version integrated up to (in memory)
        self._stored_cursor = 0  # ... and as stored in the file
        self._commit_lock = threading.Lock()
        self._commits: list[tuple[int, int]] = []  # (client version, bytes) not yet seen
        self._handed: dict[int, bytes] = {}  # bodies of small commits, under _commit_lock
        self._handed_bytes = 0
        # Bodies not yet sent, by client version (sync thread only); the uploader
        # sends from here when it can and reads the history otherwise.
        self._unsent: dict[int, bytes] = {}
        self._unsent_bytes = 0
        self._commit_queued = False  # a wake-up is queued, or a look is scheduled
        self._commit_poll = COMMIT_POLL_FIRST

    # -- public API ---------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def connection_state(self) -> ConnectionState:
        return self._conn_state

    @property
    def realm_path(self) -> str:
        return self._file.path

    def pause(self) -> None:
        """Stop syncing both ways and disconnect, until resume(). Idempotent."""
        self._call(self._pause)

    def resume(self) -> None:
        """Start syncing again after pause(); also skips any backoff delay. Idempotent."""
        self._call(self._resume)

    def wait_for_upload(self) -> SyncFuture[None]:
        """Completes when every local change committed before this call is acknowledged."""
        target = self._file.latest_client_version
        fut: SyncFuture[None] = SyncFuture()
        entry = (target, fut)

        def register() -> None:
            if self._fail_if_inactive(fut):
                return
            self._emit(EventKind.WAIT, direction="upload", outcome="started")
            if self._upload_ack >= target:
                self._finish_wait(fut, "upload")
                return
            self._upload_waiters.append(entry)

        def cancel() -> None:
            self._thread.call(self._remove_upload_waiter, entry)

        fut._on_cancel = cancel
        self._thread.call(register)
        return fut

    def wait_for_download(self) -> SyncFuture[None]:
        """Completes when every change the server had at this call is integrated locally."""
        fut: SyncFuture[None] = SyncFuture()

        def register() -> None:
            if self._fail_if_inactive(fut):
                return
            self._emit(EventKind.WAIT, direction="download", outcome="started")
            self._download_waiters.append(fut)
            self._send_mark()

        fut._on_cancel = lambda: self._thread.call(self._remove_download_waiter, fut)
        self._thread.call(register)
        return fut

    def send_test_command(self, command: str, argument: str = "") -> SyncFuture[str]:
        """Send a TEST_COMMAND to the server on this session's connection.

        For tests and debugging only: it steers the server side of this session
        (send an ERROR with chosen retry hints, pause or resume uploads or
        downloads, close the connection), and servers refuse it unless started
        with ``enable_test_commands``. The commands and their arguments are listed
        in docs/protocol.md, section 6.8. What a command changes lasts only as long
        as the connection it was sent on.

        The command is sent as soon as the session is connected. The future
        completes with ``"ok"`` when the server has carried it out.

        Raises:
            SyncServerError: (from the future) the server refused the command:
                unknown, a bad argument (code ``TEST_ERROR``), or test commands are
                disabled there (code ``UNEXPECTED_MESSAGE``; the server then closes
                the connection and the session reconnects).
            SessionError: (from the future) the connection was lost before the
                reply; ``SessionPausedError``/``SessionInactiveError`` as for waits.
        """
        fut: SyncFuture[str] = SyncFuture()
        entry = (next(self._test_ids), command, argument, fut)

        def register() -> None:
            if self._state is SS.INACTIVE:
                fut.set_exception_if_pending(
                    SessionInactiveError("the session is inactive", cause=self.last_error)
                )
                return
            self._test_unsent.append(entry)
            self._send_test_commands()

        def cancel() -> None:
            self._remove(self._test_unsent, entry)
            self._test_sent.pop(entry[0], None)

        fut._on_cancel = lambda: self._thread.call(cancel)
        self._thread.call(register)
        return fut

    def get_progress_stream(
        self, direction: ProgressDirection, mode: ProgressMode
    ) -> Stream[SyncProgress]:
        """A stream of progress for one direction; see API.md for both modes."""
        direction = ProgressDirection(direction)
        mode = ProgressMode(mode)

        def subscribe(sink: StreamSink[SyncProgress]) -> Callable[[], None]:
            if direction is ProgressDirection.UPLOAD:
                self._apply_commits()  # count every commit made before this call
            c = self._counters(direction)
            outstanding = (
                OutstandingView(c) if mode is ProgressMode.FOR_CURRENTLY_OUTSTANDING_WORK else None
            )
            reg = _ProgressReg(sink, direction, outstanding)
            self._progress.append(reg)
            self._report(reg)
            return lambda: self._remove(self._progress, reg)

        return Stream(self._thread, subscribe, f"{self.name} {direction} progress ({mode})")

    @property
    def connection_state_changes(self) -> Stream[ConnectionStateChange]:
        def subscribe(sink: StreamSink[ConnectionStateChange]) -> Callable[[], None]:
            self._conn_sinks.append(sink)
            return lambda: self._remove(self._conn_sinks, sink)

        return Stream(self._thread, subscribe, f"{self.name} connection state changes")

    @property
    def errors(self) -> Stream[RealmSyncError]:
        """Every error the session meets, as an exception object, as it happens.

        Network failures arrive as :class:`~realmsync_nb.errors.SessionError` (with the
        low-level error as ``__cause__``); server errors as ``SyncServerError`` with
        ``fatal``/``retry``/``backoff``. After a fatal one the session is INACTIVE.
        """

        def subscribe(sink: StreamSink[RealmSyncError]) -> Callable[[], None]:
            self._error_sinks.append(sink)
            return lambda: self._remove(self._error_sinks, sink)

        return Stream(self._thread, subscribe, f"{self.name} errors")

    @property
    def events(self) -> Stream[SyncEvent]:
        """Everything the session does, as :class:`~realmsync_nb.observe.SyncEvent`s."""

        def subscribe(sink: StreamSink[SyncEvent]) -> Callable[[], None]:
            self._event_sinks.append(sink)
            return lambda: self._remove(self._event_sinks, sink)

        return Stream(self._thread, subscribe, f"{self.name} events")

    def current_progress(self, direction: ProgressDirection) -> SyncProgress:
        """The REPORT_INDEFINITELY value right now."""
        view = self._up_view if direction is ProgressDirection.UPLOAD else self._down_view
        return SyncProgress(*view.view(self._counters(direction)))

    def record_condition(self, message: str) -> None:
        """Record an outside observation about the network as a CONDITIONS event.

        The session cannot see why its network got slow or went away; whoever changes
        the network can say so here (``realmsync_nb.faults.FaultProxy`` does, for every
        session it watches), so an event log, and the plots drawn from it, show where
        latency went up or a blackhole began. Safe from any thread; does nothing once
        the app has stopped.
        """
        if not self._thread.alive:
            return
        try:
            self._thread.call(functools.partial(self._emit, EventKind.CONDITIONS, message=message))
        except RuntimeError:  # the sync thread's loop closed meanwhile
            pass

    def __repr__(self) -> str:
        return (
            f"<Session {self.name} state={self._state.value} connection={self._conn_state.value}>"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        from ..notebook import session_mimebundle

        return session_mimebundle(self)

    # -- thread plumbing ------------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> None:
        if not self._thread.alive:
            return
        self._thread.run_sync(fn)

    @staticmethod
    def _remove(items: list[Any], item: Any) -> None:
        try:
            items.remove(item)
        except ValueError:
            pass

    def _in_db(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` on this session's database worker; await the future for its result."""
        return asyncio.get_running_loop().run_in_executor(self._db, fn)

    # -- lifecycle (sync thread) ----------------------------------------------------

    def _start(self) -> None:
        def start() -> None:
            p = self._file.progress()
            self._upload_ack = self._stored_ack = p.upload_cursor
            self._download_cursor = self._stored_cursor = p.download_cursor
            self._pending_sizes = collections.deque(self._file.pending_sizes(p.upload_cursor))
            self._up = Counters(p.uploaded_bytes, p.uploadable_bytes)
            self._down = Counters(p.downloaded_bytes, p.downloaded_bytes)
            self._up_view = IndefiniteView(self._up)
            self._down_view = IndefiniteView(self._down)
            self._runner = self._thread.loop.create_task(self._run())

        self._thread.run_sync(start)

    def _close(self) -> None:
        tasks: list[asyncio.Task[None]] = []

        def close() -> None:
            self._transition("close")
            tasks.extend(t for t in (self._runner, self._ack_flusher) if t is not None)
            if self._ack_flusher is not None:
                self._ack_flusher.cancel()
            self._stop_runner()
            self._fail_waits(SessionInactiveError("the realm was closed"))
            for esink in self._event_sinks:
                esink.close()
            for csink in self._conn_sinks:
                csink.close()
            for errsink in self._error_sinks:
                errsink.close()
            self._error_sinks.clear()
            self._event_sinks.clear()
            self._conn_sinks.clear()
            for reg in self._progress:
                reg.sink.close()
            self._progress.clear()

        if self._thread.alive:
            self._thread.run_sync(close)
            if tasks and not self._thread.on_thread:
                # Let the cancelled tasks unwind before the file closes.
                async def join() -> None:
                    await asyncio.gather(*tasks, return_exceptions=True)

                try:
                    asyncio.run_coroutine_threadsafe(join(), self._thread.loop).result(10)
                except (concurrent.futures.TimeoutError, RuntimeError):
                    pass
        self._db.shutdown(wait=True)
        if self._unstored() and not self._file.closed:
            # The flusher was cancelled: store the last acknowledgement and cursor now,
            # so the next open does not re-send what the server already has.
            with contextlib.suppress(sqlite3.Error):
                self._file.acknowledge(self._upload_ack, self._download_cursor)
                self._stored_ack = self._upload_ack
                self._stored_cursor = self._download_cursor

    def _transition(self, event: str) -> bool:
        nxt = SESSION_TRANSITIONS.get((self._state, event))
        if nxt is None or nxt is self._state:
            return False
        prev, self._state = self._state, nxt
        self._emit(EventKind.STATE, previous=prev.value, current=nxt.value)
        return True

    def _set_connection(self, event: str, error: BaseException | None = None) -> None:
        nxt = CONNECTION_TRANSITIONS.get((self._conn_state, event))
        if nxt is None or nxt is self._conn_state:
            return
        prev, self._conn_state = self._conn_state, nxt
        change = ConnectionStateChange(prev, nxt)
        for sink in list(self._conn_sinks):
            sink.push(change)
        self._emit(
            EventKind.CONNECTION,
            previous=prev.value,
            current=nxt.value,
            message=str(error) if error else None,
        )

    def _pause(self) -> None:
        if not self._transition("pause"):
            return
        self._emit(EventKind.PAUSE, current=self._state.value)
        self._stop_runner()
        self._fail_waits(
            SessionPausedError(
                "the session was paused while this wait was pending; resume() and wait again"
            )
        )

    def _resume(self) -> None:
        if self._state is SS.PAUSED:
            self._transition("resume")
            self._emit(EventKind.RESUME, current=self._state.value)
            self._backoff.reset()
            self._runner = self._thread.loop.create_task(self._run())
        elif self._state is not SS.INACTIVE:
            self._reconnect_now()

    def _reconnect_now(self) -> None:
        self._backoff.reset()
        self._wake_reconnect.set()

    def _stop_runner(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
        ws = self._ws
        if ws is not None:
            ws.transport.abort()  # pause means now; no close handshake to wait for
        self._set_connection("lost")
        self._unassign_marks()

    # -- waiters ----------------------------------------------------------------------

    def _fail_if_inactive(self, fut: SyncFuture[None]) -> bool:
        if self._state is SS.INACTIVE:
            fut.set_exception_if_pending(
                SessionInactiveError("the session is inactive", cause=self.last_error)
            )
            return True
        return False

    def _finish_wait(self, fut: SyncFuture[None], direction: str) -> None:
        if not fut.done():
            fut.set_result_if_pending(None)
            self._emit(EventKind.WAIT, direction=direction, outcome="done")

    def _remove_upload_waiter(self, entry: tuple[int, SyncFuture[None]]) -> None:
        self._remove(self._upload_waiters, entry)
        self._emit(EventKind.WAIT, direction="upload", outcome="cancelled")

    def _remove_download_waiter(self, fut: SyncFuture[None]) -> None:
        self._remove(self._download_waiters, fut)
        for futs in self._marks.values():
            self._remove(futs, fut)
        self._emit(EventKind.WAIT, direction="download", outcome="cancelled")

    def _fail_waits(self, exc: Exception) -> None:
        futs = [("upload", f) for _, f in self._upload_waiters]
        futs += [("download", f) for f in self._download_waiters]
        for lst in self._marks.values():
            futs += [("download", f) for f in lst]
        self._upload_waiters.clear()
        self._download_waiters.clear()
        self._marks.clear()
        tests = [f for *_, f in self._test_unsent] + list(self._test_sent.values())
        self._test_unsent.clear()
        self._test_sent.clear()
        for test in tests:
            test.set_exception_if_pending(exc)
        for direction, f in futs:
            if not f.done():
                f.set_exception_if_pending(exc)
                self._emit(EventKind.WAIT, direction=direction, outcome="failed", message=str(exc))

    def _check_upload_waiters(self) -> None:
        if not self._upload_waiters:
            return
        keep = []
        for target, fut in self._upload_waiters:
            if self._upload_ack >= target:
                self._finish_wait(fut, "upload")
            elif not fut.done():
                keep.append((target, fut))
        self._upload_waiters = keep

    def _send_mark(self) -> None:
        ws, proto = self._ws, self._protocol
        if ws is None or proto is None or self._conn_state is not CS.CONNECTED:
            return  # sent on the next connect
        waiting = [f for f in self._download_waiters if not f.done()]
        self._download_waiters.clear()
        if not waiting:
            return
        rid = next(self._mark_ids)
        self._marks[rid] = waiting
        data = proto.mark(rid)
        asyncio.get_running_loop().create_task(self._send_quietly(ws, data))

    @staticmethod
    async def _send_quietly(ws: ClientConnection, data: bytes) -> None:
        try:
            await ws.send(data)
        except ConnectionClosed:
            pass  # the connection loop notices and re-sends the MARK after reconnecting

    def _send_test_commands(self) -> None:
        ws, proto = self._ws, self._protocol
        if ws is None or proto is None or self._conn_state is not CS.CONNECTED:
            return  # sent on the next connect
        unsent, self._test_unsent = self._test_unsent, []
        for rid, command, argument, fut in unsent:
            if fut.done():
                continue
            self._test_sent[rid] = fut
            data = proto.test_command(rid, command, argument)
            asyncio.get_running_loop().create_task(self._send_quietly(ws, data))

    def _test_command_replied(self, msg: TestCommand) -> None:
        fut = self._test_sent.pop(msg.request_id, None)
        if fut is None:
            return  # cancelled meanwhile
        if msg.command == "ok":
            fut.set_result_if_pending("ok")
            return
        if msg.command == "unknown":
            why = f"the server does not know the test command {msg.argument!r}"
        else:
            why = f"the server refused the test command: {msg.argument}"
        fut.set_exception_if_pending(SyncServerError(why, code=ErrorCode.TEST_ERROR, retry=False))

    def _fail_sent_test_commands(self, error: BaseException | None) -> None:
        """A command's effect ends with its connection; an unanswered one fails."""
        if not self._test_sent:
            return
        exc: RealmSyncError
        if isinstance(error, RealmSyncError):
            exc = error
        else:
            exc = SessionError(
                "the connection was lost before the server answered the test command"
                + (f": {type(error).__name__}: {error}" if error is not None else "")
            )
        sent, self._test_sent = self._test_sent, {}
        for fut in sent.values():
            fut.set_exception_if_pending(exc)

    def _unassign_marks(self) -> None:
        for futs in self._marks.values():
            self._download_waiters.extend(f for f in futs if not f.done())
        self._marks.clear()

    # -- events and progress -----------------------------------------------------------

    def _emit(self, kind: EventKind, **fields: Any) -> None:
        if not self._event_sinks:
            return
        event = SyncEvent(now(), self.name, kind, **fields)
        for sink in list(self._event_sinks):
            sink.push(event)

    def _counters(self, direction: ProgressDirection) -> Counters:
        return self._up if direction is ProgressDirection.UPLOAD else self._down

    def _report(self, reg: _ProgressReg) -> None:
        c = self._counters(reg.direction)
        if reg.outstanding is not None:
            p = SyncProgress(*reg.outstanding.view(c))
        else:
            view = self._up_view if reg.direction is ProgressDirection.UPLOAD else self._down_view
            p = SyncProgress(*view.view(c))
        if p != reg.last:
            reg.last = p
            reg.sink.push(p)
        if reg.outstanding is not None and reg.outstanding.finished:
            self._remove(self._progress, reg)
            reg.sink.close()

    def _progress_changed(self, direction: ProgressDirection) -> None:
        c = self._counters(direction)
        view = self._up_view if direction is ProgressDirection.UPLOAD else self._down_view
        done, total, est = view.view(c)
        self._emit(
            EventKind.PROGRESS,
            direction=direction.value,
            transferred=done,
            transferable=total,
            estimate=est,
        )
        for reg in [r for r in self._progress if r.direction is direction]:
            self._report(reg)

    def _local_commit(
        self, parts: list[tuple[int, int]], bodies: dict[int, bytes] | None = None
    ) -> None:
        """Called by Realm after a local commit of changesets ``(client version, bytes)``
        (with their ``bodies`` when the transaction was small).

        Commits that arrive while a notification is still queued join it: a tight
        write loop wakes the sync thread once per batch, not once per commit.
        """
        with self._commit_lock:
            self._commits.extend(parts)
            if bodies and self._handed_bytes < MAX_HANDED_BYTES:
                self._handed.update(bodies)
                self._handed_bytes += sum(map(len, bodies.values()))
            if self._commit_queued:
                return
            self._commit_queued = True
        if self._thread.alive:
            self._thread.call(self._look_for_commits)

    def _look_for_commits(self, polled: bool = False) -> None:
        """On the sync thread: take the commits made since the last look.

        While commits keep coming (a write loop), look again shortly instead of being
        woken by each one: waking this thread costs the writer more than its commit,
        because the two share the GIL. The wait doubles while each look finds commits
        (up to COMMIT_POLL_MAX) and ends at the first look that finds none, so a lone
        write is never held: it wakes the thread at once.
        """
        with self._commit_lock:
            found = bool(self._commits)
            if found and self._thread.alive:
                self._commit_poll = (
                    min(self._commit_poll * 2, COMMIT_POLL_MAX) if polled else COMMIT_POLL_FIRST
                )
                self._thread.loop.call_later(self._commit_poll, self._look_for_commits, True)
            else:
                self._commit_queued = False
        if found:
            self._apply_commits()

    def _apply_commits(self) -> None:
        with self._commit_lock:
            commits, self._commits = self._commits, []
            handed, self._handed, self._handed_bytes = self._handed, {}, 0
        if not commits or self._state is SS.INACTIVE:
            return
        if self._unsent_bytes < MAX_HANDED_BYTES:
            self._unsent.update(handed)
            self._unsent_bytes += sum(map(len, handed.values()))
        pending = self._pending_sizes
        acked = 0
        for version, nbytes in commits:
            if version <= self._upload_ack:
                # Acknowledged before it was counted: two threads' commits, the later
                # one counted first, and both uploaded from the history meanwhile.
                acked += nbytes
            elif pending and version < pending[-1][0]:  # two threads' commits, reordered
                pending = self._pending_sizes = collections.deque(
                    sorted([*pending, (version, nbytes)])
                )
            else:
                pending.append((version, nbytes))
        added = sum(n for _, n in commits)
        self._up = Counters(self._up.transferred + acked, self._up.transferable + added)
        self._progress_changed(ProgressDirection.UPLOAD)
        self._upload_wake.set()

    # -- the connection loop ------------------------------------------------------------

    async def _run(self) -> None:
        while self._state not in (SS.PAUSED, SS.INACTIVE):
            self._set_connection("connect")
            error: BaseException | None = None
            try:
                await self._connect_and_sync()
            except asyncio.CancelledError:
                raise
            except _Fatal as exc:
                self._become_inactive(exc.error)
                return
            except (*_NETWORK_ERRORS, ProtocolError, SyncServerError, AuthError) as exc:
                error = exc
            except Exception as exc:
                # A bug, not a network condition. Never let it end the loop silently
                # (the session would claim to be connected while nothing syncs): log
                # it, report it as an ERROR event, and reconnect with backoff.
                logger.exception("%s: unexpected error in the sync connection", self.name)
                error = exc
            finally:
                ws, self._ws, self._protocol = self._ws, None, None
                if ws is not None:
                    try:
                        ws.transport.abort()
                    except RuntimeError:  # the app's loop is shutting down
                        pass
                self._unassign_marks()
                self._fail_sent_test_commands(error)
            if isinstance(error, AuthError) and error.code not in (0, ErrorCode.TOKEN_EXPIRED):
                self._become_inactive(error)
                return
            if error is not None:
                self._emit_error(error)
            self._set_connection("lost", error)
            delay = self._backoff.next_delay()
            self._emit(EventKind.RECONNECT_SCHEDULED, delay=delay)
            self._wake_reconnect.clear()
            try:
                await asyncio.wait_for(self._wake_reconnect.wait(), delay)
            except TimeoutError:
                pass

    def _emit_error(self, error: BaseException) -> None:
        if isinstance(error, RealmSyncError):
            public = error
        else:
            public = SessionError(f"the connection failed: {type(error).__name__}: {error}")
            public.__cause__ = error
        self.last_error = public
        for sink in list(self._error_sinks):
            sink.push(public)
        if isinstance(error, ConnectionClosed):
            # ConnectionClosed.code is deprecated (websockets 13.1) and warns; a
            # warning turned into an error here would kill the connection loop.
            code: int | None = error.rcvd.code if error.rcvd is not None else 1006
        else:
            code = getattr(error, "code", None)
        self._emit(
            EventKind.ERROR,
            code=code,
            message=f"{type(error).__name__}: {error}",
            retry=getattr(error, "retry", True),
            fatal=getattr(error, "fatal", False),
        )

    def _become_inactive(self, error: RealmSyncError) -> None:
        self._emit_error(error)
        self._set_connection("lost", error)
        self._transition("fatal_error")
        self._fail_waits(SessionInactiveError(f"the session stopped: {error}", cause=error))

    async def _token(self) -> str:
        user = self.user
        if user.access_token_fresh():
            return user.access_token
        self._transition("token_needed")
        try:
            token = await user.refresh_access_token()
        except AuthError as exc:
            if exc.code in (0, ErrorCode.TOKEN_EXPIRED):  # unreachable server: retry later
                raise
            raise _Fatal(exc) from None
        self._transition("token_refreshed")
        return token

    async def _connect_and_sync(self) -> None:
        t = self._timeouts
        token = await self._token()
        p = await self._in_db(self._file.progress)
        # The cursor in memory may be ahead of the stored one (see _integrate).
        self._download_cursor = max(p.download_cursor, self._download_cursor)
        proto = ClientProtocol(self._download_cursor, p.upload_cursor, p.latest_client_version)
        url = self._app.config.base_url.rstrip("/") + "/sync"
        async with asyncio.timeout(t.connect_timeout):
            ws = await connect(
                url,
                subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                compression=None,
                proxy=None,
                ping_interval=None,
                max_size=MAX_MESSAGE_SIZE + 1024,
                open_timeout=t.connect_timeout,
                close_timeout=1,
            )
            self._ws, self._protocol = ws, proto
            schema = tuple(self._file.schema.values())
            await ws.send(proto.bind(token, self._file.client_id, schema))
            first = await ws.recv()
        await self._handle(proto, first)  # the bind acknowledgement (or an error)
        self._send_mark()
        self._send_test_commands()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reader(ws, proto))
                tg.create_task(self._uploader(ws, proto, self._upload_ack))  # bind ack seen
                tg.create_task(self._heartbeat(ws, proto))
        except BaseExceptionGroup as group:
            # A TaskGroup wraps the failure that ended the connection; _run classifies
            # bare exceptions (network error, server error, fatal), so unwrap the first.
            raise _first_error(group) from None

    async def _reader(self, ws: ClientConnection, proto: ClientProtocol) -> None:
        async for data in ws:
            await self._handle(proto, data)
        raise ConnectionError("the server closed the connection")

    _pong: asyncio.Event | None = None
    _ping_sent: float = 0.0
    _last_received: float = 0.0

    async def _handle(self, proto: ClientProtocol, data: bytes | str) -> None:
        self._last_received = time.monotonic()
        msg = proto.receive(data if isinstance(data, bytes) else data.encode())
        if isinstance(msg, Download):
            if self._conn_state is CS.CONNECTING:  # the first DOWNLOAD acknowledges BIND
                self._set_connection("bound")
                self._backoff.reset()
            await self._integrate(msg)
        elif isinstance(msg, Mark):
            for fut in self._marks.pop(msg.request_id, []):
                self._finish_wait(fut, "download")
        elif isinstance(msg, TestCommand):
            self._test_command_replied(msg)
        elif isinstance(msg, Pong):
            if self._pong is not None:
                self._pong.set()
            self._emit(EventKind.HEARTBEAT, latency=time.monotonic() - self._ping_sent)
        elif isinstance(msg, Error):
            err = SyncServerError(
                msg.message,
                code=msg.code,
                retry=msg.retry,
                backoff=msg.backoff,
                fatal=msg.fatal or msg.code in FATAL_CODES,
            )
            if msg.backoff is not None:
                self._backoff.hint(msg.backoff)
            if err.fatal or not msg.retry:
                if msg.code == ErrorCode.TOKEN_EXPIRED:
                    self.user._expires_at = 0.0  # refresh on the next attempt
                    raise err
                raise _Fatal(err)
            raise err

    async def _integrate(self, msg: Download) -> None:
        bodies = [c.body for c in msg.changesets]
        result = IntegrateResult(0, 0, 0, 0, 0)
        if not bodies:
            if msg.download_cursor > self._download_cursor:
                # Only the server's version moved (past this client's own changesets,
                # which it does not send back): nothing to apply. The cursor is stored
                # later, with the acknowledgements (see _store_acks); a reconnect meanwhile
                # uses the one in memory, and a restart asks for those versions again,
                # which the server answers with nothing (they are this client's own).
                self._download_cursor = msg.download_cursor
                self._schedule_store()
        else:
            ack = max(msg.upload_ack, self._upload_ack)
            try:
                done = None
                if sum(map(len, bodies)) <= INLINE_INTEGRATE_BYTES:
                    done = self._file.try_integrate(msg.download_cursor, bodies, ack)
                if done is None:
                    cursor = msg.download_cursor
                    work = self._in_db(functools.partial(self._file.integrate, cursor, bodies, ack))
                    try:
                        done = await asyncio.shield(work)
                    except asyncio.CancelledError:
                        # The connection is going (a pause, a dead link) but the worker
                        # commits anyway: say so once it has, so the events match the file.
                        work.add_done_callback(lambda f: self._integrated_late(f, msg, ack))
                        raise
                result = done
            except DecodeError as exc:
                raise ProtocolError(
                    f"the server sent a bad changeset: {exc}", code=ErrorCode.BAD_CHANGESET
                ) from None
            self._integrated(result, msg, ack)
        self._acknowledged(msg.upload_ack)
        down = Counters(
            self._down.transferred + result.bytes,
            self._down.transferred + result.bytes + msg.remaining_bytes,
        )
        if down != self._down:
            self._down = down
            self._progress_changed(ProgressDirection.DOWNLOAD)

    def _integrated(self, result: IntegrateResult, msg: Download, ack: int) -> None:
        """A DOWNLOAD's changesets are committed to the file: move the cursors, report."""
        self._download_cursor = max(self._download_cursor, msg.download_cursor)
        self._stored_cursor = max(self._stored_cursor, msg.download_cursor)
        self._stored_ack = max(self._stored_ack, ack)
        if result.changesets:
            self._emit(
                EventKind.DOWNLOAD_INTEGRATED,
                bytes=result.bytes,
                changesets=result.changesets,
                server_version=msg.download_cursor,
                remaining_bytes=msg.remaining_bytes,
                objects=result.changed_objects,
            )

    def _integrated_late(
        self, work: asyncio.Future[IntegrateResult], msg: Download, ack: int
    ) -> None:
        """The worker finished a DOWNLOAD after its connection was cancelled: report it
        as the live path would, with the bytes counted as downloaded."""
        if work.cancelled():
            return
        error = work.exception()
        if error is not None:  # nothing was committed; the next connection asks again
            logger.warning("%s: a download the worker finished late failed: %r", self.name, error)
            return
        result = work.result()
        self._integrated(result, msg, ack)
        self._acknowledged(msg.upload_ack)
        if result.bytes:
            done = self._down.transferred + result.bytes
            self._down = Counters(done, max(self._down.transferable, done))
            self._progress_changed(ProgressDirection.DOWNLOAD)

    def _acknowledged(self, ack: int) -> None:
        """The server acknowledged every changeset up to ``ack``: report, release waits,
        and have the acknowledgement stored (in the background, batched)."""
        if ack <= self._upload_ack:
            return
        if not self._pending_sizes or self._pending_sizes[-1][0] < ack:
            # The server acknowledged versions not counted yet (uploaded from the history
            # after a reconnect, before their commit was looked at): count them first.
            self._apply_commits()
        self._upload_ack = ack
        pending = self._pending_sizes
        changesets = nbytes = 0
        while pending and pending[0][0] <= ack:
            nbytes += pending.popleft()[1]
            changesets += 1
        sent = [self._sent_at.pop(cv) for cv in list(self._sent_at) if cv <= ack]
        started = None
        while self._in_flight and self._in_flight[0][0] <= ack:
            started = self._in_flight.popleft()[1]
        if started is not None:
            # How long the link was busy with these UPLOADs: from when they began or
            # the previous acknowledgement arrived, whichever is later (time spent
            # queued behind earlier UPLOADs is theirs), to when this one arrived.
            arrived = self._last_received
            self._adapt_upload_cap(arrived - max(started, self._last_ack_at))
            self._last_ack_at = arrived
        self._emit(
            EventKind.UPLOAD_ACKED,
            bytes=nbytes,
            changesets=changesets,
            client_version=ack,
            latency=(time.monotonic() - min(sent)) if sent else None,
        )
        if nbytes:
            self._up = Counters(self._up.transferred + nbytes, self._up.transferable)
            self._progress_changed(ProgressDirection.UPLOAD)
        self._check_upload_waiters()
        self._schedule_store()

    def _unstored(self) -> bool:
        return self._stored_ack < self._upload_ack or self._stored_cursor < self._download_cursor

    def _schedule_store(self) -> None:
        if self._unstored() and (self._ack_flusher is None or self._ack_flusher.done()):
            self._ack_flusher = asyncio.get_running_loop().create_task(self._store_acks())

    async def _store_acks(self) -> None:
        """Write acknowledgements (and the download cursor moved past this client's own
        changesets) to the file, one transaction for all that arrived meanwhile (a
        fast uploader gets one acknowledgement per UPLOAD)."""
        while self._unstored():
            # Gather the acknowledgements of a busy moment into one transaction: the
            # file may lag the server by this much, which costs nothing (a re-sent
            # changeset is acknowledged again, not applied) and is caught up at close.
            await asyncio.sleep(ACK_STORE_DELAY)
            ack, cursor = self._upload_ack, self._download_cursor
            await self._in_db(functools.partial(self._file.acknowledge, ack, cursor))
            self._stored_ack = max(self._stored_ack, ack)
            self._stored_cursor = max(self._stored_cursor, cursor)

    async def _uploader(self, ws: ClientConnection, proto: ClientProtocol, acked: int) -> None:
        sent = acked  # everything unacknowledged is re-sent; the server skips duplicates
        self._upload_cap = UPLOAD_CAP_START  # a new connection may be a slower link
        self._in_flight.clear()
        self._last_ack_at = 0.0
        while True:
            self._upload_wake.clear()
            max_bytes = min(self._upload_cap, self._app.config.upload_batch_bytes)
            batch = self._handed_batch(sent, max_bytes)  # from memory, or a short read:
            if not batch and self._pending_sizes and self._pending_sizes[-1][0] > sent:
                batch = self._file.pending_uploads(sent, max_bytes)
            if not batch:
                await self._upload_wake.wait()
                continue
            data = proto.upload(batch)
            self._in_flight.append((batch[-1][0], time.monotonic()))
            await ws.send(data)
            stamp = time.monotonic()
            for cv, _ in batch:
                self._sent_at.setdefault(cv, stamp)
            sent = batch[-1][0]
            self._emit(
                EventKind.UPLOAD_SENT,
                bytes=sum(len(b) for _, b in batch),
                changesets=len(batch),
                client_version=sent,
            )

    def _adapt_upload_cap(self, elapsed: float) -> None:
        """Size UPLOADs to the link, from how long the last acknowledged one took.

        While a large UPLOAD crosses a slow link, nothing comes back: the PING waits
        behind it, and the server can only acknowledge it once it has arrived. The
        acknowledgements are what show a busy connection alive, so the gap between
        two of them should be a small part of ``pong_timeout``: halve the cap when
        the link took over a quarter of it for the UPLOADs just acknowledged, double
        it when under a sixteenth. A single changeset larger than the cap still goes
        in an UPLOAD of its own.
        """
        budget = self._timeouts.pong_timeout
        if elapsed > budget / 4:
            self._upload_cap = max(self._upload_cap // 2, UPLOAD_CAP_MIN)
        elif elapsed < budget / 16:
            self._upload_cap = min(self._upload_cap * 2, self._app.config.upload_batch_bytes)

    def _handed_batch(self, sent: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """The changesets after ``sent`` that were handed over in memory, while they
        follow each other (the history has the rest); forgets those up to ``sent``."""
        unsent = self._unsent
        for old in [v for v in unsent if v <= sent]:
            self._unsent_bytes -= len(unsent.pop(old))
        out: list[tuple[int, bytes]] = []
        total = 0
        version = sent + 1
        while (body := unsent.get(version)) is not None:
            if out and total + len(body) > max_bytes:
                break
            out.append((version, body))
            total += len(body)
            version += 1
        return out

    async def _heartbeat(self, ws: ClientConnection, proto: ClientProtocol) -> None:
        t = self._timeouts
        nonce = 0
        while True:
            await asyncio.sleep(t.ping_interval)
            nonce += 1
            self._pong = asyncio.Event()
            self._ping_sent = time.monotonic()
            await ws.send(proto.ping(nonce))
            # Dead means silent: no PONG and nothing else from the server for
            # pong_timeout. On a slow uplink the PING queues behind our own UPLOADs
            # while the server keeps acknowledging them; that link is alive.
            while not self._pong.is_set():
                # The deadline moves with the last message received after the PING.
                since = max(self._ping_sent, self._last_received)
                remaining = since + t.pong_timeout - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no PONG within {t.pong_timeout} s: the connection is dead")
                try:
                    await asyncio.wait_for(self._pong.wait(), remaining)
                except TimeoutError:
                    pass

"""FaultProxy: a loopback TCP proxy that makes the network bad on purpose.

Clients connect to the proxy instead of the server (``rs.App(proxy.url)``); each
accepted connection gets its own connection to the target, and two pipes forward
the bytes, one per direction (``link.py``: latency, jitter, bandwidth, blackhole,
slicing, closing after N bytes). This module is the control surface: listening,
refusing while offline, changing conditions live, cutting connections, telling
watched sessions.

Like :class:`~realmsync_nb.SyncServer`, the proxy runs an asyncio loop on a daemon
thread, so it is driven from plain code or a notebook cell, and every control
method is safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from ..threads import BackgroundListener
from .conditions import Direction, NetworkConditions
from .link import Connection, Pacer, reset

__all__ = ["ConditionsWatcher", "FaultProxy", "ProxyStats"]

logger = logging.getLogger("realmsync_nb.faults")
R = TypeVar("R")

#: Default bytes a pipe queues before it stops reading (per direction, per connection).
DEFAULT_BUFFER_BYTES = 256 * 1024


class ConditionsWatcher(Protocol):
    """What :meth:`FaultProxy.watch` accepts: a :class:`~realmsync_nb.Session`."""

    def record_condition(self, message: str) -> None: ...


@dataclass(frozen=True)
class ProxyStats:
    """Counters since the proxy started (a snapshot; read ``proxy.stats`` again)."""

    accepted: int  # connections forwarded to the target
    refused: int  # connections reset at once: offline, or the target unreachable
    open: int  # connections open now
    cut: int  # connections reset by cut() or close_after_bytes
    bytes_up: int  # client → server bytes forwarded
    bytes_down: int  # server → client bytes forwarded
    writes_up: int  # write calls client → server (slice_writes makes more)
    writes_down: int
    buffered: int  # bytes held in the proxy's queues now, every connection and direction


def _parse_target(target: str | tuple[str, int]) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``ws://host:port``, ``host:port`` or ``(host, port)``."""
    if isinstance(target, tuple):
        host, port = target
        return "ws", host, int(port)
    if "://" not in target:
        target = "tcp://" + target
    parts = urlsplit(target)
    if parts.hostname is None or parts.port is None:
        raise ValueError(
            f"cannot tell the host and port of {target!r}; pass a URL such as "
            "server.url ('ws://127.0.0.1:9090'), 'host:port' or a (host, port) tuple"
        )
    scheme = "ws" if parts.scheme == "tcp" else parts.scheme
    return scheme, parts.hostname, parts.port


class FaultProxy(BackgroundListener):
    """A loopback TCP proxy between sync clients and a server, with network faults.

    Args:
        target: the server to forward to: ``server.url``, ``"host:port"`` or
            ``(host, port)``.
        host: the interface to listen on; loopback by default.
        port: 0 picks a free port (read it back from ``url``).
        conditions: the conditions to start with; a perfect network by default.
        seed: makes jitter draws replayable (see :func:`.jitter_delays`); None
            draws differently each run.
        buffer_bytes: bytes one direction of one connection queues before the
            proxy stops reading from the sender.

    Use ``rs.App(proxy.url)`` to send an app's traffic (auth and sync) through it;
    change the network live with :meth:`update`, :meth:`set_conditions` and
    :meth:`cut`; :meth:`watch` a session to see every change in its events.
    """

    what = "fault proxy"

    def __init__(
        self,
        target: str | tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        conditions: NetworkConditions | None = None,
        seed: int | str | None = None,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        if buffer_bytes < 1:
            raise ValueError(f"buffer_bytes must be positive, not {buffer_bytes}")
        super().__init__(host, port)
        self.scheme, self.target_host, self.target_port = _parse_target(target)
        self.seed = seed
        self.buffer_bytes = buffer_bytes
        self._conditions = conditions if conditions is not None else NetworkConditions()
        self._lock = threading.Lock()  # serialises changes of conditions
        self._subs_lock = threading.Lock()  # guards watchers and listeners
        self._watchers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._listeners: list[Callable[[NetworkConditions], None]] = []
        self._server: asyncio.Server | None = None
        self._changed: asyncio.Event | None = None
        self._pacers: dict[Direction, Pacer] = {"up": Pacer(), "down": Pacer()}
        self._conns: set[Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._numbers = 0
        self._accepted = self._refused = self._cut_count = 0
        self._bytes = {"up": 0, "down": 0}
        self._writes = {"up": 0, "down": 0}

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> asyncio.Server:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self._server

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._server = None

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return (
            f"<FaultProxy {where} → {self.target_host}:{self.target_port} "
            f"({self._conditions.describe()})>"
        )

    # -- control (any thread) ---------------------------------------------------------

    @property
    def conditions(self) -> NetworkConditions:
        """The conditions in force now."""
        return self._conditions

    def set_conditions(self, conditions: NetworkConditions) -> None:
        """Replace the conditions; they apply to open connections at once.

        Bytes already queued keep the release time they were given (they are "in
        flight"); everything else (blackhole, bandwidth, slicing, new chunks' latency)
        follows the new conditions from the next write on. Watched sessions get a
        CONDITIONS event saying what changed; listeners are called.
        """
        if not isinstance(conditions, NetworkConditions):
            raise TypeError(f"expected NetworkConditions, not {type(conditions).__name__}")
        with self._lock:
            old, self._conditions = self._conditions, conditions
        if conditions == old:
            return
        self._call_on_loop(self._wake_pipes)
        self._announce(conditions.diff(old))
        with self._subs_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(conditions)
            except Exception:
                logger.exception("fault proxy listener %r raised", listener)

    def update(self, **changes: Any) -> NetworkConditions:
        """Change some conditions, keep the rest; returns the new conditions.

        ``proxy.update(latency=0.2)`` (both directions), ``proxy.update(latency_up=0.2,
        bandwidth_down=10_000)``, ``proxy.update(blackhole=True)``. See
        :meth:`NetworkConditions.with_changes` for the names.
        """
        with self._lock:
            new = self._conditions.with_changes(**changes)
        self.set_conditions(new)
        return new

    def reset(self) -> NetworkConditions:
        """Back to a perfect network (open connections stay open)."""
        new = NetworkConditions()
        self.set_conditions(new)
        return new

    def cut(self) -> int:
        """Reset every open connection now; returns how many there were.

        New connections are accepted as before (set ``offline`` to refuse them).
        """

        def cut_all() -> int:
            conns = list(self._conns)
            for conn in conns:
                conn.abort()
            self._cut_count += len(conns)
            return len(conns)

        n = self._run_on_loop(cut_all) if self.running else 0
        self._announce(f"cut {n} connection{'s' if n != 1 else ''}")
        return n

    def watch(self, *sessions: ConditionsWatcher) -> None:
        """Record every later change of conditions in each session's events.

        Each change (and each :meth:`cut`) becomes a CONDITIONS
        :class:`~realmsync_nb.SyncEvent` whose message says what changed, so an event
        log and its plots show where the network got worse or better. If the
        conditions are not a perfect network when a session is first watched, the
        current ones are recorded at once. Sessions are held weakly.
        """
        for session in sessions:
            if not callable(getattr(session, "record_condition", None)):
                raise TypeError(f"cannot watch {session!r}: it has no record_condition()")
            with self._subs_lock:
                if session in self._watchers:
                    continue
                self._watchers.add(session)
            current = self._conditions
            if current != NetworkConditions():
                session.record_condition(current.describe())

    def unwatch(self, session: ConditionsWatcher) -> None:
        with self._subs_lock:
            self._watchers.discard(session)

    def add_listener(self, listener: Callable[[NetworkConditions], None]) -> Callable[[], None]:
        """Call ``listener(conditions)`` after every change; returns a function that removes it.

        The listener runs on the thread that made the change; exceptions are logged.
        """
        with self._subs_lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._subs_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    @property
    def stats(self) -> ProxyStats:
        """Counters since start, read consistently on the proxy's thread."""

        def read() -> ProxyStats:
            return ProxyStats(
                accepted=self._accepted,
                refused=self._refused,
                open=len(self._conns),
                cut=self._cut_count,
                bytes_up=self._bytes["up"],
                bytes_down=self._bytes["down"],
                writes_up=self._writes["up"],
                writes_down=self._writes["down"],
                buffered=sum(p.buffered for c in self._conns for p in c.pipes),
            )

        return self._run_on_loop(read) if self.running else read()

    # -- internals (proxy thread) -------------------------------------------------------

    def _announce(self, message: str) -> None:
        with self._subs_lock:
            sessions = list(self._watchers)
        for session in sessions:
            try:
                session.record_condition(message)
            except Exception:
                logger.exception("could not record a condition change on %r", session)

    def _call_on_loop(self, fn: Callable[[], None]) -> None:
        thread = self._thread
        if thread is None or not thread.alive:
            return
        try:
            thread.call(fn)
        except RuntimeError:  # closed meanwhile
            pass

    def _run_on_loop(self, fn: Callable[[], R]) -> R:
        thread = self._thread
        assert thread is not None
        return thread.run_sync(fn, timeout=10)

    def _wake_pipes(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()

    async def _passable(self) -> NetworkConditions:
        """The conditions, once no blackhole holds the bytes back."""
        while True:
            c = self._conditions
            if not c.blackhole:
                return c
            changed = self._changed
            assert changed is not None
            await changed.wait()

    def _count(self, direction: Direction, n: int) -> None:
        self._bytes[direction] += n
        self._writes[direction] += 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio's accept callback reads the outcome)
        finally:
            self._handlers.discard(task)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._conditions.offline:
            self._refused += 1
            reset(client_writer)
            return
        try:
            upstream = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError as exc:
            logger.info("fault proxy: cannot reach the target: %s", exc)
            self._refused += 1
            reset(client_writer)
            return
        number, self._numbers = self._numbers, self._numbers + 1
        self._accepted += 1
        conn = Connection(self, number, (client_reader, client_writer), upstream)
        self._conns.add(conn)
        try:
            await conn.run()
        except asyncio.CancelledError:
            conn.abort()  # the proxy is stopping
            raise
        finally:
            self._conns.discard(conn)

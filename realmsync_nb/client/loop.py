"""The sync thread, and the two ways results leave it: SyncFuture and Stream.

An :class:`App` owns one :class:`SyncThread`: a daemon thread running its own
asyncio loop. All network I/O, session state and callbacks live there. Callers
in any thread get a :class:`SyncFuture` (a ``concurrent.futures.Future`` that is
also awaitable from any running loop) or a :class:`Stream`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Generic, Protocol, TypeVar

from ..threads import LoopThread as SyncThread
from ..threads import SyncFuture

__all__ = ["Stream", "StreamSink", "Subscription", "SyncFuture", "SyncThread"]

T = TypeVar("T")
logger = logging.getLogger("realmsync_nb")


T_contra = TypeVar("T_contra", contravariant=True)


class StreamSink(Protocol[T_contra]):
    """What a stream's source pushes into, always on the sync thread."""

    def push(self, item: T_contra) -> None: ...
    def close(self) -> None: ...


Subscribe = Callable[["StreamSink[T]"], Callable[[], None]]


class Subscription(Generic[T]):
    """A live listener on a :class:`Stream`; ``cancel()`` stops delivery at once."""

    def __init__(
        self,
        thread: SyncThread,
        callback: Callable[[T], None],
        on_done: Callable[[], None] | None,
    ) -> None:
        self._thread = thread
        self._callback = callback
        self._on_done = on_done
        self._unsubscribe: Callable[[], None] | None = None
        self.cancelled = False
        self.closed = False

    def push(self, item: T) -> None:
        if self.cancelled or self.closed:
            return
        try:
            self._callback(item)
        except Exception:
            logger.exception("stream listener %r raised; it stays subscribed", self._callback)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._on_done is not None and not self.cancelled:
            try:
                self._on_done()
            except Exception:
                logger.exception("stream on_done callback raised")

    def cancel(self) -> None:
        """Stop receiving items; safe from any thread, idempotent."""
        if self.cancelled:
            return
        self.cancelled = True

        def detach() -> None:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

        if self._thread.alive:
            self._thread.call(detach)

    @property
    def active(self) -> bool:
        return not (self.cancelled or self.closed)


_CLOSED = object()


class Stream(Generic[T]):
    """A stream of values produced on the sync thread.

    Consume it three ways: ``async for x in stream``, a blocking ``for x in stream``,
    or ``sub = stream.listen(callback)`` and later ``sub.cancel()`` (the callback runs
    on the sync thread, so keep it short). Each consumer is an independent
    subscription; a stream that closes by itself ends every loop over it.
    """

    def __init__(self, thread: SyncThread, subscribe: Subscribe[T], name: str = "stream") -> None:
        self._thread = thread
        self._subscribe = subscribe
        self._name = name

    def __repr__(self) -> str:
        return f"<Stream {self._name}>"

    def listen(
        self, callback: Callable[[T], None], *, on_done: Callable[[], None] | None = None
    ) -> Subscription[T]:
        """Call ``callback(item)`` on the sync thread for each item until cancelled.

        Args:
            callback: receives each item.
            on_done: called once if the stream closes by itself.
        """
        sub: Subscription[T] = Subscription(self._thread, callback, on_done)

        def attach() -> None:
            if sub.cancelled:
                return
            unsubscribe = self._subscribe(sub)
            if sub.cancelled:
                unsubscribe()
            else:
                sub._unsubscribe = unsubscribe

        if not self._thread.alive:
            sub.close()
            return sub
        # Attach before returning, so nothing that happens after listen() returns is
        # missed and the initial value (progress streams) has been delivered.
        try:
            self._thread.run_sync(attach, timeout=30)
        except RuntimeError:  # the loop closed meanwhile
            sub.close()
        return sub

    def __iter__(self) -> Iterator[T]:
        return self._blocking_iter()

    def _blocking_iter(self) -> Generator[T, None, None]:
        q: queue.SimpleQueue[object] = queue.SimpleQueue()
        sub = self.listen(q.put, on_done=lambda: q.put(_CLOSED))
        try:
            while True:
                item = q.get()
                if item is _CLOSED:
                    return
                yield item  # type: ignore[misc]
        finally:
            sub.cancel()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._async_iter()

    async def _async_iter(self) -> AsyncIterator[T]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[object] = asyncio.Queue()

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the consumer's loop has closed
                sub.cancel()

        sub = self.listen(put, on_done=lambda: put(_CLOSED))
        try:
            while True:
                item = await q.get()
                if item is _CLOSED:
                    return
                yield item  # type: ignore[misc]
        finally:
            sub.cancel()

"""The sync thread, and the two ways results leave it: SyncFuture and Stream.

An :class:`App` owns one :class:`SyncThread`: a daemon thread running its own
asyncio loop. All network I/O, session state and callbacks live there. Callers
in any thread get a :class:`SyncFuture` (a ``concurrent.futures.Future`` that is
also awaitable from any running loop) or a :class:`Stream`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Stream", "StreamSink", "Subscription", "SyncFuture", "SyncThread"]

T = TypeVar("T")
logger = logging.getLogger("realmsync_nb")


class SyncFuture(concurrent.futures.Future[T]):
    """A future completed on the sync thread.

    ``fut.result(timeout=5)`` blocks in plain code; ``await fut`` works inside any
    running asyncio loop (a notebook cell, async code). ``fut.cancel()`` removes
    the waiter from the session, so nothing is left registered.
    """

    def __init__(self) -> None:
        super().__init__()
        self._on_cancel: Callable[[], None] | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()

    def cancel(self) -> bool:
        cancelled = super().cancel()
        hook, self._on_cancel = self._on_cancel, None
        if cancelled and hook is not None:
            hook()
        return cancelled

    # Completing an already-cancelled future raises in concurrent.futures; the
    # sync thread may race a caller's cancel(), so completion is best effort.
    def set_result_if_pending(self, value: T) -> None:
        if not self.done():
            try:
                self.set_result(value)
            except concurrent.futures.InvalidStateError:
                pass

    def set_exception_if_pending(self, exc: BaseException) -> None:
        if not self.done():
            try:
                self.set_exception(exc)
            except concurrent.futures.InvalidStateError:
                pass


class SyncThread:
    """A daemon thread running one asyncio event loop until :meth:`stop`."""

    def __init__(self, name: str = "realmsync-sync") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    @property
    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the sync thread (now, if already on it)."""
        if self.on_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def submit(self, coro: Coroutine[Any, Any, T]) -> SyncFuture[T]:
        """Run ``coro`` on the sync thread; its result completes the returned future."""
        fut: SyncFuture[T] = SyncFuture()

        def start() -> None:
            task = self.loop.create_task(coro)

            def cancel_task() -> None:
                self.loop.call_soon_threadsafe(task.cancel)

            fut._on_cancel = cancel_task

            def done(t: asyncio.Task[T]) -> None:
                if t.cancelled():
                    fut.cancel()
                elif (exc := t.exception()) is not None:
                    fut.set_exception_if_pending(exc)
                else:
                    fut.set_result_if_pending(t.result())

            task.add_done_callback(done)

        self.call(start)
        return fut

    def run_sync(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn`` on the sync thread and wait for its result (inline if on it)."""
        if self.on_thread:
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        if not self.on_thread:
            self._thread.join(timeout)


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

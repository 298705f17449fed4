"""A background thread with its own asyncio loop, and how work reaches it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Self, TypeVar

from .errors import RealmSyncError

__all__ = ["BackgroundListener", "LoopThread", "SyncFuture"]

T = TypeVar("T")


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


class LoopThread:
    """A daemon thread running one asyncio event loop until :meth:`stop`.

    The App's sync thread, and the threads an embedded server and a fault proxy
    run on.
    """

    def __init__(self, name: str = "realmsync-loop") -> None:
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


class BackgroundListener:
    """A network service listening on ``host:port`` from a :class:`LoopThread` of its own.

    Subclasses say how to open (``_open``: start listening, return an object with
    ``.sockets``) and how to close (``_close``); this class gives them ``start()``,
    ``stop()``, ``url``, ``running`` and the context manager, the same for the
    embedded sync server and the fault proxy.
    """

    what = "service"  # for messages: "the <what> could not start"
    scheme = "ws"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._thread: LoopThread | None = None
        self._bound_port: int | None = None

    async def _open(self) -> Any:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """``<scheme>://<host>:<port>``, with the port actually bound."""
        if self._bound_port is None:
            raise RealmSyncError(f"the {self.what} is not running; call start() first")
        return f"{self.scheme}://{self.host}:{self._bound_port}"

    @property
    def running(self) -> bool:
        return self._bound_port is not None

    def start(self) -> Self:
        """Start listening; returns once connections are accepted."""
        if self._thread is not None:
            return self
        thread = LoopThread(f"realmsync-{self.what.replace(' ', '-')}")
        try:
            listening = thread.submit(self._open()).result()
        except BaseException as exc:
            thread.stop()
            raise RealmSyncError(f"the {self.what} could not start: {exc}") from exc
        self._thread = thread
        self._bound_port = next(iter(listening.sockets)).getsockname()[1]
        return self

    def stop(self) -> None:
        """Close every connection and stop listening. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        try:
            thread.submit(self._close()).result(10)
        finally:
            thread.stop()
            self._thread = None
            self._bound_port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

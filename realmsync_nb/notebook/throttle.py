"""Throttle: at most one call per interval, leading edge now, the last value always delivered.

Widgets are updated from the sync thread as events arrive, which can be thousands a
second during a large upload. Each widget update is a comm message to the browser,
so every widget's updates go through a :class:`Throttle`: the first value after a
quiet period is applied at once, later ones within the interval are coalesced and
the newest is applied when the interval ends, so the final state is always shown
and never more than one interval late.

Those trailing edges run on one daemon thread shared by every throttle
(``realmsync-throttle``). A :class:`threading.Timer` per edge would start a thread
each time: dozens a second while a watched session syncs.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Throttle"]

T = TypeVar("T")
logger = logging.getLogger("realmsync_nb.notebook")


class _Call:
    """A call waiting on :data:`_TIMERS`; :meth:`cancel` makes it a no-op."""

    __slots__ = ("args", "cancelled", "fn")

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Timers:
    """Run calls after a delay, in order of when they are due, on one daemon thread
    (started when first needed, and again if it ever died). A call that raises is
    logged; a slow one delays those due after it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, _Call]] = []
        self._order = itertools.count()  # ties go in the order they were asked for
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> _Call:
        call = _Call(fn, args)
        with self._cond:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), call))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="realmsync-throttle", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return call

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._due:
                        self._cond.wait()
                        continue
                    wait = self._due[0][0] - time.monotonic()
                    if wait <= 0:
                        call = heapq.heappop(self._due)[2]
                        break
                    self._cond.wait(wait)
            if call.cancelled:
                continue
            try:
                call.fn(*call.args)
            except Exception:
                logger.exception("timed call %r raised", call.fn)


_TIMERS = _Timers()


class Throttle(Generic[T]):
    """Call ``fn(value)`` at most once per ``interval`` seconds; the last value wins.

    Thread-safe: values may come from any thread; ``fn`` runs on the caller's
    thread (leading edge) or on a timer thread (trailing edge), never two at once,
    and never with a value older than one it has already been given.

    Args:
        fn: applies a value (renders a widget). Exceptions are logged, not raised.
        interval: the minimum time between two calls, in seconds.
    """

    def __init__(self, fn: Callable[[T], None], interval: float = 0.1) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, not {interval}")
        self.fn = fn
        self.interval = interval
        self.calls = 0  # how many times fn has run
        self._lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self._last = -math.inf
        self._seq = 0
        self._emitted = 0
        self._pending: tuple[int, T] | None = None
        self._timer: _Call | None = None
        self._timer_id = 0  # tells a stale timer (flushed, then replaced) from the current one
        self._closed = False

    def __call__(self, value: T) -> None:
        with self._lock:
            if self._closed:
                return
            self._seq += 1
            seq = self._seq
            now = time.monotonic()
            if self._timer is None and now - self._last >= self.interval:
                self._last = now
            else:
                self._pending = (seq, value)
                if self._timer is None:
                    self._schedule(self._last + self.interval - now)
                return
        self._emit(seq, value)

    @property
    def pending(self) -> bool:
        """Whether a value is waiting for the trailing edge."""
        with self._lock:
            return self._pending is not None

    def flush(self) -> None:
        """Apply the waiting value now, if there is one."""
        with self._lock:
            pending, self._pending = self._pending, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if pending is None:
                return
            self._last = time.monotonic()
        self._emit(*pending)

    def cancel(self) -> None:
        """Drop the waiting value and ignore every later call."""
        with self._lock:
            self._closed = True
            self._pending = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _schedule(self, delay: float) -> None:
        self._timer_id += 1
        self._timer = _TIMERS.call_later(max(0.0, delay), self._fire, self._timer_id)

    def _fire(self, timer_id: int) -> None:
        with self._lock:
            if self._timer is None or timer_id != self._timer_id or self._closed:
                return  # flushed, replaced or cancelled meanwhile
            self._timer = None
            pending, self._pending = self._pending, None
            if pending is None:
                return
            self._last = time.monotonic()
        self._emit(*pending)

    def _emit(self, seq: int, value: T) -> None:
        with self._emit_lock:
            if seq <= self._emitted:  # a newer value was applied meanwhile
                return
            self._emitted = seq
            self.calls += 1
            try:
                self.fn(value)
            except Exception:
                logger.exception("throttled update %r raised", self.fn)

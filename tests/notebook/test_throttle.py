from __future__ import annotations

import threading
import time

import pytest

from realmsync_nb.notebook import Throttle
from tests.helpers import T, wait_until


def test_leading_edge_is_immediate_and_trailing_delivers_the_last_value() -> None:
    seen: list[int] = []
    throttle: Throttle[int] = Throttle(seen.append, interval=0.2)
    throttle(1)
    assert seen == [1]  # leading edge, at once
    for v in range(2, 50):
        throttle(v)
    assert seen == [1] and throttle.pending
    wait_until(lambda: seen == [1, 49], what="the trailing update")
    assert not throttle.pending
    assert throttle.calls == 2


def test_rate_stays_within_the_bound_under_a_flood() -> None:
    seen: list[int] = []
    throttle: Throttle[int] = Throttle(seen.append, interval=0.05)
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 0.5:
        i += 1
        throttle(i)
    elapsed = time.monotonic() - start
    wait_until(lambda: not throttle.pending, what="the trailing update")
    assert seen[-1] == i
    assert len(seen) <= elapsed / 0.05 + 2
    assert seen == sorted(seen)  # never an older value after a newer one


def test_values_from_many_threads_end_with_the_newest() -> None:
    seen: list[tuple[int, int]] = []
    throttle: Throttle[tuple[int, int]] = Throttle(seen.append, interval=0.01)
    barrier = threading.Barrier(4)

    def feed(n: int) -> None:
        barrier.wait()
        for i in range(500):
            throttle((n, i))

    threads = [threading.Thread(target=feed, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: not throttle.pending, what="the trailing update")
    # The very last call was some thread's last value; it is what stays shown.
    assert seen[-1][1] == 499
    assert throttle.calls == len(seen)


def test_flush_applies_now_and_cancel_drops() -> None:
    seen: list[str] = []
    throttle: Throttle[str] = Throttle(seen.append, interval=10)
    throttle("a")
    throttle("b")
    throttle("c")
    throttle.flush()
    assert seen == ["a", "c"]
    throttle.flush()  # nothing waiting
    throttle("d")
    throttle.cancel()
    throttle("e")
    time.sleep(T(0.05))
    assert seen == ["a", "c"]


def test_zero_interval_passes_everything() -> None:
    seen: list[int] = []
    throttle: Throttle[int] = Throttle(seen.append, interval=0)
    for i in range(5):
        throttle(i)
    assert seen == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        Throttle(seen.append, interval=-1)


def test_a_failing_update_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_value: int) -> None:
        raise RuntimeError("render failed")

    throttle: Throttle[int] = Throttle(broken, interval=0.01)
    throttle(1)
    throttle(2)
    wait_until(lambda: throttle.calls == 2, what="the trailing call")
    assert "render failed" in caplog.text


def test_trailing_edges_of_many_throttles_share_one_thread() -> None:
    # A watched session renders several widgets' trailing edges many times a second;
    # each must not start a thread of its own.
    seen: dict[int, list[int]] = {k: [] for k in range(20)}
    throttles = [Throttle(seen[k].append, interval=0.02) for k in range(20)]
    names: set[int] = set()
    for round_ in range(5):
        for k, throttle in enumerate(throttles):
            throttle(round_ * 10)  # the leading edge, or pending
            throttle(round_ * 10 + k + 1)  # pending: goes out on the trailing edge
        names |= {t.ident or 0 for t in threading.enumerate() if t.name == "realmsync-throttle"}
        wait_until(lambda: not any(t.pending for t in throttles), what="the trailing edges")
    assert len(names) == 1
    for k in range(20):
        assert seen[k][-1] == 40 + k + 1  # every throttle ended on its newest value


def test_timed_calls_run_in_order_of_when_they_are_due() -> None:
    from realmsync_nb.notebook.throttle import _TIMERS

    order: list[str] = []
    done = threading.Event()
    _TIMERS.call_later(T(0.3), lambda: (order.append("late"), done.set()))
    _TIMERS.call_later(T(0.05), order.append, "early")
    cancelled = _TIMERS.call_later(T(0.1), order.append, "cancelled")
    cancelled.cancel()
    _TIMERS.call_later(T(0.1), lambda: 1 / 0)  # logged; the thread goes on
    assert done.wait(T(5))
    assert order == ["early", "late"]

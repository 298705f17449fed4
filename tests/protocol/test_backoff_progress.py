"""Reconnect backoff and progress arithmetic (protocol/backoff.py, protocol/progress.py)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from realmsync_nb.protocol.backoff import Backoff
from realmsync_nb.protocol.progress import Counters, IndefiniteView, OutstandingView

# -- backoff ----------------------------------------------------------------------


def test_backoff_doubles_from_one_second_up_to_the_cap_with_at_most_a_quarter_jitter() -> None:
    b = Backoff(initial=1.0, maximum=60.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    bases = [min(2.0**i, 60.0) for i in range(10)]
    for d, base in zip(delays, bases, strict=True):
        assert 0.75 * base <= d <= base
    assert max(delays) <= 60.0


def test_backoff_reset_starts_again_at_the_initial_delay() -> None:
    b = Backoff(rng=random.Random(2))
    for _ in range(6):
        b.next_delay()
    b.reset()
    assert 0.75 <= b.next_delay() <= 1.0


def test_server_hint_replaces_the_next_delay_only() -> None:
    b = Backoff(rng=random.Random(3))
    b.next_delay()
    b.hint(2.5)
    assert b.next_delay() == 2.5
    assert 0.75 * 4 <= b.next_delay() <= 4  # the sequence goes on where it was


def test_same_seed_same_delays() -> None:
    a = [Backoff(rng=random.Random(9)).next_delay() for _ in range(3)]
    b = [Backoff(rng=random.Random(9)).next_delay() for _ in range(3)]
    assert a == b


# -- progress ---------------------------------------------------------------------

steps = st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), max_size=30)


def walk(start: Counters, moves: list[tuple[int, int]]) -> list[Counters]:
    """Counters only grow; transferred never passes transferable."""
    out, c = [], start
    for more_work, done in moves:
        total = c.transferable + more_work
        c = Counters(min(total, c.transferred + done), total)
        out.append(c)
    return out


@given(moves=steps, t0=st.integers(0, 1000), extra=st.integers(0, 1000))
def test_outstanding_view_never_decreases_and_finishes_at_its_captured_target(
    moves: list[tuple[int, int]], t0: int, extra: int
) -> None:
    start = Counters(t0, t0 + extra)
    view = OutstandingView(start)
    _, total0, est0 = view.view(start)
    assert total0 == extra
    last = est0
    for c in walk(start, moves):
        done, total, est = view.view(c)
        assert total == extra  # the target is fixed at registration
        assert est >= last
        assert 0.0 <= est <= 1.0 and 0 <= done <= total
        last = est
        if c.transferred >= start.transferable:
            assert view.finished and est == 1.0


def test_outstanding_view_with_nothing_outstanding_is_complete_at_once() -> None:
    view = OutstandingView(Counters(40, 40))
    assert view.view(Counters(40, 40)) == (0, 0, 1.0)
    assert view.finished


@given(moves=steps)
def test_indefinite_view_reports_the_current_batch(moves: list[tuple[int, int]]) -> None:
    start = Counters(0, 0)
    view = IndefiniteView(start)
    prev = start
    for c in walk(start, moves):
        done, total, est = view.view(c)
        assert 0 <= done <= total and 0.0 <= est <= 1.0
        assert total - done == c.transferable - c.transferred  # what is left is exact
        if prev.caught_up and c.transferable > prev.transferable:
            assert total == c.transferable - prev.transferred  # a new batch started
        prev = c


def test_indefinite_view_keeps_a_finished_batch_until_new_work() -> None:
    view = IndefiniteView(Counters(0, 0))
    assert view.view(Counters(0, 100)) == (0, 100, 0.0)
    assert view.view(Counters(100, 100)) == (100, 100, 1.0)
    assert view.view(Counters(100, 100)) == (100, 100, 1.0)
    assert view.view(Counters(100, 130)) == (0, 30, 0.0)
    # One message both bringing and finishing new work still starts a new batch.
    assert view.view(Counters(130, 130)) == (30, 30, 1.0)
    assert view.view(Counters(150, 150)) == (20, 20, 1.0)

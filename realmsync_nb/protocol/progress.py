"""Progress arithmetic for one direction of a session (pure).

Counters are cumulative bytes of encoded changesets since the realm file was
created: for uploads ``transferable`` is every byte committed locally and
``transferred`` every byte the server acknowledged; for downloads
``transferred`` is every byte integrated and ``transferable`` adds the exact
remainder the server reported.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters", "IndefiniteView", "OutstandingView"]


@dataclass(frozen=True, slots=True)
class Counters:
    transferred: int
    transferable: int

    @property
    def caught_up(self) -> bool:
        return self.transferred >= self.transferable


def _estimate(done: int, total: int) -> float:
    if total <= 0:
        return 1.0
    return min(1.0, max(0.0, done / total))


class IndefiniteView:
    """REPORT_INDEFINITELY: the work since the direction was last caught up.

    The baseline moves only when new work arrives after a moment of being caught
    up, so the report at completion still shows how much was transferred. When
    first created (a realm opening) the baseline is what was already transferred.
    """

    def __init__(self, c: Counters) -> None:
        self.baseline = c.transferred
        self._prev = c

    def view(self, c: Counters) -> tuple[int, int, float]:
        if self._prev.caught_up and c.transferable > self._prev.transferable:
            # New work after a moment of being caught up: a new batch starts. (It may
            # already be done by now, when one message brought and finished it.)
            self.baseline = self._prev.transferred
        self._prev = c
        done = c.transferred - self.baseline
        total = max(c.transferable - self.baseline, done)
        return done, total, _estimate(done, total)


class OutstandingView:
    """FOR_CURRENTLY_OUTSTANDING_WORK: the work outstanding at registration.

    The target is fixed at registration; estimates never decrease; ``finished``
    turns true once the captured work is done.
    """

    def __init__(self, c: Counters) -> None:
        self.start = min(c.transferred, c.transferable)
        self.target = c.transferable
        self.best = 0.0

    def view(self, c: Counters) -> tuple[int, int, float]:
        done = min(c.transferred, self.target) - self.start
        total = self.target - self.start
        est = _estimate(done, total)
        self.best = max(self.best, est)
        return max(done, 0), total, self.best

    @property
    def finished(self) -> bool:
        return self.best >= 1.0

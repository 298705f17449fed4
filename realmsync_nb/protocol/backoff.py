"""Reconnect delays: exponential backoff with jitter, and server hints.

Pure arithmetic; the connection loop asks for the next delay and sleeps.
Defaults follow Realm (1 s, doubling), with a lower cap (60 s rather than 5 min)
because a notebook user watching a session wants to see it come back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delay before reconnect attempt ``n``: ``initial * multiplier**n``, capped.

    Jitter subtracts a random fraction (up to ``jitter``) of the delay, so many
    clients that lost the server together do not return together. ``reset()``
    after a successful connect or an explicit resume; ``hint()`` makes the next
    delay the server's requested one.
    """

    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.25
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0
    _hint: float | None = None

    def next_delay(self) -> float:
        if self._hint is not None:
            delay, self._hint = self._hint, None
            self.attempts += 1
            return delay
        base = min(self.initial * self.multiplier**self.attempts, self.maximum)
        self.attempts += 1
        return base - self.rng.uniform(0.0, base * self.jitter)

    def hint(self, delay: float) -> None:
        self._hint = max(0.0, delay)

    def reset(self) -> None:
        self.attempts = 0
        self._hint = None

"""NetworkConditions: what the fault proxy does to the bytes it forwards.

Pure values and arithmetic (no I/O), so the proxy, the notebook widget and the
tests share one definition of "200 ms of latency" or "a 10 kB/s link".

Directions are named from the client's side: ``up`` is client → server (uploads,
BIND, PING), ``down`` is server → client (downloads, acknowledgements, PONG).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

__all__ = ["Direction", "NetworkConditions", "jitter_delays"]

Direction = Literal["up", "down"]

#: Shorthands accepted by :meth:`NetworkConditions.with_changes` that set both directions.
BOTH_DIRECTIONS = ("latency", "jitter", "bandwidth")


@dataclass(frozen=True)
class NetworkConditions:
    """The state of the simulated network, applied live by :class:`~.FaultProxy`.

    The default value is a perfect loopback: nothing delayed, capped or dropped.

    Args:
        latency_up: seconds every client → server byte is held before it is forwarded.
        latency_down: the same for server → client.
        jitter_up: a random extra delay, uniform in ``[0, jitter_up]`` seconds, drawn
            per chunk read. Bytes never overtake each other, so a chunk whose draw is
            smaller than its predecessor's waits for it (TCP cannot reorder either).
        jitter_down: the same for server → client.
        bandwidth_up: the most bytes per second forwarded client → server, shared by
            every connection through the proxy (one link); None is unlimited.
        bandwidth_down: the same for server → client.
        blackhole: keep connections open but forward nothing either way (a cable
            pulled between two routers). Bytes are held, not dropped, and flow again
            when the blackhole lifts; only a heartbeat timeout can notice one.
        offline: refuse new connections (accepted, then reset at once). Connections
            already open are left alone; ``FaultProxy.cut()`` ends them.
        slice_writes: forward in writes of at most this many bytes, so the receiver
            sees messages split at arbitrary points; None forwards as read.
        close_after_bytes: reset each connection once it has forwarded this many bytes
            (both directions together, counted from the connection's start); None
            never does. Use it to break a connection in the middle of a message.
    """

    latency_up: float = 0.0
    latency_down: float = 0.0
    jitter_up: float = 0.0
    jitter_down: float = 0.0
    bandwidth_up: float | None = None
    bandwidth_down: float | None = None
    blackhole: bool = False
    offline: bool = False
    slice_writes: int | None = None
    close_after_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency_up", "latency_down", "jitter_up", "jitter_down"):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0 seconds, not {value!r}")
        for name in ("bandwidth_up", "bandwidth_down"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(
                    f"{name} must be > 0 bytes/s, or None for unlimited, not {value!r}"
                )
        for name in ("slice_writes", "close_after_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, or None for off, not {value!r}")

    def latency(self, direction: Direction) -> float:
        return self.latency_up if direction == "up" else self.latency_down

    def jitter(self, direction: Direction) -> float:
        return self.jitter_up if direction == "up" else self.jitter_down

    def bandwidth(self, direction: Direction) -> float | None:
        return self.bandwidth_up if direction == "up" else self.bandwidth_down

    def with_changes(self, **changes: Any) -> NetworkConditions:
        """A copy with ``changes`` applied.

        Field names set one field; ``latency=``, ``jitter=`` and ``bandwidth=`` set
        both directions at once (``latency=0.1`` is 100 ms each way).

        Raises:
            TypeError: for a name that is neither a field nor a shorthand.
            ValueError: for a value out of range.
        """
        known = {f.name for f in fields(self)}
        expanded: dict[str, Any] = {}
        for name, value in changes.items():
            if name in BOTH_DIRECTIONS:
                expanded[f"{name}_up"] = value
                expanded[f"{name}_down"] = value
            elif name in known:
                expanded[name] = value
            else:
                raise TypeError(
                    f"unknown network condition {name!r}; use one of "
                    f"{', '.join(sorted(known | set(BOTH_DIRECTIONS)))}"
                )
        return replace(self, **expanded)

    def describe(self) -> str:
        """Everything that differs from a perfect network, in one line."""
        parts = [
            f"{_LABELS[f.name]} {_format(f.name, getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        ]
        return "; ".join(parts) if parts else "normal"

    def diff(self, old: NetworkConditions) -> str:
        """What changed from ``old`` to this, in one line ("latency up 0 ms → 200 ms")."""
        parts = [
            f"{_LABELS[f.name]} {_format(f.name, getattr(old, f.name))} → "
            f"{_format(f.name, getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(old, f.name)
        ]
        return "; ".join(parts) if parts else "unchanged"


_LABELS = {
    "latency_up": "latency up",
    "latency_down": "latency down",
    "jitter_up": "jitter up",
    "jitter_down": "jitter down",
    "bandwidth_up": "bandwidth up",
    "bandwidth_down": "bandwidth down",
    "blackhole": "blackhole",
    "offline": "offline",
    "slice_writes": "slice writes",
    "close_after_bytes": "close after",
}


def _format(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if name.startswith(("latency", "jitter")):
        return f"{value * 1000:g} ms"
    if value is None:
        return "unlimited" if name.startswith("bandwidth") else "off"
    if name.startswith("bandwidth"):
        return f"{value / 1000:g} kB/s"
    return f"{value} B"


def jitter_delays(seed: int | str | None, connection: int, direction: Direction) -> Iterator[float]:
    """The jitter fractions (each in [0, 1)) of one connection's direction, in chunk order.

    The proxy scales the n-th draw by the current jitter to get the n-th chunk's extra
    delay. Each (seed, connection number, direction) has its own generator, so what one
    connection draws does not depend on how the others interleave: a run with the same
    seed and the same traffic gets the same delays. A None seed is random each time.
    """
    rng = random.Random(None if seed is None else f"{seed}/{connection}/{direction}")
    while True:
        yield rng.random()

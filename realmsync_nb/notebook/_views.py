"""What a SessionWidget shows, as plain data and HTML strings, with no widgets involved.

The widget keeps one small model per panel, updates it on the sync thread for every
event (cheap), and hands an immutable view of it to a throttled render function.
Keeping the arithmetic and the markup here lets them be tested without ipywidgets.
"""

from __future__ import annotations

import html
from collections import deque
from dataclasses import dataclass

from realmsync_nb.notebook._format import format_bytes, format_rate, format_time
from realmsync_nb.observe import SyncEvent

__all__ = ["HeaderView", "ProgressModel", "ProgressView", "badge_html", "tail_html", "tail_line"]

CONNECTION_COLORS = {"connected": "#2ca02c", "connecting": "#e69500", "disconnected": "#888888"}


@dataclass(frozen=True, slots=True)
class ProgressView:
    """One direction's progress as the bar and its label show it."""

    direction: str
    transferred: int | None = None
    transferable: int | None = None
    estimate: float = 0.0
    rate: float | None = None  # bytes/s over the last second, None when idle or unknown

    @property
    def label(self) -> str:
        if self.transferred is None:
            return f"{self.direction}: no progress reported yet"
        parts = [
            f"{self.direction} {self.estimate * 100:.0f}%",
            f"{format_bytes(self.transferred)} / {format_bytes(self.transferable)}",
            format_rate(self.rate) if self.rate is not None else "idle",
        ]
        return " · ".join(parts)


class ProgressModel:
    """Tracks one direction's latest PROGRESS event and a rate over a sliding window.

    The rate is transferred bytes over the last ``window`` seconds of events; it
    restarts when ``transferred`` goes down (a new batch of work came into view)
    and reads as idle once the transfer is complete.
    """

    def __init__(self, direction: str, window: float = 1.0) -> None:
        self.direction = direction
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self.view = ProgressView(direction)

    def update(self, event: SyncEvent) -> ProgressView:
        transferred = event.transferred or 0
        transferable = event.transferable or 0
        t = event.time.timestamp()
        if self._samples and transferred < self._samples[-1][1]:
            self._samples.clear()
        self._samples.append((t, transferred))
        while len(self._samples) > 2 and t - self._samples[1][0] >= self.window:
            self._samples.popleft()
        estimate = event.estimate
        if estimate is None:
            estimate = transferred / transferable if transferable else 1.0
        rate: float | None = None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if estimate < 1.0 and t1 > t0:
            rate = (b1 - b0) / (t1 - t0)
        self.view = ProgressView(
            self.direction, transferred, transferable, min(max(estimate, 0.0), 1.0), rate
        )
        return self.view


@dataclass(frozen=True, slots=True)
class HeaderView:
    """The session's state, connection and latest problem, for the toggle and badge."""

    name: str
    state: str
    connection: str
    problem: str | None = None  # the last error, or a scheduled reconnect

    @property
    def paused(self) -> bool:
        return self.state == "paused"


def badge_html(view: HeaderView) -> str:
    color = CONNECTION_COLORS.get(view.connection, "#9467bd")
    badge = (
        f"<span style='background:{color};color:white;border-radius:0.6em;"
        f"padding:0.1em 0.6em;font-weight:bold'>{html.escape(view.connection)}</span>"
    )
    text = f"{badge} <b>{html.escape(view.name)}</b> · {html.escape(view.state)}"
    if view.problem:
        text += f" <span style='color:#c62828'>· {html.escape(view.problem)}</span>"
    return text


def tail_line(event: SyncEvent) -> str:
    return f"{format_time(event.time)}  {event.describe()}"


def tail_html(lines: tuple[str, ...], height_em: float = 12.0) -> str:
    """The recent-events panel, newest first, so the latest is always in view."""
    body = "\n".join(html.escape(line) for line in reversed(lines)) or "(no events yet)"
    return (
        f"<pre style='max-height:{height_em}em;overflow-y:auto;margin:0;"
        f"font-size:85%;line-height:1.3'>{body}</pre>"
    )

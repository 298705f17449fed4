"""NetworkConditionsWidget: sliders and toggles that steer a fault proxy live.

The widget is a thin front end over :class:`~realmsync_nb.faults.FaultProxy`: every
control writes the proxy's conditions (``proxy.set_conditions``), and the proxy's
listener moves the controls when the conditions change from code, so the panel and
``proxy.update(...)`` in a later cell never disagree. Watched sessions record each
change as a CONDITIONS event either way.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as widgets

from realmsync_nb.faults import FaultProxy, NetworkConditions
from realmsync_nb.faults.conditions import Direction
from realmsync_nb.notebook.widgets import _bundle, _close_tree

__all__ = ["BANDWIDTH_STEPS", "NetworkConditionsWidget"]

#: The bandwidth slider's stops, in bytes per second (0: unlimited). A cap set
#: from code that is not one of them is added as a stop of its own.
BANDWIDTH_STEPS: tuple[float, ...] = (
    0,
    10_000_000,
    1_000_000,
    200_000,
    100_000,
    50_000,
    20_000,
    10_000,
    5_000,
    1_000,
)
_DIRECTIONS: tuple[Direction, ...] = ("up", "down")
_ARROWS = {"up": "↑", "down": "↓"}


def _rate_label(rate: float) -> str:
    if not rate:
        return "unlimited"
    return f"{rate / 1e6:g} MB/s" if rate >= 1e6 else f"{rate / 1000:g} kB/s"


def _bandwidth_options(extra: float = 0) -> list[tuple[str, float]]:
    """The slider's (label, bytes/s) stops: unlimited (0) first, then slower and slower.

    (A selection slider cannot hold None, so 0 stands for "no cap" here.)
    """
    steps = {*BANDWIDTH_STEPS, extra} - {0}
    return [(_rate_label(0), 0)] + [(_rate_label(r), r) for r in sorted(steps, reverse=True)]


class NetworkConditionsWidget:
    """A panel that steers a :class:`~realmsync_nb.faults.FaultProxy`.

    Args:
        proxy: the proxy to steer (it need not be started yet).
        max_latency: the latency and jitter sliders' range, in seconds.
        same_both_ways: start with the "same both ways" box ticked, so moving an
            up slider moves its down twin (and the reverse).

    Controls, per direction (↑ client → server, ↓ server → client): latency and
    jitter in milliseconds, and a bandwidth cap. Then: *blackhole* (connections stay
    open, nothing passes; only heartbeats notice), *offline* (refuse new connections
    and cut the open ones, like a dropped network), and *cut connections* (reset the
    open ones once; the sessions reconnect).
    """

    def __init__(
        self, proxy: FaultProxy, *, max_latency: float = 2.0, same_both_ways: bool = True
    ) -> None:
        self.proxy = proxy
        self.closed = False
        # Set while the controls are moved to match the proxy, so their observers
        # can tell that move from a user's (which must write the proxy).
        self._syncing = threading.local()
        self._lock = threading.Lock()
        max_ms = int(max_latency * 1000)
        self.latency = {d: _ms_slider(f"latency {_ARROWS[d]} ms", max_ms) for d in _DIRECTIONS}
        self.jitter = {d: _ms_slider(f"jitter {_ARROWS[d]} ms", max_ms) for d in _DIRECTIONS}
        self.bandwidth = {
            d: widgets.SelectionSlider(
                description=f"bandwidth {_ARROWS[d]}",
                options=_bandwidth_options(),
                value=0,
                continuous_update=False,
                style={"description_width": "initial"},
            )
            for d in _DIRECTIONS
        }
        self.same_both_ways = widgets.Checkbox(
            value=same_both_ways, description="same both ways", indent=False
        )
        self.blackhole = widgets.ToggleButton(
            description="blackhole",
            icon="ban",
            tooltip="Keep connections open but pass nothing: only heartbeats can notice",
        )
        self.offline = widgets.ToggleButton(
            description="offline",
            icon="plug",
            tooltip="Refuse new connections and cut the open ones",
        )
        self.cut_button = widgets.Button(
            description="cut connections",
            icon="scissors",
            tooltip="Reset every open connection now; sessions reconnect",
        )
        self.status = widgets.HTML()
        self.widget = widgets.VBox(
            [
                widgets.HTML("<b>Network conditions</b> (↑ client → server, ↓ server → client)"),
                widgets.HBox([self.latency["up"], self.latency["down"]]),
                widgets.HBox([self.jitter["up"], self.jitter["down"]]),
                widgets.HBox([self.bandwidth["up"], self.bandwidth["down"]]),
                widgets.HBox([self.same_both_ways, self.blackhole, self.offline, self.cut_button]),
                self.status,
            ],
            layout=widgets.Layout(border="1px solid #ddd", padding="6px"),
        )
        for group in (self.latency, self.jitter, self.bandwidth):
            for d, control in group.items():
                control.observe(lambda change, g=group, d=d: self._moved(g, d), names="value")
        self.blackhole.observe(lambda _change: self._apply(), names="value")
        self.offline.observe(self._offline_toggled, names="value")
        self.cut_button.on_click(lambda _button: self._cut())
        self._show(proxy.conditions)
        self._remove_listener = proxy.add_listener(self._show)

    # -- from the controls to the proxy ----------------------------------------------------

    def _moved(self, group: dict[Direction, Any], direction: Direction) -> None:
        if getattr(self._syncing, "on", False):
            return
        if self.same_both_ways.value:
            other: Direction = "down" if direction == "up" else "up"
            value = group[direction].value
            self._syncing.on = True
            try:
                if group is self.bandwidth:
                    self._ensure_option(self.bandwidth[other], value)
                group[other].value = value
            finally:
                self._syncing.on = False
        self._apply()

    def _from_controls(self) -> NetworkConditions:
        return self.proxy.conditions.with_changes(
            latency_up=self.latency["up"].value / 1000,
            latency_down=self.latency["down"].value / 1000,
            jitter_up=self.jitter["up"].value / 1000,
            jitter_down=self.jitter["down"].value / 1000,
            bandwidth_up=self.bandwidth["up"].value or None,
            bandwidth_down=self.bandwidth["down"].value or None,
            blackhole=self.blackhole.value,
            offline=self.offline.value,
        )

    def _apply(self) -> None:
        if getattr(self._syncing, "on", False) or self.closed:
            return
        self.proxy.set_conditions(self._from_controls())

    def _offline_toggled(self, change: dict[str, Any]) -> None:
        if getattr(self._syncing, "on", False) or self.closed:
            return
        self._apply()
        if change["new"]:
            self._cut()  # a dropped network ends the open connections too

    def _cut(self) -> None:
        if self.closed:
            return
        n = self.proxy.cut()
        self._show(self.proxy.conditions, note=f"cut {n} connection{'s' if n != 1 else ''}")

    # -- from the proxy to the controls ---------------------------------------------------

    @staticmethod
    def _ensure_option(slider: Any, rate: float) -> None:
        if rate not in [value for _, value in slider.options]:
            slider.options = _bandwidth_options(rate)

    def _show(self, conditions: NetworkConditions, note: str | None = None) -> None:
        """Move the controls to ``conditions`` without writing them back to the proxy."""
        with self._lock:
            if self.closed:
                return
            self._syncing.on = True
            try:
                for d in _DIRECTIONS:
                    self.latency[d].value = round(conditions.latency(d) * 1000)
                    self.jitter[d].value = round(conditions.jitter(d) * 1000)
                    rate = conditions.bandwidth(d) or 0
                    self._ensure_option(self.bandwidth[d], rate)
                    self.bandwidth[d].value = rate
                self.blackhole.value = conditions.blackhole
                self.offline.value = conditions.offline
            finally:
                self._syncing.on = False
            text = html.escape(conditions.describe())
            extra = f" · {html.escape(note)}" if note else ""
            self.status.value = f"<code>{text}</code>{extra}"

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop following the proxy and close every widget (the proxy keeps running)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self._remove_listener()
        _close_tree(self.widget)

    def __enter__(self) -> NetworkConditionsWidget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def summary(self) -> str:
        return f"Network conditions: {self.proxy.conditions.describe()}"

    def __repr__(self) -> str:
        return f"<NetworkConditionsWidget {self.proxy.conditions.describe()}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return _bundle(self.widget, self.summary(), kwargs)


def _ms_slider(description: str, max_ms: int) -> Any:
    """A slider of milliseconds, applied when released (not on every pixel)."""
    return widgets.IntSlider(
        description=description,
        min=0,
        max=max_ms,
        step=10,
        continuous_update=False,
        style={"description_width": "initial"},
    )

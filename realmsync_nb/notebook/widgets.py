"""Live ipywidgets over sync sessions: SessionWidget and Dashboard.

A :class:`SessionWidget` listens to ``session.events`` and nothing else of the
session's insides. Updates are made on the sync thread as events arrive (so the
widgets stay live while a notebook cell blocks), each panel through its own
:class:`~realmsync_nb.notebook.throttle.Throttle`: at most ``max_rate`` comm
messages a second per widget, and the latest state always shown. The event tail is
one HTML widget whose value is re-rendered, bounded to ``tail`` lines: unlike
``Output.append_stdout``, which re-sends the whole log with every append, its
traffic stays constant however long the session runs.

In a front end without widgets (a terminal), displaying a SessionWidget or a
Dashboard prints a text summary instead.
"""

from __future__ import annotations

import html
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets

from realmsync_nb.client.loop import Subscription
from realmsync_nb.client.types import ProgressDirection, ProgressMode, SyncProgress
from realmsync_nb.notebook._format import format_duration
from realmsync_nb.notebook._session import SessionLike
from realmsync_nb.notebook._views import (
    HeaderView,
    ProgressModel,
    ProgressView,
    badge_html,
    tail_html,
    tail_line,
)
from realmsync_nb.notebook.throttle import Throttle
from realmsync_nb.observe import EventKind, SyncEvent, now

__all__ = ["Dashboard", "SessionWidget", "session_mimebundle", "session_summary", "widget_for"]

#: Kinds left out of the event tail by default: the progress bars already show them.
DEFAULT_TAIL_EXCLUDE = frozenset({EventKind.PROGRESS})


def session_summary(session: SessionLike) -> str:
    """One line about a session from its public members, for text-only front ends."""
    return f"Session {session.name}: {session.state.value}, {session.connection_state.value}"


class SessionWidget:
    """A live panel for one session: pause toggle, badge, progress bars, waits, event tail.

    Args:
        session: the session to watch and steer (``realm.sync_session``).
        tail: how many recent events the tail keeps.
        max_rate: the most updates per second sent for each widget.
        tail_exclude: event kinds left out of the tail.

    The toggle is pressed while the session is paused: clicking it calls
    ``session.pause()`` or ``session.resume()``, and a pause or resume made from
    code (seen as a STATE event) moves it without calling either again.
    """

    def __init__(
        self,
        session: SessionLike,
        *,
        tail: int = 20,
        max_rate: float = 10.0,
        tail_exclude: Iterable[EventKind] = DEFAULT_TAIL_EXCLUDE,
    ) -> None:
        self.session = session
        self.closed = False
        interval = 1.0 / max_rate if max_rate > 0 else 0.0
        self._lock = threading.Lock()
        # Set while a render moves the toggle, in the rendering thread only, so the
        # toggle's observer can tell that move from a click (which runs elsewhere).
        self._rendering = threading.local()
        self._synced_with_events = False
        self._header = HeaderView(session.name, session.state.value, session.connection_state.value)
        self._progress = {d: ProgressModel(d) for d in ("upload", "download")}
        # The newest events for the tail panel; formatted only when the panel is
        # rendered (at most ``max_rate`` times a second), not once per event.
        self._tail: deque[SyncEvent] = deque(maxlen=tail)
        self._tail_exclude = frozenset(tail_exclude)
        self._waits: set[Future[None]] = set()

        self.toggle = widgets.ToggleButton(tooltip="Pause or resume this session's sync")
        self.badge = widgets.HTML()
        self.bars = {
            d: widgets.FloatProgress(
                value=0.0, min=0.0, max=1.0, description=d, layout=widgets.Layout(width="auto")
            )
            for d in ("upload", "download")
        }
        self.labels = {d: widgets.HTML(ProgressView(d).label) for d in ("upload", "download")}
        self.wait_buttons = {
            d: widgets.Button(description=f"Wait for {d}", tooltip=f"session.wait_for_{d}()")
            for d in ("upload", "download")
        }
        self.wait_status = {d: widgets.HTML() for d in ("upload", "download")}
        self.tail = widgets.HTML(tail_html(()))
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.toggle, self.badge]),
                *(widgets.VBox([self.bars[d], self.labels[d]]) for d in ("upload", "download")),
                *(widgets.HBox([self.wait_buttons[d], self.wait_status[d]]) for d in self.bars),
                widgets.HTML("<b>recent events</b> (newest first)"),
                self.tail,
            ],
            layout=widgets.Layout(border="1px solid #ddd", padding="6px", min_width="360px"),
        )

        self._throttles: dict[str, Throttle[Any]] = {
            "header": Throttle(self._render_header, interval),
            "upload": Throttle(self._render_progress, interval),
            "download": Throttle(self._render_progress, interval),
            "tail": Throttle(self._render_tail, interval),
        }
        self._render_header(self._header)
        self.toggle.observe(self._on_toggle, names="value")
        for direction, button in self.wait_buttons.items():
            button.on_click(self._wait_handler(direction))
        self._subscription = session.events.listen(self._on_event)
        # PROGRESS events come only when progress changes; a progress stream yields
        # the current value at once, so the bars start right even on an idle session
        # (and the header is resynced then; see _synced_header).
        self._seeds = [
            self._seed_progress(d) for d in (ProgressDirection.UPLOAD, ProgressDirection.DOWNLOAD)
        ]

    # -- events in (sync thread) --------------------------------------------------

    def _on_event(self, event: SyncEvent) -> None:
        kind = event.kind
        with self._lock:
            if self.closed:
                return
            header = self._synced_header()
            if kind == EventKind.STATE and event.current:
                header = HeaderView(header.name, event.current, header.connection, header.problem)
            elif kind == EventKind.CONNECTION and event.current:
                problem = event.message if event.current == "disconnected" else None
                header = HeaderView(header.name, header.state, event.current, problem)
            elif kind == EventKind.ERROR:
                problem = f"error {event.code}: {event.message}"
                header = HeaderView(header.name, header.state, header.connection, problem)
            elif kind == EventKind.RECONNECT_SCHEDULED and event.delay is not None:
                problem = f"reconnecting in {event.delay:.1f} s"
                header = HeaderView(header.name, header.state, header.connection, problem)
            header_changed = header != self._header
            self._header = header
            progress = None
            if kind == EventKind.PROGRESS and event.direction in self._progress:
                progress = self._progress[event.direction].update(event)
            tail = kind not in self._tail_exclude
            if tail:
                self._tail.append(event)
        if header_changed:
            self._throttles["header"](header)
        if progress is not None:
            self._throttles[progress.direction](progress)
        if tail:
            self._throttles["tail"](None)

    def _synced_header(self) -> HeaderView:
        """The header, re-read from the session the first time we run on the sync thread.

        State may change between reading it in __init__ and the subscription taking
        effect, with no event reaching us; once we run on the sync thread with the
        subscription in place, the properties are current and every later change
        arrives as an event. Call with the lock held, on the sync thread.
        """
        header = self._header
        if not self._synced_with_events:
            self._synced_with_events = True
            header = HeaderView(
                header.name,
                self.session.state.value,
                self.session.connection_state.value,
                header.problem,
            )
        return header

    def _seed_progress(self, direction: ProgressDirection) -> Subscription[SyncProgress]:
        taken = threading.Event()
        holder: list[Subscription[SyncProgress]] = []

        def first(progress: SyncProgress) -> None:
            if taken.is_set():
                return
            taken.set()
            if holder:
                holder[0].cancel()
            seed = SyncEvent(
                now(),
                self.session.name,
                EventKind.PROGRESS,
                direction=direction.value,
                transferred=progress.transferred_bytes,
                transferable=progress.transferable_bytes,
                estimate=progress.progress_estimate,
            )
            with self._lock:
                if self.closed:
                    return
                # This runs on the sync thread after the events subscription is in
                # place (both were queued there in order), so it can resync the header.
                header = self._synced_header()
                header_changed = header != self._header
                self._header = header
                model = self._progress[direction.value]
                view = None
                if model.view.transferred is None:  # else a PROGRESS event came first
                    view = model.update(seed)
            if header_changed:
                self._throttles["header"](header)
            if view is not None:
                self._throttles[direction.value](view)

        stream = self.session.get_progress_stream(direction, ProgressMode.REPORT_INDEFINITELY)
        subscription = stream.listen(first)
        holder.append(subscription)
        if taken.is_set():  # delivered inline (constructed on the sync thread)
            subscription.cancel()
        return subscription

    # -- renders (sync or timer thread, throttled) ---------------------------------

    def _render_header(self, view: HeaderView) -> None:
        self._rendering.active = True
        try:
            with self.toggle.hold_sync():
                self.toggle.value = view.paused
                self.toggle.description = "Resume" if view.paused else "Pause"
                self.toggle.icon = "play" if view.paused else "pause"
                self.toggle.button_style = "warning" if view.paused else ""
                self.toggle.disabled = view.state == "inactive"
        finally:
            self._rendering.active = False
        self.badge.value = badge_html(view)

    def _render_progress(self, view: ProgressView) -> None:
        bar = self.bars[view.direction]
        with bar.hold_sync():
            bar.value = view.estimate
            bar.bar_style = "success" if view.estimate >= 1.0 else "info"
        self.labels[view.direction].value = view.label

    def _render_tail(self, _: None) -> None:
        with self._lock:
            events = tuple(self._tail)
        self.tail.value = tail_html(tuple(tail_line(e) for e in events))

    def flush(self) -> None:
        """Show every throttled update now (instead of at the end of its interval)."""
        for throttle in self._throttles.values():
            throttle.flush()

    # -- user actions (kernel thread) -------------------------------------------------

    def _on_toggle(self, change: dict[str, Any]) -> None:
        if getattr(self._rendering, "active", False):
            return
        try:
            if change["new"]:
                self.session.pause()
            else:
                self.session.resume()
        except Exception as exc:
            with self._lock:
                header = self._header
                self._header = HeaderView(
                    header.name, header.state, header.connection, f"{type(exc).__name__}: {exc}"
                )
            self._render_header(self._header)  # puts the toggle back where the session is

    def _wait_handler(self, direction: str) -> Callable[[Any], None]:
        def on_click(_button: Any) -> None:
            self.wait(direction)

        return on_click

    def wait(self, direction: str) -> Future[None]:
        """What the "Wait for …" buttons do: start the wait and show how it ends."""
        button, status = self.wait_buttons[direction], self.wait_status[direction]
        started = time.monotonic()
        with button.hold_sync():
            button.disabled = True
            button.icon = "hourglass-half"
        status.value = "waiting…"
        try:
            if direction == "upload":
                future = self.session.wait_for_upload()
            else:
                future = self.session.wait_for_download()
        except Exception as exc:
            failed: Future[None] = Future()
            failed.set_exception(exc)
            self._show_wait(direction, failed, started)
            return failed
        with self._lock:
            self._waits.add(future)
        future.add_done_callback(lambda f: self._show_wait(direction, f, started))
        return future

    def _show_wait(self, direction: str, future: Future[None], started: float) -> None:
        with self._lock:
            self._waits.discard(future)
        elapsed = format_duration(time.monotonic() - started)
        if future.cancelled():
            text = f"<span style='color:#888'>cancelled after {elapsed}</span>"
        elif (exc := future.exception()) is not None:
            text = (
                f"<span style='color:#c62828'>failed after {elapsed}: "
                f"{type(exc).__name__}: {html.escape(str(exc))}</span>"
            )
        else:
            text = f"<span style='color:#2ca02c'>done in {elapsed}</span>"
        if self.closed:
            return
        button = self.wait_buttons[direction]
        with button.hold_sync():
            button.disabled = False
            button.icon = ""
        self.wait_status[direction].value = text

    # -- lifetime and display ---------------------------------------------------------

    def close(self) -> None:
        """Unsubscribe, cancel pending waits started here, and close every widget."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            waits, self._waits = list(self._waits), set()
        self._subscription.cancel()
        for seed in self._seeds:
            seed.cancel()
        for throttle in self._throttles.values():
            throttle.cancel()
        for future in waits:
            future.cancel()
        _forget(self)
        _close_tree(self.widget)

    def __enter__(self) -> SessionWidget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def summary(self) -> str:
        """The text a front end without widgets shows."""
        with self._lock:
            header = self._header
            views = [m.view for m in self._progress.values()]
            last = tail_line(self._tail[-1]) if self._tail else None
        lines = [f"Session {header.name}: {header.state}, {header.connection}"]
        if header.problem:
            lines[0] += f" ({header.problem})"
        lines += [f"  {view.label}" for view in views]
        if last:
            lines.append(f"  last event: {last}")
        if self.closed:
            lines[0] += " [widget closed]"
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return _bundle(self.widget, self.summary(), kwargs)


def _close_tree(widget: Any) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


def _bundle(widget: Any, text: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    make = getattr(widget, "_repr_mimebundle_", None)
    bundle: dict[str, Any] = dict(make(**kwargs) or {}) if callable(make) else {}
    bundle["text/plain"] = text
    return bundle


class Dashboard:
    """Several sessions side by side, each a :class:`SessionWidget`, in one row.

    Each panel steers only its own session, so pausing one device leaves the
    others syncing. Keyword arguments are passed to every SessionWidget.
    """

    def __init__(self, sessions: Iterable[SessionLike], **options: Any) -> None:
        self.panels = [SessionWidget(session, **options) for session in sessions]
        self.widget = widgets.HBox([panel.widget for panel in self.panels])

    def __getitem__(self, index: int) -> SessionWidget:
        return self.panels[index]

    def __len__(self) -> int:
        return len(self.panels)

    def flush(self) -> None:
        for panel in self.panels:
            panel.flush()

    def close(self) -> None:
        for panel in self.panels:
            panel.close()
        self.widget.close()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def summary(self) -> str:
        return "\n".join(panel.summary() for panel in self.panels) or "Dashboard (no sessions)"

    def __repr__(self) -> str:
        return self.summary()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return _bundle(self.widget, self.summary(), kwargs)


# One live widget per session, so displaying a session twice shows the same panel
# instead of subscribing again (see session_mimebundle).
_live: dict[int, tuple[SessionLike, SessionWidget]] = {}
_live_lock = threading.Lock()


def widget_for(session: SessionLike) -> SessionWidget:
    """The open SessionWidget for ``session``, created on first use."""
    with _live_lock:
        entry = _live.get(id(session))
        if entry is not None and entry[0] is session and not entry[1].closed:
            return entry[1]
        panel = SessionWidget(session)
        _live[id(session)] = (session, panel)
        return panel


def _forget(panel: SessionWidget) -> None:
    with _live_lock:
        entry = _live.get(id(panel.session))
        if entry is not None and entry[1] is panel:
            del _live[id(panel.session)]


def session_mimebundle(session: SessionLike, **kwargs: Any) -> dict[str, Any]:
    """What ``rs.Session._repr_mimebundle_`` returns: its live widget, and text for terminals.

    The widget is :func:`widget_for` the session, so a session shown as the last
    expression of several cells shares one panel (and one subscription).
    """
    panel = widget_for(session)
    return _bundle(panel.widget, panel.summary(), kwargs)

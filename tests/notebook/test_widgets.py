"""SessionWidget and Dashboard over real sessions (and a stand-in for the event flood).

No kernel runs here: ipywidgets sends through a comm that goes nowhere, and the
tests count what it would have sent by wrapping each widget's ``comm.send``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import realmsync_nb as rs
from realmsync_nb.client.loop import SyncThread
from realmsync_nb.notebook import Dashboard, EventLog, SessionWidget, session_mimebundle
from realmsync_nb.notebook.widgets import widget_for
from realmsync_nb.observe import EventKind, SyncEvent, now
from tests.helpers import T, Task, wait_until
from tests.notebook.standin import StandInSession

OpenRealm = Callable[..., rs.Realm]
VIEW = "application/vnd.jupyter.widget-view+json"


class Sent:
    """Records the comm messages one widget sends to the front end."""

    def __init__(self, widget: Any) -> None:
        self.messages: list[dict[str, Any]] = []
        send = widget.comm.send

        def recording_send(data: Any = None, *args: Any, **kwargs: Any) -> None:
            self.messages.append(data)
            send(data, *args, **kwargs)

        widget.comm.send = recording_send

    @property
    def updates(self) -> list[dict[str, Any]]:
        return [m["state"] for m in self.messages if m.get("method") == "update"]


@pytest.fixture
def panels() -> Iterator[list[SessionWidget | Dashboard]]:
    made: list[SessionWidget | Dashboard] = []
    yield made
    for panel in made:
        panel.close()


def connected(session: rs.Session) -> Callable[[], bool]:
    return lambda: session.connection_state is rs.ConnectionState.CONNECTED


def click(toggle: Any, value: bool) -> None:
    """What the browser sends when the toggle is clicked."""
    toggle.set_state({"value": value})


def add_tasks(realm: rs.Realm, n: int, prefix: str = "t") -> None:
    with realm.write():
        for i in range(n):
            realm.add(Task(id=f"{prefix}{i}", title="x" * 200, priority=i))


def test_toggle_pauses_and_resumes_the_real_session(
    open_realm: OpenRealm, panels: list[Any]
) -> None:
    session = open_realm("A").sync_session
    panel = SessionWidget(session)
    panels.append(panel)
    wait_until(connected(session), what="the session to connect")
    wait_until(lambda: "connected" in panel.badge.value, what="the badge")
    assert panel.toggle.value is False and panel.toggle.description == "Pause"

    click(panel.toggle, True)
    wait_until(lambda: session.state is rs.SessionState.PAUSED, what="the pause")
    wait_until(lambda: panel.toggle.description == "Resume", what="the toggle's label")
    wait_until(lambda: "disconnected" in panel.badge.value, what="the badge")
    assert panel.toggle.value is True

    click(panel.toggle, False)
    wait_until(lambda: session.state is rs.SessionState.ACTIVE, what="the resume")
    wait_until(connected(session), what="the reconnect")
    wait_until(lambda: ">connected<" in panel.badge.value, what="the badge")
    assert panel.toggle.value is False and panel.toggle.description == "Pause"


def test_pause_from_code_moves_the_toggle_without_calling_back(
    open_realm: OpenRealm, panels: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    session = open_realm("A").sync_session
    pause, resume = session.pause, session.resume
    calls: list[str] = []
    monkeypatch.setattr(session, "pause", lambda: calls.append("pause"))
    monkeypatch.setattr(session, "resume", lambda: calls.append("resume"))
    panel = SessionWidget(session)
    panels.append(panel)
    wait_until(connected(session), what="the session to connect")

    pause()  # from code, not from the widget
    wait_until(lambda: panel.toggle.value is True, what="the toggle to follow the pause")
    assert panel.toggle.description == "Resume"
    resume()
    wait_until(lambda: panel.toggle.value is False, what="the toggle to follow the resume")
    wait_until(lambda: ">connected<" in panel.badge.value, what="the badge")
    assert calls == []  # following the session never called pause() or resume() again


def test_progress_events_move_the_bars_and_waits_show_their_outcome(
    open_realm: OpenRealm, panels: list[Any]
) -> None:
    realm_a, realm_b = open_realm("A"), open_realm("B")
    a, b = realm_a.sync_session, realm_b.sync_session
    log = EventLog([a, b])
    board = Dashboard([a, b])
    panels.append(board)
    up, down = board[0], board[1]
    wait_until(lambda: connected(a)() and connected(b)(), what="both sessions to connect")
    seen: list[float] = []
    up.bars["upload"].observe(lambda change: seen.append(change["new"]), names="value")
    time.sleep(T(0.2))  # let any throttled render of the opening progress go out

    add_tasks(realm_a, 300)
    up.wait_buttons["upload"].click()
    wait_until(lambda: "done" in up.wait_status["upload"].value, what="wait for upload")
    assert not up.wait_buttons["upload"].disabled
    down.wait_buttons["download"].click()
    wait_until(lambda: "done" in down.wait_status["download"].value, what="wait for download")
    assert len(realm_b.all(Task)) == 300

    up.flush()
    down.flush()
    df = log.to_dataframe()
    progress = df[df["kind"] == EventKind.PROGRESS.value]
    last_up = progress[(progress["session"] == a.name) & (progress["direction"] == "upload")]
    last_down = progress[(progress["session"] == b.name) & (progress["direction"] == "download")]
    assert up.bars["upload"].value == last_up["estimate"].iloc[-1] == 1.0
    assert down.bars["download"].value == last_down["estimate"].iloc[-1] == 1.0
    assert any(v < 1.0 for v in seen)  # it moved, it did not just sit at 100%
    total = int(last_up["transferable"].iloc[-1])
    assert total > 300 * 200
    assert "100%" in up.labels["upload"].value
    assert f"{total / 1000:.1f} kB" in up.labels["upload"].value
    assert "upload acked" in up.tail.value and "wait for upload: done" in up.tail.value
    assert "download:" in down.tail.value
    log.close()


def test_wait_button_shows_a_failed_wait(open_realm: OpenRealm, panels: list[Any]) -> None:
    realm = open_realm("A")
    session = realm.sync_session
    panel = SessionWidget(session)
    panels.append(panel)
    session.pause()
    add_tasks(realm, 5)
    panel.wait_buttons["upload"].click()
    assert panel.wait_status["upload"].value == "waiting…"
    assert panel.wait_buttons["upload"].disabled
    time.sleep(T(0.2))
    assert panel.wait_status["upload"].value == "waiting…"  # paused: stays pending
    realm.close()
    wait_until(lambda: "failed" in panel.wait_status["upload"].value, what="the failure")
    assert "SessionInactiveError" in panel.wait_status["upload"].value
    wait_until(lambda: panel.toggle.disabled, what="the toggle to disable (inactive)")


def test_dashboard_pausing_one_leaves_the_other_alone(
    open_realm: OpenRealm, panels: list[Any]
) -> None:
    a, b = open_realm("A").sync_session, open_realm("B").sync_session
    board = Dashboard([a, b])
    panels.append(board)
    assert len(board) == 2 and len(board.widget.children) == 2
    wait_until(lambda: connected(a)() and connected(b)(), what="both sessions to connect")
    click(board[0].toggle, True)
    wait_until(lambda: board[0].toggle.description == "Resume", what="A's toggle")
    assert a.state is rs.SessionState.PAUSED
    assert b.state is rs.SessionState.ACTIVE and connected(b)()
    assert board[1].toggle.value is False
    text = board.summary()
    assert f"Session {a.name}: paused, disconnected" in text
    assert f"Session {b.name}: active, connected" in text


def test_close_unsubscribes_and_closes_widgets(open_realm: OpenRealm) -> None:
    session = open_realm("A").sync_session
    panel = SessionWidget(session)
    wait_until(connected(session), what="the session to connect")
    toggle = panel.toggle
    panel.close()
    panel.close()  # idempotent
    assert panel.closed and toggle.comm is None and panel.widget.comm is None
    assert not panel._subscription.active
    session.pause()
    time.sleep(T(0.1))
    assert toggle.value is False  # no longer following
    assert panel.summary().splitlines()[0].endswith("[widget closed]")


def test_session_shows_its_widget_once_and_text_for_terminals(open_realm: OpenRealm) -> None:
    session = open_realm("A").sync_session
    first = session._repr_mimebundle_()
    second = session_mimebundle(session)
    panel = widget_for(session)
    try:
        assert first[VIEW]["model_id"] == second[VIEW]["model_id"] == panel.widget.model_id
        assert first["text/plain"].startswith(f"Session {session.name}: ")
        assert "upload" in first["text/plain"]
    finally:
        panel.close()
    assert widget_for(session) is not panel  # a closed panel is replaced
    widget_for(session).close()


def test_text_fallback_of_a_panel(open_realm: OpenRealm, panels: list[Any]) -> None:
    realm = open_realm("A")
    panel = SessionWidget(realm.sync_session)
    panels.append(panel)
    wait_until(connected(realm.sync_session), what="the session to connect")
    add_tasks(realm, 3)
    realm.sync_session.wait_for_upload().result(T(10))
    wait_until(lambda: "upload 100%" in panel.summary(), what="the summary")
    bundle = panel._repr_mimebundle_()
    assert bundle["text/plain"] == panel.summary() == repr(panel)
    assert bundle[VIEW]["model_id"] == panel.widget.model_id
    assert "last event:" in panel.summary()


# -- with a stand-in event source: what a real session cannot do on cue ----------------


def test_a_flood_of_progress_stays_within_the_throttle(sync_thread: SyncThread) -> None:
    source = StandInSession(sync_thread)
    panel = SessionWidget(source, max_rate=10)
    try:
        bar, label, tail = (
            Sent(panel.bars["upload"]),
            Sent(panel.labels["upload"]),
            Sent(panel.tail),
        )
        source.settle()
        total = 10_000

        async def flood() -> float:
            start = time.monotonic()
            for batch in range(100):  # 10,000 events over about one second
                for i in range(100):
                    source.emit(source.progress(batch * 100 + i + 1, total))
                await asyncio.sleep(0.01)
            return time.monotonic() - start

        elapsed = sync_thread.submit(flood()).result(T(30))
        wait_until(lambda: not panel._throttles["upload"].pending, what="the trailing update")
        time.sleep(T(0.05))

        bound = elapsed * 10 + 2  # at most 10 a second, plus the leading and trailing edges
        assert 2 <= len(bar.updates) <= bound, (len(bar.updates), elapsed)
        assert len(label.updates) <= bound
        assert tail.updates == []  # PROGRESS stays out of the event tail
        assert bar.updates[-1]["value"] == 1.0 == panel.bars["upload"].value
        assert "10.0 kB / 10.0 kB" in panel.labels["upload"].value
        # hold_sync: value and bar_style of one render go out in one message.
        assert bar.updates[-1] == {"value": 1.0, "bar_style": "success"}
    finally:
        panel.close()


def test_the_event_tail_is_bounded(sync_thread: SyncThread) -> None:
    source = StandInSession(sync_thread)
    panel = SessionWidget(source, tail=5, max_rate=1000)
    try:
        source.settle()

        def burst() -> None:
            for i in range(50):
                source.emit(SyncEvent(now(), source.name, EventKind.HEARTBEAT, latency=i / 1000))

        sync_thread.run_sync(burst)
        panel.flush()
        assert panel.tail.value.count("heartbeat") == 5
        assert "49.0 ms" in panel.tail.value and "44.0 ms" not in panel.tail.value
    finally:
        panel.close()


def test_a_failing_pause_is_shown_and_the_toggle_goes_back(sync_thread: SyncThread) -> None:
    class Refusing(StandInSession):
        def pause(self) -> None:
            raise rs.SessionInactiveError("the session is inactive")

    panel = SessionWidget(Refusing(sync_thread))
    try:
        click(panel.toggle, True)
        assert panel.toggle.value is False
        assert "SessionInactiveError" in panel.badge.value
    finally:
        panel.close()


def test_toggle_click_reaches_pause_and_resume_once(sync_thread: SyncThread) -> None:
    source = StandInSession(sync_thread)
    panel = SessionWidget(source)
    try:
        click(panel.toggle, True)
        click(panel.toggle, False)
        assert (source.pauses, source.resumes) == (1, 1)
    finally:
        panel.close()

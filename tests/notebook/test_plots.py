from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection

from realmsync_nb.notebook import (
    EventLog,
    plot_ack_latency,
    plot_connection_timeline,
    plot_progress,
    plot_throughput,
)
from realmsync_nb.notebook.plots import STATE_COLORS
from realmsync_nb.observe import EventKind, SyncEvent
from tests.notebook.conftest import at


@pytest.fixture
def log(two_devices: list[SyncEvent]) -> EventLog:
    log = EventLog()
    log.extend(two_devices)
    return log


def labelled_lines(ax: Axes) -> list[str]:
    return [
        str(line.get_label()) for line in ax.get_lines() if not line.get_label().startswith("_")
    ]


def test_progress_has_a_line_per_direction_per_session(log: EventLog) -> None:
    ax = plot_progress(log)
    assert isinstance(ax, Axes)
    assert labelled_lines(ax) == [
        "device-A upload",
        "device-A download",
        "device-B upload",
        "device-B download",
    ]
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "device-A upload")
    assert list(line.get_ydata()) == pytest.approx([i / 10 for i in range(11)])
    x = np.asarray(line.get_xdata(), dtype=float)
    assert x[0] == pytest.approx(0.3) and x[-1] == pytest.approx(1.3)  # seconds since start
    assert ax.get_legend() is not None


def test_plots_draw_on_the_given_axes_and_take_a_dataframe(log: EventLog) -> None:
    fig, axes = plt.subplots(2, 2)
    df = log.to_dataframe()
    for plot, ax in zip(
        (plot_progress, plot_connection_timeline, plot_throughput, plot_ack_latency),
        axes.flat,
        strict=True,
    ):
        assert plot(df, ax=ax) is ax
    assert len(fig.axes) == 4


def test_progress_of_one_session_one_direction(log: EventLog) -> None:
    df = log.to_dataframe()
    only = df[(df["session"] == "device-B") & (df["direction"] != "download")]
    assert labelled_lines(plot_progress(only)) == ["device-B upload"]


def test_connection_timeline_has_a_lane_per_session(log: EventLog) -> None:
    ax = plot_connection_timeline(log)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["device-A", "device-B"]
    assert list(ax.get_yticks()) == [0, 1]
    bars = [c for c in ax.collections if isinstance(c, PolyCollection)]
    # Per lane: connecting, connected and disconnected spans (one collection each).
    assert len(bars) == 2 * 3
    lanes = {round(float(np.mean(path.vertices[:, 1]))) for c in bars for path in c.get_paths()}
    assert lanes == {0, 1}
    colors = {tuple(c.get_facecolor()[0]) for c in bars}
    assert len(colors) == 3
    # device-A: connecting 0-0.2, connected 0.2-1.5, disconnected 1.5-2.0, connecting
    # 2.0-2.1, connected 2.1 to the end of the log (2.65 s).
    spans = sorted(
        (round(float(p.vertices[:, 0].min()), 3), round(float(p.vertices[:, 0].max()), 3))
        for c in bars
        for p in c.get_paths()
        if np.mean(p.vertices[:, 1]) < 0.5
    )
    assert spans == [(0.0, 0.2), (0.2, 1.5), (1.5, 2.0), (2.0, 2.1), (2.1, 2.65)]


def test_connection_timeline_marks_pauses_resumes_and_errors(log: EventLog) -> None:
    ax = plot_connection_timeline(log)
    markers = {str(ln.get_label()): ln for ln in ax.get_lines()}
    assert set(markers) == {"_pause", "_resume", "_error"}
    pauses = [ln for ln in ax.get_lines() if ln.get_label() == "_pause"]
    assert len(pauses) == 2  # one per lane
    assert sorted(float(ln.get_xdata()[0]) for ln in pauses) == pytest.approx([1.5, 1.75])
    errors = [ln for ln in ax.get_lines() if ln.get_label() == "_error"]
    assert all(ln.get_marker() == "x" for ln in errors)
    legend = ax.get_legend()
    assert legend is not None
    assert {t.get_text() for t in legend.get_texts()} == set(STATE_COLORS) | {
        "pause",
        "resume",
        "error",
    }


def test_network_condition_changes_are_marked_on_timeline_and_progress(log: EventLog) -> None:
    log.record(SyncEvent(at(1.0), "device-B", EventKind.CONDITIONS, message="latency up"))
    log.record(SyncEvent(at(1.2), "device-B", EventKind.CONDITIONS, message="blackhole on"))
    ax = plot_connection_timeline(log)
    marks = [ln for ln in ax.get_lines() if ln.get_label() == "_conditions"]
    assert len(marks) == 1  # device-B's lane only
    assert list(marks[0].get_xdata()) == pytest.approx([1.0, 1.2])
    assert list(marks[0].get_ydata()) == [1, 1]
    legend = ax.get_legend()
    assert legend is not None
    assert "conditions" in {t.get_text() for t in legend.get_texts()}
    ax = plot_progress(log)
    vlines = [ln for ln in ax.get_lines() if "conditions" in str(ln.get_label())]
    assert [float(ln.get_xdata()[0]) for ln in vlines] == pytest.approx([1.0, 1.2])
    assert labelled_lines(ax)[-1] == "conditions changed"  # one legend entry for all


def test_timeline_falls_back_to_state_events_for_pauses() -> None:
    log = EventLog()
    log.record(
        SyncEvent(at(0), "A", EventKind.CONNECTION, previous="connecting", current="connected")
    )
    log.record(SyncEvent(at(1), "A", EventKind.STATE, previous="active", current="paused"))
    log.record(SyncEvent(at(2), "A", EventKind.STATE, previous="paused", current="active"))
    ax = plot_connection_timeline(log)
    assert [ln.get_label() for ln in ax.get_lines()] == ["_pause", "_resume"]


def test_timeline_of_a_session_recorded_while_connected() -> None:
    log = EventLog()
    log.record(
        SyncEvent(at(0), "A", EventKind.CONNECTION, previous="connecting", current="connected")
    )
    log.record(SyncEvent(at(1), "B", EventKind.UPLOAD_ACKED, bytes=10, latency=0.01))
    log.record(SyncEvent(at(2), "C", EventKind.WAIT, direction="upload", outcome="started"))
    log.record(SyncEvent(at(3), "A", EventKind.HEARTBEAT, latency=0.01))
    ax = plot_connection_timeline(log)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A", "B", "C"]
    spans = {
        round(float(np.mean(p.vertices[:, 1]))): (
            float(p.vertices[:, 0].min()),
            float(p.vertices[:, 0].max()),
        )
        for c in ax.collections
        for p in c.get_paths()
    }
    # B was connected from its first event on; nothing is known about C.
    assert spans == {0: (0.0, 3.0), 1: (1.0, 3.0)}


def test_timeline_on_wall_clock(log: EventLog) -> None:
    ax = plot_connection_timeline(log, time_axis="wall")
    assert ax.get_xlabel() == "time (UTC)"
    low, _ = ax.get_xlim()
    assert 19_000 < low < 30_000  # matplotlib date numbers (days since 1970)


def test_throughput_bytes_per_second(log: EventLog) -> None:
    ax = plot_throughput(log, bin_seconds=0.5)
    assert sorted(labelled_lines(ax)) == [
        "device-A download",
        "device-A upload",
        "device-B download",
        "device-B upload",
    ]
    upload = next(ln for ln in ax.get_lines() if ln.get_label() == "device-A upload")
    rates = np.asarray(upload.get_ydata(), dtype=float)
    # 11 acks of 100 B at 0.32..1.32 s: 2 in [0, 0.5), 5 in [0.5, 1), 4 in [1, 1.5).
    assert list(rates[:4]) == pytest.approx([400.0, 1000.0, 800.0, 0.0])
    # Everything shows up once: the rates integrate back to the bytes.
    assert rates[:-1].sum() * 0.5 == pytest.approx(1100)


def test_throughput_picks_a_round_bin(log: EventLog) -> None:
    ax = plot_throughput(log)
    assert "0.1 s" in ax.get_ylabel()
    with pytest.raises(ValueError, match="bin_seconds"):
        plot_throughput(log, bin_seconds=0)


def test_ack_latency_histogram(log: EventLog) -> None:
    ax = plot_ack_latency(log, bins=5)
    assert len(ax.patches) == 2  # one filled step outline per session
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("device-A (n=11, median 7.0 ms") for t in texts)
    assert ax.get_xlabel() == "upload ack latency (ms)"


def test_plots_of_an_empty_log_say_so() -> None:
    for plot in (plot_progress, plot_connection_timeline, plot_throughput, plot_ack_latency):
        ax = plot(EventLog())
        assert any(t.get_text().startswith("no ") for t in ax.texts), plot.__name__


def test_plots_reject_other_data() -> None:
    with pytest.raises(TypeError, match="EventLog or its DataFrame"):
        plot_progress([1, 2, 3])  # type: ignore[arg-type]

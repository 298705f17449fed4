"""Plots of an event log: progress, connection timeline, throughput, ack latency.

Each function takes an :class:`EventLog` or the DataFrame of one (so a frame read
back with :func:`read_csv`, or filtered with pandas, works too) and an optional
matplotlib ``ax``, draws on it and returns it. The x axis is seconds since the
log's first event by default (``time_axis="elapsed"``), or UTC wall-clock time
(``time_axis="wall"``); all four use the same origin so plots of one log line up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from realmsync_nb.notebook._format import format_rate
from realmsync_nb.notebook.eventlog import EventLog
from realmsync_nb.observe import EventKind

__all__ = ["plot_ack_latency", "plot_connection_timeline", "plot_progress", "plot_throughput"]

TimeAxis = Literal["elapsed", "wall"]
Data = EventLog | pd.DataFrame

#: Span colors of the connection timeline.
STATE_COLORS = {"disconnected": "#c7c7c7", "connecting": "#ffbb33", "connected": "#2ca02c"}
_NEEDS_CONNECTION = [
    k.value for k in (EventKind.UPLOAD_ACKED, EventKind.DOWNLOAD_INTEGRATED, EventKind.HEARTBEAT)
]
_DIRECTION_STYLE = {"upload": "-", "download": "--"}
#: Color of CONDITIONS marks (a change of network conditions, from realmsync_nb.faults).
CONDITIONS_COLOR = "#9467bd"
# Nice bin widths for throughput, in seconds.
_BIN_WIDTHS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600)


def _frame(data: Data) -> pd.DataFrame:
    if isinstance(data, EventLog):
        return data.to_dataframe()
    if isinstance(data, pd.DataFrame):
        return data
    raise TypeError(f"expected an EventLog or its DataFrame, not {type(data).__name__}")


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    _, new_ax = plt.subplots()
    return new_ax


class _Clock:
    """Maps event times to x positions; one per plot, anchored at the log's start."""

    def __init__(self, df: pd.DataFrame, time_axis: TimeAxis) -> None:
        if time_axis not in ("elapsed", "wall"):
            raise ValueError(f"time_axis must be 'elapsed' or 'wall', not {time_axis!r}")
        self.wall = time_axis == "wall"
        times = df["time"]
        self.origin = _ns(times).min() if len(times) else 0

    def x(self, times: pd.Series[Any]) -> npt.NDArray[np.float64]:
        ns = _ns(times)
        if self.wall:
            days = mdates.date2num(ns.astype("datetime64[ns]"))  # type: ignore[no-untyped-call]
            return np.asarray(days, dtype=np.float64)
        return np.asarray((ns - self.origin) / 1e9, dtype=np.float64)

    def label(self, ax: Axes) -> None:
        if self.wall:
            locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
            formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(formatter)
            ax.set_xlabel("time (UTC)")
        else:
            ax.set_xlabel("seconds since the first event")


def _ns(times: pd.Series[Any]) -> npt.NDArray[np.int64]:
    """UTC nanoseconds since the epoch, for a tz-aware or naive datetime column."""
    values = pd.to_datetime(times, utc=True).dt.tz_localize(None).astype("datetime64[ns]")
    return np.asarray(values.to_numpy().view(np.int64), dtype=np.int64)


def _sessions(df: pd.DataFrame) -> list[str]:
    return sorted({str(s) for s in df["session"].dropna().unique()})


def _color(sessions: Sequence[str], session: str) -> str:
    return f"C{sessions.index(session) % 10}"


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def _floats(column: pd.Series[Any]) -> npt.NDArray[np.float64]:
    return np.asarray(column.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan))


def plot_progress(data: Data, ax: Axes | None = None, *, time_axis: TimeAxis = "elapsed") -> Axes:
    """Progress estimate (transferred / transferable) over time from PROGRESS events.

    One step line per direction per session, labelled ``"<session> <direction>"``:
    color by session, solid for upload and dashed for download. A change of network
    conditions (CONDITIONS events, from a watching fault proxy) is a dotted vertical
    line, so a slower slope lines up with the cap that caused it.
    """
    df = _frame(data)
    ax = _axes(ax)
    clock = _Clock(df, time_axis)
    sessions = _sessions(df)
    progress = df[df["kind"] == EventKind.PROGRESS.value]
    for (session, direction), group in progress.groupby(
        ["session", "direction"], observed=True, sort=True
    ):
        ax.plot(
            clock.x(group["time"]),
            _floats(group["estimate"]),
            drawstyle="steps-post",
            color=_color(sessions, str(session)),
            linestyle=_DIRECTION_STYLE.get(str(direction), ":"),
            label=f"{session} {direction}",
        )
    changes = np.unique(clock.x(df.loc[df["kind"] == EventKind.CONDITIONS.value, "time"]))
    for i, x in enumerate(changes):
        label = "conditions changed" if i == 0 else "_conditions"
        ax.axvline(x, color=CONDITIONS_COLOR, linestyle=":", linewidth=1.2, label=label)
    if progress.empty:
        _empty(ax, "PROGRESS events")
    else:
        ax.legend(loc="lower right")
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("progress estimate")
    ax.set_title("Sync progress")
    clock.label(ax)
    return ax


def _connection_spans(
    events: pd.DataFrame, clock: _Clock, end: float
) -> dict[str, list[tuple[float, float]]]:
    """(start, width) spans per connection state for one session's events."""
    spans: dict[str, list[tuple[float, float]]] = {}
    conn = events[events["kind"] == EventKind.CONNECTION.value]
    first = float(clock.x(events["time"]).min())
    if conn.empty:
        # Recorded after connecting and never disconnected: uploads acknowledged,
        # downloads integrated or heartbeats answered all need a connection.
        if events["kind"].isin(_NEEDS_CONNECTION).any() and end > first:
            spans["connected"] = [(first, end - first)]
        return spans
    times = clock.x(conn["time"])
    initial = conn["previous"].iloc[0]
    if pd.notna(initial) and times[0] > first:
        spans.setdefault(str(initial), []).append((first, float(times[0]) - first))
    stops = [*times[1:], end]
    for start, stop, state in zip(times, stops, conn["current"], strict=True):
        if pd.notna(state) and stop > start:
            spans.setdefault(str(state), []).append((float(start), float(stop - start)))
    return spans


def _marks(events: pd.DataFrame, kind: EventKind, state: str) -> pd.DataFrame:
    """PAUSE (or RESUME) events; if a session emits none, its STATE changes into ``state``."""
    direct = events[events["kind"] == kind.value]
    if not direct.empty:
        return direct
    return events[(events["kind"] == EventKind.STATE.value) & (events["current"] == state)]


def plot_connection_timeline(
    data: Data, ax: Axes | None = None, *, time_axis: TimeAxis = "elapsed"
) -> Axes:
    """One lane per session, colored by connection state, with pauses and errors marked.

    Spans come from CONNECTION events (a session's first span starts at its first
    event, in the first change's ``previous`` state; a session with no CONNECTION
    event but acks, downloads or heartbeats was connected all along); pauses are
    ``v`` markers, resumes ``^``, errors red ``x`` and changes of network conditions
    (CONDITIONS events) purple ``|`` across the lane.
    """
    df = _frame(data)
    ax = _axes(ax)
    clock = _Clock(df, time_axis)
    sessions = _sessions(df)
    end = float(clock.x(df["time"]).max()) if len(df) else 0.0
    seen_states: set[str] = set()
    marked: dict[str, bool] = {"pause": False, "resume": False, "error": False, "conditions": False}
    for lane, session in enumerate(sessions):
        events = df[df["session"] == session]
        for state, spans in _connection_spans(events, clock, end).items():
            seen_states.add(state)
            ax.broken_barh(
                spans,
                (lane - 0.35, 0.7),
                facecolors=STATE_COLORS.get(state, "#9467bd"),
                edgecolor="none",
            )
        for label, marks, marker, color, dy in (
            ("pause", _marks(events, EventKind.PAUSE, "paused"), "v", "black", -0.2),
            ("resume", _marks(events, EventKind.RESUME, "active"), "^", "black", -0.2),
            ("error", events[events["kind"] == EventKind.ERROR.value], "x", "red", 0.0),
            (
                "conditions",
                events[events["kind"] == EventKind.CONDITIONS.value],
                "|",
                CONDITIONS_COLOR,
                0.0,
            ),
        ):
            if marks.empty:
                continue
            xs = clock.x(marks["time"])
            ax.plot(
                xs,
                np.full(len(xs), lane + dy),
                linestyle="none",
                marker=marker,
                color=color,
                markersize=20 if label == "conditions" else 8,
                markeredgewidth=2 if label == "conditions" else None,
                label="_" + label,
            )
            marked[label] = True
    ax.set_yticks(range(len(sessions)), sessions)
    ax.set_ylim(max(len(sessions), 1) - 0.5, -0.5)  # first session on top
    handles: list[Any] = [
        Patch(color=STATE_COLORS.get(s, "#9467bd"), label=s)
        for s in sorted(seen_states, key=lambda s: (s not in STATE_COLORS, s))
    ]
    styles = {
        "pause": ("v", "black"),
        "resume": ("^", "black"),
        "error": ("x", "red"),
        "conditions": ("|", CONDITIONS_COLOR),
    }
    for label, (marker, color) in styles.items():
        if marked[label]:
            handles.append(
                Line2D([], [], linestyle="none", marker=marker, color=color, label=label)
            )
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    if not sessions:
        _empty(ax, "events")
    ax.set_title("Connection state")
    clock.label(ax)
    return ax


def _auto_bin(span_seconds: float, target_bins: int = 50) -> float:
    for width in _BIN_WIDTHS:
        if span_seconds / width <= target_bins:
            return width
    return float(np.ceil(span_seconds / target_bins))


def plot_throughput(
    data: Data,
    ax: Axes | None = None,
    *,
    bin_seconds: float | None = None,
    time_axis: TimeAxis = "elapsed",
) -> Axes:
    """Bytes per second over time, from UPLOAD_ACKED and DOWNLOAD_INTEGRATED events.

    Bytes are summed into bins of ``bin_seconds`` (by default a round width giving
    about 50 bins over the log) and divided by the width; one step line per
    direction per session, zero where nothing moved.
    """
    df = _frame(data)
    ax = _axes(ax)
    clock = _Clock(df, time_axis)
    sessions = _sessions(df)
    ns = _ns(df["time"])
    span = (ns.max() - ns.min()) / 1e9 if len(ns) else 0.0
    width = bin_seconds if bin_seconds is not None else _auto_bin(span)
    if width <= 0:
        raise ValueError(f"bin_seconds must be positive, not {bin_seconds}")
    nbins = int(span // width) + 1
    origin = clock.origin
    edges_ns = origin + (np.arange(nbins + 1) * width * 1e9).astype(np.int64)
    edges = clock.x(pd.Series(pd.to_datetime(edges_ns, unit="ns", utc=True)))
    drawn = False
    for kind, direction in (
        (EventKind.UPLOAD_ACKED, "upload"),
        (EventKind.DOWNLOAD_INTEGRATED, "download"),
    ):
        rows = df[df["kind"] == kind.value]
        for session, group in rows.groupby("session", observed=True, sort=True):
            index = ((_ns(group["time"]) - origin) / (width * 1e9)).astype(np.int64)
            weights = np.nan_to_num(_floats(group["bytes"]))
            totals = np.bincount(index, weights=weights, minlength=nbins)[:nbins] / width
            ax.plot(
                edges,
                np.append(totals, totals[-1]),
                drawstyle="steps-post",
                color=_color(sessions, str(session)),
                linestyle=_DIRECTION_STYLE[direction],
                label=f"{session} {direction}",
            )
            drawn = True
    if drawn:
        ax.legend(loc="upper right")
    else:
        _empty(ax, "UPLOAD_ACKED or DOWNLOAD_INTEGRATED events")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_rate(v)))
    ax.set_ylabel(f"throughput (per {width:g} s bin)")
    ax.set_title("Throughput")
    clock.label(ax)
    return ax


def plot_ack_latency(data: Data, ax: Axes | None = None, *, bins: int = 30) -> Axes:
    """Histogram of upload acknowledgement latency (UPLOAD_ACKED ``latency``), per session.

    Each session's legend entry gives its count, median and 95th percentile.
    """
    df = _frame(data)
    ax = _axes(ax)
    acks = df[(df["kind"] == EventKind.UPLOAD_ACKED.value) & df["latency"].notna()]
    sessions = _sessions(acks)
    samples = [_floats(acks.loc[acks["session"] == s, "latency"]) * 1000 for s in sessions]
    if sessions:
        labels = [
            f"{s} (n={len(v)}, median {np.median(v):.1f} ms, p95 {np.percentile(v, 95):.1f} ms)"
            for s, v in zip(sessions, samples, strict=True)
        ]
        ax.hist(
            samples,
            bins=bins,
            label=labels,
            color=[_color(sessions, s) for s in sessions],
            alpha=0.6,
            histtype="stepfilled",
        )
        ax.legend(loc="upper right", fontsize="small")
    else:
        _empty(ax, "UPLOAD_ACKED latencies")
    ax.set_xlabel("upload ack latency (ms)")
    ax.set_ylabel("uploads")
    ax.set_title("Upload acknowledgement latency")
    return ax

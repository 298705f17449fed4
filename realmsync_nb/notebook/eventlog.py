"""EventLog: a compact, thread-safe record of sessions' events, turned into DataFrames.

A notebook that watches a sync session for minutes collects tens of thousands of
events, most of them PROGRESS. Keeping each as a :class:`SyncEvent` object (plus its
``datetime``) costs a few hundred bytes; here each column lives in its own Python
``array`` (numbers with a null mask, strings as interned category codes), under 150
bytes an event, and converts to a typed DataFrame without a per-row Python loop.

Events arrive on the sync thread (``session.events.listen``), so every method takes
one lock; :meth:`EventLog.to_dataframe` copies the buffers under it and builds the
frame outside it.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from realmsync_nb.client.loop import Subscription
from realmsync_nb.client.types import ConnectionState, ProgressDirection, SessionState
from realmsync_nb.notebook._format import format_duration
from realmsync_nb.notebook._session import EventSource
from realmsync_nb.observe import EventKind, SyncEvent, event_fields

__all__ = ["COLUMN_DTYPES", "EventLog", "read_csv"]

CATEGORY_COLUMNS = ("session", "kind", "previous", "current", "direction", "outcome")
INT_COLUMNS = (
    "bytes",
    "changesets",
    "client_version",
    "server_version",
    "remaining_bytes",
    "objects",
    "transferred",
    "transferable",
    "code",
)
FLOAT_COLUMNS = ("estimate", "latency", "delay")
BOOL_COLUMNS = ("retry", "fatal")
STRING_COLUMNS = ("message",)

#: The dtype of every column of :meth:`EventLog.to_dataframe`, in column order.
COLUMN_DTYPES: dict[str, str] = {
    name: (
        "datetime64[ns, UTC]"
        if name == "time"
        else "category"
        if name in CATEGORY_COLUMNS
        else "Int64"
        if name in INT_COLUMNS
        else "Float64"
        if name in FLOAT_COLUMNS
        else "boolean"
        if name in BOOL_COLUMNS
        else "string"
    )
    for name in event_fields()
}

# Categories every log has, in a fixed order, so frames from different logs (or a
# log and its CSV) concatenate and compare as categoricals. Values outside these
# lists still work: they are appended, sorted.
_STATE_NAMES = [s.value for s in ConnectionState] + [s.value for s in SessionState]
_KNOWN_CATEGORIES: dict[str, list[str]] = {
    "session": [],
    "kind": [k.value for k in EventKind],
    "previous": _STATE_NAMES,
    "current": _STATE_NAMES,
    "direction": [d.value for d in ProgressDirection],
    "outcome": ["started", "done", "failed", "cancelled"],
}

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_STAGE = 256  # events staged before they go into the columns (see EventLog.record)


def _to_ns(time: _dt.datetime) -> int:
    """Nanoseconds since the epoch, exactly (no float rounding); naive means UTC."""
    if time.tzinfo is None:
        time = time.replace(tzinfo=_dt.UTC)
    delta = time - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _category_order(column: str, present: Iterable[str]) -> list[str]:
    known = _KNOWN_CATEGORIES[column]
    return known + sorted(set(present).difference(known))


class _Interner:
    """Strings ↔ small integer codes; -1 stands for None."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.values: list[str] = []

    def code(self, value: object) -> int:
        known: int | None = self.codes.get(value)  # type: ignore[call-overload]
        if known is not None:  # (a StrEnum finds its str: same hash, equal)
            return known
        if value is None:
            return -1
        text = str(value)
        code = self.codes.get(text)
        if code is None:
            code = self.codes[text] = len(self.values)
            self.values.append(text)
        return code


class _Snapshot:
    """A consistent, oldest-first copy of the buffers, taken under the lock."""

    def __init__(self, columns: dict[str, Any], categories: dict[str, list[str]]) -> None:
        self.columns = columns
        self.categories = categories


class EventLog:
    """Records :class:`SyncEvent`s from one or more sessions into columnar buffers.

    Args:
        sessions: sessions (anything with ``name`` and ``events``) to attach at once.
        max_events: keep at most this many events, dropping the oldest (a ring);
            None keeps everything.

    Example::

        log = rs.notebook.EventLog([session_a, session_b])
        ...
        df = log.to_dataframe()
        log.close()
    """

    def __init__(
        self, sessions: Iterable[EventSource] | None = None, max_events: int | None = None
    ) -> None:
        if max_events is not None and max_events < 1:
            raise ValueError(f"max_events must be at least 1 or None, not {max_events}")
        self.max_events = max_events
        self._lock = threading.Lock()
        self._subscriptions: list[tuple[EventSource, Subscription[SyncEvent]]] = []
        self._dropped = 0
        self._start = 0  # index of the oldest event once the ring is full
        self._time = array("q")
        # previous and current share one table so the two columns compare as categoricals.
        state_names = _Interner()
        self._interners = {
            name: state_names if name in ("previous", "current") else _Interner()
            for name in CATEGORY_COLUMNS
        }
        self._categories = {name: array("i") for name in CATEGORY_COLUMNS}
        self._ints = {name: array("q") for name in INT_COLUMNS}
        self._floats = {name: array("d") for name in FLOAT_COLUMNS}
        self._missing = {name: bytearray() for name in INT_COLUMNS + FLOAT_COLUMNS}
        self._bools = {name: array("b") for name in BOOL_COLUMNS}  # -1 missing, 0, 1
        self._strings: dict[str, list[str | None]] = {name: [] for name in STRING_COLUMNS}
        self._staged: list[SyncEvent] = []  # recorded, not yet in the columns
        for session in sessions or ():
            self.attach(session)

    # -- recording ---------------------------------------------------------------

    def attach(self, session: EventSource) -> Subscription[SyncEvent]:
        """Record every event of ``session`` from now on (via ``session.events.listen``)."""
        subscription = session.events.listen(self.record)
        with self._lock:
            self._subscriptions.append((session, subscription))
        return subscription

    def detach(self, session: EventSource) -> None:
        """Stop recording ``session``; what was recorded stays."""
        with self._lock:
            mine = [sub for s, sub in self._subscriptions if s is session]
            self._subscriptions = [(s, sub) for s, sub in self._subscriptions if s is not session]
        for sub in mine:
            sub.cancel()

    def close(self) -> None:
        """Unsubscribe from every session. The log keeps its events and ``record`` works."""
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, []
        for _, sub in subscriptions:
            sub.cancel()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def record(self, event: SyncEvent) -> None:
        """Append one event (the listener callback; also usable directly).

        Events wait in a short list and go into the columns _STAGE at a time (or at
        the next read), column by column: a fraction of the cost of one by one,
        which matters on the sync thread while a session is busy.
        """
        with self._lock:
            self._staged.append(event)
            if len(self._staged) >= _STAGE:
                self._fold()

    def _fold(self) -> None:
        """Move the staged events into the columns (with the lock held)."""
        staged, self._staged = self._staged, []
        if not staged:
            return
        if self.max_events is not None and len(self._time) + len(staged) > self.max_events:
            for event in staged:  # the ring overwrites: one by one
                self._record_one(event)
            return
        self._time.extend([_to_ns(e.time) for e in staged])
        for name, codes in self._categories.items():
            codes.extend(map(self._interners[name].code, map(attrgetter(name), staged)))
        n = len(staged)
        numbers: list[tuple[str, array[Any], Any]] = [
            *((name, self._ints[name], 0) for name in INT_COLUMNS),
            *((name, self._floats[name], 0.0) for name in FLOAT_COLUMNS),
        ]
        for name, buffer, zero in numbers:
            values = list(map(attrgetter(name), staged))
            if values.count(None) == n:  # most events leave most fields empty
                self._missing[name].extend(b"\x01" * n)
                buffer.extend([zero] * n)
                continue
            self._missing[name].extend([v is None for v in values])
            buffer.extend([zero if v is None else v for v in values])
        for name, bools in self._bools.items():
            bools.extend([-1 if v is None else bool(v) for v in map(attrgetter(name), staged)])
        for name, strings in self._strings.items():
            strings.extend(map(attrgetter(name), staged))

    def _record_one(self, event: SyncEvent) -> None:
        time = _to_ns(event.time)
        full = self.max_events is not None and len(self._time) >= self.max_events
        if full:
            slot = self._start
            self._start = (slot + 1) % len(self._time)
            self._dropped += 1
            self._time[slot] = time
            for name, codes in self._categories.items():
                codes[slot] = self._interners[name].code(getattr(event, name))
            for name, ints in self._ints.items():
                value = getattr(event, name)
                self._missing[name][slot] = value is None
                ints[slot] = 0 if value is None else value
            for name, floats in self._floats.items():
                value = getattr(event, name)
                self._missing[name][slot] = value is None
                floats[slot] = 0.0 if value is None else value
            for name, bools in self._bools.items():
                value = getattr(event, name)
                bools[slot] = -1 if value is None else bool(value)
            for name, strings in self._strings.items():
                strings[slot] = getattr(event, name)
        else:
            self._time.append(time)
            for name, codes in self._categories.items():
                codes.append(self._interners[name].code(getattr(event, name)))
            for name, ints in self._ints.items():
                value = getattr(event, name)
                self._missing[name].append(value is None)
                ints.append(0 if value is None else value)
            for name, floats in self._floats.items():
                value = getattr(event, name)
                self._missing[name].append(value is None)
                floats.append(0.0 if value is None else value)
            for name, bools in self._bools.items():
                value = getattr(event, name)
                bools.append(-1 if value is None else bool(value))
            for name, strings in self._strings.items():
                strings.append(getattr(event, name))

    def extend(self, events: Iterable[SyncEvent]) -> None:
        for event in events:
            self.record(event)

    def clear(self) -> None:
        """Forget every event (subscriptions stay) and reset the dropped count."""
        with self._lock:
            self._staged = []
            self._dropped = 0
            self._start = 0
            for buffer in self._buffers():
                del buffer[:]

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            self._fold()
            return len(self._time)

    @property
    def dropped(self) -> int:
        """How many of the oldest events the ring has overwritten."""
        with self._lock:
            self._fold()
            return self._dropped

    @property
    def sessions(self) -> list[str]:
        """Names of the sessions that have events in the log, sorted."""
        with self._lock:
            self._fold()
            used = set(self._categories["session"])
            names = self._interners["session"].values
            return sorted(names[code] for code in used)

    def _buffers(self) -> Iterator[Any]:
        yield self._time
        yield from self._categories.values()
        yield from self._ints.values()
        yield from self._floats.values()
        yield from self._missing.values()
        yield from self._bools.values()
        yield from self._strings.values()

    def _snapshot(self) -> _Snapshot:
        def ordered(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return np.concatenate([values[start:], values[:start]]) if start else values

        with self._lock:
            self._fold()
            start = self._start
            columns: dict[str, Any] = {"time": ordered(np.array(self._time, dtype=np.int64))}
            for name, codes in self._categories.items():
                columns[name] = ordered(np.array(codes, dtype=np.int32))
            for name, ints in self._ints.items():
                columns[name] = ordered(np.array(ints, dtype=np.int64))
            for name, floats in self._floats.items():
                columns[name] = ordered(np.array(floats, dtype=np.float64))
            for name, bools in self._bools.items():
                columns[name] = ordered(np.array(bools, dtype=np.int8))
            for name, mask in self._missing.items():
                columns["missing:" + name] = ordered(np.frombuffer(bytes(mask), dtype=np.bool_))
            for name, strings in self._strings.items():
                columns[name] = strings[start:] + strings[:start]
            categories = {name: list(self._interners[name].values) for name in CATEGORY_COLUMNS}
        return _Snapshot(columns, categories)

    def to_dataframe(self) -> pd.DataFrame:
        """All recorded events, oldest first, one row each, columns as in SyncEvent.

        Dtypes (see :data:`COLUMN_DTYPES`): ``time`` is ``datetime64[ns, UTC]``;
        ``session``, ``kind``, ``previous``, ``current``, ``direction`` and
        ``outcome`` are categorical; counts, versions and ``code`` are nullable
        ``Int64``; ``estimate``, ``latency`` and ``delay`` are ``Float64``;
        ``message`` is ``string``; ``retry`` and ``fatal`` are ``boolean``.
        """
        snap = self._snapshot()
        cols = snap.columns
        data: dict[str, Any] = {}
        for name in event_fields():
            if name == "time":
                data[name] = pd.to_datetime(cols[name], unit="ns", utc=True)
            elif name in CATEGORY_COLUMNS:
                data[name] = self._categorical(name, snap)
            elif name in INT_COLUMNS:
                data[name] = pd.arrays.IntegerArray(cols[name], cols["missing:" + name])
            elif name in FLOAT_COLUMNS:
                data[name] = pd.arrays.FloatingArray(cols[name], cols["missing:" + name])
            elif name in BOOL_COLUMNS:
                data[name] = pd.arrays.BooleanArray(cols[name] == 1, cols[name] < 0)
            else:
                data[name] = pd.array(cols[name], dtype="string")
        return pd.DataFrame(data)

    @staticmethod
    def _categorical(name: str, snap: _Snapshot) -> pd.Categorical[Any]:
        values = snap.categories[name]
        codes = snap.columns[name]
        if name in ("previous", "current"):
            used = np.union1d(snap.columns["previous"], snap.columns["current"])
        else:
            used = np.unique(codes)
        order = _category_order(name, (values[c] for c in used if c >= 0))
        position = {value: i for i, value in enumerate(order)}
        # Recode from first-seen order to the log's stable category order; the
        # trailing -1 makes remap[-1] (a missing value) stay missing.
        remap = np.array([position.get(v, -1) for v in values] + [-1], dtype=np.int32)
        return pd.Categorical.from_codes(remap[codes], categories=pd.Index(order))

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the DataFrame as CSV (no index). :func:`read_csv` restores the dtypes."""
        self.to_dataframe().to_csv(path, index=False)

    def to_parquet(self, path: str | os.PathLike[str]) -> None:
        """Write the DataFrame as Parquet; needs pyarrow (``pip install realmsync_nb[parquet]``).

        Raises:
            ImportError: pyarrow is not installed.
        """
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "EventLog.to_parquet needs pyarrow, which is not installed; "
                "install it with `pip install realmsync_nb[parquet]` (or use to_csv)"
            ) from exc
        self.to_dataframe().to_parquet(path, index=False)

    # -- text and HTML summaries --------------------------------------------------

    def _summary(self) -> tuple[str, list[tuple[str, int]], list[tuple[str, int]]]:
        df = self.to_dataframe()
        dropped = self.dropped
        n = len(df)
        bound = "unbounded" if self.max_events is None else f"max {self.max_events:,}"
        head = f"EventLog: {n:,} events ({bound}, {dropped:,} dropped)"
        if n:
            first, last = df["time"].min(), df["time"].max()
            span = (last - first).total_seconds()
            head += f", {first:%Y-%m-%d %H:%M:%S} → {last:%H:%M:%S} UTC ({format_duration(span)})"
        by_kind = _counts(df["kind"])
        by_session = _counts(df["session"])
        return head, by_session, by_kind

    def __repr__(self) -> str:
        head, by_session, by_kind = self._summary()
        lines = [head]
        if by_session:
            lines.append("  sessions: " + ", ".join(f"{k} {v:,}" for k, v in by_session))
            lines.append("  kinds: " + ", ".join(f"{k} {v:,}" for k, v in by_kind))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head, by_session, by_kind = self._summary()
        rows = []
        for label, counts in (("session", by_session), ("kind", by_kind)):
            cells = "".join(f"<td><code>{html.escape(k)}</code> {v:,}</td>" for k, v in counts)
            rows.append(f"<tr><th style='text-align:left'>{label}</th>{cells}</tr>")
        table = f"<table>{''.join(rows)}</table>" if by_session else ""
        return f"<div><b>{html.escape(head)}</b>{table}</div>"


def _counts(column: pd.Series[Any]) -> list[tuple[str, int]]:
    counts = column.value_counts(sort=True)
    return [(str(k), int(v)) for k, v in counts.items() if v]


def read_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV written by :meth:`EventLog.to_csv` back with the same dtypes.

    CSV cannot tell an empty ``message`` from a missing one; both read as missing.
    A column the file lacks (``objects``, in a log written by an earlier build) reads
    as missing in every row.
    """
    raw = pd.read_csv(
        path,
        dtype={
            name: "string" if dtype in ("category", "datetime64[ns, UTC]") else dtype
            for name, dtype in COLUMN_DTYPES.items()
        },
        keep_default_na=False,
        na_values=[""],
    )
    for name in event_fields():
        if name not in raw and name not in ("time", "session", "kind"):
            raw[name] = pd.Series(pd.NA, index=raw.index, dtype=COLUMN_DTYPES[name])
    data: dict[str, Any] = {}
    for name in event_fields():
        column = raw[name]
        if name == "time":
            data[name] = pd.to_datetime(column, utc=True, format="ISO8601").astype(
                "datetime64[ns, UTC]"
            )
        elif name in CATEGORY_COLUMNS:
            present: Sequence[str] = column.dropna().unique().tolist()
            if name in ("previous", "current"):
                present = list(raw["previous"].dropna().unique()) + list(
                    raw["current"].dropna().unique()
                )
            order = _category_order(name, present)
            data[name] = pd.Categorical(column.astype(object).where(column.notna()), order)
        else:
            data[name] = column
    return pd.DataFrame(data)

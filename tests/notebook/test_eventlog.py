from __future__ import annotations

import builtins
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from realmsync_nb.client.loop import SyncThread
from realmsync_nb.notebook import COLUMN_DTYPES, EventLog, read_csv
from realmsync_nb.observe import EventKind, SyncEvent, event_fields
from tests.notebook.conftest import at
from tests.notebook.standin import StandInSession


def test_every_event_field_is_a_typed_column() -> None:
    assert tuple(COLUMN_DTYPES) == event_fields()


def test_dataframe_columns_and_dtypes(two_devices: list[SyncEvent]) -> None:
    log = EventLog()
    log.extend(two_devices)
    df = log.to_dataframe()

    assert list(df.columns) == list(event_fields())
    assert len(df) == len(two_devices) == len(log)
    assert str(df["time"].dtype) == "datetime64[ns, UTC]"
    for name in ("session", "kind", "previous", "current", "direction", "outcome"):
        assert isinstance(df[name].dtype, pd.CategoricalDtype), name
    for name in (
        "bytes",
        "changesets",
        "client_version",
        "server_version",
        "remaining_bytes",
        "objects",
        "transferred",
        "transferable",
        "code",
    ):
        assert df[name].dtype == pd.Int64Dtype(), name
    for name in ("estimate", "latency", "delay"):
        assert df[name].dtype == pd.Float64Dtype(), name
    for name in ("retry", "fatal"):
        assert df[name].dtype == pd.BooleanDtype(), name
    assert isinstance(df["message"].dtype, pd.StringDtype)
    assert {name: str(df[name].dtype) for name in df} == COLUMN_DTYPES | {
        name: "category" for name in COLUMN_DTYPES if COLUMN_DTYPES[name] == "category"
    }


def test_dataframe_values_match_the_events(two_devices: list[SyncEvent]) -> None:
    log = EventLog(two_devices[:0])
    log.extend(two_devices)
    df = log.to_dataframe()
    for i in (0, 5, len(two_devices) - 1):
        event, row = two_devices[i], df.iloc[i]
        assert row["time"] == pd.Timestamp(event.time)
        assert row["session"] == event.session
        assert row["kind"] == event.kind.value
    errors = df[df["kind"] == "error"]
    assert list(errors["code"]) == [7, 7]
    assert list(errors["message"]) == ["boom", "boom"]
    assert errors["retry"].all() and not errors["fatal"].any()
    # Missing values are NA, not 0 or NaN stand-ins.
    connection = df[df["kind"] == "connection"]
    assert connection["bytes"].isna().all() and connection["estimate"].isna().all()
    assert connection["retry"].isna().all() and connection["message"].isna().all()
    acked = df[df["kind"] == "upload_acked"]
    assert acked["bytes"].sum() == 2 * 11 * 100
    assert acked["latency"].iloc[0] == pytest.approx(0.002)


def test_kind_and_state_categories_are_stable_across_logs() -> None:
    a, b = EventLog(), EventLog()
    a.record(SyncEvent(at(0), "A", EventKind.STATE, previous="active", current="paused"))
    b.record(
        SyncEvent(at(0), "A", EventKind.CONNECTION, previous="connected", current="disconnected")
    )
    da, db = a.to_dataframe(), b.to_dataframe()
    assert list(da["kind"].cat.categories) == [k.value for k in EventKind]
    assert da["kind"].dtype == db["kind"].dtype
    assert da["previous"].dtype == da["current"].dtype == db["current"].dtype
    both = pd.concat([da, db], ignore_index=True)
    assert isinstance(both["kind"].dtype, pd.CategoricalDtype)
    # previous and current share categories, so they compare element-wise.
    assert list(both["previous"] != both["current"]) == [True, True]


def test_unknown_category_values_are_kept() -> None:
    log = EventLog()
    log.record(SyncEvent(at(0), "A", EventKind.WAIT, direction="sideways", outcome="odd"))
    df = log.to_dataframe()
    assert df["direction"].iloc[0] == "sideways"
    assert df["outcome"].iloc[0] == "odd"


def test_naive_times_are_taken_as_utc() -> None:
    log = EventLog()
    log.record(SyncEvent(dt.datetime(2024, 1, 1, 12, 0, 0, 123456), "A", EventKind.PAUSE))
    assert log.to_dataframe()["time"].iloc[0] == pd.Timestamp("2024-01-01 12:00:00.123456Z")


def test_empty_log_has_the_same_columns() -> None:
    df = EventLog().to_dataframe()
    assert df.empty
    assert {name: str(df[name].dtype) for name in df} == COLUMN_DTYPES
    assert "0 events" in repr(EventLog())


def test_bounded_ring_drops_oldest_and_counts_drops() -> None:
    log = EventLog(max_events=5)
    for i in range(12):
        log.record(
            SyncEvent(
                at(i),
                f"s{i % 2}",
                EventKind.PROGRESS,
                direction="upload",
                transferred=i,
                transferable=100,
                estimate=i / 100,
            )
        )
    assert len(log) == 5
    assert log.dropped == 7
    df = log.to_dataframe()
    assert list(df["transferred"]) == [7, 8, 9, 10, 11]
    assert df["time"].is_monotonic_increasing
    assert list(df["session"]) == ["s1", "s0", "s1", "s0", "s1"]
    assert "7 dropped" in repr(log) and "max 5" in repr(log)


def test_unbounded_log_keeps_everything() -> None:
    log = EventLog()
    for i in range(3000):
        log.record(SyncEvent(at(i / 1000), "A", EventKind.HEARTBEAT, latency=i / 1e6))
    assert len(log) == 3000 and log.dropped == 0
    assert log.to_dataframe()["latency"].iloc[-1] == pytest.approx(2999 / 1e6)


def test_max_events_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_events"):
        EventLog(max_events=0)


def test_clear() -> None:
    log = EventLog(max_events=2)
    for i in range(3):
        log.record(SyncEvent(at(i), "A", EventKind.PAUSE))
    log.clear()
    assert len(log) == 0 and log.dropped == 0
    log.record(SyncEvent(at(9), "B", EventKind.RESUME))
    assert list(log.to_dataframe()["session"]) == ["B"]


def test_csv_round_trip(two_devices: list[SyncEvent], tmp_path: Path) -> None:
    log = EventLog()
    log.extend(two_devices)
    path = tmp_path / "log.csv"
    log.to_csv(path)
    pd.testing.assert_frame_equal(read_csv(path), log.to_dataframe())


def test_csv_without_a_newer_column_reads_it_as_missing(
    two_devices: list[SyncEvent], tmp_path: Path
) -> None:
    """A log saved by a build whose events had no ``objects`` still reads back."""
    log = EventLog()
    log.extend(two_devices)
    path = tmp_path / "old.csv"
    log.to_dataframe().drop(columns=["objects"]).to_csv(path, index=False)
    log.to_csv(tmp_path / "new.csv")
    assert "objects" not in pd.read_csv(path).columns
    old = read_csv(path)
    assert list(old.columns) == list(event_fields())
    assert old["objects"].dtype == pd.Int64Dtype() and old["objects"].isna().all()
    new = read_csv(tmp_path / "new.csv")
    assert new["objects"].notna().any()
    pd.testing.assert_frame_equal(old.drop(columns=["objects"]), new.drop(columns=["objects"]))


def test_csv_round_trip_of_a_ring(two_devices: list[SyncEvent], tmp_path: Path) -> None:
    log = EventLog(max_events=10)
    log.extend(two_devices)
    log.to_csv(tmp_path / "log.csv")
    pd.testing.assert_frame_equal(read_csv(tmp_path / "log.csv"), log.to_dataframe())


def test_parquet_round_trip(two_devices: list[SyncEvent], tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    log = EventLog()
    log.extend(two_devices)
    log.to_parquet(tmp_path / "log.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "log.parquet"), log.to_dataframe())


def test_parquet_without_pyarrow_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ImportError, match=r"pip install realmsync_nb\[parquet\]"):
        EventLog().to_parquet(tmp_path / "log.parquet")
    assert not (tmp_path / "log.parquet").exists()


def test_text_and_html_summaries(two_devices: list[SyncEvent]) -> None:
    log = EventLog()
    log.extend(two_devices)
    text = repr(log)
    assert text.startswith(f"EventLog: {len(two_devices)} events (unbounded, 0 dropped)")
    assert "device-A 57" in text and "device-B 57" in text
    assert "progress 44" in text and "connection 10" in text
    assert "2.65 s" in text  # from the first event to the last
    page = log._repr_html_()
    assert "<table>" in page and "device-A" in page and "progress" in page
    assert log.sessions == ["device-A", "device-B"]


def test_html_escapes_session_names() -> None:
    log = EventLog()
    log.record(SyncEvent(at(0), "<b>x</b>", EventKind.PAUSE))
    assert "<b>x</b>" not in log._repr_html_()


def test_attach_records_a_stream_until_closed(sync_thread: SyncThread) -> None:
    a, b = StandInSession(sync_thread, "A"), StandInSession(sync_thread, "B")
    log = EventLog([a])
    log.attach(b)
    a.settle()

    def emit(session: StandInSession, n: int) -> None:
        for i in range(n):
            session.emit(SyncEvent(at(i), session.name, EventKind.HEARTBEAT, latency=0.001))

    sync_thread.run_sync(lambda: (emit(a, 3), emit(b, 2)))
    assert len(log) == 5
    log.detach(b)
    a.settle()
    sync_thread.run_sync(lambda: (emit(a, 1), emit(b, 10)))
    assert len(log) == 6
    with log:
        pass  # closes
    a.settle()
    sync_thread.run_sync(lambda: emit(a, 10))
    assert len(log) == 6
    assert a.sinks == [] and b.sinks == []
    assert list(log.to_dataframe()["session"].value_counts().sort_index()) == [4, 2]


def test_recording_from_many_threads_is_safe() -> None:
    log = EventLog(max_events=1000)

    def feed(name: str) -> None:
        for i in range(2000):
            log.record(
                SyncEvent(
                    at(i),
                    name,
                    EventKind.PROGRESS,
                    direction="upload",
                    transferred=i,
                    transferable=2000,
                    estimate=i / 2000,
                )
            )

    threads = [threading.Thread(target=feed, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log) == 1000 and log.dropped == 7000
    df = log.to_dataframe()
    assert df["transferred"].notna().all()
    assert set(df["session"]) <= {"t0", "t1", "t2", "t3"}


def test_storage_is_compact(two_devices: list[SyncEvent]) -> None:
    # The buffers are arrays, not per-event objects: about 120 bytes an event.
    log = EventLog()
    for _ in range(50):
        log.extend(two_devices)
    size = sum(
        buffer.buffer_info()[1] * buffer.itemsize if hasattr(buffer, "buffer_info") else len(buffer)
        for buffer in log._buffers()
        if not isinstance(buffer, list)
    )
    assert size / len(log) < 150


@pytest.mark.parametrize("max_events", [None, 300, 1000])
def test_staged_events_are_seen_by_every_read_in_order(max_events: int | None) -> None:
    """Events go into the columns in batches; a read at any point sees all of them,
    in order, with and without a ring (also across a batch that only partly fits)."""
    log = EventLog(max_events=max_events)
    for i in range(1000):
        log.record(
            SyncEvent(
                at(i / 1000),
                "AB"[i % 2],
                EventKind.PROGRESS if i % 3 else EventKind.UPLOAD_SENT,
                bytes=None if i % 3 else i,
                estimate=i / 1000 if i % 3 else None,
            )
        )
        if i in (0, 99, 500, 999):  # reads in the middle of a batch
            kept = i + 1 if max_events is None else min(i + 1, max_events)
            assert len(log) == kept and log.dropped == i + 1 - kept
            df = log.to_dataframe()
            first = i + 1 - kept
            assert list(df["bytes"].fillna(-1)) == [-1 if j % 3 else j for j in range(first, i + 1)]
            assert df["time"].is_monotonic_increasing
    assert log.sessions == ["A", "B"]

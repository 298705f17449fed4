from __future__ import annotations

import datetime as dt

from realmsync_nb.notebook._format import format_bytes, format_duration, format_rate, format_time
from realmsync_nb.notebook._views import (
    HeaderView,
    ProgressModel,
    ProgressView,
    badge_html,
    tail_html,
    tail_line,
)
from realmsync_nb.observe import EventKind, SyncEvent
from tests.notebook.conftest import at


def progress(t: float, done: int, total: int) -> SyncEvent:
    return SyncEvent(
        at(t),
        "A",
        EventKind.PROGRESS,
        direction="upload",
        transferred=done,
        transferable=total,
        estimate=done / total if total else 1.0,
    )


def test_progress_rate_over_the_last_second() -> None:
    model = ProgressModel("upload")
    assert model.view.transferred is None
    assert model.update(progress(0.0, 0, 10_000)).rate is None
    assert model.update(progress(0.5, 2_000, 10_000)).rate == 4_000
    view = model.update(progress(1.0, 3_000, 10_000))
    assert view.rate == 3_000 and view.estimate == 0.3
    # Samples older than the window are dropped: 1.0 → 2.0 s moved 5 kB.
    assert model.update(progress(2.0, 8_000, 10_000)).rate == 5_000
    # Done: idle, no rate.
    done = model.update(progress(2.5, 10_000, 10_000))
    assert done.rate is None and done.estimate == 1.0
    assert "idle" in done.label and "100%" in done.label


def test_progress_restarts_when_a_new_batch_comes_into_view() -> None:
    model = ProgressModel("download")
    model.update(progress(0.0, 900, 1000))
    view = model.update(progress(0.1, 100, 5000))
    assert view.rate is None and view.transferable == 5000


def test_progress_label() -> None:
    assert ProgressView("upload").label == "upload: no progress reported yet"
    label = ProgressView("upload", 1500, 3000, 0.5, 2_500_000).label
    assert label == "upload 50% · 1.5 kB / 3.0 kB · 2.5 MB/s"


def test_badge_and_tail_escape_html() -> None:
    html = badge_html(HeaderView("<dev>", "paused", "disconnected", "error 1: <boom>"))
    assert "&lt;dev&gt;" in html and "&lt;boom&gt;" in html and "disconnected" in html
    page = tail_html((tail_line(SyncEvent(at(1.5), "A", EventKind.PAUSE)), "<x>"))
    assert page.index("&lt;x&gt;") < page.index("12:00:01.500  pause")  # newest first
    assert "(no events yet)" in tail_html(())


def test_formatters() -> None:
    assert format_bytes(None) == "n/a"
    assert format_bytes(999) == "999 B"
    assert format_bytes(1234) == "1.2 kB"
    assert format_bytes(5 * 10**12) == "5.0 TB"
    assert format_bytes(7 * 10**15) == "7000.0 TB"
    assert format_rate(None) == "n/a" and format_rate(2e6) == "2.0 MB/s"
    assert format_duration(0.0123) == "12.3 ms"
    assert format_duration(75) == "1 min 15 s"
    assert format_duration(7300) == "2 h 1 min"
    assert format_time(dt.datetime(2024, 1, 1, 1, 2, 3, 456789)) == "01:02:03.456"
    cet = dt.timezone(dt.timedelta(hours=1))
    assert format_time(dt.datetime(2024, 1, 1, 2, 0, tzinfo=cet)) == "01:00:00.000"

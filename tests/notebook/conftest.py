"""Fixtures for the notebook layer: synthetic event logs, a stand-in event source."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import matplotlib
import matplotlib.pyplot as plt
import pytest

from realmsync_nb.client.loop import SyncThread
from realmsync_nb.observe import EventKind, SyncEvent

matplotlib.use("Agg")

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def device_events(name: str, offset: float = 0.0) -> list[SyncEvent]:
    """One device's plausible session: connect, upload and download, pause, error, resume."""

    def t(s: float) -> dt.datetime:
        return at(s + offset)

    K = EventKind
    events = [
        SyncEvent(t(0.0), name, K.CONNECTION, previous="disconnected", current="connecting"),
        SyncEvent(t(0.2), name, K.CONNECTION, previous="connecting", current="connected"),
    ]
    for i in range(11):
        events += [
            SyncEvent(
                t(0.3 + i * 0.1),
                name,
                K.PROGRESS,
                direction="upload",
                transferred=i * 100,
                transferable=1000,
                estimate=i / 10,
            ),
            SyncEvent(
                t(0.32 + i * 0.1),
                name,
                K.UPLOAD_ACKED,
                bytes=100,
                changesets=1,
                client_version=i + 1,
                latency=0.002 + i * 0.001,
            ),
            SyncEvent(
                t(0.35 + i * 0.1),
                name,
                K.PROGRESS,
                direction="download",
                transferred=i * 50,
                transferable=500,
                estimate=i / 10,
            ),
            SyncEvent(
                t(0.36 + i * 0.1),
                name,
                K.DOWNLOAD_INTEGRATED,
                bytes=50,
                changesets=1,
                server_version=i + 1,
                remaining_bytes=500 - i * 50,
                objects=i,
            ),
        ]
    events += [
        SyncEvent(t(1.5), name, K.STATE, previous="active", current="paused"),
        SyncEvent(t(1.5), name, K.PAUSE, current="paused"),
        SyncEvent(t(1.5), name, K.CONNECTION, previous="connected", current="disconnected"),
        SyncEvent(t(1.8), name, K.ERROR, code=7, message="boom", retry=True, fatal=False),
        SyncEvent(t(2.0), name, K.STATE, previous="paused", current="active"),
        SyncEvent(t(2.0), name, K.RESUME, current="active"),
        SyncEvent(t(2.0), name, K.CONNECTION, previous="disconnected", current="connecting"),
        SyncEvent(t(2.1), name, K.CONNECTION, previous="connecting", current="connected"),
        SyncEvent(t(2.2), name, K.WAIT, direction="upload", outcome="done"),
        SyncEvent(t(2.3), name, K.RECONNECT_SCHEDULED, delay=0.5),
        SyncEvent(t(2.4), name, K.HEARTBEAT, latency=0.004),
    ]
    return events


@pytest.fixture
def two_devices() -> list[SyncEvent]:
    """Events of device-A and device-B (0.25 s later), interleaved in time order."""
    events = device_events("device-A") + device_events("device-B", 0.25)
    return sorted(events, key=lambda e: e.time)


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture
def sync_thread() -> Iterator[SyncThread]:
    thread = SyncThread("test-sync")
    yield thread
    thread.stop()

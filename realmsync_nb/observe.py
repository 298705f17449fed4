"""Typed records of everything a sync session does: the notebook layer's only input.

A :class:`SyncEvent` is one flat, frozen record. Every event has a wall-clock UTC
``time``, the ``session`` name and a ``kind``; the other fields are filled where
they mean something for that kind and are None elsewhere, so a log of events maps
straight onto DataFrame columns.

========================  ==============================================================
kind                      fields set
========================  ==============================================================
CONNECTION                previous, current (ConnectionState names); error if one caused it
STATE                     previous, current (SessionState names)
PAUSE / RESUME            current (the session state after)
UPLOAD_SENT               bytes, changesets, client_version (the highest sent)
UPLOAD_ACKED              bytes, changesets, client_version, latency (send → ack, seconds)
DOWNLOAD_INTEGRATED       bytes, changesets, server_version, remaining_bytes, objects
                          (the objects each changeset created, changed or deleted here,
                          summed; 0 when the merge rules kept what this replica had)
PROGRESS                  direction, transferred, transferable, estimate
WAIT                      direction, outcome ("started", "done", "failed", "cancelled")
ERROR                     code, message, retry, fatal
RECONNECT_SCHEDULED       delay (seconds until the next attempt)
HEARTBEAT                 latency (ping round trip, seconds)
CONDITIONS                message (a network-conditions change, from realmsync_nb.faults)
========================  ==============================================================
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, fields
from enum import StrEnum

__all__ = ["EventKind", "SyncEvent", "event_fields"]


class EventKind(StrEnum):
    CONNECTION = "connection"
    STATE = "state"
    PAUSE = "pause"
    RESUME = "resume"
    UPLOAD_SENT = "upload_sent"
    UPLOAD_ACKED = "upload_acked"
    DOWNLOAD_INTEGRATED = "download_integrated"
    PROGRESS = "progress"
    WAIT = "wait"
    ERROR = "error"
    RECONNECT_SCHEDULED = "reconnect_scheduled"
    HEARTBEAT = "heartbeat"
    CONDITIONS = "conditions"


@dataclass(frozen=True, slots=True)
class SyncEvent:
    """One thing that happened in a session. See the module docstring for the fields."""

    time: _dt.datetime
    session: str
    kind: EventKind
    previous: str | None = None
    current: str | None = None
    direction: str | None = None  # "upload" or "download"
    bytes: int | None = None
    changesets: int | None = None
    client_version: int | None = None
    server_version: int | None = None
    remaining_bytes: int | None = None
    objects: int | None = None
    transferred: int | None = None
    transferable: int | None = None
    estimate: float | None = None
    latency: float | None = None
    delay: float | None = None
    outcome: str | None = None
    code: int | None = None
    message: str | None = None
    retry: bool | None = None
    fatal: bool | None = None

    def describe(self) -> str:
        """A one-line human summary, used by text reprs and the widget's event tail."""
        k = self.kind
        if k in (EventKind.CONNECTION, EventKind.STATE):
            s = f"{k.value}: {self.previous} → {self.current}"
            return s + (f" ({self.message})" if self.message else "")
        if k in (EventKind.PAUSE, EventKind.RESUME):
            return k.value
        if k == EventKind.UPLOAD_SENT:
            return f"upload sent: {self.changesets} changesets, {self.bytes} B"
        if k == EventKind.UPLOAD_ACKED:
            lat = f", {self.latency * 1000:.1f} ms" if self.latency is not None else ""
            return f"upload acked: {self.changesets} changesets, {self.bytes} B{lat}"
        if k == EventKind.DOWNLOAD_INTEGRATED:
            changed = "" if self.objects is None else f" ({self.objects} objects changed)"
            return (
                f"download: {self.changesets} changesets{changed}, {self.bytes} B, "
                f"{self.remaining_bytes} B to come"
            )
        if k == EventKind.PROGRESS:
            return (
                f"{self.direction} progress {self.transferred}/{self.transferable} B "
                f"({(self.estimate or 0) * 100:.0f}%)"
            )
        if k == EventKind.WAIT:
            return f"wait for {self.direction}: {self.outcome}"
        if k == EventKind.ERROR:
            return f"error {self.code}: {self.message}"
        if k == EventKind.RECONNECT_SCHEDULED:
            return f"reconnect in {self.delay:.2f} s"
        if k == EventKind.HEARTBEAT:
            return f"heartbeat rtt {(self.latency or 0) * 1000:.1f} ms"
        return f"{k.value}: {self.message}"


def event_fields() -> tuple[str, ...]:
    """The names of SyncEvent's fields, in order (the columns of an event log)."""
    return tuple(f.name for f in fields(SyncEvent))


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)

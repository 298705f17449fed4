"""The slice of the public Session API the notebook layer relies on.

The notebook layer never imports the engine's Session class: it is typed against
this protocol, so anything with these public members (a real ``rs.Session``, or a
stand-in in tests) can be watched and steered.
"""

from __future__ import annotations

from typing import Protocol

from realmsync_nb.client.loop import Stream, SyncFuture
from realmsync_nb.client.types import (
    ConnectionState,
    ProgressDirection,
    ProgressMode,
    SessionState,
    SyncProgress,
)
from realmsync_nb.observe import SyncEvent

__all__ = ["EventSource", "SessionLike"]


class EventSource(Protocol):
    """Something with a name and a stream of events: all an EventLog needs."""

    @property
    def name(self) -> str: ...

    @property
    def events(self) -> Stream[SyncEvent]: ...


class SessionLike(EventSource, Protocol):
    """The public members of ``rs.Session`` that widgets read and call."""

    @property
    def state(self) -> SessionState: ...

    @property
    def connection_state(self) -> ConnectionState: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def wait_for_upload(self) -> SyncFuture[None]: ...

    def wait_for_download(self) -> SyncFuture[None]: ...

    def get_progress_stream(
        self, direction: ProgressDirection, mode: ProgressMode
    ) -> Stream[SyncProgress]: ...

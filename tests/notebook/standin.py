"""A stand-in for a session's event source, driven by the test, on the real Stream.

Only for what a real session cannot be made to do on cue, such as ten thousand
PROGRESS events in one second. Everything goes through the public
:class:`~realmsync_nb.client.loop.Stream` machinery and the sync thread, as with a
real session.
"""

from __future__ import annotations

from collections.abc import Callable

from realmsync_nb.client.loop import Stream, StreamSink, SyncFuture, SyncThread
from realmsync_nb.client.types import (
    ConnectionState,
    ProgressDirection,
    ProgressMode,
    SessionState,
    SyncProgress,
)
from realmsync_nb.observe import EventKind, SyncEvent, now


class StandInSession:
    def __init__(self, thread: SyncThread, name: str = "stand-in") -> None:
        self.name = name
        self.thread = thread
        self.state = SessionState.ACTIVE
        self.connection_state = ConnectionState.CONNECTED
        self.sinks: list[StreamSink[SyncEvent]] = []
        self.pauses = 0
        self.resumes = 0

    @property
    def events(self) -> Stream[SyncEvent]:
        def subscribe(sink: StreamSink[SyncEvent]) -> Callable[[], None]:
            self.sinks.append(sink)
            return lambda: self.sinks.remove(sink)

        return Stream(self.thread, subscribe, "stand-in events")

    def get_progress_stream(
        self, direction: ProgressDirection, mode: ProgressMode
    ) -> Stream[SyncProgress]:
        return Stream(self.thread, lambda sink: lambda: None, "stand-in progress")

    def emit(self, event: SyncEvent) -> None:
        """Push one event to every listener; call on the sync thread."""
        assert self.thread.on_thread
        for sink in list(self.sinks):
            sink.push(event)

    def progress(self, transferred: int, transferable: int) -> SyncEvent:
        return SyncEvent(
            now(),
            self.name,
            EventKind.PROGRESS,
            direction="upload",
            transferred=transferred,
            transferable=transferable,
            estimate=transferred / transferable,
        )

    def settle(self) -> None:
        """Return once everything queued on the sync thread (subscriptions too) has run."""
        self.thread.run_sync(lambda: None, timeout=10)

    def pause(self) -> None:
        self.pauses += 1

    def resume(self) -> None:
        self.resumes += 1

    def wait_for_upload(self) -> SyncFuture[None]:
        return SyncFuture()

    def wait_for_download(self) -> SyncFuture[None]:
        return SyncFuture()

"""Public value types of the sync session: states, progress, connection changes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ConnectionState",
    "ConnectionStateChange",
    "ProgressDirection",
    "ProgressMode",
    "SessionState",
    "SyncProgress",
]


class SessionState(StrEnum):
    """The logical state of a session, independent of the network.

    A session can be ACTIVE while offline (it keeps trying to connect); look at
    ``connection_state`` for the network.
    """

    ACTIVE = "active"
    PAUSED = "paused"
    WAITING_FOR_ACCESS_TOKEN = "waiting_for_access_token"
    INACTIVE = "inactive"


class ConnectionState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


class ProgressDirection(StrEnum):
    UPLOAD = "upload"
    DOWNLOAD = "download"


class ProgressMode(StrEnum):
    REPORT_INDEFINITELY = "report_indefinitely"
    FOR_CURRENTLY_OUTSTANDING_WORK = "for_currently_outstanding_work"


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """Progress of one direction, in encoded changeset bytes.

    ``transferable_bytes`` is the work in view (since the direction was last caught
    up, or since registration for FOR_CURRENTLY_OUTSTANDING_WORK);
    ``transferred_bytes`` how much of it is done; ``progress_estimate`` their ratio,
    1.0 when there is nothing to do.
    """

    transferred_bytes: int
    transferable_bytes: int
    progress_estimate: float

    @property
    def is_transfer_complete(self) -> bool:
        return self.progress_estimate >= 1.0


@dataclass(frozen=True, slots=True)
class ConnectionStateChange:
    previous: ConnectionState
    current: ConnectionState

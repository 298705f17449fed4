"""realmsync_nb: see and steer a data-sync session from Jupyter.

A local object store (SQLite), a sync server (embedded or standalone), the sync
session of the Realm Flutter SDK in Python, and notebook widgets over it.
See ../README.md and docs/ for the tour; the public names are listed in __all__.
"""

from __future__ import annotations

from .client.app import (
    App,
    AppConfiguration,
    Credentials,
    EmailPasswordAuth,
    SyncTimeoutOptions,
    User,
)
from .client.loop import Stream, Subscription, SyncFuture
from .client.model import Model, primary_key
from .client.realm import Configuration, Realm, Results
from .client.session import Session
from .client.types import (
    ConnectionState,
    ConnectionStateChange,
    ProgressDirection,
    ProgressMode,
    SessionState,
    SyncProgress,
)
from .errors import (
    AuthError,
    ProtocolError,
    RealmClosedError,
    RealmError,
    RealmSyncError,
    SchemaError,
    SessionError,
    SessionInactiveError,
    SessionPausedError,
    SyncServerError,
    ValidationError,
)
from .observe import EventKind, SyncEvent
from .server.embedded import SyncServer

__version__ = "0.1.0"

__all__ = [
    "App",
    "AppConfiguration",
    "AuthError",
    "Configuration",
    "ConnectionState",
    "ConnectionStateChange",
    "Credentials",
    "EmailPasswordAuth",
    "EventKind",
    "Model",
    "ProgressDirection",
    "ProgressMode",
    "ProtocolError",
    "Realm",
    "RealmClosedError",
    "RealmError",
    "RealmSyncError",
    "Results",
    "SchemaError",
    "Session",
    "SessionError",
    "SessionInactiveError",
    "SessionPausedError",
    "SessionState",
    "Stream",
    "Subscription",
    "SyncEvent",
    "SyncFuture",
    "SyncProgress",
    "SyncServer",
    "SyncServerError",
    "SyncTimeoutOptions",
    "User",
    "ValidationError",
    "__version__",
    "primary_key",
]

"""Every error realmsync_nb raises, in one tree.

Each error says what went wrong and what to do about it, and carries the facts
as fields so code can react without parsing text::

    RealmSyncError
    ├── RealmError                  local database misuse (Realm, Model, write())
    │   ├── RealmClosedError        the Realm (or its App) was closed
    │   ├── SchemaError             a model or stored schema is invalid / incompatible
    │   └── ValidationError         a value of the wrong type, a missing or duplicate key
    │                               (also a TypeError / ValueError by inheritance)
    ├── AuthError                   bad credentials, a bad or expired token
    ├── SessionError                the sync session could not do what was asked
    │   ├── SessionPausedError      a wait was pending when pause() was called
    │   └── SessionInactiveError    the session is closed or hit a fatal error
    ├── ProtocolError               malformed, oversized or out-of-order protocol input
    └── SyncServerError             the server reported an error (code, retry hints)

``ProtocolError.code`` and ``SyncServerError.code`` are the numbers listed in
docs/protocol.md.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ProtocolError",
    "RealmClosedError",
    "RealmError",
    "RealmSyncError",
    "SchemaError",
    "SessionError",
    "SessionInactiveError",
    "SessionPausedError",
    "SyncServerError",
    "ValidationError",
]


class RealmSyncError(Exception):
    """Base class of every error raised by realmsync_nb."""


class RealmError(RealmSyncError):
    """The local database was used in a way it does not allow."""


class RealmClosedError(RealmError):
    """The Realm, or the App that owns it, was closed; open it again to continue."""


class SchemaError(RealmError):
    """A model class is malformed, or does not match what a file or server holds."""


class ValidationError(RealmError, TypeError, ValueError):
    """A value cannot be stored: wrong type, missing or duplicate primary key.

    Raised before anything is written, so the transaction is left unchanged.

    Attributes:
        model: the model (table) name.
        field: the field name, or None when the error concerns the whole object.
    """

    def __init__(self, message: str, *, model: str, field: str | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.field = field


class AuthError(RealmSyncError):
    """Logging in or registering failed, or a token was rejected.

    Attributes:
        code: the protocol error code (see docs/protocol.md), or 0 for local errors.
    """

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class SessionError(RealmSyncError):
    """The sync session could not complete the request."""


class SessionPausedError(SessionError):
    """The session was paused while this wait was pending; resume() and wait again."""


class SessionInactiveError(SessionError):
    """The session is closed or stopped after a fatal error; it will not sync again.

    Attributes:
        cause: the error that ended the session, if one did.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ProtocolError(RealmSyncError):
    """Protocol input was malformed, oversized, or arrived out of order.

    Attributes:
        code: the protocol error code (see docs/protocol.md).
    """

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class SyncServerError(RealmSyncError):
    """The server reported an error for this session.

    Attributes:
        code: the protocol error code (see docs/protocol.md).
        retry: whether the client may reconnect and try again.
        backoff: seconds the server asks the client to wait first, or None.
        fatal: the session cannot continue (it becomes INACTIVE).
    """

    def __init__(
        self,
        message: str,
        *,
        code: int,
        retry: bool,
        backoff: float | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry = retry
        self.backoff = backoff
        self.fatal = fatal

"""App, users and credentials: the client's entry point and its sync thread."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidURI, WebSocketException

from ..errors import AuthError, RealmClosedError, RealmSyncError
from ..protocol.messages import (
    MAX_MESSAGE_SIZE,
    SUBPROTOCOL,
    AuthOp,
    AuthRequest,
    AuthResponse,
    Error,
    decode,
    encode,
)
from .loop import SyncFuture, SyncThread

if TYPE_CHECKING:
    from .realm import Realm

__all__ = [
    "App",
    "AppConfiguration",
    "Credentials",
    "EmailPasswordAuth",
    "SyncTimeoutOptions",
    "User",
]


@dataclass(frozen=True)
class SyncTimeoutOptions:
    """Timing of connections, heartbeats and reconnects (seconds).

    A dead connection is noticed within ``ping_interval + pong_timeout``. Realm's
    defaults are 60 s and 120 s; ours are shorter because a notebook user watching
    a session wants to see the network drop while they are still looking.
    """

    connect_timeout: float = 10.0
    ping_interval: float = 5.0
    pong_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_multiplier: float = 2.0
    backoff_jitter: float = 0.25


@dataclass(frozen=True)
class AppConfiguration:
    """Where the server is and how to talk to it.

    Args:
        base_url: the server's ``ws://host:port`` address (``SyncServer.url``).
        sync_timeouts: connection and heartbeat timing.
        upload_batch_bytes: most changeset bytes in one UPLOAD message.
    """

    base_url: str
    sync_timeouts: SyncTimeoutOptions = field(default_factory=SyncTimeoutOptions)
    upload_batch_bytes: int = 1 << 20
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("ws://", "wss://")):
            raise RealmSyncError(
                f"base_url must start with ws:// or wss://, got {self.base_url!r} "
                "(use SyncServer.url)"
            )


@dataclass(frozen=True)
class Credentials:
    """How to log in: ``Credentials.anonymous()`` or ``Credentials.email_password(...)``."""

    provider: str
    email: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def anonymous(cls) -> Credentials:
        return cls("anonymous")

    @classmethod
    def email_password(cls, email: str, password: str) -> Credentials:
        if not isinstance(email, str) or not isinstance(password, str):
            raise TypeError("email and password must be str")
        return cls("email", email, password)


class User:
    """A logged-in user. Tokens refresh themselves; ``log_out()`` ends every session."""

    def __init__(self, app: App, response: AuthResponse, provider: str) -> None:
        self.app = app
        self.id = response.user_id
        self.provider = provider
        self._access_token = response.access_token
        self._refresh_token = response.refresh_token
        self._expires_at = time.time() + response.expires_in
        self.logged_in = True

    @property
    def access_token(self) -> str:
        return self._access_token

    def access_token_fresh(self, margin: float = 5.0) -> bool:
        return time.time() + margin < self._expires_at

    async def refresh_access_token(self) -> str:
        """Get a new access token with the refresh token (on the sync thread)."""
        if not self.logged_in:
            raise AuthError("the user logged out; log in again")
        resp = await self.app._auth_request(AuthRequest(AuthOp.REFRESH, token=self._refresh_token))
        self._access_token = resp.access_token
        self._expires_at = time.time() + resp.expires_in
        return self._access_token

    def log_out(self) -> None:
        """Close this user's realms and forget the tokens."""
        self.logged_in = False
        for realm in list(self.app._realms):
            if realm.config.user is self:
                realm.close()

    def delete(self) -> SyncFuture[None]:
        """Delete (disable) this user on the server; its sessions end with a fatal error."""

        async def run() -> None:
            await self.app._auth_request(AuthRequest(AuthOp.DELETE_USER, token=self._access_token))
            self.logged_in = False

        return self.app._thread.submit(run())

    def __repr__(self) -> str:
        return f"<User {self.id} ({self.provider})>"


class EmailPasswordAuth:
    def __init__(self, app: App) -> None:
        self._app = app

    def register_user(self, email: str, password: str) -> SyncFuture[None]:
        """Create an email/password user; fails with AuthError if it exists or is invalid."""

        async def run() -> None:
            await self._app._auth_request(AuthRequest(AuthOp.REGISTER, email, password))

        return self._app._thread.submit(run())


class App:
    """A connection to one sync server, owning the sync thread.

    ``App(server.url)`` or ``App(AppConfiguration(base_url=...))``. Everything that
    talks to the network runs on the app's sync thread; ``close()`` stops it and
    closes the app's realms.
    """

    def __init__(self, config: AppConfiguration | str) -> None:
        self.config = AppConfiguration(config) if isinstance(config, str) else config
        self._thread = SyncThread()
        self.email_password_auth = EmailPasswordAuth(self)
        self._realms: weakref.WeakSet[Realm] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        self.current_user: User | None = None

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RealmClosedError("this App was closed; create a new App")

    def log_in(self, credentials: Credentials) -> SyncFuture[User]:
        """Log in; the future fails with AuthError on bad credentials."""
        self._check_open()
        if not isinstance(credentials, Credentials):
            raise TypeError(
                f"log_in() takes Credentials, got {type(credentials).__name__}; use "
                "rs.Credentials.anonymous() or rs.Credentials.email_password(email, password)"
            )
        if credentials.provider == "anonymous":
            req = AuthRequest(AuthOp.LOGIN_ANONYMOUS)
        else:
            req = AuthRequest(AuthOp.LOGIN_EMAIL, credentials.email, credentials.password)

        async def run() -> User:
            resp = await self._auth_request(req)
            user = User(self, resp, credentials.provider)
            self.current_user = user
            return user

        return self._thread.submit(run())

    def reconnect(self) -> None:
        """Skip every session's pending reconnect delay and try now."""
        for realm in list(self._realms):
            realm.sync_session._reconnect_now()

    async def _auth_request(self, req: AuthRequest) -> AuthResponse:
        url = self.config.base_url.rstrip("/") + "/auth"
        timeout = self.config.request_timeout
        try:
            async with asyncio.timeout(timeout):
                async with connect(
                    url,
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    compression=None,
                    proxy=None,
                    ping_interval=None,
                    max_size=MAX_MESSAGE_SIZE,
                    open_timeout=self.config.sync_timeouts.connect_timeout,
                ) as ws:
                    await ws.send(encode(req))
                    data = await ws.recv()
        except TimeoutError:
            raise AuthError(f"the server at {url} did not answer within {timeout} s") from None
        except (OSError, WebSocketException, InvalidURI) as exc:
            raise AuthError(f"cannot reach the server at {url}: {exc}") from None
        reply = decode(data if isinstance(data, bytes) else data.encode())
        if isinstance(reply, Error):
            raise AuthError(reply.message, code=reply.code)
        if not isinstance(reply, AuthResponse):
            raise AuthError(f"unexpected reply {type(reply).__name__} from the server")
        return reply

    def _register_realm(self, realm: Realm) -> None:
        self._check_open()
        self._realms.add(realm)

    def close(self) -> None:
        """Close every realm of this app and stop the sync thread."""
        if self._closed:
            return
        for realm in list(self._realms):
            realm.close()
        self._closed = True
        self._thread.stop()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<App {self.base_url}{' closed' if self._closed else ''}>"

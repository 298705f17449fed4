"""SyncServer: the sync server on its own thread, for notebooks, tests and demos."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, serve

from ..errors import RealmSyncError
from ..protocol.messages import MAX_MESSAGE_SIZE, SUBPROTOCOL
from .core import ServerConfig, SyncServerCore
from .storage import SQLiteStorage

__all__ = ["SyncServer"]


async def start_listening(core: SyncServerCore, host: str, port: int) -> Server:
    """Listen for WebSocket connections on ``host:port`` (0 picks a free port)."""
    return await serve(
        core.handle,
        host,
        port,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,  # loopback and LAN use; changesets are small and varint-packed
        ping_interval=None,  # the sync protocol has its own PING/PONG
        max_size=MAX_MESSAGE_SIZE + 1024,
        max_queue=4,
        close_timeout=2,
    )


class SyncServer:
    """An embedded sync server.

    Args:
        data_dir: where the server keeps its SQLite file; None makes a fresh temp dir.
            Restarting on the same directory keeps all data, users and history.
        host: the interface to bind; loopback by default.
        port: 0 picks a free port (read it back from ``url``).
        **config: fields of :class:`ServerConfig` (token lifetimes, batch sizes,
            ``enable_test_commands``).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **config: Any,
    ) -> None:
        self.data_dir = data_dir if data_dir is not None else tempfile.mkdtemp(prefix="rs-srv-")
        self.host = host
        self.port = port
        self.config = ServerConfig(**config)
        self.core: SyncServerCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._bound_port: int | None = None

    @property
    def url(self) -> str:
        if self._bound_port is None:
            raise RealmSyncError("the server is not running; call start() first")
        return f"ws://{self.host}:{self._bound_port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> SyncServer:
        """Start listening; returns once connections are accepted."""
        if self._thread is not None:
            return self
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                storage = SQLiteStorage(self.data_dir)
                self.core = SyncServerCore(storage, self.config)
                self._server = loop.run_until_complete(
                    start_listening(self.core, self.host, self.port)
                )
                sock = next(iter(self._server.sockets))
                self._bound_port = sock.getsockname()[1]
            except BaseException as exc:
                error.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                loop.run_until_complete(self._server.wait_closed())
                storage.close()
                loop.close()

        self._thread = threading.Thread(target=run, name="realmsync-server", daemon=True)
        self._thread.start()
        started.wait()
        if error:
            self._thread = None
            raise RealmSyncError(f"the sync server could not start: {error[0]}") from error[0]
        return self

    def stop(self) -> None:
        """Close every connection and stop; data stays in ``data_dir``."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._server = None
        self._bound_port = None
        self.core = None

    def snapshot(self) -> dict[str, dict[Any, dict[str, Any]]]:
        """The server's merged state: every live object by table and primary key."""
        core, loop = self.core, self._loop
        if core is None or loop is None:
            raise RealmSyncError("the server is not running")

        async def read() -> dict[str, dict[Any, dict[str, Any]]]:
            return core.storage.snapshot()

        return asyncio.run_coroutine_threadsafe(read(), loop).result(10)

    def __enter__(self) -> SyncServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<SyncServer {where} data_dir={self.data_dir!r}>"

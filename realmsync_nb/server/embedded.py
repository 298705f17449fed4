"""SyncServer: the sync server on its own thread, for notebooks, tests and demos."""

from __future__ import annotations

import tempfile
from typing import Any

from websockets.asyncio.server import Server, serve

from ..errors import RealmSyncError
from ..protocol.messages import MAX_MESSAGE_SIZE, SUBPROTOCOL
from ..threads import BackgroundListener
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


class SyncServer(BackgroundListener):
    """An embedded sync server.

    Args:
        data_dir: where the server keeps its SQLite file; None makes a fresh temp dir.
            Restarting on the same directory keeps all data, users and history.
        host: the interface to bind; loopback by default.
        port: 0 picks a free port (read it back from ``url``).
        **config: fields of :class:`ServerConfig` (token lifetimes, batch sizes,
            ``enable_test_commands``).
    """

    what = "sync server"

    def __init__(
        self,
        data_dir: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **config: Any,
    ) -> None:
        self.data_dir = data_dir if data_dir is not None else tempfile.mkdtemp(prefix="rs-srv-")
        super().__init__(host, port)
        self.config = ServerConfig(**config)
        self.core: SyncServerCore | None = None
        self._server: Server | None = None

    async def _open(self) -> Server:
        core = SyncServerCore(SQLiteStorage(self.data_dir), self.config)
        try:
            self._server = await start_listening(core, self.host, self.port)
        except BaseException:
            core.storage.close()
            raise
        self.core = core
        return self._server

    async def _close(self) -> None:
        server, core, self._server, self.core = self._server, self.core, None, None
        if server is not None:
            server.close()
            await server.wait_closed()
        if core is not None:
            core.storage.close()

    def snapshot(self) -> dict[str, dict[Any, dict[str, Any]]]:
        """The server's merged state: every live object by table and primary key."""
        core, thread = self.core, self._thread
        if core is None or thread is None:
            raise RealmSyncError("the server is not running")
        return thread.run_sync(core.storage.snapshot, timeout=10)

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<SyncServer {where} data_dir={self.data_dir!r}>"

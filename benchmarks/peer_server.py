"""The peer's server: ``python -m benchmarks.peer_server hypercorn|websockets --port N``.

pycrdt-websocket's ``WebsocketServer`` (one YRoom per path) behind one of two
transports, as its documentation shows them:

- ``hypercorn``: the documented ASGI stack, ``ASGIServer(WebsocketServer())``
  served by Hypercorn (clients use httpx-ws).
- ``websockets``: ``websockets.serve(...)`` handing each connection to
  ``WebsocketServer.serve`` (clients use ``websockets.connect``).

Message-size limits are raised on every layer (Hypercorn's default is 16 MiB,
websockets' 1 MiB, httpx-ws's 64 KiB), so one large transaction is not refused by
a default; permessage-deflate is off, as it is for our engine (loopback).
Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

MAX_MESSAGE = 512 * 1024 * 1024


class WebsocketsChannel:
    """A ``websockets`` connection as the Channel pycrdt-websocket expects.

    The documented WebSocket API: ``path``, async iteration until closed,
    ``send(bytes)`` and ``recv() -> bytes``. websockets' own connection objects
    have no ``path`` (it moved to ``request.path``), hence this adapter.
    """

    def __init__(self, ws: ServerConnection | object, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebsocketsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._ws.send(message)  # type: ignore[attr-defined]

    async def recv(self) -> bytes:
        data = await self._ws.recv()  # type: ignore[attr-defined]
        return data if isinstance(data, bytes) else data.encode()


async def _serve_websockets(port: int, stop: asyncio.Event) -> None:
    from pycrdt.websocket import WebsocketServer, exception_logger
    from websockets.asyncio.server import serve

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        await server.serve(WebsocketsChannel(ws, path))

    async with (
        WebsocketServer(exception_handler=exception_logger) as server,
        serve(handler, "127.0.0.1", port, max_size=MAX_MESSAGE, compression=None),
    ):
        await stop.wait()


async def _serve_hypercorn(port: int, stop: asyncio.Event) -> None:
    from hypercorn import Config
    from hypercorn.asyncio import serve
    from pycrdt.websocket import ASGIServer, WebsocketServer, exception_logger

    server = WebsocketServer(exception_handler=exception_logger)
    app = ASGIServer(server)
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.websocket_max_message_size = MAX_MESSAGE
    config.loglevel = "WARNING"
    async with server:
        await serve(app, config, mode="asgi", shutdown_trigger=stop.wait)  # type: ignore[arg-type]


async def _main(transport: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if transport == "hypercorn":
        await _serve_hypercorn(port, stop)
    else:
        await _serve_websockets(port, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_server")
    p.add_argument("transport", choices=("hypercorn", "websockets"))
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_main(args.transport, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

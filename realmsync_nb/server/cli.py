"""``realmsync-server``: run a standalone sync server until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from .core import ServerConfig, SyncServerCore
from .embedded import start_listening
from .storage import SQLiteStorage


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="realmsync-server", description=__doc__)
    p.add_argument("--data-dir", required=True, help="directory for the server's data")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--port", type=int, default=9090, help="port (0 picks a free one)")
    p.add_argument(
        "--enable-test-commands",
        action="store_true",
        help="accept TEST_COMMAND messages (fault injection; never in production)",
    )
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    # websockets logs every connection opening and closing at INFO: too chatty for a
    # sync server with many devices; our own logger says what matters.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    storage = SQLiteStorage(args.data_dir)
    core = SyncServerCore(storage, ServerConfig(enable_test_commands=args.enable_test_commands))
    server = await start_listening(core, args.host, args.port)
    port = next(iter(server.sockets)).getsockname()[1]
    # Printed (and flushed) so scripts and tests can read the bound port.
    print(f"realmsync-server listening on ws://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()
    storage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

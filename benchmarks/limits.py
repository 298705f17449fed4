"""This machine's limits, measured in the same run as the engines.

Issue 5 states the limits it was written against (a websockets echo of 100-byte
messages, SQLite commits and rows per second); this module measures them here, and
three floors no engine with our guarantees can go below on this machine:

- **the latency floor**: scenario 3's path stripped to what every such engine
  must do. A writer thread commits one record to SQLite (WAL, synchronous=NORMAL)
  and hands the bytes to an event loop on another thread, which sends them to a
  relay process; the relay commits them to its own SQLite file and forwards them
  to B's connection, back in the client process, whose loop commits them to B's
  file and timestamps that commit. No protocol, no objects, no framing beyond a
  length prefix: measured over plain TCP, and over the ``websockets`` library,
  which both engines use.
- **the local bulk floor** of scenario 2: one transaction of N ~100-byte rows
  inserted with ``executemany``, the least a durable replica does to hold them.
- **scenario 2's floor**: what A and B must do with N records at the least, one
  after the other (B cannot start before A commits), in one process with no
  server and no network. A builds each record (the workload's ``record``), inserts
  them in parts of :data:`BULK_PART` rows and stores each part as one JSON changeset,
  all in one transaction; B reads the changesets from A's history (standing in for
  the server, whose own commit and the transfer are left out), decodes them and
  inserts their rows in one transaction of its own. No objects, no validation, no
  protocol.

``python -m benchmarks.limits relay {tcp,ws} DIR`` runs a relay (it prints its port);
:func:`run` measures everything and returns one flat dict of numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import select
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from .workload import BULK_PART, percentile, record

__all__ = ["run"]

_ROW = "INSERT INTO r VALUES (?, ?, ?, ?, ?, ?)"
_SCHEMA = "CREATE TABLE r (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c INT, d REAL, e INT)"


def _db(path: str, *, threads: bool = False, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A SQLite file as the engines open theirs: WAL, synchronous=NORMAL, autocommit."""
    c = sqlite3.connect(path, isolation_level=None, check_same_thread=not threads)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute(f"PRAGMA synchronous={synchronous}")
    c.execute(_SCHEMA)
    c.execute("CREATE TABLE h (v INTEGER PRIMARY KEY, body BLOB)")
    return c


def _row(i: int) -> tuple[Any, ...]:
    r = record(i)
    return (r["id"], r["a"], r["b"], r["c"], r["d"], int(r["e"]))


# -- SQLite ----------------------------------------------------------------------------


def sqlite_rate(workdir: str, n: int, *, one_txn: bool, synchronous: str = "NORMAL") -> float:
    """Rows per second, ~100 bytes each: a commit per row, or all in one transaction
    (``executemany``). With ``synchronous="FULL"`` every commit waits for an fsync,
    what a commit needs to survive a power cut (NORMAL survives a killed process)."""
    c = _db(os.path.join(workdir, f"rate-{one_txn}-{synchronous}.db"), synchronous=synchronous)
    rows = [_row(i) for i in range(n)]
    t0 = time.perf_counter()
    if one_txn:
        c.execute("BEGIN")
        c.executemany(_ROW, rows)
        c.execute("COMMIT")
    else:
        for row in rows:
            c.execute("BEGIN")
            c.execute(_ROW, row)
            c.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    c.close()
    return n / elapsed


def bulk_floor(workdir: str, n: int) -> dict[str, float]:
    """Scenario 2's floor at ``n`` records: A's work, then B's (see the module doc).

    Raises RuntimeError unless B's file ends up holding exactly A's rows.
    """
    with contextlib.ExitStack() as files:
        a = _db(os.path.join(workdir, f"bulk-a-{n}.db"))
        files.callback(a.close)
        b = _db(os.path.join(workdir, f"bulk-b-{n}.db"))
        files.callback(b.close)
        t0 = time.perf_counter()
        a.execute("BEGIN")
        for start in range(0, n, BULK_PART):
            rows = [_row(i) for i in range(start, min(n, start + BULK_PART))]
            a.executemany(_ROW, rows)
            a.execute(
                "INSERT INTO h VALUES (?, ?)", (start, orjson.dumps(list(zip(*rows, strict=True))))
            )
        a.execute("COMMIT")
        t1 = time.perf_counter()
        b.execute("BEGIN")
        for (body,) in a.execute("SELECT body FROM h ORDER BY v"):
            b.executemany(_ROW, zip(*orjson.loads(body), strict=True))
        b.execute("COMMIT")
        t2 = time.perf_counter()
        held = "SELECT * FROM r ORDER BY id"
        if b.execute(held).fetchall() != a.execute(held).fetchall():
            raise RuntimeError("the bulk floor's B does not hold what A wrote")
    return {"a_seconds": t1 - t0, "b_seconds": t2 - t1, "seconds": t2 - t0}


# -- the relay process -------------------------------------------------------------------


async def _serve_tcp(db: sqlite3.Connection) -> None:
    peers: list[asyncio.StreamWriter] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peers.append(w)
        try:
            while True:
                head = await r.readexactly(4)
                body = await r.readexactly(struct.unpack("<I", head)[0])
                if body == b"echo":  # the echo test's marker: answer the sender
                    w.write(head + body)
                    continue
                _relay_commit(db, body)
                for p in peers:
                    if p is not w:
                        p.write(head + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            peers.remove(w)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


async def _serve_ws(db: sqlite3.Connection) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    peers: list[ServerConnection] = []

    async def handle(ws: ServerConnection) -> None:
        echo = ws.request is not None and ws.request.path == "/echo"
        peers.append(ws)
        try:
            async for body in ws:
                if echo:
                    await ws.send(body)
                    continue
                data = body if isinstance(body, bytes) else body.encode()
                _relay_commit(db, data)
                for p in peers:
                    if p is not ws:
                        await p.send(data)
        except ConnectionClosed:
            pass
        finally:
            peers.remove(ws)

    async with serve(handle, "127.0.0.1", 0, compression=None, max_size=None) as server:
        print(next(iter(server.sockets)).getsockname()[1], flush=True)
        await asyncio.Future()


def _relay_commit(db: sqlite3.Connection, body: bytes) -> None:
    db.execute("BEGIN")
    db.execute("INSERT INTO h (body) VALUES (?)", (body,))
    db.execute("COMMIT")


def _relay_main(transport: str, workdir: str) -> None:
    db = _db(os.path.join(workdir, "relay.db"))
    asyncio.run(_serve_tcp(db) if transport == "tcp" else _serve_ws(db))


class _Relay:
    """A relay process on 127.0.0.1 (see ``python -m benchmarks.limits relay``)."""

    def __init__(self, transport: str, workdir: str) -> None:
        # Its file goes in the caller's directory, which the caller removes.
        relay_dir = tempfile.mkdtemp(prefix=f"relay-{transport}-", dir=workdir)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.limits", "relay", transport, relay_dir],
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the {transport} relay did not start (printed {line!r})")
        self.port = int(line)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- the client side ---------------------------------------------------------------------


class _Link:
    """Two connections to a relay (A's and B's) on an event loop in its own thread."""

    def __init__(self, transport: str, port: int, on_b: Callable[[bytes], None]) -> None:
        self.transport = transport
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._keep: list[Any] = []
        self.send_a: Callable[[bytes], None]
        fut = asyncio.run_coroutine_threadsafe(self._open(port, on_b), self.loop)
        fut.result(10)

    async def _open(self, port: int, on_b: Callable[[bytes], None]) -> None:
        if self.transport == "tcp":
            ra, wa = await asyncio.open_connection("127.0.0.1", port)
            rb, wb = await asyncio.open_connection("127.0.0.1", port)

            async def read_b() -> None:
                while True:
                    head = await rb.readexactly(4)
                    on_b(await rb.readexactly(struct.unpack("<I", head)[0]))

            self.send_a = lambda body: wa.write(struct.pack("<I", len(body)) + body)
            self._keep += [ra, wa, rb, wb]
        else:
            from websockets.asyncio.client import connect

            url = f"ws://127.0.0.1:{port}/relay"
            a = await connect(url, compression=None, max_size=None)
            b = await connect(url, compression=None, max_size=None)

            async def read_b() -> None:
                async for body in b:
                    on_b(body if isinstance(body, bytes) else body.encode())

            def send_a(body: bytes) -> None:
                self.loop.create_task(a.send(body))

            self.send_a = send_a
            self._keep += [a, b]
        await asyncio.sleep(0.1)  # both registered with the relay before anything is sent
        self._keep.append(self.loop.create_task(read_b()))

    def close(self) -> None:
        async def shut() -> None:
            for obj in self._keep:
                if isinstance(obj, asyncio.Task):
                    obj.cancel()
                elif hasattr(obj, "close") and not isinstance(obj, asyncio.StreamReader):
                    result = obj.close()
                    if asyncio.iscoroutine(result):
                        await result

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _more_than(items: list[float], n: int) -> bool:
    return len(items) > n


def latency_floor(workdir: str, transport: str, n: int) -> dict[str, float]:
    """Scenario 3's path with nothing but three SQLite commits and the transport."""
    a = _db(os.path.join(workdir, f"a-{transport}.db"))
    b = _db(os.path.join(workdir, f"b-{transport}.db"), threads=True)
    relay = _Relay(transport, workdir)
    cond = threading.Condition()
    stamps: list[float] = []

    def on_b(body: bytes) -> None:  # on the loop thread: B commits what arrived
        values = json.loads(body)
        b.execute("BEGIN")
        b.execute(_ROW, values)
        b.execute("INSERT OR REPLACE INTO h VALUES (1, ?)", (body,))
        b.execute("COMMIT")
        stamp = time.perf_counter()
        with cond:
            stamps.append(stamp)
            cond.notify_all()

    samples: list[float] = []
    link: _Link | None = None
    try:
        link = _Link(transport, relay.port, on_b)
        for i in range(n):
            t0 = time.perf_counter()
            row = _row(i)
            body = json.dumps(row).encode()
            a.execute("BEGIN")
            a.execute(_ROW, row)
            a.execute("INSERT INTO h (body) VALUES (?)", (body,))
            a.execute("COMMIT")
            link.loop.call_soon_threadsafe(link.send_a, body)
            with cond:
                if not cond.wait_for(functools.partial(_more_than, stamps, i), 10):
                    raise TimeoutError(f"the {transport} relay lost write {i}")
            samples.append((stamps[i] - t0) * 1000)
    finally:
        try:
            if link is not None:
                link.close()
        finally:
            relay.close()
            a.close()
            b.close()
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


def ws_echo(workdir: str, n: int, timeout: float = 60) -> float:
    """Messages per second a websockets client gets echoed by a websockets server
    (100-byte messages, up to 100 in flight). Raises if the relay goes away, or
    after ``timeout`` seconds."""
    relay = _Relay("ws", workdir)

    async def go() -> float:
        from websockets.asyncio.client import connect

        ws = await connect(f"ws://127.0.0.1:{relay.port}/echo", compression=None)
        payload = b"x" * 100
        window = asyncio.Semaphore(100)

        async def receive() -> None:
            for _ in range(n):
                await ws.recv()
                window.release()

        async def send() -> None:
            for _ in range(n):
                await window.acquire()
                await ws.send(payload)

        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout), asyncio.TaskGroup() as tg:
                # One failing (the relay gone) cancels the other: no wait forever.
                tg.create_task(receive())
                tg.create_task(send())
        finally:
            await ws.close()
        return n / (time.perf_counter() - t0)

    try:
        return asyncio.run(go())
    finally:
        relay.close()


def run(n: int, workdir: str) -> dict[str, Any]:
    """Every limit, sized from ``n`` (the latency floor's number of writes); one dict."""
    out: dict[str, Any] = {"converged": True}
    full = n >= 500  # a full run's sizes, else --quick's
    bulk_n = 1_000_000 if full else 20_000
    out["sqlite_commits_per_s"] = round(sqlite_rate(workdir, 20 * n, one_txn=False), 1)
    out["sqlite_full_commits_per_s"] = round(
        sqlite_rate(workdir, n, one_txn=False, synchronous="FULL"), 1
    )
    out["sqlite_rows_per_s_one_txn"] = round(sqlite_rate(workdir, bulk_n, one_txn=True), 1)
    out["sqlite_bulk_rows"] = bulk_n
    floor_n = 100_000 if full else 20_000
    bulk = bulk_floor(workdir, floor_n)
    out["bulk_floor_n"] = floor_n
    out["bulk_floor_a_s"] = round(bulk["a_seconds"], 4)
    out["bulk_floor_b_s"] = round(bulk["b_seconds"], 4)
    out["bulk_floor_s"] = round(bulk["seconds"], 4)
    out["ws_echo_msgs_per_s"] = round(ws_echo(workdir, 100 * n), 1)
    for transport in ("tcp", "ws"):
        floor = latency_floor(workdir, transport, n)
        out[f"floor_{transport}_p50_ms"] = floor["p50_ms"]
        out[f"floor_{transport}_p99_ms"] = floor["p99_ms"]
    out["seconds"] = None
    return out


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "relay" and sys.argv[2] in ("tcp", "ws"):
        _relay_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m benchmarks.limits relay {tcp,ws} DIR")

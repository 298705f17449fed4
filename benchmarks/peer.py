"""The peer's side of every scenario: pycrdt docs synced by pycrdt's Provider.

Clients A and B are two ``pycrdt.Doc``s, each with its own WebSocket connection
and ``Provider``, in one asyncio loop (as our A and B share one sync thread). A
record is one entry of the Y.Map ``records``: key ``str(id)``, value a dict of the
other five fields.

How B's arrival is learned: an ``observe`` callback on B's map adds up the keys
each applied update changed (``len(event.keys)``); it runs when B integrates an
update, so it is B's own notification. The time of the run is taken in the
callback that completes the count. Then ``len(map)`` is read once to confirm.

"One transaction per write" is an assignment outside ``doc.transaction()`` (pycrdt
makes each its own transaction, and the Provider sends each as one update
message). A yields to the loop every ``YIELD_EVERY`` writes so its updates start
flowing while it writes, as ours upload while A writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from pycrdt import Doc, Map, MapEvent, Provider

from .peer_server import MAX_MESSAGE, WebsocketsChannel
from .workload import (
    CATCH_UP_BATCH,
    IDLE_WARM,
    READY_PREFIX,
    emit,
    peak_rss_mib,
    percentile,
    record,
)

__all__ = ["run"]

YIELD_EVERY = int(os.environ.get("BENCH_PEER_YIELD", "100"))
ROOM = "/bench"


def _value(i: int) -> dict[str, Any]:
    fields = record(i)
    del fields["id"]
    return fields


@contextlib.asynccontextmanager
async def _channel(transport: str, url: str, path: str) -> AsyncIterator[Any]:
    """A connected Channel to ``url + path`` over the chosen client library."""
    if transport == "hypercorn":
        from httpx_ws import aconnect_ws
        from pycrdt.websocket.websocket import HttpxWebsocket

        async with aconnect_ws(url + path, max_message_size_bytes=MAX_MESSAGE) as ws:
            yield HttpxWebsocket(ws, path)
    else:
        from websockets.asyncio.client import connect

        async with connect(url + path, max_size=MAX_MESSAGE, compression=None) as ws:
            yield WebsocketsChannel(ws, path)


class Replica:
    """One Doc with a ``records`` map, connected through a Provider while open."""

    def __init__(self, transport: str, url: str, path: str = ROOM) -> None:
        self.transport, self.url, self.path = transport, url, path
        self.doc: Doc = Doc()
        self.map = self.doc.get("records", type=Map)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        # Arrivals counted by the observer.
        self.keys = 0
        self.last_at = 0.0
        self.changed = asyncio.Event()
        self._sub: Any = None

    def count_arrivals(self) -> None:
        def on_change(event: MapEvent) -> None:
            self.keys += len(event.keys)
            self.last_at = time.perf_counter()
            self.changed.set()

        self._sub = self.map.observe(on_change)

    async def connect(self, timeout: float) -> None:
        """Connect and wait for the initial sync (the server's SYNC_STEP2)."""
        synced = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._connected(synced))
        task, waiter = self._task, asyncio.create_task(synced.wait())
        await asyncio.wait([task, waiter], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not synced.is_set():
            failure = task.exception() if task.done() and not task.cancelled() else None
            await self.disconnect()
            if failure is not None:
                raise failure
            raise TimeoutError(f"{self.path}: no initial sync within {timeout} s")

    async def _connected(self, synced: asyncio.Event) -> None:
        # The channel and the Provider are entered and left in this one task:
        # anyio's cancel scopes inside them must not cross tasks.
        async with (
            _channel(self.transport, self.url, self.path) as channel,
            Provider(self.doc, channel) as provider,
        ):
            await provider.synced.wait()
            synced.set()
            await self._stop.wait()

    async def disconnect(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except Exception:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_keys(self, target: int, timeout: float, stall: float) -> bool:
        """Until the observer counted ``target`` keys; False on timeout or a stall."""
        deadline = time.perf_counter() + timeout
        seen, seen_at = self.keys, time.perf_counter()
        while self.keys < target:
            now = time.perf_counter()
            if now >= deadline or now - seen_at >= stall:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.changed.wait(), min(deadline - now, stall - (now - seen_at), 1.0)
                )
            if self.keys != seen:
                seen, seen_at = self.keys, time.perf_counter()
        return True


async def _write_each(replica: Replica, start: int, n: int) -> None:
    m = replica.map
    for i in range(start, start + n):
        m[str(i)] = _value(i)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)


def _write_one_txn(replica: Replica, start: int, n: int) -> None:
    m = replica.map
    with replica.doc.transaction():
        for i in range(start, start + n):
            m[str(i)] = _value(i)


async def _pair(transport: str, url: str, timeout: float) -> tuple[Replica, Replica]:
    a, b = Replica(transport, url), Replica(transport, url)
    await a.connect(timeout)
    await b.connect(timeout)
    return a, b


async def throughput(
    transport: str, url: str, n: int, *, one_txn: bool, timeout: float, stall: float
) -> dict[str, Any]:
    a, b = await _pair(transport, url, timeout)
    try:
        b.count_arrivals()
        t0 = time.perf_counter()
        if one_txn:
            _write_one_txn(a, 0, n)
        else:
            await _write_each(a, 0, n)
        written = time.perf_counter() - t0
        arrived = await b.wait_keys(n, timeout, stall)
        end = b.last_at if arrived else time.perf_counter()
        received = len(b.map)
        return {
            "converged": arrived and received == n,
            "received": received,
            "seconds": end - t0,
            "write_seconds": written,
            # When the last update that did arrive came (a run that lost some).
            "last_arrival_seconds": b.last_at - t0 if b.last_at else None,
        }
    finally:
        await a.disconnect()
        await b.disconnect()


async def latency(
    transport: str, url: str, n: int, *, timeout: float, stall: float
) -> dict[str, Any]:
    a, b = await _pair(transport, url, timeout)
    try:
        b.count_arrivals()
        samples: list[float] = []
        converged = True
        for i in range(n):
            t0 = time.perf_counter()
            a.map[str(i)] = _value(i)
            if not await b.wait_keys(i + 1, timeout, stall):
                converged = False
                break
            samples.append(b.last_at - t0)
        received = len(b.map)
        ms = [s * 1000 for s in samples]
        return {
            "converged": converged and received == n,
            "received": received,
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
            "seconds": sum(samples),
        }
    finally:
        await a.disconnect()
        await b.disconnect()


async def catch_up(
    transport: str, url: str, n: int, *, timeout: float, stall: float
) -> dict[str, Any]:
    """B disconnects while A writes n (CATCH_UP_BATCH per transaction); B reconnects.

    Before B reconnects, a fresh probe client syncs and must see all n: the peer
    has no upload acknowledgement, and this is its equivalent of our A's
    wait_for_upload() (the server room holds everything). Timed from B's
    reconnect until B's observer counted n keys.
    """
    a, b = await _pair(transport, url, timeout)
    try:
        await b.disconnect()
        t0 = time.perf_counter()
        for start in range(0, n, CATCH_UP_BATCH):
            _write_one_txn(a, start, min(CATCH_UP_BATCH, n - start))
            await asyncio.sleep(0)
        probe = Replica(transport, url)
        probe.count_arrivals()
        await probe.connect(timeout)
        ok = await probe.wait_keys(n, timeout, stall)
        await probe.disconnect()
        writer_seconds = time.perf_counter() - t0
        if not ok:
            return {  # the peer lost updates on the way in: non-converged, not an error
                "converged": False,
                "received": 0,
                "note": f"the server room holds {probe.keys} of {n} after A's writes",
            }
        b.count_arrivals()
        t0 = time.perf_counter()
        await b.connect(timeout)
        arrived = await b.wait_keys(n, timeout, stall)
        end = b.last_at if arrived else time.perf_counter()
        received = len(b.map)
        return {
            "converged": arrived and received == n,
            "received": received,
            "seconds": end - t0,
            "writer_seconds": writer_seconds,
            "progress_events": None,  # the peer has no progress notifications
        }
    finally:
        await a.disconnect()
        await b.disconnect()


async def idle_sessions(transport: str, url: str, n: int, *, timeout: float) -> dict[str, Any]:
    """n clients, each its own doc and room, connected and synced, then idle."""
    replicas: list[Replica] = []
    connected = 0
    opened = 0.0  # seconds spent connecting, not waiting for the harness
    for upto in (min(IDLE_WARM, n), n):  # READY after the first few, and after all
        t0 = time.perf_counter()
        opening = [Replica(transport, url, f"/idle-{i}") for i in range(len(replicas), upto)]
        replicas += opening
        results = await asyncio.gather(
            *(r.connect(timeout) for r in opening), return_exceptions=True
        )
        connected += sum(1 for r in results if r is None)
        opened += time.perf_counter() - t0
        emit(READY_PREFIX, {"connected": connected, "client_rss_mib": peak_rss_mib()})
        await asyncio.to_thread(sys.stdin.readline)
    await asyncio.gather(*(r.disconnect() for r in replicas), return_exceptions=True)
    return {"converged": connected == n, "received": connected, "seconds": opened}


def run(
    scenario: str, transport: str, url: str, n: int, timeout: float, stall: float
) -> dict[str, Any]:
    """Run one scenario of the peer; returns its result fields."""
    if scenario == "each":
        coro = throughput(transport, url, n, one_txn=False, timeout=timeout, stall=stall)
    elif scenario == "one_txn":
        coro = throughput(transport, url, n, one_txn=True, timeout=timeout, stall=stall)
    elif scenario == "latency":
        coro = latency(transport, url, n, timeout=timeout, stall=stall)
    elif scenario == "catch_up":
        coro = catch_up(transport, url, n, timeout=timeout, stall=stall)
    elif scenario == "idle":
        coro = idle_sessions(transport, url, n, timeout=timeout)
    else:
        raise ValueError(f"the peer has no scenario {scenario!r}")
    return asyncio.run(coro)

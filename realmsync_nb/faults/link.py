"""How bytes cross the fault proxy: one pipe per direction of each connection.

A pipe reads into a bounded queue, stamping each chunk with the time it may leave
(now + latency + a seeded jitter draw); its writer takes chunks in order, waits for
that time, waits out a blackhole, paces the bytes through the direction's shared
bandwidth budget, and writes them in slices.

Why this shape:

- **Order.** One writer per direction takes chunks first-in first-out, and a chunk
  never leaves before its predecessor, whatever the jitter drew: like TCP, the
  proxy delays bytes but never reorders them.
- **Bounded memory.** A pipe stops reading once ``buffer_bytes`` are queued, so a
  slow or blackholed link pushes back on the sender through TCP flow control
  instead of growing a buffer. Per connection the proxy holds at most about
  ``2 × (buffer_bytes + 192 KiB)`` (the queue, one read, the stream's own buffer).
- **Held, not dropped.** A blackhole holds bytes (and a closing FIN) until it
  lifts, as a real network outage does to TCP: dropping bytes from the middle of a
  stream would not be a network fault, it would be corruption.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import Protocol

from .conditions import Direction, NetworkConditions, jitter_delays

__all__ = ["Connection", "LinkOwner", "Pacer", "reset"]

logger = logging.getLogger("realmsync_nb.faults")

#: Most bytes read from a socket at once.
READ_CHUNK = 64 * 1024
#: Under a bandwidth cap, bytes are released in slots this long, so the rate is
#: smooth at the scale a heartbeat or a progress bar sees.
PACE_SECONDS = 0.02
#: How long a connection that reached ``close_after_bytes`` waits for its last bytes
#: to leave the proxy before it is reset.
_FLUSH_TIMEOUT = 1.0


class LinkOwner(Protocol):
    """What pipes need from the proxy that owns them (:class:`~.FaultProxy`)."""

    seed: int | str | None
    buffer_bytes: int
    _pacers: dict[Direction, Pacer]
    _cut_count: int

    @property
    def conditions(self) -> NetworkConditions: ...

    async def _passable(self) -> NetworkConditions: ...

    def _count(self, direction: Direction, n: int) -> None: ...


class _Cut(Exception):
    """A connection reached ``close_after_bytes``."""


class Pacer:
    """A bandwidth budget for one direction, shared by every connection.

    Each write reserves the next free slot on the link (``n / rate`` seconds long)
    and waits until the slot ends, so ``B`` bytes take at least ``B / rate`` seconds
    however they are split, and a new rate applies from the next write on.
    """

    def __init__(self) -> None:
        self._free_at = 0.0

    async def take(self, n: int, rate: float) -> None:
        now = asyncio.get_running_loop().time()
        start = max(now, self._free_at)
        self._free_at = start + n / rate
        await asyncio.sleep(self._free_at - now)


class _Pipe:
    """One direction of one connection: read, hold, pace, write."""

    def __init__(
        self,
        conn: Connection,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.conn = conn
        self.proxy = conn.proxy
        self.direction: Direction = direction
        self.reader = reader
        self.writer = writer
        # (release time, bytes), or None for the end of the stream.
        self.queue: deque[tuple[float, bytes] | None] = deque()
        self.buffered = 0
        self.cond = asyncio.Condition()
        self.jitter = jitter_delays(self.proxy.seed, conn.number, direction)

    async def run(self) -> None:
        """Forward until the source ends (then close the destination) or a write fails."""
        reading = asyncio.get_running_loop().create_task(self._read())
        try:
            await self._write()
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.proxy.buffer_bytes
        try:
            while True:
                async with self.cond:
                    await self.cond.wait_for(lambda: self.buffered < limit)
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                c = self.proxy.conditions
                delay = c.latency(self.direction) + next(self.jitter) * c.jitter(self.direction)
                async with self.cond:
                    self.queue.append((loop.time() + delay, data))
                    self.buffered += len(data)
                    self.cond.notify_all()
        except OSError:
            pass  # a reset is the end of the stream, as EOF is
        async with self.cond:
            self.queue.append(None)
            self.cond.notify_all()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        last_release = 0.0
        while True:
            async with self.cond:
                await self.cond.wait_for(lambda: bool(self.queue))
                item = self.queue[0]
            if item is None:
                # The sender closed: pass the FIN on, after the data and after any
                # blackhole (the peer must not learn of it through a dead network).
                await self.proxy._passable()
                self.writer.close()
                return
            release, data = item
            release = max(release, last_release)  # never overtake the chunk before
            last_release = release
            wait = release - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._forward(data)
            async with self.cond:
                self.queue.popleft()
                self.buffered -= len(data)
                self.cond.notify_all()

    async def _forward(self, data: bytes) -> None:
        view = memoryview(data)
        conn, proxy, d = self.conn, self.proxy, self.direction
        off = 0
        while off < len(view):
            c = await proxy._passable()
            n = len(view) - off
            if c.slice_writes is not None:
                n = min(n, c.slice_writes)
            rate = c.bandwidth(d)
            if rate is not None:
                n = min(n, max(1, int(rate * PACE_SECONDS)))
            limit = c.close_after_bytes
            if limit is not None:
                if conn.forwarded >= limit:
                    raise _Cut
                n = min(n, limit - conn.forwarded)
            if rate is not None:
                await proxy._pacers[d].take(n, rate)
                if proxy.conditions.blackhole:
                    continue  # went dark while this slice waited for its slot
            self.writer.write(view[off : off + n])
            off += n
            conn.forwarded += n
            proxy._count(d, n)
            await self.writer.drain()
            if limit is not None and conn.forwarded >= limit:
                await self._flush()
                raise _Cut
            if c.slice_writes is not None:
                await asyncio.sleep(0)  # let the slice leave on its own

    async def _flush(self) -> None:
        transport = self.writer.transport
        deadline = asyncio.get_running_loop().time() + _FLUSH_TIMEOUT
        while transport.get_write_buffer_size() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)


class Connection:
    """A client connection and its connection to the target, with a pipe each way."""

    def __init__(
        self,
        proxy: LinkOwner,
        number: int,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.number = number
        self.forwarded = 0  # both directions, for close_after_bytes
        self.writers = (client[1], server[1])
        self.pipes = (
            _Pipe(self, "up", client[0], server[1]),
            _Pipe(self, "down", server[0], client[1]),
        )
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(p.run()) for p in self.pipes]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            failed = [t for t in done if not t.cancelled() and t.exception() is not None]
            for t in failed:
                if isinstance(t.exception(), _Cut):
                    self.proxy._cut_count += 1
                elif not isinstance(t.exception(), OSError):
                    logger.error("fault proxy pipe failed", exc_info=t.exception())
            if failed:
                self.abort()
            else:
                # One side closed cleanly and its FIN was passed on; the other
                # direction has nothing left to say on a WebSocket.
                for w in self.writers:
                    w.close()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def abort(self) -> None:
        """Reset both sockets now: unsent bytes are dropped, as on a broken network."""
        for w in self.writers:
            reset(w)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST), not a FIN: the peer sees a broken connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None and not writer.transport.is_closing():
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()

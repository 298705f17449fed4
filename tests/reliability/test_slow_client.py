"""A slow client does not make the server hold everything it cannot send yet.

The ``realmsync-server`` CLI runs in its own process, so its memory is its own. A
slow client reaches it through its own FaultProxy capped to a few kB/s; a fast
client writes 50,000 objects (~100 MiB of changesets) straight to the server. The
server must keep streaming the history to the slow client from disk, one bounded
batch at a time (``await ws.send`` waits for the slow socket), instead of queueing
DOWNLOADs in memory. The server's resident memory (VmRSS from /proc) is sampled the
whole time and must stay below its baseline plus a bound well under the size of the
data, so a server that buffered the backlog would fail. Then the cap is lifted and
the slow client must end up with every object.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

import realmsync_nb as rs
from realmsync_nb.faults import FaultProxy, NetworkConditions
from tests.client.syncing import connected
from tests.helpers import SOAK, Note, T, Task, soak
from tests.processes import Spawn, rss_kib, start_cli

if SOAK:
    pytestmark = pytest.mark.timeout(0)

OBJECTS = soak(50_000, 200_000)
PER_COMMIT = 100
PAYLOAD = 2_000  # bytes of text per object: 50k objects ≈ 100 MiB of changesets
SLOW = NetworkConditions(bandwidth_up=4_000, bandwidth_down=4_000)  # bytes/s
BOUND_MIB = 64  # far below the data written, far above one download batch

# Realm-like heartbeats for the slow client: at a few kB/s a PONG waits behind
# queued DOWNLOAD bytes for a long time, and the point is a connection that stays
# open and slow, not one that drops and reconnects.
SLOW_TIMEOUTS = rs.SyncTimeoutOptions(ping_interval=5.0, pong_timeout=300.0)


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every 20 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.peak_kib = rss_kib(pid)
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.02):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            self.samples += 1

    def stop(self) -> int:
        self._stop_event.set()
        self.join(T(5))
        return self.peak_kib


def test_a_slow_client_does_not_grow_server_memory_and_gets_everything(
    spawn: Spawn, tmp_path: Path
) -> None:
    proc, url = start_cli(spawn, tmp_path / "server", 0, "server.log")
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(FaultProxy(url, conditions=SLOW, seed="slow"))
        fast_app = stack.enter_context(rs.App(url))
        slow_app = stack.enter_context(
            rs.App(rs.AppConfiguration(proxy.url, sync_timeouts=SLOW_TIMEOUTS))
        )

        def open_(app: rs.App, name: str) -> rs.Realm:
            user = app.log_in(rs.Credentials.anonymous()).result(T(30))
            path = str(tmp_path / f"{name}.realm")
            return rs.Realm(
                rs.Configuration.flexible_sync(user, [Task, Note], path=path, name=name)
            )

        writer, slow = open_(fast_app, "writer"), open_(slow_app, "slow")
        connected(writer, slow, timeout=30)
        with writer.write():  # warm up both paths before the baseline
            writer.add(Note(id=0, text="warm-up"))
        writer.sync_session.wait_for_upload().result(T(10))
        slow.sync_session.wait_for_download().result(T(30))
        baseline_kib = rss_kib(proc.pid)

        sampler = RssSampler(proc.pid)
        sampler.start()
        started = time.monotonic()
        text = "x" * PAYLOAD
        for first in range(1, OBJECTS + 1, PER_COMMIT):
            with writer.write():
                for pk in range(first, first + PER_COMMIT):
                    writer.add(Note(id=pk, text=text))
        writer.sync_session.wait_for_upload().result(T(120))
        uploaded_s = time.monotonic() - started
        time.sleep(T(2))  # the server keeps trying to feed the slow client meanwhile
        peak_kib = sampler.stop()
        slow_had = len(slow.all(Note))
        data_mib = os.path.getsize(tmp_path / "server" / "server.sqlite") / 2**20

        proxy.reset()  # lift the cap: now it must catch up completely
        slow.sync_session.wait_for_download().result(T(120))
        caught_up_s = time.monotonic() - started
        assert len(slow.all(Note)) == OBJECTS + 1
        assert slow.snapshot() == writer.snapshot()

    grew_mib = (peak_kib - baseline_kib) / 1024
    print(
        f"\nRELIABILITY slow-client: {OBJECTS} objects (~{data_mib:.0f} MiB on the server) "
        f"uploaded in {uploaded_s:.1f} s; server RSS baseline {baseline_kib / 1024:.1f} MiB, "
        f"peak {peak_kib / 1024:.1f} MiB (+{grew_mib:.1f} MiB, {sampler.samples} samples); "
        f"slow client had {slow_had} objects when the cap was lifted; everything "
        f"after {caught_up_s:.1f} s"
    )
    assert slow_had < OBJECTS // 2, "the slow client was not slow: the test proves nothing"
    assert grew_mib < BOUND_MIB, (
        f"the server's memory grew by {grew_mib:.1f} MiB while a slow client lagged "
        f"(bound {BOUND_MIB} MiB; {data_mib:.0f} MiB of data)"
    )

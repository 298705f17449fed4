"""Seeded random fault schedules on the FaultProxy while three clients write.

Each client reaches the server through its own :class:`~realmsync_nb.faults.FaultProxy`,
and each proxy follows its own random schedule (drawn from the seed, so a failing
seed replays the same faults): latency and jitter, bandwidth caps, blackholes long
enough for the heartbeat to notice, offline spells with every connection cut,
connections reset after a random number of bytes (mid-message), writes sliced into
tiny pieces, and back to normal. The clients commit the whole time. Then the network
is made perfect, everything syncs, and every replica and the server hold the same
state, the merge rules' state, with every commit stored exactly once.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import realmsync_nb as rs
from realmsync_nb.faults import FaultProxy
from tests.client.syncing import Recorder
from tests.helpers import SOAK, Note, T, Task, soak
from tests.reliability.workload import Writer, assert_converged_exactly_once, sync_everything

if SOAK:
    pytestmark = pytest.mark.timeout(0)

CLIENTS = 3
SCHEDULE_SECONDS = soak(5, 30)
# Quick heartbeats and retries, so a schedule of a few seconds sees many reconnects.
TIMEOUTS = rs.SyncTimeoutOptions(
    connect_timeout=2.0,
    ping_interval=0.5,
    pong_timeout=1.0,
    backoff_initial=0.05,
    backoff_max=0.5,
)

Fault = tuple[str, Callable[[FaultProxy], object], float]  # (what, apply, then wait)


def draw_fault(rng: random.Random) -> Fault:
    """One step of a schedule: a change of conditions and how long it lasts."""
    kind = rng.choice(
        ["latency", "bandwidth", "blackhole", "offline", "cut", "close_after", "slice", "reset"]
    )
    hold = rng.uniform(0.05, 0.6)
    if kind == "latency":
        lat, jit = rng.uniform(0, 0.15), rng.uniform(0, 0.05)
        return f"latency {lat:.3f}±{jit:.3f}", lambda p: p.update(latency=lat, jitter=jit), hold
    if kind == "bandwidth":
        bw = rng.choice([2_000, 10_000, 50_000, 500_000])
        return f"bandwidth {bw}", lambda p: p.update(bandwidth=bw), hold
    if kind == "blackhole":
        hold = rng.choice([0.3, 2.0])  # 2 s outlasts ping_interval + pong_timeout
        return f"blackhole {hold}", lambda p: p.update(blackhole=True), hold
    if kind == "offline":
        return "offline", lambda p: (p.update(offline=True), p.cut()), hold
    if kind == "cut":
        return "cut", lambda p: p.cut(), hold
    if kind == "close_after":
        n = rng.randint(50, 20_000)
        return f"close after {n}", lambda p: p.update(close_after_bytes=n), hold
    if kind == "slice":
        n = rng.randint(1, 64)
        return f"slice {n}", lambda p: p.update(slice_writes=n), hold
    return "reset", lambda p: p.reset(), hold


def run_schedule(proxy: FaultProxy, rng: random.Random, seconds: float, log: list[str]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        what, apply, hold = draw_fault(rng)
        apply(proxy)
        log.append(what)
        time.sleep(hold)
        if what.startswith(("blackhole", "offline")):  # spells end; other faults pile up
            proxy.update(blackhole=False, offline=False)


@pytest.mark.parametrize("seed", range(soak(2, 20)))
def test_random_fault_schedules_end_in_one_state_everywhere(tmp_path: Path, seed: int) -> None:
    data_dir = str(tmp_path / "server")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(rs.SyncServer(data_dir=data_dir, scrypt_n=2**10))
        proxies: list[FaultProxy] = []
        realms: list[rs.Realm] = []
        events: list[Recorder[rs.SyncEvent]] = []
        for i in range(CLIENTS):
            proxy = stack.enter_context(FaultProxy(server.url, seed=f"{seed}/{i}"))
            app = stack.enter_context(
                rs.App(rs.AppConfiguration(proxy.url, sync_timeouts=TIMEOUTS))
            )
            user = app.log_in(rs.Credentials.anonymous()).result(T(10))
            config = rs.Configuration.flexible_sync(
                user, [Task, Note], path=str(tmp_path / f"c{i}.realm"), name=f"c{i}"
            )
            realm = rs.Realm(config)  # closed by app.close()
            events.append(Recorder(realm.sync_session.events))
            proxy.watch(realm.sync_session)
            proxies.append(proxy)
            realms.append(realm)

        writers = [Writer(r, i, seed, pause=0.02) for i, r in enumerate(realms)]
        logs: list[list[str]] = [[] for _ in proxies]
        schedules = [
            threading.Thread(
                target=run_schedule,
                args=(p, random.Random(f"faults/{seed}/{i}"), SCHEDULE_SECONDS, logs[i]),
            )
            for i, p in enumerate(proxies)
        ]
        for t in (*writers, *schedules):
            t.start()
        for t in schedules:
            t.join(T(SCHEDULE_SECONDS + 10))
        commits = [w.stop() for w in writers]

        for p in proxies:
            p.reset()
        sync_everything(realms, timeout=30)
        assert_converged_exactly_once(data_dir, server.snapshot(), realms, commits)

        reconnects = [
            sum(e.kind is rs.EventKind.RECONNECT_SCHEDULED for e in rec.items) for rec in events
        ]
        conditions = [sum(e.kind is rs.EventKind.CONDITIONS for e in rec.items) for rec in events]
        assert all(conditions), "a watched session saw no fault"
        assert sum(reconnects) >= CLIENTS, f"the faults never broke a connection: {logs}"
        cut = sum(p.stats.cut for p in proxies)
        refused = sum(p.stats.refused for p in proxies)
        print(
            f"\nRELIABILITY faults seed={seed}: {sum(map(len, logs))} faults "
            f"({cut} connections cut, {refused} refused), reconnects per client "
            f"{reconnects}, {sum(commits)} commits {commits}; schedules: {logs}"
        )

"""kill -9 the server process at random points while three clients write.

The ``realmsync-server`` CLI runs in its own process. Three clients (each its own App,
sync thread and realm file) commit in a loop the whole time. At seeded random moments
the server is killed with SIGKILL (mid-upload, mid-download, mid-transaction: wherever
it is), stays down for a random while (the clients keep committing offline), and is
started again on the same data directory and port. After the last restart every
client uploads and downloads everything, and then:

- the server's ``_history`` holds each committed transaction exactly once (no
  duplicate ``(origin, client_version)``; versions 1..n of each client; the count
  equals the number of commits);
- every replica's objects equal the server's, which equal the merge rules' state
  for that history; both SQLite files pass ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path

import pytest

import realmsync_nb as rs
from realmsync_nb.server.storage import SQLiteStorage
from tests.conftest import FAST
from tests.helpers import SOAK, Note, T, Task, soak
from tests.processes import Spawn, integrity, kill9, port_of, server_history, start_cli
from tests.reliability.workload import Writer, assert_converged_exactly_once, sync_everything

if SOAK:
    pytestmark = pytest.mark.timeout(0)

CLIENTS = 3
KILLS = soak(4, 40)


@pytest.mark.parametrize("seed", range(soak(1, 3)))
def test_server_killed_at_random_points_keeps_every_commit_exactly_once(
    spawn: Spawn, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(f"server-kill/{seed}")
    data_dir = tmp_path / "server"
    proc, url = start_cli(spawn, data_dir, 0, "server-0.log")
    port = port_of(url)
    stored_at_kill: list[int] = []
    with contextlib.ExitStack() as stack:
        realms: list[rs.Realm] = []
        for i in range(CLIENTS):
            app = stack.enter_context(rs.App(rs.AppConfiguration(url, sync_timeouts=FAST)))
            user = app.log_in(rs.Credentials.anonymous()).result(T(10))
            config = rs.Configuration.flexible_sync(
                user, [Task, Note], path=str(tmp_path / f"c{i}.realm"), name=f"c{i}"
            )
            realms.append(rs.Realm(config))  # closed by app.close()
        writers = [Writer(r, i, seed) for i, r in enumerate(realms)]
        for w in writers:
            w.start()
        try:
            for k in range(KILLS):
                time.sleep(rng.uniform(0.2, 1.2))  # up: clients sync while writing
                kill9(proc)
                stored_at_kill.append(len(server_history(data_dir)))
                time.sleep(rng.uniform(0.0, 0.6))  # down: clients commit offline
                proc, again = start_cli(spawn, data_dir, port, f"server-{k + 1}.log")
                assert again == url
        finally:
            commits = [w.stop() for w in writers]
        sync_everything(realms)
        for r in realms:
            assert r.sync_session.state is rs.SessionState.ACTIVE

        os.kill(proc.pid, signal.SIGTERM)  # a clean stop, so the file can be read whole
        assert proc.wait(T(10)) == 0
        storage = SQLiteStorage(str(data_dir))
        try:
            server_snapshot = storage.snapshot()
        finally:
            storage.close()
        assert_converged_exactly_once(str(data_dir), server_snapshot, realms, commits)
        for r in realms:
            assert integrity(r.path) == "ok"
    assert integrity(data_dir / "server.sqlite") == "ok"
    # The kills really landed in the middle of the work, not after it.
    assert stored_at_kill[0] > 0 and stored_at_kill[-1] < sum(commits)
    print(
        f"\nRELIABILITY server-kill seed={seed}: {KILLS} kills survived, "
        f"{sum(commits)} commits ({commits}), stored at each kill {stored_at_kill}"
    )

"""kill -9 a client process in the middle of its write loop, again and again.

A subprocess commits in a loop, printing each commit number once the commit has
returned, while its session uploads in the background. The test kills it with
SIGKILL at a seeded random point (a commit, an upload or an acknowledgement may be
half done), checks the file, and starts the next process on the same file. After
the last kill the file is opened in the test process and uploads what is left:

- every commit the process reported is in the file, and the file has at most the
  one more commit that returned but was not yet printed: nothing committed is lost;
- the realm file and the server file pass ``PRAGMA integrity_check`` after every kill;
- the server holds every committed transaction exactly once, and its objects equal
  the reopened replica's.

tests/client/test_restart.py covers the simpler cases (killed while idle after its
commits, offline and online); this one kills in the middle of the work.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

import realmsync_nb as rs
from tests.client.syncing import server_db
from tests.conftest import OpenRealm
from tests.helpers import SOAK, T, soak
from tests.processes import (
    LineReader,
    Spawn,
    assert_exactly_once,
    client_id,
    integrity,
    kill9,
    local_commits,
    server_history,
)
from tests.reliability.workload import NOTES_PER_WRITER

if SOAK:
    pytestmark = pytest.mark.timeout(0)

KILLS = soak(4, 40)


def notes_in(path: str) -> list[int]:
    c = sqlite3.connect(path)
    try:
        rows = c.execute('SELECT id FROM "Note" WHERE _live = 1 ORDER BY id').fetchall()
    finally:
        c.close()
    return [r[0] for r in rows]


def test_a_client_killed_mid_write_loop_keeps_and_uploads_every_commit_once(
    server: rs.SyncServer,
    app: rs.App,
    open_realm: OpenRealm,
    spawn: Spawn,
    tmp_path: Path,
) -> None:
    rng = random.Random("client-kill")
    email, password = "killed@example.com", "correct horse"
    app.email_password_auth.register_user(email, password).result(T(10))
    path = str(tmp_path / "killed.realm")
    reported = 0
    pending_at_kill: list[int] = []  # committed but not yet on the server
    for k in range(KILLS):
        proc = spawn(
            "-m",
            "tests.reliability.writer_process",
            server.url,
            path,
            email,
            password,
            "client-kill",
            log=f"writer-{k}.log",
        )
        out = LineReader(proc)
        opened, *lines = out.lines(T(30))
        assert opened == f"opened {reported}"  # the file kept everything from before
        target = reported + rng.randint(20, 300)
        while True:
            for line in lines:
                reported = int(line.removeprefix("committed "))
            if reported >= target:
                break
            lines = out.lines(T(30))
        kill9(proc)  # the loop is still going: mid-commit, mid-upload, anywhere

        assert integrity(path) == "ok"
        assert integrity(server_db(server)) == "ok"
        for line in out.rest(T(5)):  # printed before the kill, not read yet
            reported = int(line.removeprefix("committed "))
        committed = local_commits(path)
        assert committed in (reported, reported + 1), (committed, reported)
        assert notes_in(path) == list(range(1, committed + 1))
        pending_at_kill.append(committed - len(server_history(server.data_dir)))
        reported = committed  # the next process numbers on from the file

    user = app.log_in(rs.Credentials.email_password(email, password)).result(T(10))
    realm = open_realm("killed", user=user)  # the same file, now in this process
    realm.sync_session.wait_for_upload().result(T(15))
    history = server_history(server.data_dir)
    assert_exactly_once(history, client_id(path), reported)
    assert len(history) == reported
    snapshot = server.snapshot()
    assert sorted(snapshot["Note"]) == list(range(1, reported + 1))
    assert all(k < NOTES_PER_WRITER for k in snapshot["Note"])
    assert snapshot == realm.snapshot()
    assert integrity(path) == "ok"
    assert integrity(server_db(server)) == "ok"
    print(
        f"\nRELIABILITY client-kill: {KILLS} kills survived, {reported} commits, "
        f"commits not yet on the server at each kill: {pending_at_kill}"
    )

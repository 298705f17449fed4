"""Crashes and restarts: nothing committed is lost, nothing is applied twice.

Real processes and real files: the embedded server stopped mid-upload and started
again on the same port, a client process killed with SIGKILL right after its
commits, and the ``realmsync-server`` CLI killed and restarted on its data dir.
After each, the server's ``_history`` (read with plain sqlite3) holds every
committed transaction exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import realmsync_nb as rs
from realmsync_nb.store.realm_file import last_client_version
from tests.conftest import FAST, OpenRealm
from tests.helpers import Note, T, Task, wait_until
from tests.processes import (
    Spawn,
    assert_exactly_once,
    client_id,
    integrity,
    kill9,
    read_line,
    server_history,
    start_cli,
)

# -- the embedded server stops mid-upload ------------------------------------------------


def test_uploads_cut_by_a_server_restart_arrive_exactly_once(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "server")
    n = 600
    server = rs.SyncServer(data_dir=data_dir, scrypt_n=2**10).start()
    url = server.url
    port = int(url.rsplit(":", 1)[1])
    # Small UPLOAD messages, so many are in flight when the server goes away.
    config = rs.AppConfiguration(url, sync_timeouts=FAST, upload_batch_bytes=300)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(server.stop)  # stop() is idempotent
        app = cleanup.enter_context(rs.App(config))
        user = app.log_in(rs.Credentials.anonymous()).result(T(10))
        realm = rs.Realm(
            rs.Configuration.flexible_sync(user, [Task, Note], path=str(tmp_path / "a.realm"))
        )
        failed: list[BaseException] = []

        def write_all() -> None:
            try:
                for i in range(n):
                    with realm.write():
                        realm.add(Task(id=f"t{i:04}", title=f"task {i}", priority=i))
            except BaseException as exc:  # reported by the test thread
                failed.append(exc)

        writer = threading.Thread(target=write_all)
        writer.start()
        try:
            wait_until(lambda: len(server_history(data_dir)) >= 50, 10, "the first uploads")
            server.stop()  # while the writer commits and uploads are in flight
            stored_before_restart = len(server_history(data_dir))
        finally:
            writer.join(T(30))
        assert not failed, failed
        assert stored_before_restart < n, "the uploads finished before the server stopped"

        done = realm.sync_session.wait_for_upload()  # pending: the server is down
        time.sleep(T(0.3))
        assert not done.done()

        restarted = rs.SyncServer(data_dir=data_dir, port=port, scrypt_n=2**10).start()
        cleanup.callback(restarted.stop)
        assert restarted.url == url
        done.result(T(15))  # the session reconnects by itself
        assert realm.sync_session.connection_state is rs.ConnectionState.CONNECTED
        tasks = restarted.snapshot()["Task"]
        assert len(tasks) == n
        assert tasks == realm.snapshot()["Task"]

    history = server_history(data_dir)
    assert len(history) == n
    assert_exactly_once(history, client_id(str(tmp_path / "a.realm")), n)


# -- a client process is killed right after committing --------------------------------

_CLIENT = """
import sys, time
import realmsync_nb as rs
from tests.helpers import Note, Task

url, path, email, password, n, mode = sys.argv[1:]
timeouts = rs.SyncTimeoutOptions(backoff_initial=0.1, backoff_max=1.0)
app = rs.App(rs.AppConfiguration(url, sync_timeouts=timeouts, upload_batch_bytes=300))
user = app.log_in(rs.Credentials.email_password(email, password)).result(30)
realm = rs.Realm(rs.Configuration.flexible_sync(user, [Task, Note], path=path))
if mode == "offline":
    realm.sync_session.pause()
for i in range(int(n)):
    with realm.write():
        realm.add(Task(id=f"t{i:04}", title=f"committed {i}", priority=i))
print("committed", flush=True)
time.sleep(600)  # until killed
"""


@pytest.mark.parametrize("mode", ["offline", "uploading"])
def test_a_client_killed_after_commit_uploads_every_commit_once_when_reopened(
    server: rs.SyncServer,
    app: rs.App,
    open_realm: OpenRealm,
    spawn: Spawn,
    tmp_path: Path,
    mode: str,
) -> None:
    n = 150
    email, password = f"{mode}@example.com", "correct horse"
    app.email_password_auth.register_user(email, password).result(T(10))
    path = str(tmp_path / "killed.realm")

    proc = spawn("-c", _CLIENT, server.url, path, email, password, str(n), mode, log="client.log")
    assert read_line(proc, T(30)).strip() == "committed"
    kill9(proc)  # no close, no flush, no goodbye

    assert integrity(path) == "ok"
    c = sqlite3.connect(path)
    try:  # every commit is durable in the file, whether or not it was uploaded
        assert c.execute('SELECT count(*) FROM "Task" WHERE _live = 1').fetchone() == (n,)
        assert last_client_version(c) == n
    finally:
        c.close()
    if mode == "offline":
        assert server_history(server.data_dir) == []

    user = app.log_in(rs.Credentials.email_password(email, password)).result(T(10))
    realm = open_realm("killed", user=user)  # the same file, now in this process
    realm.sync_session.wait_for_upload().result(T(15))

    assert_exactly_once(server_history(server.data_dir), client_id(path), n)
    tasks = server.snapshot()["Task"]
    assert sorted(tasks) == [f"t{i:04}" for i in range(n)]
    assert tasks == realm.snapshot()["Task"]
    assert integrity(path) == "ok"


# -- the CLI server process is killed and restarted -------------------------------------


def test_the_cli_server_restarts_with_its_users_tokens_and_data(
    spawn: Spawn, tmp_path: Path
) -> None:
    data_dir = tmp_path / "cli-data"
    first, url = start_cli(spawn, data_dir, 0, "cli-1.log")
    port = int(url.rsplit(":", 1)[1])
    email, password = "restart@example.com", "correct horse"

    with rs.App(rs.AppConfiguration(url, sync_timeouts=FAST)) as app:
        app.email_password_auth.register_user(email, password).result(T(10))
        user = app.log_in(rs.Credentials.email_password(email, password)).result(T(10))
        token = user.access_token
        realm = rs.Realm(
            rs.Configuration.flexible_sync(user, [Task, Note], path=str(tmp_path / "a.realm"))
        )
        for i in range(20):
            with realm.write():
                realm.add(Task(id=f"before-{i:02}", priority=i))
        realm.sync_session.wait_for_upload().result(T(10))

        kill9(first)  # a crash, not a clean shutdown
        wait_until(
            lambda: realm.sync_session.connection_state is not rs.ConnectionState.CONNECTED,
            10,
            "the session to notice the server is gone",
        )
        for i in range(5):  # offline writes, uploaded after the restart
            with realm.write():
                realm.add(Task(id=f"during-{i}", title="offline"))

        second, url2 = start_cli(spawn, data_dir, port, "cli-2.log")
        assert url2 == url
        realm.sync_session.wait_for_upload().result(T(15))  # reconnects by itself
        assert realm.sync_session.state is rs.SessionState.ACTIVE
        assert user.access_token == token  # the old token is still accepted

        # The user persisted: logging in again finds the same account.
        again = app.log_in(rs.Credentials.email_password(email, password)).result(T(10))
        assert again.id == user.id
        with pytest.raises(rs.AuthError):
            app.log_in(rs.Credentials.email_password(email, "wrong password")).result(T(10))

        # The data persisted: a fresh replica downloads all of it.
        fresh = rs.Realm(
            rs.Configuration.flexible_sync(again, [Task, Note], path=str(tmp_path / "b.realm"))
        )
        fresh.sync_session.wait_for_download().result(T(15))
        tasks = fresh.snapshot()["Task"]
        assert len(tasks) == 25
        assert tasks == realm.snapshot()["Task"]

    os.kill(second.pid, signal.SIGTERM)  # a clean shutdown exits 0
    assert second.wait(T(10)) == 0
    history = server_history(str(data_dir))
    assert_exactly_once(history, client_id(str(tmp_path / "a.realm")), 25)
    assert integrity(str(data_dir / "server.sqlite")) == "ok"

"""Helpers for tests that sync real realms through a real server."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import realmsync_nb as rs
from tests.helpers import T, Task, wait_until

X = TypeVar("X")

CONNECTED = rs.ConnectionState.CONNECTED
DISCONNECTED = rs.ConnectionState.DISCONNECTED
CONNECTING = rs.ConnectionState.CONNECTING


class Recorder(Generic[X]):
    """Collects a stream's items with ``listen()`` (the callback runs on the sync thread)."""

    def __init__(self, stream: rs.Stream[X], callback: Callable[[X], None] | None = None) -> None:
        self.items: list[X] = []
        self.done = 0
        self._callback = callback
        self.sub = stream.listen(self._push, on_done=self._on_done)

    def _push(self, item: X) -> None:
        self.items.append(item)
        if self._callback is not None:
            self._callback(item)

    def _on_done(self) -> None:
        self.done += 1

    def cancel(self) -> None:
        self.sub.cancel()

    def wait_for(self, n: int, timeout: float = 5) -> list[X]:
        wait_until(lambda: len(self.items) >= n, timeout, f"{n} stream items (got {self.items})")
        return list(self.items)


def connected(*realms: rs.Realm, timeout: float = 5) -> None:
    for r in realms:
        s = r.sync_session
        wait_until(lambda s=s: s.connection_state is CONNECTED, timeout, f"{s.name} to connect")


def add_task(realm: rs.Realm, id: str, **values: Any) -> Task:
    with realm.write():
        return realm.add(Task(id=id, **values))


def sync_all(*realms: rs.Realm) -> None:
    """Upload everything from every realm, then download everything into every realm."""
    for r in realms:
        r.sync_session.wait_for_upload().result(T(5))
    for r in realms:
        r.sync_session.wait_for_download().result(T(5))


@contextlib.contextmanager
def sqlite(path: str) -> Any:
    """A short-lived connection to a realm or server SQLite file (read it, don't write)."""
    conn = sqlite3.connect(path, timeout=T(5))
    try:
        yield conn
    finally:
        conn.close()


def server_db(server: rs.SyncServer) -> str:
    return os.path.join(server.data_dir, "server.sqlite")


def server_history(server: rs.SyncServer) -> list[tuple[int, int, int, bytes]]:
    """``(server_version, origin, client_version, body)`` of every changeset the server holds."""
    with sqlite(server_db(server)) as c:
        return c.execute(
            "SELECT server_version, origin, client_version, body FROM _history "
            "ORDER BY server_version"
        ).fetchall()


def pending_bytes(realm: rs.Realm) -> int:
    """Bytes of local changesets not yet acknowledged, read from the realm file."""
    with sqlite(realm.path) as c:
        return int(c.execute("SELECT coalesce(sum(length(body)), 0) FROM _history").fetchone()[0])


def client_id(realm: rs.Realm) -> int:
    with sqlite(realm.path) as c:
        return int(c.execute("SELECT value FROM _meta WHERE key='client_id'").fetchone()[0])

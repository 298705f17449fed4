"""What the reliability tests write, and how they check that nothing was lost or doubled.

Every commit writes one object no other commit touches (a ``Note`` keyed by writer
and commit number, so a lost or duplicated commit shows up by key) and upserts one of
a few shared ``Task``s (so replicas really conflict and the merge rules run). The
final state is checked three ways: every replica equals the server; the server equals
the state the merge rules define for the history it stored (tests/client/
test_convergence.py ``expected_state``); and the history holds each committed
transaction exactly once (``assert_exactly_once``).
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import realmsync_nb as rs
from tests.client.test_convergence import expected_state
from tests.helpers import Note, T, Task
from tests.processes import assert_exactly_once, client_id, local_commits, server_history

SHARED_KEYS = 8
NOTES_PER_WRITER = 10**9  # Note ids: writer * NOTES_PER_WRITER + commit number


def commit_one(realm: rs.Realm, writer: int, n: int, rng: random.Random) -> None:
    """Commit number ``n`` (from 1) of ``writer``: one own Note, one shared Task upsert."""
    with realm.write():
        realm.add(Note(id=writer * NOTES_PER_WRITER + n, text=f"w{writer} commit {n}"))
        realm.add(
            Task(id=f"k{rng.randrange(SHARED_KEYS)}", title=f"w{writer}-{n}", priority=n),
            update=True,
        )


class Writer(threading.Thread):
    """Commits to one realm in a loop, whatever the network does, until ``stop()``."""

    def __init__(self, realm: rs.Realm, writer: int, seed: int, pause: float = 0.005) -> None:
        super().__init__(name=f"writer-{writer}", daemon=True)
        self.realm = realm
        self.writer = writer
        self.rng = random.Random(f"{seed}/writer/{writer}")
        self.pause = pause
        self.commits = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                commit_one(self.realm, self.writer, self.commits + 1, self.rng)
                self.commits += 1
                self._stop_event.wait(self.rng.uniform(0, self.pause))
        except BaseException as exc:  # re-raised by stop()
            self.error = exc

    def stop(self) -> int:
        """Stop writing; returns how many transactions were committed."""
        self._stop_event.set()
        self.join(T(10))
        assert not self.is_alive(), f"{self.name} did not stop"
        if self.error is not None:
            raise AssertionError(f"{self.name} failed to commit") from self.error
        return self.commits


def sync_everything(realms: Sequence[rs.Realm], timeout: float = 20) -> None:
    """Upload everything from every realm, then download everything, twice (the first
    round's downloads can miss uploads that later realms make in the same round)."""
    for _ in range(2):
        for r in realms:
            r.sync_session.wait_for_upload().result(T(timeout))
        for r in realms:
            r.sync_session.wait_for_download().result(T(timeout))


def history_bodies(data_dir: str) -> list[tuple[int, int, bytes]]:
    """``(origin, client_version, body)`` of the server's history, in order."""
    c = sqlite3.connect(os.path.join(data_dir, "server.sqlite"))
    try:
        return c.execute(
            "SELECT origin, client_version, body FROM _history ORDER BY server_version"
        ).fetchall()
    finally:
        c.close()


def assert_converged_exactly_once(
    data_dir: str,
    server_snapshot: dict[str, dict[Any, dict[str, Any]]],
    realms: Sequence[rs.Realm],
    commits: Sequence[int],
) -> None:
    """Every replica equals the server, the server equals the merge rules' state for its
    history, and each realm's committed transactions are in the history exactly once."""
    for r in realms:
        assert r.snapshot() == server_snapshot, f"{r.sync_session.name} diverged from the server"
    assert server_snapshot == expected_state(history_bodies(data_dir))
    history = server_history(data_dir)
    for r, n in zip(realms, commits, strict=True):
        assert local_commits(r.path) == n, "the realm file lost or invented a commit"
        assert_exactly_once(history, client_id(r.path), n)
    assert len(history) == sum(commits)
    notes = server_snapshot.get("Note", {})
    for writer, n in enumerate(commits):
        mine = {k for k in notes if k // NOTES_PER_WRITER == writer}
        assert mine == {writer * NOTES_PER_WRITER + i for i in range(1, n + 1)}, writer

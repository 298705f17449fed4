"""RealmFile: one replica's objects, history and cursors in one SQLite file.

No network here: local transactions and integrate() are driven directly, and the
file is checked with plain sqlite3 the way any SQLite tool would see it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import realmsync_nb as rs
from realmsync_nb.protocol.changeset import (
    Changeset,
    Instruction,
    Op,
    decode_changeset,
    encode_changeset,
)
from realmsync_nb.protocol.schema import FieldSchema, TableSchema, ValueType
from realmsync_nb.store import realm_file
from realmsync_nb.store.realm_file import RealmFile
from tests.helpers import Note, T, Task

SCHEMA = {"Task": Task.__table_schema__, "Note": Note.__table_schema__}
REPO = Path(__file__).resolve().parents[2]
REMOTE = 0x5EED  # the peer id of a made-up remote replica

OpenFile = Callable[..., RealmFile]


@pytest.fixture
def open_file(tmp_path: Path) -> Iterator[OpenFile]:
    opened: list[RealmFile] = []

    def open_(name: str = "a.realm", schema: dict[str, TableSchema] | None = None) -> RealmFile:
        f = RealmFile(str(tmp_path / name), SCHEMA if schema is None else schema)
        opened.append(f)
        return f

    yield open_
    for f in opened:
        f.close()


def plain(path: str) -> sqlite3.Connection:
    """A plain sqlite3 connection, as any SQLite tool would open the file."""
    return sqlite3.connect(path, isolation_level=None)


def query(path: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    c = plain(path)
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


def commit(f: RealmFile, *ops: tuple[str, str, object]) -> int | None:
    """One local transaction of ("create"|"update"|"delete", table, arg) ops."""
    txn = f.begin()
    try:
        for kind, table, arg in ops:
            if kind == "create":
                assert isinstance(arg, dict)
                txn.create(table, arg, update=True)
            elif kind == "update":
                assert isinstance(arg, tuple)
                pk, name, value = arg
                txn.update(table, pk, name, value)
            else:
                txn.delete(table, arg)  # type: ignore[arg-type]
    except BaseException:
        txn.rollback()
        raise
    return txn.commit()


def add_task(f: RealmFile, pk: str, **values: object) -> int:
    v = commit(f, ("create", "Task", {"id": pk, **values}))
    assert v is not None
    return v


def remote_task(pk: str, ts: int, title: str = "remote") -> bytes:
    values = (("title", title), ("done", False), ("priority", 0), ("due", None))
    return encode_changeset(Changeset(ts, REMOTE, (Instruction(Op.CREATE, "Task", pk, values),)))


def history(path: str) -> list[tuple[object, ...]]:
    return query(path, "SELECT client_version, body FROM _history ORDER BY client_version")


def now_us() -> int:
    return time.time_ns() // 1000


# -- the file on disk -----------------------------------------------------------


def test_the_file_uses_wal(open_file: OpenFile) -> None:
    f = open_file()
    assert query(f.path, "PRAGMA journal_mode") == [("wal",)]


def test_a_new_file_has_small_pages_and_an_old_one_keeps_its_own(
    open_file: OpenFile, tmp_path: Path
) -> None:
    # A file created before the page size changed (SQLite's default, 4 KiB) must go
    # on working as it is: same data, writes, integration, and a WAL checkpointed at
    # the same number of bytes.
    new = open_file("new.realm")
    assert query(new.path, "PRAGMA page_size") == [(realm_file.PAGE_SIZE,)]
    old_path = tmp_path / "old.realm"
    c = plain(str(old_path))
    c.execute("PRAGMA page_size=4096")
    c.execute("PRAGMA journal_mode=WAL")
    c.close()
    old = open_file("old.realm")
    add_task(old, "t1", title="kept")
    old.integrate(1, [remote_task("r1", now_us())], 0)
    assert query(str(old_path), "PRAGMA page_size") == [(4096,)]
    ckpt = old.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert ckpt * 4096 == realm_file.WAL_CHECKPOINT_BYTES
    assert old.integrity_check() == "ok"
    assert sorted(old.snapshot()["Task"]) == ["r1", "t1"]


def test_objects_are_rows_a_plain_sqlite_client_can_read(open_file: OpenFile) -> None:
    f = open_file()
    add_task(f, "t1", title="milk", done=True, priority=3)
    commit(f, ("create", "Note", {"id": 7, "text": "hello"}))
    f.integrate(1, [remote_task("r1", now_us(), "from afar")], 0)

    rows = query(f.path, 'SELECT id, title, done, priority, due FROM "Task" ORDER BY id')
    assert rows == [("r1", "from afar", 0, 0, None), ("t1", "milk", 1, 3, None)]
    assert query(f.path, 'SELECT id, text FROM "Note"') == [(7, "hello")]

    commit(f, ("delete", "Task", "t1"))
    live = query(f.path, 'SELECT id FROM "Task" WHERE _live = 1')
    assert live == [("r1",)]


def test_integrity_check_is_ok_after_mixed_work(open_file: OpenFile) -> None:
    f = open_file()
    for i in range(30):
        add_task(f, f"t{i % 7}", title=f"v{i}", priority=i)
        if i % 5 == 4:
            commit(f, ("delete", "Task", f"t{i % 7}"))
    f.integrate(3, [remote_task(f"r{i}", now_us() + i) for i in range(10)], upload_ack=20)
    assert f.integrity_check() == "ok"
    f.close()
    assert query(f.path, "PRAGMA integrity_check") == [("ok",)]


# -- local transactions and history ---------------------------------------------


def test_each_local_transaction_appends_one_history_entry_with_the_next_version(
    open_file: OpenFile,
) -> None:
    f = open_file()
    assert add_task(f, "a", title="one") == 1
    assert commit(f, ("update", "Task", ("a", "done", True)), ("create", "Note", {"id": 1})) == 2
    assert commit(f, ("delete", "Task", "a")) == 3
    assert commit(f) is None  # an empty transaction writes no history
    assert f.latest_client_version == 3

    rows = history(f.path)
    assert [r[0] for r in rows] == [1, 2, 3]
    changesets = [decode_changeset(r[1]) for r in rows]  # type: ignore[arg-type]
    assert {cs.origin for cs in changesets} == {f.client_id}
    stamps = [cs.ts for cs in changesets]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert [[(i.op, i.table, i.pk) for i in cs.all_instructions()] for cs in changesets] == [
        [(Op.CREATE, "Task", "a")],
        [(Op.UPDATE, "Task", "a"), (Op.CREATE, "Note", 1)],
        [(Op.DELETE, "Task", "a")],
    ]
    assert f.progress().uploadable_bytes == sum(len(r[1]) for r in rows)  # type: ignore[arg-type]


def test_a_transaction_folds_repeated_writes_to_one_instruction(open_file: OpenFile) -> None:
    f = open_file()
    commit(
        f,
        ("create", "Task", {"id": "a", "title": "x"}),
        ("update", "Task", ("a", "title", "y")),
        ("update", "Task", ("a", "priority", 2)),
    )
    (cs,) = [decode_changeset(r[1]) for r in history(f.path)]  # type: ignore[arg-type]
    (ins,) = cs.all_instructions()
    assert ins.op is Op.CREATE
    assert dict(ins.values) == {"title": "y", "done": False, "priority": 2, "due": None}
    assert f.snapshot()["Task"]["a"]["title"] == "y"


def test_a_rolled_back_transaction_leaves_nothing(open_file: OpenFile) -> None:
    f = open_file()
    before = f.progress()
    txn = f.begin()
    txn.create("Task", {"id": "a", "title": "gone"}, update=False)
    txn.create("Note", {"id": 1, "text": "gone"}, update=False)
    txn.rollback()

    assert f.snapshot() == {"Note": {}, "Task": {}}
    assert query(f.path, 'SELECT count(*) FROM "Task"') == [(0,)]
    assert history(f.path) == []
    assert f.progress() == before
    assert add_task(f, "b") == 1  # the rolled-back transaction used no client version


def test_a_bad_value_raises_before_anything_is_written(open_file: OpenFile) -> None:
    f = open_file()
    txn = f.begin()
    try:
        txn.create("Task", {"id": "a", "title": "kept"}, update=False)
        with pytest.raises(rs.ValidationError):
            txn.create("Task", {"id": "b", "priority": "high"}, update=False)
        with pytest.raises(rs.ValidationError):
            txn.create("Task", {"id": "a"}, update=False)  # duplicate without update=True
        with pytest.raises(rs.ValidationError):
            txn.create("Task", {"title": "no key"}, update=False)
    except BaseException:
        txn.rollback()
        raise
    assert txn.commit() == 1
    assert list(f.snapshot()["Task"]) == ["a"]
    assert f.snapshot()["Task"]["a"]["title"] == "kept"


# -- integrate: server changesets and cursors --------------------------------------


def test_integrate_applies_changesets_and_advances_both_cursors(open_file: OpenFile) -> None:
    f = open_file()
    add_task(f, "mine")
    add_task(f, "mine2")
    bodies = [remote_task("r1", now_us()), remote_task("r2", now_us() + 1)]
    result = f.integrate(download_cursor=9, changesets=bodies, upload_ack=1)

    assert set(f.snapshot()["Task"]) == {"mine", "mine2", "r1", "r2"}
    p = f.progress()
    assert (p.download_cursor, p.upload_cursor, p.latest_client_version) == (9, 1, 2)
    assert p.downloaded_bytes == sum(map(len, bodies))
    assert (result.changesets, result.changed_objects, result.acked_changesets) == (2, 2, 1)
    meta = dict(query(f.path, "SELECT key, value FROM _meta"))
    assert (meta["download_cursor"], meta["upload_cursor"]) == (9, 1)


def test_integrating_the_same_changesets_again_changes_nothing(open_file: OpenFile) -> None:
    f = open_file()
    bodies = [remote_task("r1", now_us(), "x"), remote_task("r2", now_us() + 1, "y")]
    first = f.integrate(2, bodies, 0)
    snap = f.snapshot()
    rows = query(f.path, 'SELECT * FROM "Task" ORDER BY id')

    again = f.integrate(2, bodies, 0)
    assert (first.changed_objects, again.changed_objects) == (2, 0)
    assert f.snapshot() == snap
    assert query(f.path, 'SELECT * FROM "Task" ORDER BY id') == rows
    assert f.progress().download_cursor == 2


def test_an_older_download_cursor_never_moves_the_cursor_back(open_file: OpenFile) -> None:
    f = open_file()
    f.integrate(10, [], 0)
    f.integrate(4, [], 0)
    assert f.progress().download_cursor == 10


def test_a_failing_integrate_applies_nothing_and_keeps_the_cursors(open_file: OpenFile) -> None:
    f = open_file()
    add_task(f, "mine")
    c = plain(f.path)
    try:  # a real SQLite failure half-way through the transaction
        c.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON \"Task\" WHEN NEW.id = 'r2' "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    finally:
        c.close()
    before = f.progress()
    bodies = [remote_task("r1", now_us()), remote_task("r2", now_us() + 1)]
    with pytest.raises(sqlite3.IntegrityError, match="disk says no"):
        f.integrate(5, bodies, upload_ack=1)

    assert set(f.snapshot()["Task"]) == {"mine"}  # r1 was rolled back with r2
    assert f.progress() == before
    assert [r[0] for r in history(f.path)] == [1]  # the unacknowledged change is kept


def test_an_undecodable_changeset_applies_nothing(open_file: OpenFile) -> None:
    f = open_file()
    with pytest.raises(ValueError):
        f.integrate(5, [remote_task("r1", now_us()), b"\x01\xff\xff"], 0)
    assert f.snapshot()["Task"] == {}
    assert f.progress().download_cursor == 0


def test_a_local_write_after_a_remote_one_is_ordered_after_it(open_file: OpenFile) -> None:
    """The clock observes integrated changesets, so "the later write wins" means what
    the user saw: an edit made after seeing a remote change beats it, even when the
    remote machine's clock is ahead of ours (and still after a reopen)."""
    f = open_file()
    ahead = now_us() + 3_600_000_000  # the remote clock is an hour ahead
    f.integrate(1, [remote_task("r", ahead, "theirs")], 0)
    commit(f, ("update", "Task", ("r", "title", "mine")))
    assert f.snapshot()["Task"]["r"]["title"] == "mine"
    (cs,) = [decode_changeset(r[1]) for r in history(f.path)]  # type: ignore[arg-type]
    assert cs.ts > ahead

    path = f.path
    f.close()
    g = open_file(os.path.basename(path))
    commit(g, ("update", "Task", ("r", "title", "mine again")))
    stamps = [decode_changeset(r[1]).ts for r in history(path)]  # type: ignore[arg-type]
    assert stamps[1] > stamps[0] > ahead


# -- acknowledgement, trimming, persistence ---------------------------------------


def test_acknowledged_history_is_trimmed_and_counters_survive_reopen(
    open_file: OpenFile,
) -> None:
    f = open_file()
    for i in range(4):
        add_task(f, f"t{i}", title="x" * (10 * i))
    sizes = [len(r[1]) for r in history(f.path)]  # type: ignore[arg-type]
    inbound = [remote_task("r1", now_us())]

    result = f.integrate(download_cursor=6, changesets=inbound, upload_ack=2)
    assert (result.acked_changesets, result.acked_bytes) == (2, sizes[0] + sizes[1])
    assert [r[0] for r in history(f.path)] == [3, 4]
    assert [cv for cv, _ in f.pending_uploads(2, 1 << 20)] == [3, 4]
    expected = (6, 2, 4, sum(sizes), sizes[0] + sizes[1], len(inbound[0]))
    client_id = f.client_id
    snap = f.snapshot()

    path = f.path
    f.close()
    g = open_file(os.path.basename(path))
    p = g.progress()
    assert (
        p.download_cursor,
        p.upload_cursor,
        p.latest_client_version,
        p.uploadable_bytes,
        p.uploaded_bytes,
        p.downloaded_bytes,
    ) == expected
    assert g.client_id == client_id
    assert g.snapshot() == snap
    assert [cv for cv, _ in g.pending_uploads(p.upload_cursor, 1 << 20)] == [3, 4]


def test_client_versions_are_never_reused_after_everything_was_acknowledged(
    open_file: OpenFile,
) -> None:
    """The server skips uploads at or below the last version it integrated, so a
    reused version would be silently dropped."""
    f = open_file()
    add_task(f, "a")
    add_task(f, "b")
    f.integrate(0, [], upload_ack=2)
    assert history(f.path) == []
    path = f.path
    f.close()

    g = open_file(os.path.basename(path))
    assert g.latest_client_version == 2
    assert add_task(g, "c") == 3
    assert [cv for cv, _ in g.pending_uploads(g.progress().upload_cursor, 1 << 20)] == [3]


def test_the_clock_never_goes_back_once_acknowledged_history_is_deleted(
    open_file: OpenFile,
) -> None:
    """Local commits do not store the clock; the history holds it until it is
    acknowledged and deleted, and the acknowledgement stores it then."""
    f = open_file()
    ahead = now_us() + 3_600_000_000
    f.clock.now = lambda: ahead * 1000  # this machine's clock was an hour fast...
    add_task(f, "a")
    add_task(f, "b")
    stamps = [decode_changeset(r[1]).ts for r in history(f.path)]  # type: ignore[arg-type]
    f.acknowledge(2)
    assert history(f.path) == []
    path = f.path
    f.close()

    g = open_file(os.path.basename(path))  # ...and is right again after the restart
    add_task(g, "c")
    ((_, body),) = history(path)
    assert decode_changeset(body).ts > max(stamps) >= ahead  # type: ignore[arg-type]


def test_the_clock_never_goes_back_while_local_history_is_unacknowledged(
    open_file: OpenFile,
) -> None:
    f = open_file()
    ahead = now_us() + 3_600_000_000
    f.clock.now = lambda: ahead * 1000
    add_task(f, "a")
    path = f.path
    f.close()

    g = open_file(os.path.basename(path))
    add_task(g, "b")
    first, second = (decode_changeset(r[1]).ts for r in history(path))  # type: ignore[arg-type]
    assert second > first >= ahead


def test_acknowledge_stores_a_download_cursor_that_only_moves_forward(
    open_file: OpenFile,
) -> None:
    """A download with no changesets (the server moved past this client's own) moves
    the cursor without an integrate; the session stores it with the acknowledgements."""
    f = open_file()
    add_task(f, "a")
    ((_, body),) = f.pending_uploads(0, 1 << 20)
    assert f.acknowledge(1, download_cursor=5) == (1, len(body))
    f.acknowledge(1, download_cursor=3)
    assert (f.progress().download_cursor, f.progress().upload_cursor) == (5, 1)


def test_a_format_1_file_is_upgraded_in_place(open_file: OpenFile, tmp_path: Path) -> None:
    """Format 1 kept client versions in an AUTOINCREMENT sequence and updated the clock
    and the committed bytes in _meta on every commit; format 2 derives them. A
    format-1 file opens with its versions, clock and counters intact."""
    f = open_file("old.realm")
    path = f.path
    f.close()
    c = plain(path)
    ahead = now_us() + 3_600_000_000
    bodies = [remote_task(f"t{i}", ahead + i) for i in range(3)]  # stand-ins for local ones
    c.executescript(
        """
        DROP TABLE _history;
        CREATE TABLE _history (client_version INTEGER PRIMARY KEY AUTOINCREMENT,
                               body BLOB NOT NULL);
        UPDATE _meta SET value = 1 WHERE key = 'format_version';
        """
    )
    for b in bodies:
        c.execute("INSERT INTO _history (body) VALUES (?)", (b,))
    # Versions 1-3 were committed and 1-2 acknowledged (deleted); format 1 kept the
    # clock and the committed bytes in _meta.
    c.execute("DELETE FROM _history WHERE client_version <= 2")
    c.execute("UPDATE _meta SET value = 2 WHERE key = 'upload_cursor'")
    c.execute("UPDATE _meta SET value = ? WHERE key = 'hlc'", (ahead + 2,))
    c.execute("INSERT INTO _meta VALUES ('uploadable_bytes', ?)", (sum(map(len, bodies)),))
    c.close()

    g = open_file("old.realm")
    assert query(path, "SELECT value FROM _meta WHERE key = 'format_version'") == [(2,)]
    assert g.latest_client_version == 3
    assert add_task(g, "new") == 4
    assert [cv for cv, _ in g.pending_uploads(2, 1 << 20)] == [3, 4]
    assert decode_changeset(history(path)[-1][1]).ts > ahead + 2  # type: ignore[arg-type]
    p = g.progress()
    assert p.uploadable_bytes == p.uploaded_bytes + sum(len(b) for _, b in history(path))  # type: ignore[arg-type]


def test_a_file_of_a_newer_format_is_refused(open_file: OpenFile) -> None:
    f = open_file("new.realm")
    path = f.path
    f.close()
    c = plain(path)
    c.execute("UPDATE _meta SET value = 99 WHERE key = 'format_version'")
    c.close()
    with pytest.raises(rs.SchemaError, match="file format 99"):
        open_file("new.realm")


class _SlowRelease:
    """A lock that lets other threads run for a moment each time it is released."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return bool(self.inner.acquire(*args, **kwargs))

    def release(self) -> None:
        self.inner.release()
        time.sleep(0.002)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_two_threads_committing_at_once_get_distinct_versions(open_file: OpenFile) -> None:
    """Client versions come from the file's latest one, which must be updated before
    the next transaction can start (a reused version would fail, or be skipped by
    the server as already integrated)."""
    f = open_file()
    f.lock = _SlowRelease(f.lock)  # type: ignore[assignment]
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        try:
            for i in range(30):
                add_task(f, f"{prefix}{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T(30))
    assert errors == []
    assert [r[0] for r in history(f.path)] == list(range(1, 61))
    assert f.latest_client_version == 60


def test_the_upload_batch_respects_max_bytes_but_always_makes_progress(
    open_file: OpenFile,
) -> None:
    f = open_file()
    for i in range(5):
        add_task(f, f"t{i}", title="y" * 50)
    size = len(history(f.path)[0][1])  # type: ignore[arg-type]
    assert [cv for cv, _ in f.pending_uploads(0, 2 * size)] == [1, 2]
    assert [cv for cv, _ in f.pending_uploads(3, 1)] == [4]  # one changeset even if too big
    assert f.pending_uploads(5, 1 << 20) == []


# -- one opener at a time, and schema changes -------------------------------------


def test_a_second_open_in_the_same_process_raises_realm_error(open_file: OpenFile) -> None:
    f = open_file()
    with pytest.raises(rs.RealmError) as info:
        RealmFile(f.path, SCHEMA)
    assert f.path in str(info.value)
    assert "already open" in str(info.value)
    add_task(f, "still-works")  # the first opener is unaffected
    f.close()
    g = RealmFile(f.path, SCHEMA)  # closing releases the lock
    try:
        assert "still-works" in g.snapshot()["Task"]
    finally:
        g.close()


_OPEN_ELSEWHERE = """
import sys
import realmsync_nb as rs
from realmsync_nb.store import realm_file
from realmsync_nb.store.realm_file import RealmFile
from tests.helpers import Note, Task
try:
    RealmFile(sys.argv[1], {"Task": Task.__table_schema__, "Note": Note.__table_schema__})
except rs.RealmError as exc:
    print("RealmError:", exc)
else:
    print("opened")
"""


def test_a_second_process_opening_the_file_gets_realm_error(open_file: OpenFile) -> None:
    f = open_file()
    out = subprocess.run(
        [sys.executable, "-c", _OPEN_ELSEWHERE, f.path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=T(30),
        check=True,
    ).stdout
    assert out.startswith("RealmError:") and f.path in out, out

    f.close()
    out = subprocess.run(
        [sys.executable, "-c", _OPEN_ELSEWHERE, f.path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=T(30),
        check=True,
    ).stdout
    assert out.strip() == "opened"


def open_fds(path: str) -> list[str]:
    """This process's open file descriptors on ``path`` (and its -wal/-shm files)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            out.append(target)
    return out


def test_changing_a_stored_model_raises_schema_error_and_leaves_the_file_usable(
    open_file: OpenFile,
) -> None:
    f = open_file()
    add_task(f, "a", title="kept")
    path = f.path
    f.close()

    changed = TableSchema(
        "Task",
        (
            FieldSchema("id", ValueType.STR, primary_key=True),
            FieldSchema("title", ValueType.INT),  # was str
        ),
    )
    with pytest.raises(rs.SchemaError, match="Task") as info:
        RealmFile(path, {"Task": changed})
    if os.path.isdir("/proc/self/fd"):
        # Nothing of the failed open stays open, even while the traceback lives.
        assert open_fds(path) == [], info

    # The stored data is intact, and the original models (or a subset) still open it.
    g = open_file(os.path.basename(path), {"Task": Task.__table_schema__})
    tasks = g.snapshot()["Task"]
    assert tasks["a"]["title"] == "kept"
    g.close()
    extra = TableSchema("Extra", (FieldSchema("id", ValueType.INT, primary_key=True),))
    h = open_file(os.path.basename(path), {**SCHEMA, "Extra": extra})  # new models are fine
    assert h.snapshot() == {"Extra": {}, "Note": {}, "Task": tasks}


def test_split_encode_ends_when_one_object_alone_is_over_the_limit() -> None:
    """An object bigger than the part limit goes alone; the rest still splits (this
    used to recurse for ever when the part also held a group)."""
    from realmsync_nb.protocol.changeset import NewObjects
    from realmsync_nb.store.realm_file import split_encode

    big = Instruction(Op.CREATE, "Row", 99, (("name", "x" * 200),))
    rows = NewObjects("Row", ("name",), tuple(range(40)), (("y" * 20,) * 40,))
    bodies = split_encode((1, 7), [big], 220, [rows])
    decoded = [decode_changeset(b) for b in bodies]
    assert sorted(i.pk for cs in decoded for i in cs.all_instructions()) == [*range(40), 99]
    assert all(len(b) <= 220 or decode_changeset(b).object_count == 1 for b in bodies)
    one = NewObjects("Row", ("name",), (1,), (("z" * 50,),))
    two = NewObjects("Row", ("name",), (2,), (("z" * 50,),))
    assert len(split_encode((1, 7), [], 60, [one, two])) == 2

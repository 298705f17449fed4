"""A realm file: one SQLite database holding a replica's objects, history and cursors.

Layout (all in one file, WAL mode):

``_meta``     key/value: client_id, schema, cursors, byte counters, clock
``_history``  local changesets not yet acknowledged by the server, by client version
model tables  see :mod:`realmsync_nb.store.objects`

The upload cursor (highest client version the server acknowledged) and the
download cursor (highest server version integrated) are updated in the same
SQLite transaction as the data they describe, so a process killed at any point
resumes exactly where it stopped: nothing is uploaded twice as new work and
nothing downloaded is lost.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RealmError, SchemaError, ValidationError
from ..protocol.changeset import (
    BULK_KEY_TYPES,
    BULK_TYPES,
    VALUE_DEFAULTS,
    Changeset,
    HybridClock,
    Instruction,
    NewObjects,
    ObjectState,
    Op,
    apply_instruction,
    changeset_ts,
    decode_changeset,
    encode_changeset,
    encode_creates,
    fold,
    pk_key,
)
from ..protocol.messages import MAX_MESSAGE_SIZE
from ..protocol.schema import FieldSchema, TableSchema, Value, ValueType, check_value
from ..protocol.wire import DecodeError
from .objects import ObjectTables, clock_to_sql, schema_from_json, schema_json

__all__ = [
    "FileProgress",
    "IntegrateResult",
    "LocalTransaction",
    "RealmFile",
    "last_client_version",
    "plain_key",
]

# File format 2 (this version) no longer updates _meta on every local commit: the
# clock and the bytes committed are derived from the history instead (see
# RealmFile.__init__ and progress), and client versions are given explicitly. A
# format-1 file is upgraded in place when it is opened; older versions of
# realmsync_nb then refuse it with a clear error instead of misreading it.
FORMAT_VERSION = 2
_UPGRADABLE = (1,)
_META_DEFAULTS: dict[str, int] = {
    "download_cursor": 0,
    "upload_cursor": 0,
    "uploaded_bytes": 0,
    "downloaded_bytes": 0,
    "hlc": 0,
}


# Pages of a new database file. Each commit writes every page it changed to the
# WAL, whole, and a sync commit changes a few rows of about 100-200 bytes, so
# smaller pages make the usual commit cheaper; larger ones suit bulk inserts and
# the history's multi-megabyte changesets. 2 KiB keeps most of the first gain and
# little of the second loss (measurements in docs/architecture.md). An existing
# file keeps the page size it was created with.
PAGE_SIZE = 2048
# Checkpoint the WAL back into the database once it holds this many bytes: SQLite's
# default (1,000 pages of 4 KiB), whatever the page size.
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024


def connect(path: str) -> sqlite3.Connection:
    """Open ``path`` the way every realmsync_nb database is opened."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only takes effect on a new file
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=OFF")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA wal_autocheckpoint={max(1, WAL_CHECKPOINT_BYTES // page_size)}")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolling back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclass(frozen=True, slots=True)
class FileProgress:
    """The persisted sync counters of a realm file."""

    download_cursor: int
    upload_cursor: int
    latest_client_version: int
    uploadable_bytes: int
    uploaded_bytes: int
    downloaded_bytes: int


@dataclass(frozen=True, slots=True)
class IntegrateResult:
    changesets: int
    bytes: int
    changed_objects: int
    acked_changesets: int
    acked_bytes: int


class RealmFile:
    """One realm file, shared by the user's thread and the sync thread.

    The user-facing connection (reads, local write transactions) and the sync
    connection (integrating downloads, reading history to upload) are separate
    SQLite connections, so a long local transaction never blocks network I/O.
    A lock file keeps a second process from opening the same realm.
    """

    def __init__(self, path: str, schema: Mapping[str, TableSchema]) -> None:
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RealmError(
                f"{self.path} is already open (by another Realm in this process or by "
                "another process); close that Realm first: one opener per realm file"
            ) from None
        try:
            self.conn = connect(self.path)
            self.sync_conn = connect(self.path)
            # Reads of the history to upload, on the sync thread's event loop itself:
            # small and lock-free in WAL mode, so not worth a hop to the db worker.
            self.read_conn = connect(self.path)
            self.lock = threading.RLock()  # serialises use of self.conn across user threads
            self.active: LocalTransaction | None = None  # the open local transaction
            # Held by whichever connection writes. SQLite would serialise the two
            # connections itself, but its busy handler sleeps in steps of milliseconds;
            # a Python lock hands over in microseconds.
            self.write_lock = threading.Lock()
            with transaction(self.conn):
                self._init_meta(schema)
            self.schema = dict(schema)
            self.objects = ObjectTables(self.conn, self.schema.values())
            # Tables whose new objects a local transaction writes as NewObjects groups,
            # with their field names (key first).
            self.bulk_tables = {
                name: tuple(f.name for f in t.fields)
                for name, t in self.schema.items()
                if t.primary_key.type in BULK_KEY_TYPES
                and all(f.type in BULK_TYPES for f in t.fields[1:])
            }
            # Per bulk table, the positions of its float fields in such a row.
            self.float_columns = {
                name: frozenset(
                    i for i, f in enumerate(self.schema[name].fields) if f.type is ValueType.FLOAT
                )
                for name in self.bulk_tables
            }
            self.sync_objects = ObjectTables(self.sync_conn, self.schema.values())
            self.client_id = int(self.get_meta("client_id"))
            # The clock never goes back: past every timestamp stored in _meta (that of
            # downloads and of acknowledged, deleted history) and every one in the
            # history (local commits, the newest last).
            self.clock = HybridClock(int(self.get_meta("hlc")))
            newest = self.conn.execute(
                "SELECT substr(body, 1, 16) FROM _history ORDER BY client_version DESC LIMIT 1"
            ).fetchone()
            if newest is not None:
                with contextlib.suppress(DecodeError):  # a damaged entry fails at upload
                    self.clock.observe(changeset_ts(newest[0]))
            self._clock_lock = threading.Lock()
            # The stored upload cursor, while known to match the file (see _record_ack).
            self._upload_cursor: int | None = None
            # Highest client version committed here (in memory; see last_client_version).
            self.latest_client_version = last_client_version(self.conn)
        except BaseException:
            # A failed open (e.g. SchemaError) must not leave connections behind.
            for name in ("conn", "sync_conn", "read_conn"):
                opened = self.__dict__.get(name)
                if opened is not None:
                    opened.close()
            os.close(self._lock_fd)
            raise
        self.closed = False

    # -- setup --------------------------------------------------------------------

    def _init_meta(self, schema: Mapping[str, TableSchema]) -> None:
        c = self.conn
        c.execute("CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value)")
        # Client versions are given by LocalTransaction (format 1 had AUTOINCREMENT).
        c.execute(
            "CREATE TABLE IF NOT EXISTS _history ("
            "client_version INTEGER PRIMARY KEY, body BLOB NOT NULL)"
        )
        row = c.execute("SELECT value FROM _meta WHERE key='format_version'").fetchone()
        if row is None:
            c.execute("INSERT INTO _meta VALUES ('format_version', ?)", (FORMAT_VERSION,))
            # A random 63-bit peer id: the tie-break of the merge rules and the
            # identity the server deduplicates uploads by.
            c.execute("INSERT INTO _meta VALUES ('client_id', ?)", (secrets.randbits(63) or 1,))
            c.executemany("INSERT INTO _meta VALUES (?, ?)", _META_DEFAULTS.items())
            c.execute("INSERT INTO _meta VALUES ('schema', ?)", (json.dumps(schema_json(schema)),))
            return
        if int(row[0]) in _UPGRADABLE:
            c.execute("UPDATE _meta SET value=? WHERE key='format_version'", (FORMAT_VERSION,))
        elif int(row[0]) != FORMAT_VERSION:
            raise SchemaError(
                f"{self.path} has file format {row[0]}; this version reads {FORMAT_VERSION}"
            )
        stored = schema_from_json(
            json.loads(c.execute("SELECT value FROM _meta WHERE key='schema'").fetchone()[0])
        )
        for name, table in schema.items():
            old = stored.get(name)
            if old is not None and old != table:
                raise SchemaError(
                    f"model {name} differs from the one stored in {self.path}; "
                    "open a new path (or delete the file) to use the new model"
                )
        stored.update(schema)
        c.execute("UPDATE _meta SET value=? WHERE key='schema'", (json.dumps(schema_json(stored)),))

    def get_meta(self, key: str, conn: sqlite3.Connection | None = None) -> Any:
        row = (conn or self.conn).execute("SELECT value FROM _meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    # -- local writes (user thread) -----------------------------------------------

    def begin(self) -> LocalTransaction:
        return LocalTransaction(self)

    def user_objects(self) -> ObjectTables:
        """The user connection's tables, up to date with the open transaction's writes.

        Call with ``self.lock`` held: the thread that holds it while a transaction
        is open is the transaction's own.
        """
        txn = self.active
        if txn is not None:
            txn.flush_pending()
        return self.objects

    def next_clock(self) -> int:
        with self._clock_lock:
            return self.clock.tick()

    # -- sync side (sync worker thread, sync_conn) --------------------------------

    def progress(self) -> FileProgress:
        """The persisted counters. Takes ``write_lock`` (the sync connection's guard,
        and a consistent read of _meta and the history): not for the user's thread
        while it holds a write transaction."""
        c = self.sync_conn
        with self.write_lock:
            meta = dict(c.execute("SELECT key, value FROM _meta").fetchall())
            (pending,) = c.execute("SELECT coalesce(sum(length(body)), 0) FROM _history").fetchone()
            latest = self.latest_client_version  # no transaction can be half-way here
        uploaded = int(meta["uploaded_bytes"])
        return FileProgress(
            download_cursor=int(meta["download_cursor"]),
            upload_cursor=int(meta["upload_cursor"]),
            latest_client_version=latest,
            # Every byte committed: the acknowledged ones (their history is deleted in
            # the transaction that counts them) and the history still to upload.
            uploadable_bytes=uploaded + int(pending),
            uploaded_bytes=uploaded,
            downloaded_bytes=int(meta["downloaded_bytes"]),
        )

    def pending_sizes(self, after: int) -> list[tuple[int, int]]:
        """(client version, bytes) of every local changeset after ``after``, in order."""
        return list(
            self.read_conn.execute(
                "SELECT client_version, length(body) FROM _history WHERE client_version > ? "
                "ORDER BY client_version",
                (after,),
            )
        )

    def pending_uploads(
        self, after: int, max_bytes: int, max_count: int = 10_000
    ) -> list[tuple[int, bytes]]:
        """Local changesets with client version > ``after``, up to about ``max_bytes``."""
        out: list[tuple[int, bytes]] = []
        total = 0
        for cv, body in self.read_conn.execute(
            "SELECT client_version, body FROM _history WHERE client_version > ? "
            "ORDER BY client_version LIMIT ?",
            (after, max_count),
        ):
            if out and total + len(body) > max_bytes:
                break
            out.append((cv, body))
            total += len(body)
        return out

    def integrate(
        self, download_cursor: int, changesets: list[bytes], upload_ack: int
    ) -> IntegrateResult:
        """Apply server changesets and record both cursors in one transaction.

        Raises:
            ValueError: a changeset does not decode (wire.DecodeError); nothing is applied.
        """
        decoded = [decode_changeset(body) for body in changesets]
        with self.write_lock:
            return self._integrate_locked(download_cursor, changesets, decoded, upload_ack)

    def try_integrate(
        self, download_cursor: int, changesets: list[bytes], upload_ack: int
    ) -> IntegrateResult | None:
        """:meth:`integrate`, or None at once when a local write holds the file.

        For the sync thread's event loop, which must never wait for a user's
        transaction: it integrates small downloads itself (no hop to a worker
        thread, the lowest latency) and hands the rest to its worker.
        """
        decoded = [decode_changeset(body) for body in changesets]
        if not self.write_lock.acquire(blocking=False):
            return None
        try:
            return self._integrate_locked(download_cursor, changesets, decoded, upload_ack)
        finally:
            self.write_lock.release()

    def _integrate_locked(
        self,
        download_cursor: int,
        changesets: list[bytes],
        decoded: list[Changeset],
        upload_ack: int,
    ) -> IntegrateResult:
        c = self.sync_conn
        changed = 0
        nbytes = sum(len(b) for b in changesets)
        with transaction(c):
            for cs in decoded:
                changed += self.sync_objects.apply_changeset(cs)
            acked, acked_bytes = self._record_ack(c, upload_ack)
            with self._clock_lock:
                for cs in decoded:
                    self.clock.observe(cs.ts)
                hlc = self.clock.last
            # The cursor, the byte counter and the clock, in one statement.
            c.execute(
                "UPDATE _meta SET value = CASE key "
                "WHEN 'download_cursor' THEN max(value, ?) "
                "WHEN 'downloaded_bytes' THEN value + ? "
                "ELSE max(value, ?) END "
                "WHERE key IN ('download_cursor', 'downloaded_bytes', 'hlc')",
                (download_cursor, nbytes, hlc),
            )
        return IntegrateResult(len(decoded), nbytes, changed, int(acked), int(acked_bytes))

    def acknowledge(self, upload_ack: int, download_cursor: int = 0) -> tuple[int, int]:
        """Record the server's acknowledgement, and a download cursor that moved without
        changesets to apply (it never goes back); returns (changesets, bytes) newly acked."""
        c = self.sync_conn
        with self.write_lock, transaction(c):
            if download_cursor:
                c.execute(
                    "UPDATE _meta SET value = max(value, ?) WHERE key = 'download_cursor'",
                    (download_cursor,),
                )
            return self._record_ack(c, upload_ack)

    def _record_ack(self, c: sqlite3.Connection, upload_ack: int) -> tuple[int, int]:
        """Advance the upload cursor, trim acknowledged history, count the bytes.

        Called with ``write_lock`` held, in the caller's transaction."""
        old_ack = self._upload_cursor
        if old_ack is None:
            old_ack = self._upload_cursor = int(self.get_meta("upload_cursor", c))
        if upload_ack <= old_ack:
            return 0, 0
        acked, acked_bytes = c.execute(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM _history "
            "WHERE client_version > ? AND client_version <= ?",
            (old_ack, upload_ack),
        ).fetchone()
        c.execute("DELETE FROM _history WHERE client_version <= ?", (upload_ack,))
        with self._clock_lock:  # the deleted changesets' clocks live on in 'hlc'
            hlc = self.clock.last
        c.execute(
            "UPDATE _meta SET value = CASE key WHEN 'upload_cursor' THEN ? "
            "WHEN 'hlc' THEN max(value, ?) ELSE value + ? END "
            "WHERE key IN ('upload_cursor', 'uploaded_bytes', 'hlc')",
            (upload_ack, hlc, acked_bytes),
        )
        self._upload_cursor = None  # read again next time: this transaction may roll back
        return int(acked), int(acked_bytes)

    # -- reads --------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[Any, dict[str, Value]]]:
        with self.lock:
            return self.user_objects().snapshot()

    def integrity_check(self) -> str:
        with self.lock:
            result: str = self.conn.execute("PRAGMA integrity_check").fetchone()[0]
            return result

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self.lock:
            self.conn.close()
            self.sync_conn.close()
            self.read_conn.close()
        os.close(self._lock_fd)


_UNREAD: Any = object()  # _Fresh.range before the table's key range was read
_INFINITIES = (math.inf, -math.inf)


class _Fresh:
    """One table's objects that a transaction created, with every field, and that
    the file had no row for: the bulk form of a large write.

    Each row is the key, then every field in schema order, then the creation clock,
    exactly as inserted. They travel as a NewObjects group. The first DEFER_AFTER
    rows of a transaction are inserted one by one; then the range of keys the table
    holds is read, and a new key outside it (and not in ``index``) certainly has no
    row, so its insert waits in ``pending`` and goes in one executemany with the
    others. Pending rows are flushed before anything reads the file (see
    RealmFile.user_objects) and at each part.
    """

    __slots__ = ("direct", "floats", "index", "names", "pending", "range", "rows", "table")

    def __init__(self, table: str, names: tuple[str, ...], floats: frozenset[int]) -> None:
        self.table = table
        self.names = names  # the key's name, then every field's
        self.floats = floats  # positions of the float fields in a row
        self.rows: list[tuple[Value, ...] | None] = []  # None: moved to the general path
        self.index: dict[Value, int] = {}  # key -> position in rows
        self.pending: list[tuple[Value, ...]] = []  # rows not inserted yet
        self.direct = 0  # rows inserted one by one
        self.range: tuple[Any, Any] | None = _UNREAD  # (lowest, highest) key held, if any

    def find(self, pk: Value) -> int | None:
        """Where the object with key ``pk`` is in ``rows``, if it is here."""
        # Keys here are exactly int or str: True == 1 and 1.0 == 1 must not match.
        if type(pk) is int or type(pk) is str:
            return self.index.get(pk)
        return None

    def take(self, pk: Value) -> tuple[Value, ...] | None:
        """Remove the object with key ``pk`` and return its row (None if not here)."""
        at = self.find(pk)
        if at is None:
            return None
        del self.index[pk]
        row, self.rows[at] = self.rows[at], None
        return row

    def live_rows(self) -> list[tuple[Value, ...]]:
        if len(self.index) == len(self.rows):
            return self.rows  # type: ignore[return-value]
        return [row for row in self.rows if row is not None]


class LocalTransaction:
    """One local write transaction on the user connection.

    Each instruction is validated before it touches the database, folded into the
    object's net instruction, and the object's row is recomputed from its state
    before the transaction, so what this replica stores is exactly what every other
    replica will compute from the committed changeset.
    """

    def __init__(self, file: RealmFile) -> None:
        self.file = file
        self.objects = file.objects
        file.lock.acquire()
        file.write_lock.acquire()
        try:
            file.conn.execute("BEGIN IMMEDIATE")
            self._set_clock()
        except BaseException:
            # Whatever fails here, the locks go back: a leaked one hangs every later write.
            if file.conn.in_transaction:
                file.conn.execute("ROLLBACK")
            file.write_lock.release()
            file.lock.release()
            raise
        # key -> (the object's state before this transaction or None, net instruction)
        self._touched: dict[tuple[str, object], tuple[ObjectState | None, Instruction]] = {}
        # States read for an existence check, kept so _record need not read them again.
        self._read: dict[tuple[str, object], ObjectState | None] = {}
        # Per bulk-encodable table, the objects new to this file created with every
        # field (the common case of a large transaction); see _Fresh.
        self._fresh: dict[str, _Fresh] = {}
        self._fresh_count = 0  # their number, over every table
        file.active = self
        self.done = False
        self.body_size = 0  # bytes of the committed changeset(s)
        self.parts: list[tuple[int, int]] = []  # (client version, bytes) per changeset
        # The bodies too, while the transaction is small: the session uploads them
        # from memory instead of reading them back (see Session._local_commit).
        self.bodies: dict[int, bytes] | None = {}

    def _set_clock(self) -> None:
        self.clock = (self.file.next_clock(), self.file.client_id)
        self._created = clock_to_sql(self.clock)
        self._new_tail = (self._created, None, None, 1)

    def _check(self, table: str, values: Mapping[str, Value]) -> TableSchema:
        schema = self.file.schema.get(table)
        if schema is None:
            raise RealmError(f"{table} is not in this realm's schema")
        for name, value in values.items():
            f = schema.field(name)
            if f is None:
                raise ValidationError(f"{table} has no field {name!r}", model=table, field=name)
            problem = check_value(f, value)
            if problem is not None:
                raise ValidationError(f"{table}: {problem}", model=table, field=name)
        return schema

    def _exists(self, table: str, pk: Value) -> bool:
        fresh = self._fresh.get(table)
        if fresh is not None and fresh.find(pk) is not None:
            return True
        key = (table, pk_key(pk))
        if key in self._touched:
            return self.objects.get(table, pk) is not None
        if key not in self._read:
            self._read[key] = self.objects.read_state(self.objects.codec(table), pk)
        state = self._read[key]
        return state is not None and state.exists

    def create(
        self, table: str, values: Mapping[str, Value], *, update: bool, checked: bool = False
    ) -> Value:
        """Create (or with ``update`` upsert) an object; returns its primary key.

        ``checked`` says every value was already validated against the schema (a
        Model's fields validate on assignment), so it is not checked twice.
        """
        fresh = self._fresh.get(table) or self._start_fresh(table)
        if fresh is not None and checked and len(values) == len(fresh.names):
            # The hot path of a bulk write: a Model's values (checked, every field).
            row = (*map(values.get, fresh.names), self._created)
            pk = row[0]
            if (type(pk) is int or type(pk) is str) and self._try_new(fresh, pk, row):
                return pk
        schema = self.file.schema.get(table)
        if schema is None:
            raise RealmError(f"{table} is not in this realm's schema")
        pkf = schema.primary_key
        if values.get(pkf.name) is None:
            raise ValidationError(
                f"{table}: the primary key {pkf.name} is missing", model=table, field=pkf.name
            )
        if not checked:
            self._check(table, values)
        pk = values[pkf.name]
        plain = plain_key(pk)
        if plain is not pk:  # an IntEnum or StrEnum key is its int or str: one object
            values = {**values, pkf.name: plain}
            pk = plain
        if fresh is not None:
            row = (pk, *[values.get(f.name, _default(f)) for f in schema.fields[1:]], self._created)
            if self._try_new(fresh, pk, row):
                return pk
        if not update and self._exists(table, pk):
            raise ValidationError(
                f"{table}: an object with {pkf.name}={pk!r} already exists; "
                "pass update=True to overwrite it",
                model=table,
                field=pkf.name,
            )
        rest = tuple((f.name, values.get(f.name, _default(f))) for f in schema.fields[1:])
        self._record(Instruction(Op.CREATE, table, pk, rest))
        return pk

    def update(self, table: str, pk: Value, name: str, value: Value) -> None:
        schema = self._check(table, {name: value})
        if name == schema.primary_key.name:
            raise RealmError(f"{table}: the primary key {name} cannot be changed")
        if not self._exists(table, pk):
            raise RealmError(f"{table} {pk!r} was deleted; it can no longer be changed")
        self._record(Instruction(Op.UPDATE, table, pk, ((name, value),)))

    def delete(self, table: str, pk: Value) -> None:
        if not self._exists(table, pk):
            raise RealmError(f"{table} {pk!r} does not exist (already deleted?)")
        self._record(Instruction(Op.DELETE, table, pk))

    def _start_fresh(self, table: str) -> _Fresh | None:
        names = self.file.bulk_tables.get(table)
        if names is None:
            return None
        fresh = self._fresh[table] = _Fresh(table, names, self.file.float_columns[table])
        return fresh

    def _try_new(self, fresh: _Fresh, pk: Value, row: tuple[Value, ...]) -> bool:
        """Insert ``row`` (key first, every field, the creation clock) as an object
        this file has no row for, live or deleted; False if it has one, if this
        transaction touched it already, or if a float is NaN or ±inf (SQLite would
        store a NaN as NULL, and JSON carries neither): then the general path decides,
        so a group only ever holds finite floats."""
        if self._touched or self._read:
            key = (fresh.table, (type(pk), pk))  # pk_key(pk), inline
            if key in self._touched or key in self._read:
                return False
        if pk in fresh.index:
            return False
        for i in fresh.floats:  # a loop, not any(): this runs once per object
            v = row[i]
            if v != v or v in _INFINITIES:
                return False
        held = fresh.range
        if held is not _UNREAD and (held is None or pk < held[0] or pk > held[1]):
            fresh.pending.append(row)
        else:
            try:
                self.objects.conn.execute(self.objects.codecs[fresh.table].insert_new, row)
            except sqlite3.IntegrityError:  # the key has a row: an update, or a re-create
                return False
            fresh.direct += 1
            if fresh.direct == DEFER_AFTER:
                fresh.range = self._key_range(fresh.table)
        fresh.index[pk] = len(fresh.rows)
        fresh.rows.append(row)
        self._fresh_count += 1
        if self._fresh_count + len(self._touched) >= FLUSH_OBJECTS:
            self._write_part()
        return True

    def _key_range(self, table: str) -> tuple[Any, Any] | None:
        """(smallest, largest) key with a row in ``table`` (live or not), None if empty."""
        pk = self.objects.codec(table).pk.name
        lo, hi = self.objects.conn.execute(
            # Two subqueries, not one SELECT of min() and max(): SQLite answers a
            # lone min() or max() from the key's B-tree, both together by a full scan
            # (27 ms at 200k rows, against 0.2 ms).
            f'SELECT (SELECT min("{pk}") FROM "{table}"), (SELECT max("{pk}") FROM "{table}")'
        ).fetchone()
        return None if lo is None else (lo, hi)

    def flush_pending(self) -> None:
        """Insert the deferred rows, so the file shows every object written so far."""
        for fresh in self._fresh.values():
            if fresh.pending:
                rows, fresh.pending = fresh.pending, []
                self.objects.conn.executemany(self.objects.codecs[fresh.table].insert_new, rows)

    def _record(self, ins: Instruction) -> None:
        self.flush_pending()
        key = (ins.table, pk_key(ins.pk))
        codec = self.objects.codec(ins.table)
        fresh = self._fresh.get(ins.table)
        made = None if fresh is None else fresh.take(ins.pk)
        if made is not None:  # created in bulk form earlier in this transaction
            self._fresh_count -= 1
            names = codec.field_names
            created = Instruction(
                Op.CREATE, ins.table, made[0], tuple(zip(names, made[1:-1], strict=True))
            )
            self._touched[key] = (None, created)
        entry = self._touched.get(key)
        if entry is None:
            base = (
                self._read.pop(key) if key in self._read else self.objects.read_state(codec, ins.pk)
            )
            net = ins
            if base is None and ins.op is Op.CREATE:
                # The common case of a bulk write: a new object with every field.
                row = codec.new_row(codec.pk_sql(ins.pk), ins.values, self._new_tail)
                if row is not None:
                    self._touched[key] = (None, ins)
                    self.objects.conn.execute(codec.insert, row)
                    if len(self._touched) + self._fresh_count >= FLUSH_OBJECTS:
                        self._write_part()
                    return
        else:
            base, prev = entry
            net = fold(prev, ins) or ins
        self._touched[key] = (base, net)
        state = ObjectState() if base is None else copy.deepcopy(base)
        apply_instruction(state, net, self.clock)
        is_new = base is None and entry is None
        self.objects.write_state(codec, ins.pk, state, is_new=is_new)
        if len(self._touched) + self._fresh_count >= FLUSH_OBJECTS:
            self._write_part()

    def _write_part(self, last: bool = False) -> None:
        """Write the instructions gathered so far to the history as changeset(s).

        Called at commit, and during a transaction every FLUSH_OBJECTS objects so a
        huge transaction never holds all its instructions in memory. The clock moves
        on after each part: an object touched again later in the transaction gets
        a newer clock, exactly as if the transaction had been several in a row.
        """
        self.flush_pending()
        if not self._touched and not self._fresh_count:
            return
        bodies = self._encode_few_new() or self._encode()
        if max(map(len, bodies)) > MAX_MESSAGE_SIZE - 4096:
            raise RealmError(
                "a single object's change is larger than a sync message "
                f"({MAX_MESSAGE_SIZE // (1024 * 1024)} MiB) and could never upload; "
                "store large blobs outside the realm"
            )
        c = self.file.conn
        for body in bodies:
            version = (self.parts[-1][0] if self.parts else self.file.latest_client_version) + 1
            c.execute("INSERT INTO _history (client_version, body) VALUES (?, ?)", (version, body))
            self.parts.append((version, len(body)))
            if self.bodies is not None:
                self.bodies[version] = body
                if self.body_size + len(body) > HANDOFF_BYTES:
                    self.bodies = None
            self.body_size += len(body)
        self._touched.clear()
        self._read.clear()
        for fresh in self._fresh.values():
            fresh.index.clear()
            fresh.rows.clear()
        self._fresh_count = 0
        if last:
            return
        # The keys of this part were proven new by the indexes and _touched, which are
        # now empty: read the ranges again, so they cover every row written so far.
        for fresh in self._fresh.values():
            if fresh.range is not _UNREAD:
                fresh.range = self._key_range(fresh.table)
        self._set_clock()

    def _encode_few_new(self) -> list[bytes] | None:
        """The usual small write, a few new objects of one table, encoded straight
        from their rows; None when the part is anything else."""
        if self._touched or not 0 < self._fresh_count < GROUP_MIN_ROWS:
            return None
        tables = [fresh for fresh in self._fresh.values() if fresh.index]
        if len(tables) != 1:
            return None
        fresh = tables[0]
        rows = [row[:-1] for row in fresh.live_rows()]
        body = encode_creates(self.clock[0], self.clock[1], fresh.table, fresh.names[1:], rows)
        return [body] if len(body) <= MAX_CHANGESET_BYTES else None

    def _encode(self) -> list[bytes]:
        """The part's changeset(s): new objects by table as NewObjects groups (fewer
        than GROUP_MIN_ROWS of a table as instructions), then the rest."""
        groups = []
        loose = [net for _, net in self._touched.values()]
        for fresh in self._fresh.values():
            rows = fresh.live_rows()
            if not rows:
                continue
            keys, *columns, _created = zip(*rows, strict=True)
            group = NewObjects(fresh.table, fresh.names[1:], keys, tuple(columns))
            if len(keys) >= GROUP_MIN_ROWS:
                groups.append(group)
            else:
                loose.extend(group.instructions())
        return split_encode(self.clock, loose, MAX_CHANGESET_BYTES, groups)

    def commit(self) -> int | None:
        """Commit; returns the new client version, or None if nothing was written."""
        if self.done:
            raise RealmError("this transaction has already ended")
        self.done = True
        c = self.file.conn
        try:
            self._write_part(last=True)
            c.execute("COMMIT")
            if self.parts:  # before the locks go: the next transaction numbers after it
                self.file.latest_client_version = self.parts[-1][0]
        except BaseException:
            c.execute("ROLLBACK")
            self.parts.clear()
            self.bodies = None
            raise
        finally:
            self.file.active = None
            self.file.write_lock.release()
            self.file.lock.release()
        return self.parts[-1][0] if self.parts else None

    def rollback(self) -> None:
        if self.done:
            return
        self.done = True
        for fresh in self._fresh.values():
            fresh.pending.clear()
        try:
            self.file.conn.execute("ROLLBACK")
        finally:
            self.file.active = None
            self.file.write_lock.release()
            self.file.lock.release()


# A transaction whose changeset would be larger than this is stored as several
# changesets with consecutive client versions and the transaction's one clock, so
# each fits a protocol message and no process holds a huge one in memory at once.
# Merge results are the same (every instruction keeps the transaction's clock, and
# each object appears in one part only); other devices may integrate the parts in
# separate steps.
MAX_CHANGESET_BYTES = 4 * 1024 * 1024
# Objects a transaction gathers before writing them out as a part (see _write_part).
FLUSH_OBJECTS = 20_000
# A committed transaction whose changesets total at most this many bytes hands them
# to the session in memory (the usual small write); a larger one is read back from
# the history when it is uploaded, so a huge transaction is never held twice.
HANDOFF_BYTES = 64 * 1024
# Fewer new objects of a table than this travel as instructions: a group's JSON
# costs more than it saves for a handful of rows (the usual small transaction).
GROUP_MIN_ROWS = 16
# New objects a transaction inserts into a table one by one before it starts to
# defer and batch the inserts of keys that provably have no row (see _try_new).
DEFER_AFTER = 64


def last_client_version(c: sqlite3.Connection) -> int:
    """The highest client version a realm file ever committed.

    Acknowledged history is deleted, but only up to the upload cursor stored in the
    same transaction, so the newest version is whichever of the two is higher (in
    format 1 too, whose AUTOINCREMENT sequence never got ahead of both).
    """
    row = c.execute(
        "SELECT max((SELECT coalesce(max(client_version), 0) FROM _history), "
        "(SELECT value FROM _meta WHERE key = 'upload_cursor'))"
    ).fetchone()
    return int(row[0])


def split_encode(
    clock: tuple[int, int],
    instructions: list[Instruction],
    limit: int,
    groups: list[NewObjects] | None = None,
) -> list[bytes]:
    """Encode a transaction's instructions and groups as one changeset, or several
    below ``limit`` (halving both until each part fits or holds one object)."""
    groups = [g for g in groups or () if len(g)]
    body = encode_changeset(Changeset(clock[0], clock[1], tuple(instructions), tuple(groups)))
    objects = len(instructions) + sum(len(g) for g in groups)
    if len(body) <= limit or objects < 2:
        return [body]
    # The first half of the objects (instructions, then group rows) and the rest:
    # each side holds at least one object, so every step makes progress.
    take = objects // 2
    first_ins, rest_ins = instructions[:take], instructions[take:]
    take -= len(first_ins)
    first_groups: list[NewObjects] = []
    rest_groups: list[NewObjects] = []
    for g in groups:
        if take >= len(g):
            first_groups.append(g)
            take -= len(g)
        elif take > 0:
            a, b = g.split(take)
            first_groups.append(a)
            rest_groups.append(b)
            take = 0
        else:
            rest_groups.append(g)
    return [
        *split_encode(clock, first_ins, limit, first_groups),
        *split_encode(clock, rest_ins, limit, rest_groups),
    ]


def plain_key(pk: Value) -> Value:
    """``pk`` as exactly an int or a str when it is a subclass of one (an enum member):
    keys are compared by type and value within a transaction, and stored plain."""
    t = type(pk)
    if t is int or t is str or t is bool:
        return pk
    if isinstance(pk, int):
        return int.__int__(pk)
    if isinstance(pk, str):
        return str.__str__(pk)
    return pk


def _default(f: FieldSchema) -> Value:
    return None if f.optional else VALUE_DEFAULTS[f.type]

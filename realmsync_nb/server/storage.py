"""Server storage: the durable history, clients, users and the merged state.

:class:`ServerStorage` is the interface the sync server drives; :class:`SQLiteStorage`
is the first engine. Every upload is integrated in one SQLite transaction that
appends to the history and advances the client's upload cursor, so a crash leaves
either all of an upload or none of it, and a re-sent changeset is recognised by
its client version.

The server's copy of the objects (what :meth:`SQLiteStorage.snapshot` shows) is
derived from the history, and kept off the path of a change: the server forwards a
change first and applies the merge rules to its copy afterwards, in transactions
of their own that also record how far the copy has got (``applied`` in ``_meta``).
A crash in between loses nothing: opening the file applies whatever history the
copy is missing. Recent changesets are kept decoded for that (at most
:data:`DECODED_COUNT` and :data:`DECODED_BYTES`); older ones are decoded again
from the history. A changeset the merge code fails on (a bug) is left out of the
copy and logged, never allowed to stop the server: the history and every device
still have it.

History rows carry running byte totals (overall and per origin), so the exact
number of bytes still to send to a client is two index look-ups, not a scan.

The storage is the only writer of its file, so it keeps in memory what each
upload would otherwise read back: each client's last integrated version and byte
total, and the newest history rows (:data:`TAIL_BYTES` of them). A session that
keeps up is sent its changesets from that tail, not read back from SQLite; one
further behind reads them from the file. Memory moves only after the
transaction has committed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..protocol.changeset import Changeset, decode_changeset
from ..protocol.schema import TableSchema, merge_schemas
from ..store.objects import ObjectTables, schema_from_json, schema_json
from ..store.realm_file import connect, transaction

logger = logging.getLogger("realmsync_nb.server")

__all__ = ["ClientRecord", "HistoryBatch", "SQLiteStorage", "ServerStorage", "UserRecord"]

# How many bytes of the newest history rows are kept in memory for the senders of
# sessions that keep up (at least the newest row, whatever its size).
TAIL_BYTES = 4 * 1024 * 1024
# Integrated changesets kept decoded until they are applied to the server's copy of
# the objects, at most (by count and by encoded bytes; a small changeset decodes to
# about 600 bytes of Python objects). Beyond that they are decoded again when applied.
DECODED_COUNT = 2_000
DECODED_BYTES = 4 * 1024 * 1024
# At most this many changesets, or bytes of them (at least one), per apply transaction.
APPLY_CHUNK_COUNT = 1_000
APPLY_CHUNK_BYTES = 1024 * 1024
_SQLITE_MAX_INT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    email: str | None
    salt: bytes | None
    hash: bytes | None
    disabled: bool


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: int
    user_id: str
    last_client_version: int


@dataclass(frozen=True, slots=True)
class HistoryBatch:
    """Changesets for one client: ``(server_version, origin, body)`` and the cursor after."""

    changesets: list[tuple[int, int, bytes]]
    cursor: int
    bytes: int


class ServerStorage(Protocol):
    """What the sync server needs from a storage engine."""

    instance_id: str
    signing_key: bytes

    def schema(self) -> dict[str, TableSchema]: ...
    def merge_schema(self, tables: Iterable[TableSchema]) -> dict[str, TableSchema]: ...
    def latest_version(self) -> int: ...
    def get_client(self, client_id: int) -> ClientRecord | None: ...
    def add_client(self, client_id: int, user_id: str) -> ClientRecord: ...
    def integrate(self, client_id: int, changesets: list[tuple[int, Changeset, bytes]]) -> int: ...
    def apply_pending(self, chunk: bool = False) -> bool: ...
    def unapplied_bytes(self) -> int: ...
    def read_history(
        self, after: int, exclude_origin: int, max_bytes: int, max_count: int
    ) -> HistoryBatch: ...
    def remaining_bytes(self, client_id: int, after: int) -> int: ...
    def add_user(self, email: str | None, salt: bytes | None, hash: bytes | None) -> UserRecord: ...
    def get_user(self, user_id: str) -> UserRecord | None: ...
    def find_user(self, email: str) -> UserRecord | None: ...
    def disable_user(self, user_id: str) -> None: ...
    def snapshot(self) -> dict[str, dict[Any, dict[str, Any]]]: ...
    def close(self) -> None: ...


class SQLiteStorage:
    """:class:`ServerStorage` in one SQLite file, ``<data_dir>/server.sqlite``.

    Used from one thread (the server's event loop).
    """

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, "server.sqlite")
        self.conn = connect(self.path)
        c = self.conn
        with transaction(c):
            c.execute("CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value)")
            c.execute(
                "CREATE TABLE IF NOT EXISTS _users (id TEXT PRIMARY KEY, email TEXT UNIQUE, "
                "salt BLOB, hash BLOB, disabled INT NOT NULL DEFAULT 0, created REAL)"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS _clients (client_id INTEGER PRIMARY KEY, "
                "user_id TEXT NOT NULL, last_client_version INTEGER NOT NULL, created REAL)"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS _history (server_version INTEGER PRIMARY KEY, "
                "origin INTEGER NOT NULL, client_version INTEGER NOT NULL, body BLOB NOT NULL, "
                "cum_size INTEGER NOT NULL, origin_cum INTEGER NOT NULL)"
            )
            c.execute(
                "CREATE INDEX IF NOT EXISTS _history_origin ON _history (origin, server_version)"
            )
            meta = dict(c.execute("SELECT key, value FROM _meta").fetchall())
            if "instance_id" not in meta:
                meta = {
                    "instance_id": uuid.uuid4().hex,
                    "signing_key": secrets.token_hex(32),
                    "schema": "[]",
                }
                c.executemany("INSERT INTO _meta VALUES (?, ?)", meta.items())
        self.instance_id: str = meta["instance_id"]
        self.signing_key = bytes.fromhex(meta["signing_key"])
        self._schema = schema_from_json(json.loads(meta["schema"]))
        self.objects = ObjectTables(c, self._schema.values())
        row = c.execute(
            "SELECT server_version, cum_size FROM _history ORDER BY server_version DESC LIMIT 1"
        ).fetchone()
        self._latest: int = row[0] if row else 0
        self._cum: int = row[1] if row else 0
        # client id -> (last client version integrated, bytes of its history so far)
        self._client_state: dict[int, tuple[int, int]] = {}
        # The newest history rows (server_version, origin, body), in order and
        # contiguous: _tail[_tail_off + i] has server version _tail_first + i. Rows
        # before _tail_off were dropped; the list is compacted now and then.
        self._tail: list[tuple[int, int, bytes]] = []
        self._tail_off = 0
        self._tail_first = self._latest + 1
        self._tail_bytes = 0
        # The server version the object copy reflects and the history bytes up to it;
        # decoded changesets after it, by server version, with their encoded size.
        if "applied" not in meta:  # a new file, or one that applied as it integrated
            with transaction(c):
                c.execute("INSERT INTO _meta VALUES ('applied', ?)", (self._latest,))
            meta["applied"] = self._latest
        self._applied: int = int(meta["applied"])
        row = c.execute(
            "SELECT cum_size FROM _history WHERE server_version <= ? "
            "ORDER BY server_version DESC LIMIT 1",
            (self._applied,),
        ).fetchone()
        self._applied_cum: int = row[0] if row else 0
        self._decoded: dict[int, tuple[Changeset, int]] = {}
        self._decoded_bytes = 0
        self.apply_failures = 0  # changesets left out of the copy since this open
        try:
            self.apply_pending()  # after a crash: the history the copy missed
        except BaseException:
            c.close()
            raise

    # -- schema -----------------------------------------------------------------

    def schema(self) -> dict[str, TableSchema]:
        return dict(self._schema)

    def merge_schema(self, tables: Iterable[TableSchema]) -> dict[str, TableSchema]:
        """Add a client's tables and fields; raises ValueError on a conflict."""
        merged = merge_schemas(self._schema, tables)
        if merged != self._schema:
            self.apply_pending()  # changesets validated under the old schema go in first
            codecs = dict(self.objects.codecs)
            try:
                with transaction(self.conn):
                    self.objects.ensure_schema(merged.values())
                    self.conn.execute(
                        "UPDATE _meta SET value=? WHERE key='schema'",
                        (json.dumps(schema_json(merged)),),
                    )
            except BaseException:
                # The tables were rolled back: so are the codecs that describe them.
                self.objects.codecs = codecs
                raise
            self._schema = merged
        return dict(merged)

    # -- clients and history ----------------------------------------------------

    def latest_version(self) -> int:
        return self._latest

    def get_client(self, client_id: int) -> ClientRecord | None:
        row = self.conn.execute(
            "SELECT user_id, last_client_version FROM _clients WHERE client_id=?", (client_id,)
        ).fetchone()
        return None if row is None else ClientRecord(client_id, row[0], row[1])

    def add_client(self, client_id: int, user_id: str) -> ClientRecord:
        self.conn.execute(
            "INSERT INTO _clients VALUES (?, ?, 0, ?)", (client_id, user_id, time.time())
        )
        return ClientRecord(client_id, user_id, 0)

    def integrate(self, client_id: int, changesets: list[tuple[int, Changeset, bytes]]) -> int:
        """Append validated changesets to the history; returns the client's new last
        version. They reach the object copy later (see :meth:`apply_pending`).

        Changesets at or below the client's last integrated version are skipped:
        they were integrated before the client saw the acknowledgement.
        """
        c = self.conn
        latest, cum = self._latest, self._cum
        last, ocum = self._client_totals(client_id)
        rows = []
        decoded = []
        with transaction(c):
            for cv, cs, body in changesets:
                if cv <= last:
                    continue
                latest += 1
                decoded.append((latest, cs, len(body)))
                cum += len(body)
                ocum += len(body)
                rows.append((latest, client_id, cv, body, cum, ocum))
                last = cv
            if not rows:
                return last
            if len(rows) == 1:
                c.execute("INSERT INTO _history VALUES (?, ?, ?, ?, ?, ?)", rows[0])
            else:
                c.executemany("INSERT INTO _history VALUES (?, ?, ?, ?, ?, ?)", rows)
            c.execute(
                "UPDATE _clients SET last_client_version=? WHERE client_id=?", (last, client_id)
            )
        # Committed: only now does memory move.
        self._latest, self._cum = latest, cum
        self._client_state[client_id] = (last, ocum)
        self._remember(rows)
        for sv, cs, nbytes in decoded:
            if len(self._decoded) >= DECODED_COUNT or self._decoded_bytes + nbytes > DECODED_BYTES:
                break
            self._decoded[sv] = (cs, nbytes)
            self._decoded_bytes += nbytes
        return last

    def unapplied_bytes(self) -> int:
        """Bytes of the integrated changesets not yet applied to the object copy."""
        return self._cum - self._applied_cum

    def apply_pending(self, chunk: bool = False) -> bool:
        """Apply integrated changesets to the object copy, in transactions that also
        record how far the copy has got; with ``chunk``, only the next
        :data:`APPLY_CHUNK_COUNT` (or :data:`APPLY_CHUNK_BYTES`). True if some wait."""
        while self._applied < self._latest:
            # Every origin's changesets (client ids are unsigned, never -1), from the
            # tail in memory when it has them.
            batch_read = self.read_history(self._applied, -1, APPLY_CHUNK_BYTES, APPLY_CHUNK_COUNT)
            rows = [(sv, body) for sv, _, body in batch_read.changesets]
            batch = []
            for sv, body in rows:
                kept = self._decoded.pop(sv, None)
                if kept is not None:
                    self._decoded_bytes -= kept[1]
                batch.append((sv, kept[0] if kept is not None else decode_changeset(body)))
            self._apply(batch)
            self._applied_cum += sum(len(body) for _, body in rows)
            if chunk:
                break
        return self._applied < self._latest

    def _apply(self, changesets: list[tuple[int, Changeset]]) -> None:
        c = self.conn
        mark = "UPDATE _meta SET value=? WHERE key='applied'"
        try:
            with transaction(c):
                for _, cs in changesets:
                    self.objects.apply_changeset(cs)
                c.execute(mark, (changesets[-1][0],))
        except sqlite3.OperationalError:
            raise  # the file (full, I/O, locked), not a changeset: try again later
        except Exception:
            # The merge code failed on one of them (a bug): find which, and apply the
            # others. The history and every device still have the one left out.
            with transaction(c):
                for sv, cs in changesets:
                    c.execute("SAVEPOINT apply_one")
                    try:
                        self.objects.apply_changeset(cs)
                    except sqlite3.OperationalError:
                        raise
                    except Exception:
                        c.execute("ROLLBACK TO apply_one")
                        self.apply_failures += 1
                        logger.exception(
                            "server version %d could not be applied to the server's copy "
                            "of the objects and is left out of it (a bug in the merge code; "
                            "the history and every device still have it)",
                            sv,
                        )
                    c.execute("RELEASE apply_one")
                c.execute(mark, (changesets[-1][0],))
        self._applied = changesets[-1][0]

    def _client_totals(self, client_id: int) -> tuple[int, int]:
        """(last client version integrated, bytes of its history) of a client, read once."""
        state = self._client_state.get(client_id)
        if state is None:
            c = self.conn
            row = c.execute(
                "SELECT last_client_version FROM _clients WHERE client_id=?", (client_id,)
            ).fetchone()
            orow = c.execute(
                "SELECT origin_cum FROM _history WHERE origin=? "
                "ORDER BY server_version DESC LIMIT 1",
                (client_id,),
            ).fetchone()
            state = self._client_state[client_id] = (row[0], orow[0] if orow else 0)
        return state

    def _remember(self, rows: list[tuple[int, int, int, bytes, int, int]]) -> None:
        """Add committed history rows to the in-memory tail, then drop its oldest rows
        until it holds at most TAIL_BYTES (or only the newest row)."""
        tail = self._tail
        for sv, origin, _cv, body, _cum, _ocum in rows:
            tail.append((sv, origin, body))
            self._tail_bytes += len(body)
        off = self._tail_off
        while self._tail_bytes > TAIL_BYTES and len(tail) - off > 1:
            self._tail_bytes -= len(tail[off][2])
            off += 1
        self._tail_first += off - self._tail_off
        if off > len(tail) // 2:  # compact: each row is moved at most once on average
            del tail[:off]
            off = 0
        self._tail_off = off

    def read_history(
        self, after: int, exclude_origin: int, max_bytes: int, max_count: int = 10_000
    ) -> HistoryBatch:
        """The next changesets after ``after`` not written by ``exclude_origin``."""
        latest = self._latest
        if after + 1 >= self._tail_first:  # all of it is in memory
            rows: Iterable[tuple[int, int, bytes]] = (
                r
                for r in self._tail[self._tail_off + after + 1 - self._tail_first :]
                if r[1] != exclude_origin
            )
        else:
            rows = self.conn.execute(
                "SELECT server_version, origin, body FROM _history "
                "WHERE server_version > ? AND server_version <= ? AND origin != ? "
                "ORDER BY server_version LIMIT ?",
                # One more than a batch takes, to know whether rows are left after it.
                (after, latest, exclude_origin, min(max_count + 1, _SQLITE_MAX_INT)),
            )
        out: list[tuple[int, int, bytes]] = []
        total = 0
        cursor = after
        for sv, origin, body in rows:
            if len(out) == max_count or (out and total + len(body) > max_bytes):
                return HistoryBatch(out, cursor, total)
            out.append((sv, origin, body))
            total += len(body)
            cursor = sv
        # Everything up to latest was either sent or the client's own.
        return HistoryBatch(out, latest, total)

    def remaining_bytes(self, client_id: int, after: int) -> int:
        """Exact bytes of changesets after ``after`` that ``client_id`` has yet to receive."""
        if after >= self._latest:  # caught up: the usual case once a session is live
            return 0
        c = self.conn
        cum_after = c.execute(
            "SELECT cum_size FROM _history WHERE server_version <= ? "
            "ORDER BY server_version DESC LIMIT 1",
            (after,),
        ).fetchone()
        own_total = c.execute(
            "SELECT origin_cum FROM _history WHERE origin=? ORDER BY server_version DESC LIMIT 1",
            (client_id,),
        ).fetchone()
        own_after = c.execute(
            "SELECT origin_cum FROM _history WHERE origin=? AND server_version <= ? "
            "ORDER BY server_version DESC LIMIT 1",
            (client_id, after),
        ).fetchone()
        others = self._cum - (cum_after[0] if cum_after else 0)
        own = (own_total[0] if own_total else 0) - (own_after[0] if own_after else 0)
        return int(others - own)

    # -- users --------------------------------------------------------------------

    def add_user(self, email: str | None, salt: bytes | None, hash: bytes | None) -> UserRecord:
        uid = uuid.uuid4().hex
        self.conn.execute(
            "INSERT INTO _users (id, email, salt, hash, created) VALUES (?, ?, ?, ?, ?)",
            (uid, email, salt, hash, time.time()),
        )
        return UserRecord(uid, email, salt, hash, False)

    def _user(self, row: tuple[Any, ...] | None) -> UserRecord | None:
        if row is None:
            return None
        return UserRecord(row[0], row[1], row[2], row[3], bool(row[4]))

    def get_user(self, user_id: str) -> UserRecord | None:
        return self._user(
            self.conn.execute(
                "SELECT id, email, salt, hash, disabled FROM _users WHERE id=?", (user_id,)
            ).fetchone()
        )

    def find_user(self, email: str) -> UserRecord | None:
        return self._user(
            self.conn.execute(
                "SELECT id, email, salt, hash, disabled FROM _users WHERE email=?", (email,)
            ).fetchone()
        )

    def disable_user(self, user_id: str) -> None:
        self.conn.execute("UPDATE _users SET disabled=1 WHERE id=?", (user_id,))

    # -- inspection -----------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[Any, dict[str, Any]]]:
        self.apply_pending()
        return self.objects.snapshot()

    def close(self) -> None:
        try:
            self.apply_pending()  # not needed for safety (opening catches up), only tidier
        except Exception:
            logger.exception("could not apply the last changes to the server's copy at close")
        finally:
            self.conn.close()

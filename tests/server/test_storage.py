"""The server's storage: what it keeps in memory agrees with its file.

SQLiteStorage keeps each client's totals and the newest history rows in memory
so that a session that keeps up is served without reading back what was just
written. These tests compare every answer it gives from memory with the answer
the same file gives when reopened (nothing in memory), including after a tail
that was trimmed and after a transaction that failed half-way.
"""

from __future__ import annotations

import random
import sqlite3

import pytest

from realmsync_nb.protocol.changeset import Changeset, Instruction, Op, encode_changeset
from realmsync_nb.protocol.schema import FieldSchema, TableSchema, ValueType
from realmsync_nb.server import storage as storage_mod
from realmsync_nb.server.storage import SQLiteStorage

NOTE = TableSchema(
    "Note",
    (
        FieldSchema("id", ValueType.INT, primary_key=True),
        FieldSchema("text", ValueType.STR),
    ),
)
CLIENTS = (11, 22, 33)


def _changeset(origin: int, ts: int, pk: int, size: int) -> tuple[Changeset, bytes]:
    cs = Changeset(ts, origin, (Instruction(Op.CREATE, "Note", pk, (("text", "x" * size),)),))
    return cs, encode_changeset(cs)


def _fill(st: SQLiteStorage, rng: random.Random, uploads: int) -> dict[int, int]:
    """Random uploads of 1-5 changesets from three clients; returns each one's last version."""
    last = dict.fromkeys(CLIENTS, 0)
    ts = 1_000
    for _ in range(uploads):
        origin = rng.choice(CLIENTS)
        batch = []
        for _ in range(rng.randint(1, 5)):
            last[origin] += 1
            ts += 1
            cs, body = _changeset(origin, ts, rng.randrange(1000), rng.randint(0, 300))
            batch.append((last[origin], cs, body))
        assert st.integrate(origin, batch) == last[origin]
    return last


def _answers(st: SQLiteStorage) -> list[object]:
    """Every read_history and remaining_bytes answer over a grid of arguments."""
    out: list[object] = []
    for after in range(0, st.latest_version() + 1, 3):
        for origin in (*CLIENTS, 99):
            for max_bytes, max_count in ((200, 10_000), (10**6, 3), (10**6, 10_000), (1, 1)):
                b = st.read_history(after, origin, max_bytes, max_count)
                out.append((after, origin, max_bytes, max_count, b.changesets, b.cursor, b.bytes))
            out.append(st.remaining_bytes(origin, after))
    return out


def _new(tmp_path: object) -> SQLiteStorage:
    st = SQLiteStorage(str(tmp_path))
    st.merge_schema([NOTE])
    for c in CLIENTS:
        st.add_client(c, "user")
    return st


@pytest.mark.parametrize("tail_bytes", [storage_mod.TAIL_BYTES, 2_000])
def test_history_served_from_memory_matches_the_file(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, tail_bytes: int
) -> None:
    # With a 2,000-byte tail most reads go to the file and some to memory, and the
    # tail is trimmed many times; with the default everything written is in memory.
    monkeypatch.setattr(storage_mod, "TAIL_BYTES", tail_bytes)
    st = _new(tmp_path)
    _fill(st, random.Random(5), 60)
    in_memory = _answers(st)
    st.close()
    reopened = SQLiteStorage(str(tmp_path))  # nothing in memory: every read is SQL
    assert _answers(reopened) == in_memory
    reopened.close()


def test_a_batch_stops_at_max_count_and_the_next_read_goes_on(tmp_path: object) -> None:
    st = _new(tmp_path)
    rows = [(v, *_changeset(11, 1_000 + v, v, 10)) for v in range(1, 8)]
    st.integrate(11, rows)
    for fresh in (False, True):  # from memory, then from the file
        if fresh:
            st.close()
            st = SQLiteStorage(str(tmp_path))
        seen, after = [], 0
        while after < st.latest_version():
            batch = st.read_history(after, 99, 10**6, 3)
            assert len(batch.changesets) <= 3
            seen += [sv for sv, _, _ in batch.changesets]
            after = batch.cursor
        assert seen == list(range(1, 8))
    st.close()


def test_totals_carry_on_after_a_restart(tmp_path: object) -> None:
    st = _new(tmp_path)
    rng = random.Random(9)
    last = _fill(st, rng, 20)
    st.close()
    st = SQLiteStorage(str(tmp_path))
    # A re-sent changeset (version already integrated) is skipped; a new one lands.
    cs, body = _changeset(22, 10**6, 1, 40)
    assert st.integrate(22, [(last[22], cs, body), (last[22] + 1, cs, body)]) == last[22] + 1
    in_memory = _answers(st)
    st.close()
    reopened = SQLiteStorage(str(tmp_path))
    assert _answers(reopened) == in_memory
    assert reopened.get_client(22) is not None
    assert reopened.get_client(22).last_client_version == last[22] + 1  # type: ignore[union-attr]
    reopened.close()


def test_a_failed_transaction_leaves_memory_as_the_file(tmp_path: object) -> None:
    st = _new(tmp_path)
    _fill(st, random.Random(3), 10)
    latest = st.latest_version()
    good, good_body = _changeset(11, 10**6, 500, 20)
    bad, _ = _changeset(11, 10**6 + 1, 501, 20)
    unstorable = ["not", "bytes"]  # applies, then cannot be bound to the history INSERT
    last_11 = st.get_client(11).last_client_version  # type: ignore[union-attr]
    with pytest.raises(sqlite3.ProgrammingError):
        st.integrate(11, [(last_11 + 1, good, good_body), (last_11 + 2, bad, unstorable)])  # type: ignore[list-item]
    assert st.latest_version() == latest
    # The next upload gets the versions and byte totals the failed one would have had.
    assert st.integrate(11, [(last_11 + 1, good, good_body)]) == last_11 + 1
    in_memory = _answers(st)
    st.close()
    reopened = SQLiteStorage(str(tmp_path))
    assert _answers(reopened) == in_memory
    reopened.close()

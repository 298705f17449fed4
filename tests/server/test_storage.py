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


GRID = ((200, 10_000), (10**6, 3), (10**6, 10_000), (1, 1), (10**6, 2**63 - 1))


def _answers(st: SQLiteStorage) -> list[object]:
    """Every read_history and remaining_bytes answer over a grid of arguments."""
    out: list[object] = []
    for after in range(0, st.latest_version() + 1, 3):
        for origin in (*CLIENTS, 99):
            for max_bytes, max_count in GRID:
                b = st.read_history(after, origin, max_bytes, max_count)
                out.append((after, origin, max_bytes, max_count, b.changesets, b.cursor, b.bytes))
            out.append(st.remaining_bytes(origin, after))
    return out


def _expected(rows: list[tuple[int, int, bytes]], latest: int) -> list[object]:
    """What _answers must say, from the whole history and the rules alone: after
    ``after``, the rows of other origins in order, as many as fit ``max_bytes``
    (at least one) and ``max_count``; the cursor is the last row sent if rows of
    other origins are left, else ``latest``; the bytes still to come are those of
    every other origin's row after the cursor."""
    out: list[object] = []
    for after in range(0, latest + 1, 3):
        for origin in (*CLIENTS, 99):
            for max_bytes, max_count in GRID:
                theirs = [r for r in rows if r[0] > after and r[1] != origin]
                sent: list[tuple[int, int, bytes]] = []
                for r in theirs:
                    size = sum(len(b) for _, _, b in sent)
                    if len(sent) == max_count or (sent and size + len(r[2]) > max_bytes):
                        break
                    sent.append(r)
                cursor = sent[-1][0] if len(sent) < len(theirs) else latest
                total = sum(len(b) for _, _, b in sent)
                out.append((after, origin, max_bytes, max_count, sent, cursor, total))
            out.append(sum(len(b) for sv, o, b in rows if sv > after and o != origin))
    return out


def _history(st: SQLiteStorage) -> list[tuple[int, int, bytes]]:
    return [
        (sv, o, bytes(b))
        for sv, o, b in st.conn.execute(
            "SELECT server_version, origin, body FROM _history ORDER BY server_version"
        )
    ]


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
    assert in_memory == _expected(_history(st), st.latest_version())
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


def test_the_tail_stays_within_its_budget_when_large_rows_follow_small_ones(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many small rows, then a few that are each most of the budget (a bulk write
    # after a live stream): the tail must shed the small rows at once, not keep the
    # large ones beside them.
    monkeypatch.setattr(storage_mod, "TAIL_BYTES", 10_000)
    st = _new(tmp_path)
    ts = 1_000
    for v in range(1, 401):
        cs, body = _changeset(11, ts + v, v, 20)
        st.integrate(11, [(v, cs, body)])
    for v in range(1, 6):
        cs, body = _changeset(22, ts + 1000 + v, 10_000 + v, 7_000)
        st.integrate(22, [(v, cs, body)])
        live = st._tail[st._tail_off :]
        held = sum(len(b) for _, _, b in live)
        assert held <= 10_000 or len(live) == 1
        assert held == st._tail_bytes
        assert live[-1][0] == st.latest_version()
    assert _answers(st) == _expected(_history(st), st.latest_version())
    st.close()

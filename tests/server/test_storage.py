"""The server's storage: what it keeps in memory agrees with its file.

SQLiteStorage keeps each client's totals and the newest history rows in memory
so that a session that keeps up is served without reading back what was just
written. These tests compare every answer it gives from memory with the answer
the same file gives when reopened (nothing in memory), including after a tail
that was trimmed and after a transaction that failed half-way. The object copy,
applied after the history, must end as the merge rules define for that history,
also after a crash between the two.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from realmsync_nb.protocol.changeset import Changeset, Instruction, Op, encode_changeset
from realmsync_nb.protocol.schema import FieldSchema, TableSchema, ValueType
from realmsync_nb.server import storage as storage_mod
from realmsync_nb.server.storage import SQLiteStorage
from tests.client.test_convergence import expected_state
from tests.conftest import OpenRealm
from tests.helpers import Note, wait_until
from tests.reliability.workload import history_bodies

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


# -- the object copy: applied after the change has gone out, caught up on open -----


def _applied_mark(tmp_path: object) -> tuple[int, int]:
    """(the 'applied' version in _meta, Note rows in the object copy), read from the file."""
    c = sqlite3.connect(f"{tmp_path}/server.sqlite")
    try:
        mark = c.execute("SELECT value FROM _meta WHERE key='applied'").fetchone()
        rows = c.execute('SELECT count(*) FROM "Note"').fetchone()[0]
        return (-1 if mark is None else int(mark[0])), rows
    finally:
        c.close()


def _merged(tmp_path: object) -> dict[str, Any]:
    """The state the merge rules define for the file's history (of this schema's table)."""
    return {"Note": expected_state(history_bodies(str(tmp_path)))["Note"]}


def test_the_object_copy_is_applied_after_the_history_and_before_a_snapshot(
    tmp_path: object,
) -> None:
    st = _new(tmp_path)
    _fill(st, random.Random(5), 30)
    # The history has every change; the copy none of them yet (it is applied after
    # the change is forwarded, on the server's next turn of its loop).
    assert _applied_mark(tmp_path) == (0, 0)
    assert st.snapshot() == _merged(tmp_path)  # a snapshot applies what waits
    assert _applied_mark(tmp_path)[0] == st.latest_version()
    st.close()


def test_changesets_integrated_but_not_yet_applied_survive_a_crash(tmp_path: object) -> None:
    st = _new(tmp_path)
    last = _fill(st, random.Random(6), 30)
    st.apply_pending()
    applied_before = st.latest_version()
    for v in range(1, 11):  # integrated (committed), not applied
        origin = CLIENTS[v % 3]
        cs, body = _changeset(origin, 10**6 + v, v % 4, 50)
        last[origin] += 1
        st.integrate(origin, [(last[origin], cs, body)])
    st.conn.close()  # a crash: nothing after the integrate transactions ran
    assert _applied_mark(tmp_path)[0] == applied_before
    reopened = SQLiteStorage(str(tmp_path))  # opening applies the history the copy missed
    assert _applied_mark(tmp_path)[0] == reopened.latest_version() > applied_before
    assert reopened.snapshot() == _merged(tmp_path)
    reopened.close()


def test_the_copy_is_applied_in_chunks_and_kept_decoded_only_within_bounds(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_mod, "DECODED_COUNT", 10)
    monkeypatch.setattr(storage_mod, "DECODED_BYTES", 2_000)
    monkeypatch.setattr(storage_mod, "APPLY_CHUNK_COUNT", 7)
    monkeypatch.setattr(storage_mod, "TAIL_BYTES", 3_000)  # the oldest are read from the file
    st = _new(tmp_path)
    for v in range(1, 60):
        cs, body = _changeset(11, 1_000 + v, v % 23, 150)
        st.integrate(11, [(v, cs, body)])
        assert len(st._decoded) <= 10 and st._decoded_bytes <= 2_000
    assert st.unapplied_bytes() == sum(len(b) for _, _, b in _history(st))
    marks = []
    while st.apply_pending(chunk=True):
        marks.append(_applied_mark(tmp_path)[0])
    assert marks == list(range(7, 59, 7))  # one chunk per call, each committed with its mark
    assert _applied_mark(tmp_path)[0] == st.latest_version() and st.unapplied_bytes() == 0
    assert st.snapshot() == _merged(tmp_path)
    st.close()


def _history(st: SQLiteStorage) -> list[tuple[int, int, bytes]]:
    return st.conn.execute("SELECT server_version, origin, body FROM _history").fetchall()


def test_a_changeset_the_merge_code_fails_on_is_left_out_and_the_server_goes_on(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in the merge code must not stop the server from applying the others, from
    # taking uploads, or from starting again.
    from realmsync_nb.store.objects import ObjectTables

    apply = ObjectTables.apply_changeset

    def buggy(self: ObjectTables, cs: Changeset) -> int:
        if cs.instructions and cs.instructions[0].pk == 13:
            raise RuntimeError("a merge bug")
        return apply(self, cs)

    monkeypatch.setattr(ObjectTables, "apply_changeset", buggy)
    st = _new(tmp_path)
    for v in range(1, 21):
        cs, body = _changeset(11, 1_000 + v, v, 20)
        st.integrate(11, [(v, cs, body)])
    snap = st.snapshot()
    assert sorted(snap["Note"]) == [v for v in range(1, 21) if v != 13]
    assert st.apply_failures == 1 and _applied_mark(tmp_path)[0] == 20
    cs, body = _changeset(11, 2_000, 99, 20)
    assert st.integrate(11, [(21, cs, body)]) == 21  # uploads go on
    st.conn.close()  # a crash before 21 was applied
    reopened = SQLiteStorage(str(tmp_path))  # starts, applying 21
    assert 99 in reopened.snapshot()["Note"]
    reopened.close()


def test_opening_catches_up_over_more_than_one_chunk(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_mod, "APPLY_CHUNK_COUNT", 4)
    st = _new(tmp_path)
    _fill(st, random.Random(11), 15)
    st.conn.close()  # a crash with everything still to apply
    reopened = SQLiteStorage(str(tmp_path))
    assert _applied_mark(tmp_path)[0] == reopened.latest_version() > 8
    assert reopened.snapshot() == _merged(tmp_path)
    reopened.close()


def test_changes_waiting_when_the_schema_grows_are_applied_under_the_old_one(
    tmp_path: Path,
) -> None:
    # The server integrated the change before the new field existed, so its copy must
    # read as if applied then: a field added later does not go back into old objects.
    grown = TableSchema("Note", (*NOTE.fields, FieldSchema("n", ValueType.INT)))
    snaps = []
    for name, apply_first in (("eager", True), ("lazy", False)):
        st = _new(tmp_path / name)
        _fill(st, random.Random(12), 5)
        if apply_first:
            st.apply_pending()
        st.merge_schema([grown])
        snaps.append(st.snapshot())
        st.close()
    assert snaps[0] == snaps[1]


def test_a_file_without_the_applied_mark_counts_as_fully_applied(tmp_path: object) -> None:
    # Files from before the mark applied each upload inside its integrate transaction.
    st = _new(tmp_path)
    _fill(st, random.Random(8), 20)
    expected = st.snapshot()
    st.close()
    c = sqlite3.connect(f"{tmp_path}/server.sqlite")
    with c:
        c.execute("DELETE FROM _meta WHERE key='applied'")
    c.close()
    applied: list[object] = []
    from realmsync_nb.store.objects import ObjectTables

    apply = ObjectTables.apply_changeset
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ObjectTables, "apply_changeset", lambda self, cs: applied.append(cs) or 0)
        reopened = SQLiteStorage(str(tmp_path))
    assert applied == []  # nothing applied twice
    assert ObjectTables.apply_changeset is apply
    assert _applied_mark(tmp_path)[0] == reopened.latest_version()
    assert reopened.snapshot() == expected
    reopened.close()


def test_a_running_server_applies_each_upload_to_its_copy_unasked(
    tmp_path: Path, open_realm: OpenRealm
) -> None:
    # Nobody asks for a snapshot: the server's loop applies after forwarding.
    realm = open_realm("A")
    with realm.write():
        for i in range(5):
            realm.add(Note(id=i, text=f"note {i}"))
    realm.sync_session.wait_for_upload().result(10)
    data_dir = tmp_path / "server"
    latest = history_bodies(str(data_dir))
    wait_until(
        lambda: _applied_mark(data_dir) == (len(latest), 5), what="the server's copy to catch up"
    )


def test_a_large_upload_and_a_steady_trickle_still_reach_the_copy(
    tmp_path: Path, open_realm: OpenRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over APPLY_AT_ONCE_BYTES the server waits for uploads to pause, but never
    # longer than APPLY_MAX_WAIT: a trickle of small writes faster than the pause
    # must not hold the large one back.
    from realmsync_nb.server import core

    monkeypatch.setattr(core, "APPLY_IDLE", 0.3)
    monkeypatch.setattr(core, "APPLY_MAX_WAIT", 0.4)
    realm = open_realm("A")
    with realm.write():
        for i in range(1_000):  # about 100 KiB
            realm.add(Note(id=i, text="x" * 80))
    realm.sync_session.wait_for_upload().result(10)
    data_dir = tmp_path / "server"
    big = len(history_bodies(str(data_dir)))
    reached_during_trickle = False
    deadline = time.monotonic() + 3
    n = 0
    while time.monotonic() < deadline and not reached_during_trickle:
        with realm.write():
            realm.add(Note(id=10_000 + n, text="t"))
        n += 1
        time.sleep(0.02)
        reached_during_trickle = _applied_mark(data_dir)[0] >= big
    assert reached_during_trickle, "the trickle held the large upload out of the copy"


def test_a_schema_change_that_fails_leaves_the_tables_and_their_description_as_before(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _new(tmp_path)
    grown = TableSchema("Note", (*NOTE.fields, FieldSchema("n", ValueType.INT)))

    def broken(*_: object) -> object:
        raise OSError("disk full")

    monkeypatch.setattr(storage_mod, "schema_json", broken)
    with pytest.raises(OSError):
        st.merge_schema([grown])
    monkeypatch.undo()
    assert st.schema()["Note"] == NOTE
    # The copy still applies changes under the old schema, none left out.
    _fill(st, random.Random(13), 10)
    assert st.snapshot() == _merged(tmp_path)
    assert st.apply_failures == 0
    st.close()

"""ObjectTables: model tables in SQLite and the merge rules applied to them.

These run on plain sqlite3 connections (no RealmFile, no network): the server and
every client store objects with this class, so convergence starts here.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import random
import sqlite3
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realmsync_nb.protocol.changeset import Changeset, Instruction, NewObjects, Op
from realmsync_nb.protocol.schema import FieldSchema, TableSchema, ValueType
from realmsync_nb.store.objects import ObjectTables

VT = ValueType
ITEM = TableSchema(
    "Item",
    (
        FieldSchema("id", VT.STR, primary_key=True),
        FieldSchema("title", VT.STR),
        FieldSchema("count", VT.INT),
        FieldSchema("done", VT.BOOL),
    ),
)
EVERYTHING = TableSchema(
    "Everything",
    (
        FieldSchema("id", VT.UUID, primary_key=True),
        FieldSchema("i", VT.INT),
        FieldSchema("f", VT.FLOAT),
        FieldSchema("s", VT.STR),
        FieldSchema("b", VT.BOOL),
        FieldSchema("raw", VT.BYTES),
        FieldSchema("when", VT.DATETIME),
        FieldSchema("u", VT.UUID),
        FieldSchema("d", VT.DECIMAL),
        FieldSchema("maybe", VT.INT, optional=True),
    ),
)


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(":memory:", isolation_level=None)
    yield c
    c.close()


def create(pk: str, ts: int, origin: int = 1, **values: object) -> Changeset:
    full = {"title": "", "count": 0, "done": False, **values}
    return Changeset(ts, origin, (Instruction(Op.CREATE, "Item", pk, tuple(full.items())),))


def update(pk: str, ts: int, origin: int = 1, **values: object) -> Changeset:
    return Changeset(ts, origin, (Instruction(Op.UPDATE, "Item", pk, tuple(values.items())),))


def delete(pk: str, ts: int, origin: int = 1) -> Changeset:
    return Changeset(ts, origin, (Instruction(Op.DELETE, "Item", pk),))


def state_after(changesets: list[Changeset]) -> dict[str, dict[object, dict[str, object]]]:
    c = sqlite3.connect(":memory:", isolation_level=None)
    try:
        tables = ObjectTables(c, [ITEM])
        for cs in changesets:
            tables.apply_changeset(cs)
        return tables.snapshot()
    finally:
        c.close()


def same_in_every_order(changesets: list[Changeset]) -> dict[str, dict[object, dict[str, object]]]:
    """The state after applying ``changesets``, asserting that the order never matters."""
    states = [state_after(list(p)) for p in itertools.permutations(changesets)]
    for s in states[1:]:
        assert s == states[0]
    return states[0]


# -- layout ---------------------------------------------------------------------


def test_a_table_has_a_column_per_field_and_the_merge_columns(conn: sqlite3.Connection) -> None:
    ObjectTables(conn, [ITEM, EVERYTHING])
    cols = {row[1]: row[2] for row in conn.execute('PRAGMA table_info("Item")')}
    assert cols == {
        "id": "TEXT",
        "title": "TEXT",
        "count": "INT",
        "done": "INT",
        "_created": "BLOB",
        "_deleted": "BLOB",
        "_clocks": "BLOB",
        "_live": "INT",
    }
    pk = [row[1] for row in conn.execute('PRAGMA table_info("Everything")') if row[5]]
    assert pk == ["id"]


NUMBERED = TableSchema(
    "Numbered",
    (FieldSchema("n", VT.INT, primary_key=True), FieldSchema("title", VT.STR)),
)


def _key_indexes(conn: sqlite3.Connection, table: str) -> list[str]:
    """The unique indexes SQLite made for a primary key that is not the rowid."""
    return [n for n in _indexes(conn, table) if n.startswith("sqlite_autoindex_")]


def _indexes(conn: sqlite3.Connection, table: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE tbl_name=? AND type='index'", (table,)
        )
    ]


def _numbered(pk: int, ts: int, title: str) -> Changeset:
    return Changeset(ts, 1, (Instruction(Op.CREATE, "Numbered", pk, (("title", title),)),))


def test_an_int_key_is_the_rowid_and_a_table_made_before_still_works() -> None:
    # A new table with an int key is one B-tree (the key is the rowid, no index
    # beside it); a table from before, keyed "INT" with its unique index, still
    # reads and merges alike.
    snaps = []
    for old in (False, True):
        c = sqlite3.connect(":memory:", isolation_level=None)
        if old:
            c.execute(
                'CREATE TABLE "Numbered" ("n" INT PRIMARY KEY NOT NULL, "title" TEXT, '
                "_created BLOB, _deleted BLOB, _clocks BLOB, _live INT NOT NULL)"
            )
        tables = ObjectTables(c, [NUMBERED, ITEM])
        assert bool(_key_indexes(c, "Numbered")) is old
        assert _key_indexes(c, "Item")  # a str key keeps its unique index
        for pk in (30, -5, 2**62, 7):
            tables.apply_changeset(_numbered(pk, 100 + pk % 50, f"t{pk}"))
        tables.apply_changeset(_numbered(7, 10, "older, loses"))
        tables.apply_changeset(_numbered(7, 10**6, "newer, wins"))
        snaps.append(tables.snapshot()["Numbered"])
        tables.apply_changeset(Changeset(10**7, 1, (Instruction(Op.DELETE, "Numbered", 30),)))
        # Counted as all rows less the tombstones, which a partial index lists (also
        # on the table from before, which gets the index when it is opened).
        assert "Numbered__tombstones" in _indexes(c, "Numbered")
        assert tables.count("Numbered") == 3 == len(tables.snapshot()["Numbered"])
        c.close()
    assert snaps[0] == snaps[1]
    assert snaps[0][7]["title"] == "newer, wins" and set(snaps[0]) == {30, -5, 2**62, 7}


def test_every_value_type_round_trips_and_reads_plainly_in_sql(
    conn: sqlite3.Connection,
) -> None:
    tables = ObjectTables(conn, [EVERYTHING])
    pk = uuid.UUID("12345678-1234-5678-1234-567812345678")
    cest = dt.timezone(dt.timedelta(hours=2))
    values = {
        "i": -(1 << 63),
        "f": 2.5,
        "s": "héllo ✓",
        "b": True,
        "raw": b"\x00\xff",
        "when": dt.datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=cest),
        "u": uuid.UUID(int=7),
        "d": decimal.Decimal("1.10"),
        "maybe": None,
    }
    ins = Instruction(Op.CREATE, "Everything", pk, tuple(values.items()))
    assert tables.apply_changeset(Changeset(100, 1, (ins,))) == 1

    got = tables.get("Everything", pk)
    assert got == {"id": pk, **values}
    assert got is not None
    assert got["when"] == values["when"]  # the same instant, read back in UTC
    assert str(got["d"]) == "1.10"  # decimals keep their exponent
    assert type(got["b"]) is bool

    row = conn.execute(
        'SELECT id, i, f, s, b, raw, "when", u, d, maybe, _live FROM "Everything"'
    ).fetchone()
    when_utc = dt.datetime(2024, 5, 1, 10, 30, 0, 123456, tzinfo=dt.UTC)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert row == (
        pk.bytes,
        -(1 << 63),
        2.5,
        "héllo ✓",
        1,
        b"\x00\xff",
        (when_utc - epoch) // dt.timedelta(microseconds=1),
        uuid.UUID(int=7).bytes,
        "1.10",
        None,
        1,
    )


# -- merge rules ----------------------------------------------------------------


def test_the_later_write_to_a_field_wins_whatever_the_arrival_order() -> None:
    state = same_in_every_order(
        [
            create("a", 10, origin=1, title="first"),
            update("a", 20, origin=2, title="by 2"),
            update("a", 20, origin=3, title="by 3 (same ts, higher peer id)"),
            update("a", 15, origin=9, title="older"),
        ]
    )
    assert state["Item"]["a"]["title"] == "by 3 (same ts, higher peer id)"


def test_writes_to_different_fields_of_one_object_merge() -> None:
    state = same_in_every_order(
        [
            create("a", 10, title="t0", count=0),
            update("a", 20, origin=2, title="t2"),
            update("a", 21, origin=3, count=7),
            update("a", 22, origin=4, done=True),
        ]
    )
    assert state["Item"]["a"] == {"id": "a", "title": "t2", "count": 7, "done": True}


def test_a_delete_beats_a_concurrent_later_update() -> None:
    state = same_in_every_order(
        [create("a", 10), delete("a", 20, origin=2), update("a", 30, origin=3, title="late")]
    )
    assert state["Item"] == {}


def test_a_tombstone_stops_an_older_create_but_not_a_newer_one() -> None:
    assert same_in_every_order([delete("a", 20, origin=2), create("a", 10)])["Item"] == {}
    state = same_in_every_order(
        [create("a", 10, title="old"), delete("a", 20, origin=2), create("a", 30, title="new")]
    )
    assert state["Item"]["a"]["title"] == "new"


def test_deleted_objects_stay_as_tombstone_rows(conn: sqlite3.Connection) -> None:
    tables = ObjectTables(conn, [ITEM])
    tables.apply_changeset(create("a", 10, title="x"))
    tables.apply_changeset(delete("a", 20))
    assert tables.get("Item", "a") is None
    assert tables.count("Item") == 0
    assert conn.execute('SELECT id, _live FROM "Item"').fetchall() == [("a", 0)]


def test_applying_a_changeset_again_changes_nothing(conn: sqlite3.Connection) -> None:
    tables = ObjectTables(conn, [ITEM])
    batch = [
        create("a", 10, title="x"),
        update("a", 11, title="y"),
        create("b", 12),
        delete("b", 13),
    ]
    assert [tables.apply_changeset(cs) for cs in batch] == [1, 1, 1, 1]
    before = conn.execute('SELECT * FROM "Item" ORDER BY id').fetchall()
    assert [tables.apply_changeset(cs) for cs in batch] == [0, 0, 0, 0]
    assert conn.execute('SELECT * FROM "Item" ORDER BY id').fetchall() == before


def test_instructions_for_tables_outside_the_schema_are_ignored(
    conn: sqlite3.Connection,
) -> None:
    tables = ObjectTables(conn, [ITEM])
    other = Instruction(Op.CREATE, "Unknown", "x", (("v", 1),))
    assert tables.apply_changeset(Changeset(5, 1, (other,))) == 0
    assert tables.snapshot() == {"Item": {}}


def test_a_grown_schema_adds_columns_and_keeps_rows(conn: sqlite3.Connection) -> None:
    tables = ObjectTables(conn, [ITEM])
    tables.apply_changeset(create("a", 10, title="kept"))
    grown = TableSchema("Item", (*ITEM.fields, FieldSchema("note", VT.STR, optional=True)))
    tables.ensure_schema([grown])
    assert tables.get("Item", "a") == {
        "id": "a",
        "title": "kept",
        "count": 0,
        "done": False,
        "note": None,
    }
    tables.apply_changeset(update("a", 11, note="hi"))
    assert tables.get("Item", "a") == {
        "id": "a",
        "title": "kept",
        "count": 0,
        "done": False,
        "note": "hi",
    }


# -- property: any order, any duplication, same state ---------------------------

_keys = st.sampled_from(["a", "b", "c"])
_ops = st.one_of(
    st.builds(
        lambda k, t, n: (Op.CREATE, k, (("title", t), ("count", n), ("done", False))),
        _keys,
        st.sampled_from(["x", "y", "z"]),
        st.integers(0, 3),
    ),
    st.builds(lambda k, t: (Op.UPDATE, k, (("title", t),)), _keys, st.sampled_from(["u", "v"])),
    st.builds(lambda k, b: (Op.UPDATE, k, (("done", b),)), _keys, st.booleans()),
    st.builds(lambda k: (Op.DELETE, k, ()), _keys),
)


@st.composite
def _changesets(draw: st.DrawFn) -> list[Changeset]:
    out = []
    for ts, origin, ops in draw(
        st.lists(
            st.tuples(st.integers(1, 6), st.integers(1, 3), st.lists(_ops, min_size=1, max_size=3)),
            max_size=12,
        )
    ):
        by_key = {k: (op, k, v) for op, k, v in ops}  # one instruction per object
        ins = tuple(Instruction(op, "Item", k, v) for op, k, v in by_key.values())
        out.append(Changeset(ts, origin, ins))
    # Clocks are unique in the real system: one changeset per (ts, origin).
    return list({cs.clock: cs for cs in out}.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_changesets(), st.randoms(use_true_random=False))
def test_any_order_with_duplicates_gives_the_same_state(
    changesets: list[Changeset], rnd: random.Random
) -> None:
    shuffled = changesets + rnd.sample(changesets, k=len(changesets) // 2)
    rnd.shuffle(shuffled)
    assert state_after(shuffled) == state_after(sorted(changesets, key=lambda cs: cs.clock))


# -- NewObjects groups: the bulk form of CREATEs --------------------------------


def _grouped(cs: Changeset) -> Changeset:
    """``cs`` with its CREATEs carried as NewObjects groups, one per field order."""
    loose: list[Instruction] = []
    rows: dict[tuple[str, ...], list[Instruction]] = {}
    for ins in cs.instructions:
        if ins.op is Op.CREATE:
            rows.setdefault(tuple(n for n, _ in ins.values), []).append(ins)
        else:
            loose.append(ins)
    groups = tuple(
        NewObjects(
            "Item",
            fields,
            tuple(i.pk for i in group),
            tuple(tuple(i.values[j][1] for i in group) for j in range(len(fields))),
        )
        for fields, group in rows.items()
    )
    return Changeset(cs.ts, cs.origin, tuple(loose), groups)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_changesets(), st.randoms(use_true_random=False))
def test_a_group_merges_exactly_like_its_create_instructions(
    changesets: list[Changeset], rnd: random.Random
) -> None:
    """Whatever rows already exist (live, deleted, newer or older), applying a group
    gives the state its instructions give: the bulk insert and its per-object
    fallback both follow the merge rules."""
    grouped = [_grouped(cs) if rnd.random() < 0.7 else cs for cs in changesets]
    order = list(range(len(changesets)))
    rnd.shuffle(order)
    assert state_after([grouped[i] for i in order]) == state_after([changesets[i] for i in order])


def test_a_group_of_new_objects_is_one_bulk_insert(conn: sqlite3.Connection) -> None:
    tables = ObjectTables(conn, [ITEM])
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    keys = tuple(f"k{i}" for i in range(1000))
    g = NewObjects(
        "Item", ("title", "count", "done"), keys, (("t",) * 1000, (5,) * 1000, (True,) * 1000)
    )
    assert tables.apply_changeset(Changeset(3, 1, (), (g,))) == 1000
    conn.set_trace_callback(None)
    assert tables.count("Item") == 1000
    assert tables.get("Item", "k999") == {"id": "k999", "title": "t", "count": 5, "done": True}
    # No per-object SELECT: one executemany (traced once per row) and the savepoint.
    assert not any(s.startswith("SELECT") for s in statements)


def test_a_group_with_some_existing_objects_falls_back_and_keeps_the_newer_values(
    conn: sqlite3.Connection,
) -> None:
    tables = ObjectTables(conn, [ITEM])
    tables.apply_changeset(create("b", 50, title="newer"))
    tables.apply_changeset(delete("c", 50))
    g = NewObjects(
        "Item", ("title", "count", "done"), ("a", "b", "c"), (("x",) * 3, (1,) * 3, (False,) * 3)
    )
    # "a" is inserted; "c"'s tombstone takes the field values but stays deleted; "b"
    # keeps its newer values: two objects changed.
    assert tables.apply_changeset(Changeset(10, 1, (), (g,))) == 2
    assert tables.get("Item", "a") == {"id": "a", "title": "x", "count": 1, "done": False}
    assert tables.get("Item", "b") == {"id": "b", "title": "newer", "count": 0, "done": False}
    assert tables.get("Item", "c") is None  # the newer delete wins


def test_a_group_for_a_table_outside_the_schema_is_ignored(conn: sqlite3.Connection) -> None:
    tables = ObjectTables(conn, [ITEM])
    g = NewObjects("Other", ("x",), (1,), ((2,),))
    assert tables.apply_changeset(Changeset(1, 1, (), (g,))) == 0
    assert tables.snapshot() == {"Item": {}}


def test_a_key_only_group_falls_back_when_an_object_exists(conn: sqlite3.Connection) -> None:
    """A model with a primary key only sends groups without fields; when one of its
    objects already has a row, the per-object fallback must still expand them."""
    tag = TableSchema("Tag", (FieldSchema("id", VT.STR, primary_key=True),))
    tables = ObjectTables(conn, [tag])
    tables.apply_changeset(Changeset(1, 7, (Instruction(Op.CREATE, "Tag", "a", ()),)))
    g = NewObjects("Tag", (), tuple("abcdefghijklmnopq"), ())
    assert tables.apply_changeset(Changeset(2, 8, (), (g,))) == 17  # "a" re-created at 2
    assert sorted(tables.snapshot()["Tag"]) == list("abcdefghijklmnopq")

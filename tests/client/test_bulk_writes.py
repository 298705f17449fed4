"""Large transactions of new objects: the bulk path of a local write.

A transaction that adds many new objects of a table with plain fields (int, float,
str, bool) defers their inserts into one ``executemany`` and sends them as a
NewObjects group. None of that may be visible to the user: reads inside the
transaction see every object, a duplicate key is refused at the ``add()`` that
names it, and the other device ends with exactly the same objects.
"""

from __future__ import annotations

import enum
import math
import random
import sqlite3
import struct

import pytest

import realmsync_nb as rs
from realmsync_nb.protocol.changeset import decode_changeset
from realmsync_nb.store import realm_file
from tests.conftest import OpenRealm
from tests.helpers import T

N = 3 * realm_file.DEFER_AFTER  # well past the point where inserts are deferred


class Reading(rs.Model):
    id: int = rs.primary_key()
    label: str = ""
    value: float = 0.0
    flag: bool = False
    note: str | None = None


def history(realm: rs.Realm) -> list[bytes]:
    c = sqlite3.connect(realm.path)
    try:
        return [r[0] for r in c.execute("SELECT body FROM _history ORDER BY client_version")]
    finally:
        c.close()


def synced(a: rs.Realm, b: rs.Realm) -> None:
    a.sync_session.wait_for_upload().result(T(10))
    b.sync_session.wait_for_download().result(T(10))


def test_reads_inside_the_transaction_see_every_deferred_object(open_realm: OpenRealm) -> None:
    a = open_realm("A", models=(Reading,))
    with a.write():
        for i in range(N):
            a.add(Reading(id=i, label=f"r{i}", value=i / 2))
        # Every kind of read: count, lookup, field read, iteration, rows.
        assert len(a.all(Reading)) == N
        last = a.find(Reading, N - 1)
        assert last is not None and last.label == f"r{N - 1}"
        assert [r.id for r in a.all(Reading)][-3:] == [N - 3, N - 2, N - 1]
        assert a.all(Reading).to_dicts()[N // 2]["value"] == (N // 2) / 2
        a.add(Reading(id=N, label="after the reads"))  # and writing goes on after them
    assert len(a.all(Reading)) == N + 1


def test_a_duplicate_key_is_refused_at_its_add_even_when_inserts_are_deferred(
    open_realm: OpenRealm,
) -> None:
    a = open_realm("A", models=(Reading,))
    with a.write():
        for i in range(N):
            a.add(Reading(id=1000 + i))
    with a.write():
        for i in range(N):  # keys above everything stored: deferred
            a.add(Reading(id=5000 + i))
        for dup in (5000 + N - 1, 1000, 5000):  # pending, stored earlier, pending
            with pytest.raises(rs.ValidationError, match="already exists"):
                a.add(Reading(id=dup, label="again"))
        a.add(Reading(id=1000, label="upserted"), update=True)
    assert len(a.all(Reading)) == 2 * N
    assert a.find(Reading, 1000).label == "upserted"  # type: ignore[union-attr]


def test_changes_to_deferred_objects_in_the_same_transaction_sync_exactly(
    open_realm: OpenRealm,
) -> None:
    a, b = open_realm("A", models=(Reading,)), open_realm("B", models=(Reading,))
    with a.write():
        a.add(Reading(id=-1, label="to be re-created"))
    with a.write():
        a.delete(a.find(Reading, -1))  # type: ignore[arg-type]
    with a.write():
        objs = [a.add(Reading(id=i, label="new", value=1.5, flag=True)) for i in range(N)]
        objs[3].label = "changed"
        objs[4].note = "noted"
        a.delete(objs[5])
        a.add(Reading(id=5, label="re-added"))
        a.add(Reading(id=-1, label="back"))  # a tombstone inside the key range
        a.add(Reading(id=N + 10, label="late"))
    synced(a, b)
    assert b.snapshot() == a.snapshot()
    got = b.snapshot()["Reading"]
    assert got[3]["label"] == "changed" and got[4]["note"] == "noted"
    assert got[5]["label"] == "re-added" and got[5]["value"] == 0.0
    assert got[-1]["label"] == "back" and len(got) == N + 2


def test_new_objects_travel_as_one_group_and_arrive_intact(open_realm: OpenRealm) -> None:
    a, b = open_realm("A", models=(Reading,)), open_realm("B", models=(Reading,))
    a.sync_session.pause()  # keep the history to look at it
    with a.write():
        for i in range(N):
            a.add(Reading(id=i, label="é ✓ \U0001f600", value=0.1 * i, note=None if i % 2 else "n"))
    (body,) = history(a)
    cs = decode_changeset(body)
    assert not cs.instructions and [len(g) for g in cs.groups] == [N]
    a.sync_session.resume()
    synced(a, b)
    assert b.snapshot() == a.snapshot()
    got = b.snapshot()["Reading"]
    assert [got[i]["value"] for i in range(N)] == [0.1 * i for i in range(N)]  # bit-exact
    assert got[7] == {
        "id": 7,
        "label": "é ✓ \U0001f600",
        "value": 0.1 * 7,
        "flag": False,
        "note": None,
    }


ODD_NAN = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\xff")[0]  # negative, payload 1


@pytest.mark.parametrize("odd", [math.nan, ODD_NAN, -math.inf, math.inf])
def test_non_finite_floats_skip_the_group_and_keep_their_bits(
    open_realm: OpenRealm, odd: float
) -> None:
    """JSON cannot carry a NaN's bits or an infinity: such a row goes as a tagged
    instruction, and the others of the transaction still go as a group."""
    a, b = open_realm("A", models=(Reading,)), open_realm("B", models=(Reading,))
    a.sync_session.pause()
    with a.write():
        for i in range(N):
            a.add(Reading(id=i, value=odd if i == 9 else 1.0))
    cs = decode_changeset(history(a)[0])
    assert [ins.pk for ins in cs.instructions] == [9]
    assert [g.keys for g in cs.groups] == [tuple(i for i in range(N) if i != 9)]
    a.sync_session.resume()
    synced(a, b)
    for realm in (a, b):  # SQLite alone would turn a NaN into NULL, read as None
        got = realm.find(Reading, 9).value  # type: ignore[union-attr]
        assert isinstance(got, float)
        assert struct.pack("<d", got) == struct.pack("<d", odd)


def test_a_rolled_back_bulk_transaction_leaves_nothing(open_realm: OpenRealm) -> None:
    a = open_realm("A", models=(Reading,))
    with pytest.raises(RuntimeError), a.write():
        for i in range(N):
            a.add(Reading(id=i))
        raise RuntimeError("changed my mind")
    assert len(a.all(Reading)) == 0 and history(a) == []
    with a.write():  # and the next transaction starts clean
        a.add(Reading(id=1))
    assert len(a.all(Reading)) == 1


class Sample(rs.Model):
    id: str = rs.primary_key()
    reading: float | None = None


@pytest.mark.parametrize(("odd", "grouped"), [(None, N), (1.5, N), (math.inf, N - 1)])
def test_an_optional_float_column_with_nones_still_groups_unless_not_finite(
    open_realm: OpenRealm, odd: float | None, grouped: int
) -> None:
    a, b = open_realm("A", models=(Sample,)), open_realm("B", models=(Sample,))
    a.sync_session.pause()
    with a.write():
        for i in range(N):
            a.add(Sample(id=f"s{i:04d}", reading=odd if i == 5 else (None if i % 2 else i / 4)))
    cs = decode_changeset(history(a)[0])
    assert sum(map(len, cs.groups)) == grouped and cs.object_count == N
    a.sync_session.resume()
    synced(a, b)
    assert b.snapshot() == a.snapshot()
    assert b.find(Sample, "s0005").reading == odd  # type: ignore[union-attr]


class Word(rs.Model):
    id: str = rs.primary_key()
    n: int = 0


class Colour(enum.StrEnum):
    RED = "zzz-red"


class Level(enum.IntEnum):
    HIGH = 10**9


class Slot(rs.Model):
    id: int = rs.primary_key()


def test_an_enum_key_and_its_plain_value_are_one_object(open_realm: OpenRealm) -> None:
    """A StrEnum member equal to "zzz-red" names the same object as the str itself,
    inside a transaction too, where inserts of such keys are deferred."""
    a = open_realm("A", models=(Word, Slot))
    with a.write():
        for i in range(N):
            a.add(Word(id=f"k{i:04d}"))
            a.add(Slot(id=i))
        a.add(Word(id=Colour.RED, n=1))
        with pytest.raises(rs.ValidationError, match="already exists"):
            a.add(Word(id="zzz-red"))
        a.add(Word(id="zzz-red", n=2), update=True)
        a.add(Slot(id=Level.HIGH))
        with pytest.raises(rs.ValidationError, match="already exists"):
            a.add(Slot(id=10**9))
    got = a.find(Word, "zzz-red")
    assert got is not None and got.n == 2 and type(got.id) is str
    assert len(a.all(Word)) == N + 1 and len(a.all(Slot)) == N + 1


def test_an_enum_key_given_to_find_names_the_object_a_transaction_just_created(
    open_realm: OpenRealm,
) -> None:
    """find() with an IntEnum member binds the plain key, so deleting or changing the
    object later in the same transaction cancels its bulk CREATE instead of leaving
    both in the changeset (which the server would refuse)."""
    a, b = open_realm("A", models=(Reading,)), open_realm("B", models=(Reading,))

    class Pin(enum.IntEnum):
        GONE = 7
        KEPT = 8

    with a.write():
        for i in range(N):
            a.add(Reading(id=i, label=f"r{i}"))
        gone, kept = a.find(Reading, Pin.GONE), a.find(Reading, Pin.KEPT)
        assert gone is not None and kept is not None and type(kept.id) is int
        a.delete(gone)
        kept.label = "changed"
    synced(a, b)
    assert b.snapshot() == a.snapshot()
    assert b.find(Reading, 7) is None and b.find(Reading, 8).label == "changed"  # type: ignore[union-attr]
    assert len(b.all(Reading)) == N - 1


def test_float_subclasses_such_as_numpy_float64_travel_in_a_group(open_realm: OpenRealm) -> None:
    np = pytest.importorskip("numpy")
    a, b = open_realm("A", models=(Reading,)), open_realm("B", models=(Reading,))
    a.sync_session.pause()
    with a.write():
        for i in range(N):
            a.add(Reading(id=i, value=np.float64(i) / 4))
    cs = decode_changeset(history(a)[0])
    assert [len(g) for g in cs.groups] == [N] and not cs.instructions
    a.sync_session.resume()
    synced(a, b)
    got = [r.value for r in b.all(Reading)]
    assert got == [i / 4 for i in range(N)] and all(type(v) is float for v in got)


class Tag(rs.Model):
    id: str = rs.primary_key()


def test_key_only_objects_created_on_both_devices_converge(open_realm: OpenRealm) -> None:
    """Both devices create the same 20 tags (groups without fields); the second
    device's group meets rows that exist and takes the per-object path."""
    a, b = open_realm("A", models=(Tag,)), open_realm("B", models=(Tag,))
    b.sync_session.pause()
    for realm in (a, b):
        with realm.write():
            for i in range(20):
                realm.add(Tag(id=f"t{i}"))
    a.sync_session.wait_for_upload().result(T(10))
    b.sync_session.resume()
    synced(b, a)
    b.sync_session.wait_for_download().result(T(10))
    assert a.snapshot() == b.snapshot() and len(a.all(Tag)) == 20


@pytest.mark.parametrize("seed", range(12))
def test_random_transactions_match_a_plain_model_and_sync(
    open_realm: OpenRealm, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Random adds, upserts, duplicates, updates, deletes and reads, with the bulk
    thresholds made tiny so deferral, groups and parts all happen in small
    transactions. The realm must match a dict model at every read, refuse exactly
    the duplicates, and the other device must end identical."""
    monkeypatch.setattr(realm_file, "DEFER_AFTER", 4)
    monkeypatch.setattr(realm_file, "GROUP_MIN_ROWS", 2)
    monkeypatch.setattr(realm_file, "FLUSH_OBJECTS", 23)
    rnd = random.Random(seed)
    a, b = open_realm("A", models=(Reading, Word)), open_realm("B", models=(Reading, Word))
    model: dict[type[rs.Model], dict[object, dict[str, object]]] = {Reading: {}, Word: {}}

    def draw() -> tuple[type[rs.Model], object, dict[str, object]]:
        if rnd.random() < 0.5:
            k: object = rnd.randrange(-40, 200)
            vals = {"label": f"l{rnd.randrange(9)}", "value": rnd.choice([0.5, -1.0, 3.0])}
            vals |= {"flag": rnd.random() < 0.5, "note": rnd.choice([None, "n"])}
            return Reading, k, {"id": k, **vals}
        k = rnd.choice(["", "a", "é", "zz", "Z"]) + str(rnd.randrange(100))
        return Word, k, {"id": k, "n": rnd.randrange(-5, 5)}

    for _ in range(6):
        with a.write():
            for _ in range(rnd.randrange(5, 80)):
                m, k, vals = draw()
                known, op = model[m], rnd.random()
                if op < 0.55:
                    upsert = rnd.random() < 0.3
                    if k in known and not upsert:
                        with pytest.raises(rs.ValidationError, match="already exists"):
                            a.add(m(**vals))
                    else:
                        a.add(m(**vals), update=upsert)
                        known[k] = vals
                elif op < 0.8:
                    obj = a.find(m, k)
                    assert (obj is not None) == (k in known)
                    if obj is not None and op < 0.7:
                        field, new = ("label", "changed") if m is Reading else ("n", 99)
                        setattr(obj, field, new)
                        known[k] = {**known[k], field: new}
                    elif obj is not None:
                        a.delete(obj)
                        del known[k]
                elif op < 0.9:
                    assert len(a.all(m)) == len(known)
                else:
                    assert a.snapshot().get(m.__name__, {}) == known
        for m, known in model.items():
            assert a.snapshot().get(m.__name__, {}) == known
    synced(a, b)
    assert b.snapshot() == a.snapshot()


def test_a_key_written_before_a_part_boundary_is_still_a_duplicate_after_it(
    open_realm: OpenRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new key that took the general path (not the bulk one) lies outside the
    deferral range; once the transaction writes a part and forgets its per-part
    bookkeeping, adding that key again must still be refused at add()."""
    monkeypatch.setattr(realm_file, "DEFER_AFTER", 4)
    monkeypatch.setattr(realm_file, "FLUSH_OBJECTS", 20)
    a = open_realm("A", models=(Reading,))
    with a.write():
        for i in range(0, 200, 2):
            a.add(Reading(id=i))
    with pytest.raises(RuntimeError), a.write():
        ghost = a.add(Reading(id=1000))  # managed, but its row is rolled back
        raise RuntimeError
    with a.write():
        for i in range(1, 9, 2):  # inside the stored range [0, 198]: inserted at once
            a.add(Reading(id=i))
        with pytest.raises(rs.RealmError):
            a.delete(ghost)  # reads key 1000 (no row): remembered as read
        a.add(Reading(id=1000))  # so this one takes the general path
        for i in range(9, 40, 2):  # still inside the range: a part, nothing deferred
            a.add(Reading(id=i))
        with pytest.raises(rs.ValidationError, match="already exists"):
            a.add(Reading(id=1000))
    assert len(a.all(Reading)) == 100 + 20 + 1

"""Realm and Model basics (API.md, "Models and the local realm") and the merge rules
as two devices see them through a real server."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time

import pytest

import realmsync_nb as rs
from tests.client.syncing import add_task, connected, sync_all
from tests.conftest import OpenRealm
from tests.helpers import Note, T, Task


class Boom(Exception):
    pass


# -- write() ------------------------------------------------------------------------------


def test_write_commits_and_the_commit_syncs(server: rs.SyncServer, open_realm: OpenRealm) -> None:
    a = open_realm("A")
    due = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with a.write() as r:
        assert r is a and a.is_in_transaction
        t = a.add(Task(id="t1", title="milk", priority=2, due=due))
        assert t.is_managed
        t.done = True  # managed objects are live inside the transaction
        n = a.add(Note(id=7, text="hello"))
    assert not a.is_in_transaction
    assert a.find(Task, "t1").to_dict() == {  # type: ignore[union-attr]
        "id": "t1",
        "title": "milk",
        "done": True,
        "priority": 2,
        "due": due,
    }
    assert n.text == "hello" and a.find(Note, 7) == n
    a.sync_session.wait_for_upload().result(T(5))
    assert server.snapshot()["Task"]["t1"]["done"] is True
    assert server.snapshot()["Note"][7]["text"] == "hello"


def test_write_persists_across_reopen(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    user = a.config.user
    add_task(a, "t1", title="kept")
    a.close()
    again = open_realm("A", user=user)  # same path, same user
    assert again.find(Task, "t1").title == "kept"  # type: ignore[union-attr]


def test_write_rolls_back_on_exception(server: rs.SyncServer, open_realm: OpenRealm) -> None:
    a = open_realm("A")
    keep = add_task(a, "keep", title="original")
    with pytest.raises(Boom), a.write():
        a.add(Task(id="gone"))
        keep.title = "changed"
        a.delete(keep)
        raise Boom
    assert not a.is_in_transaction
    assert a.find(Task, "gone") is None
    assert keep.is_valid and keep.title == "original"
    assert len(a.all(Task)) == 1
    # Nothing of the rolled-back transaction leaves the device.
    a.sync_session.wait_for_upload().result(T(5))
    assert server.snapshot()["Task"] == {
        "keep": {"id": "keep", "title": "original", "done": False, "priority": 0, "due": None}
    }
    # And the realm is usable afterwards.
    add_task(a, "after")
    assert a.find(Task, "after") is not None


def test_write_does_not_nest(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    with a.write(), pytest.raises(rs.RealmError, match="nest"), a.write():
        pass
    assert not a.is_in_transaction


def test_changes_outside_write_raise(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    t = add_task(a, "t1", title="x")
    with pytest.raises(rs.RealmError, match="write"):
        t.title = "y"
    assert t.title == "x"
    with pytest.raises(rs.RealmError, match="write"):
        a.add(Task(id="t2"))
    with pytest.raises(rs.RealmError, match="write"):
        a.delete(t)
    assert [x.id for x in a.all(Task)] == ["t1"]


# -- validation -----------------------------------------------------------------------------


def test_wrong_type_raises_before_anything_is_written(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    with pytest.raises(rs.ValidationError) as info:
        Task(id="t1", priority="high")
    assert (info.value.model, info.value.field) == ("Task", "priority")
    assert isinstance(info.value, TypeError)  # usable where Python code expects TypeError
    with a.write():
        t = a.add(Task(id="t1", title="ok"))
        bad: list[tuple[str, object]] = [
            ("priority", "high"),
            ("done", 1),  # an int is not a bool
            ("title", None),  # not optional
            ("due", dt.datetime(2030, 1, 1)),  # naive datetime
        ]
        for name, value in bad:
            with pytest.raises(rs.ValidationError) as info:
                setattr(t, name, value)
            assert info.value.field == name
    # The transaction went on and committed; none of the bad values got in.
    assert a.find(Task, "t1").to_dict() == {  # type: ignore[union-attr]
        "id": "t1",
        "title": "ok",
        "done": False,
        "priority": 0,
        "due": None,
    }


def test_missing_primary_key_raises_before_anything_is_written(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    with a.write():
        with pytest.raises(rs.ValidationError, match="id") as info:
            a.add(Task(title="no key"))
        assert (info.value.model, info.value.field) == ("Task", "id")
        with pytest.raises(rs.ValidationError):
            a.add(Note(text="no key"))
    assert len(a.all(Task)) == 0 and len(a.all(Note)) == 0


def test_duplicate_primary_key_raises_without_update(
    server: rs.SyncServer, open_realm: OpenRealm
) -> None:
    a = open_realm("A")
    add_task(a, "t1", title="original")
    with pytest.raises(rs.ValidationError, match="update=True"), a.write():
        a.add(Task(id="t1", title="duplicate"))
    with a.write():
        with pytest.raises(rs.ValidationError):
            a.add(Task(id="t1", title="duplicate"))
        a.add(Task(id="t2"))  # the transaction is still usable
    assert a.find(Task, "t1").title == "original"  # type: ignore[union-attr]
    assert sorted(t.id for t in a.all(Task)) == ["t1", "t2"]
    a.sync_session.wait_for_upload().result(T(5))
    assert server.snapshot()["Task"]["t1"]["title"] == "original"


def test_add_with_update_upserts(open_realm: OpenRealm) -> None:
    a, b = open_realm("A"), open_realm("B")
    add_task(a, "t1", title="original", priority=1)
    with a.write():
        t = a.add(Task(id="t1", title="replaced", priority=2), update=True)
        created = a.add(Task(id="t2", title="new"), update=True)  # no such object: created
    assert t.is_managed and created.is_managed
    assert (t.title, t.priority) == ("replaced", 2)
    assert sorted(x.id for x in a.all(Task)) == ["t1", "t2"]
    sync_all(a, b)
    assert b.find(Task, "t1").title == "replaced"  # type: ignore[union-attr]
    assert b.find(Task, "t2").title == "new"  # type: ignore[union-attr]


# -- delete, find, all ----------------------------------------------------------------------


def test_delete(open_realm: OpenRealm) -> None:
    a, b = open_realm("A"), open_realm("B")
    t = add_task(a, "t1")
    add_task(a, "t2")
    sync_all(a, b)
    assert b.find(Task, "t1") is not None
    with a.write():
        a.delete(t)
    assert a.find(Task, "t1") is None
    assert [x.id for x in a.all(Task)] == ["t2"]
    assert not t.is_valid
    with pytest.raises(rs.RealmError, match="deleted"):
        _ = t.title
    with pytest.raises(rs.RealmError), a.write():
        a.delete(t)  # already gone
    sync_all(a, b)
    assert b.find(Task, "t1") is None
    assert [x.id for x in b.all(Task)] == ["t2"]


def test_find(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    add_task(a, "t1", title="x")
    with a.write():
        a.add(Note(id=3, text="three"))
    t = a.find(Task, "t1")
    assert t is not None and t.is_managed and t.title == "x"
    assert a.find(Note, 3).text == "three"  # type: ignore[union-attr]
    assert a.find(Task, "missing") is None
    assert a.find(Note, 4) is None
    # A found object is live: it sees later writes.
    with a.write():
        a.find(Task, "t1").title = "y"  # type: ignore[union-attr]
    assert t.title == "y"


def test_find_refuses_a_key_of_another_type(open_realm: OpenRealm) -> None:
    """SQLite finds object 1 for True, 1.0 or "1"; the object found would carry a
    key no change can name (the server refuses it), so find() refuses the key."""
    a = open_realm("A")
    with a.write():
        a.add(Note(id=1, text="one"))
    for wrong in (True, 1.0, "1"):
        with pytest.raises(rs.ValidationError, match="expects int") as info:
            a.find(Note, wrong)
        assert (info.value.model, info.value.field) == ("Note", "id")
    with pytest.raises(rs.ValidationError, match="expects str"):
        a.find(Task, 1)
    assert a.find(Note, 1).text == "one"  # type: ignore[union-attr]


class Gauge(rs.Model):
    id: int = rs.primary_key()
    reading: float = 2**64  # an int default of a float field


def test_a_float_field_stores_ints_as_floats_and_refuses_one_too_large(
    open_realm: OpenRealm,
) -> None:
    a, b = open_realm("A", models=(Gauge,)), open_realm("B", models=(Gauge,))
    with pytest.raises(rs.ValidationError, match="too large for a float"):
        Gauge(id=1, reading=10**400)
    with a.write():
        for i in range(40):  # enough for the bulk path (a group) too
            a.add(Gauge(id=i))
    sync_all(a, b)
    got = [g.reading for g in b.all(Gauge)]
    assert got == [float(2**64)] * 40 and all(type(v) is float for v in got)


def test_all_is_live(open_realm: OpenRealm) -> None:
    a, b = open_realm("A"), open_realm("B")
    tasks = a.all(Task)
    assert len(tasks) == 0 and list(tasks) == []
    for i in range(3):
        add_task(a, f"t{i}", priority=i)
    assert len(tasks) == 3
    assert [t.id for t in tasks] == ["t0", "t1", "t2"]
    assert all(t.is_managed for t in tasks)
    assert tasks[0].id == "t0" and tasks[-1].id == "t2"
    assert [t.id for t in tasks[1:]] == ["t1", "t2"]
    with pytest.raises(IndexError):
        _ = tasks[3]
    with a.write():
        a.delete(tasks[1])
    assert [t.id for t in tasks] == ["t0", "t2"]
    # Changes from another device show up in the same Results object.
    add_task(b, "from-b")
    sync_all(b, a)
    assert "from-b" in [t.id for t in tasks] and len(tasks) == 3


def test_close(open_realm: OpenRealm) -> None:
    a = open_realm("A")
    user = a.config.user
    t = add_task(a, "t1")
    session = a.sync_session
    a.close()
    a.close()  # idempotent
    assert a.is_closed
    assert session.state is rs.SessionState.INACTIVE
    for action in (
        lambda: a.find(Task, "t1"),
        lambda: a.all(Task),
        lambda: a.write().__enter__(),
        lambda: t.title,
        lambda: a.sync_session,
    ):
        with pytest.raises(rs.RealmClosedError):
            action()
    # The file is released: it opens again, with the data.
    with rs.Realm(rs.Configuration.flexible_sync(user, [Task, Note], path=a.path)) as again:
        assert again.find(Task, "t1") is not None
    assert again.is_closed


# -- merge rules across two devices ---------------------------------------------------------


@pytest.fixture
def pair(open_realm: OpenRealm) -> tuple[rs.Realm, rs.Realm]:
    """Two devices that both have Task t1, paused so their next writes are concurrent."""
    a, b = open_realm("A"), open_realm("B")
    connected(a, b)
    add_task(a, "t1", title="start")
    sync_all(a, b)
    assert b.find(Task, "t1") is not None
    a.sync_session.pause()
    b.sync_session.pause()
    return a, b


def converged(server: rs.SyncServer, a: rs.Realm, b: rs.Realm) -> dict[str, object] | None:
    """The common state of t1 on both devices and the server (None if deleted everywhere)."""
    sync_all(a, b)
    on_a = a.snapshot()["Task"].get("t1")
    on_b = b.snapshot()["Task"].get("t1")
    on_server = server.snapshot()["Task"].get("t1")
    assert on_a == on_b == on_server, (on_a, on_b, on_server)
    return on_a


def test_merge_different_fields_of_one_object(
    server: rs.SyncServer, pair: tuple[rs.Realm, rs.Realm]
) -> None:
    a, b = pair
    with a.write():
        a.find(Task, "t1").title = "title from A"  # type: ignore[union-attr]
    with b.write():
        b.find(Task, "t1").done = True  # type: ignore[union-attr]
        b.find(Task, "t1").priority = 5  # type: ignore[union-attr]
    a.sync_session.resume()
    b.sync_session.resume()
    state = converged(server, a, b)
    assert state == {"id": "t1", "title": "title from A", "done": True, "priority": 5, "due": None}


def test_merge_same_field_later_write_wins(
    server: rs.SyncServer, pair: tuple[rs.Realm, rs.Realm]
) -> None:
    a, b = pair
    with a.write():
        a.find(Task, "t1").title = "earlier, from A"  # type: ignore[union-attr]
    time.sleep(0.01)
    with b.write():
        b.find(Task, "t1").title = "later, from B"  # type: ignore[union-attr]
    # The later write reaches the server first: arrival order must not decide.
    b.sync_session.resume()
    b.sync_session.wait_for_upload().result(T(5))
    a.sync_session.resume()
    a.sync_session.wait_for_upload().result(T(5))
    state = converged(server, a, b)
    assert state is not None and state["title"] == "later, from B"


def test_merge_delete_beats_concurrent_update(
    server: rs.SyncServer, pair: tuple[rs.Realm, rs.Realm]
) -> None:
    a, b = pair
    t_on_b = b.find(Task, "t1")
    with a.write():
        a.delete(a.find(Task, "t1"))  # type: ignore[arg-type]
    time.sleep(0.01)
    with b.write():
        t_on_b.title = "edited after the delete"  # type: ignore[union-attr]
    # Even though the update is later and reaches the server first.
    b.sync_session.resume()
    b.sync_session.wait_for_upload().result(T(5))
    a.sync_session.resume()
    assert converged(server, a, b) is None
    assert not t_on_b.is_valid  # type: ignore[union-attr]
    assert len(a.all(Task)) == len(b.all(Task)) == 0


def test_a_large_transaction_is_stored_in_parts_and_syncs_whole(
    open_realm: OpenRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction over the changeset size limit travels as several changesets.

    Without the split, a changeset larger than a protocol message could never be
    uploaded, and the session would retry forever.
    """
    from realmsync_nb.protocol.changeset import decode_changeset
    from realmsync_nb.store import realm_file

    monkeypatch.setattr(realm_file, "MAX_CHANGESET_BYTES", 2_000)
    a, b = open_realm("A"), open_realm("B")
    a.sync_session.pause()  # keep the parts in the history to look at them
    with a.write():
        for i in range(300):
            a.add(Task(id=f"big-{i}", title="x" * 20, priority=i))
    with sqlite3.connect(a.path) as c:
        bodies = [row[0] for row in c.execute("SELECT body FROM _history ORDER BY client_version")]
    c.close()
    assert len(bodies) > 3, "the transaction was not split"
    assert all(len(body) <= 2_000 for body in bodies)
    parts = [decode_changeset(body) for body in bodies]
    assert len({p.clock for p in parts}) == 1, "every part keeps the transaction's clock"
    pks = [ins.pk for p in parts for ins in p.all_instructions()]
    assert sorted(pks) == sorted(f"big-{i}" for i in range(300))  # each object once

    a.sync_session.resume()
    a.sync_session.wait_for_upload().result(T(10))
    b.sync_session.wait_for_download().result(T(10))
    assert len(b.all(Task)) == 300
    assert b.snapshot() == a.snapshot()


def test_an_object_too_large_to_sync_is_refused_and_nothing_is_written(
    open_realm: OpenRealm,
) -> None:
    from realmsync_nb.protocol.messages import MAX_MESSAGE_SIZE

    a = open_realm("A")
    with pytest.raises(rs.RealmError, match="larger than a sync message"), a.write():
        a.add(Note(id=1, text="x" * MAX_MESSAGE_SIZE))
    assert a.find(Note, 1) is None
    with a.write():
        a.add(Note(id=2, text="fits"))
    a.sync_session.wait_for_upload().result(T(10))


def test_a_huge_transaction_is_written_out_in_parts_as_it_grows(
    open_realm: OpenRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts are written during the transaction (bounded memory); objects touched
    again after their part was written still end up right, locally and remotely."""
    from realmsync_nb.protocol.changeset import decode_changeset
    from realmsync_nb.store import realm_file

    monkeypatch.setattr(realm_file, "FLUSH_OBJECTS", 50)
    a, b = open_realm("A"), open_realm("B")
    a.sync_session.pause()
    with a.write():
        for i in range(120):
            a.add(Task(id=f"h-{i}", title="first", priority=i))
        first = a.find(Task, "h-0")
        assert first is not None
        first.title = "changed after its part was written"
        gone = a.find(Task, "h-5")
        assert gone is not None
        a.delete(gone)
        a.add(Task(id="h-7", title="upserted"), update=True)
    with sqlite3.connect(a.path) as c:
        bodies = [row[0] for row in c.execute("SELECT body FROM _history ORDER BY client_version")]
    c.close()
    clocks = [decode_changeset(body).clock for body in bodies]
    assert len(bodies) >= 3 and clocks == sorted(set(clocks)), "parts need rising clocks"

    a.sync_session.resume()
    a.sync_session.wait_for_upload().result(T(10))
    b.sync_session.wait_for_download().result(T(10))
    assert b.snapshot() == a.snapshot()
    got = b.find(Task, "h-0")
    assert got is not None and got.title == "changed after its part was written"
    assert b.find(Task, "h-5") is None
    upserted = b.find(Task, "h-7")
    assert upserted is not None and upserted.title == "upserted"
    assert len(b.all(Task)) == 119

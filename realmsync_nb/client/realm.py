"""Realm: the local database a user reads and writes, and its Configuration."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ..errors import RealmClosedError, RealmError, SchemaError, ValidationError
from ..protocol.schema import TableSchema, Value, check_value
from ..store.realm_file import LocalTransaction, RealmFile, plain_key
from .model import Model

if TYPE_CHECKING:
    from .app import User
    from .session import Session

__all__ = ["Configuration", "Realm", "Results"]

M = TypeVar("M", bound=Model)


def default_data_dir() -> str:
    """Where realm files go when no path is given (override with REALMSYNC_DATA_DIR)."""
    base = os.environ.get("REALMSYNC_DATA_DIR")
    if base:
        return base
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(xdg, "realmsync_nb")


@dataclass(frozen=True)
class Configuration:
    """How to open a realm: whose data, which models, which file.

    Build one with :meth:`flexible_sync`.
    """

    user: User
    schema: tuple[type[Model], ...]
    path: str
    name: str | None = None

    @staticmethod
    def flexible_sync(
        user: User,
        schema: Sequence[type[Model]],
        path: str | None = None,
        *,
        name: str | None = None,
    ) -> Configuration:
        """A synced configuration for ``user`` with the given model classes.

        Args:
            user: a logged-in user.
            schema: model classes; every object of these types syncs.
            path: the realm file; default ``<data dir>/<server>/<user id>/default.realm``.
            name: a label for the session in events, logs and widgets.
        """
        from .app import User

        if not isinstance(user, User):
            raise TypeError(f"flexible_sync() needs a logged-in User, got {type(user).__name__}")
        models = tuple(schema)
        if not models:
            raise SchemaError("the schema needs at least one model class")
        for m in models:
            if not (isinstance(m, type) and issubclass(m, Model) and m is not Model):
                raise SchemaError(f"{m!r} is not a subclass of rs.Model")
        names = [m.__name__ for m in models]
        # Ignoring case: each model is an SQLite table, and SQLite ignores it in names.
        if len({n.lower() for n in names}) != len(names):
            raise SchemaError(f"model names must be unique (ignoring case): {names}")
        if path is None:
            server = re.sub(r"[^A-Za-z0-9.-]+", "_", user.app.base_url.split("://", 1)[-1])
            path = os.path.join(default_data_dir(), server, user.id, "default.realm")
        return Configuration(user, models, os.path.abspath(path), name)

    @property
    def tables(self) -> dict[str, TableSchema]:
        return {m.__name__: m.__table_schema__ for m in self.schema}


class Results(Generic[M]):
    """All live objects of one model: ``len()``, iteration and indexing read the file now."""

    def __init__(self, realm: Realm, model: type[M]) -> None:
        self._realm = realm
        self._model = model

    def __len__(self) -> int:
        return self._realm._count(self._model)

    def __iter__(self) -> Iterator[M]:
        for pk in self._realm._pks(self._model):
            yield self._model._bind(self._realm, pk)  # type: ignore[misc]

    @overload
    def __getitem__(self, index: int) -> M: ...
    @overload
    def __getitem__(self, index: slice) -> list[M]: ...
    def __getitem__(self, index: int | slice) -> M | list[M]:
        if isinstance(index, slice):
            return list(self)[index]
        n = len(self)
        i = index + n if index < 0 else index
        pk = self._realm._pk_at(self._model, i) if 0 <= i < n else None
        if pk is None:
            raise IndexError(f"index {index} out of range for {n} {self._model.__name__} objects")
        return self._model._bind(self._realm, pk)  # type: ignore[return-value]

    def to_dicts(self) -> list[dict[str, Value]]:
        return self._realm._rows(self._model)

    def __repr__(self) -> str:
        return f"<Results {self._model.__name__} ×{len(self)}>"


class Realm:
    """A synced local database. Opening it starts its sync session in the background.

    Use it from one thread at a time; writes happen inside ``with realm.write():``.
    """

    def __init__(self, config: Configuration) -> None:
        from .session import Session

        if not isinstance(config, Configuration):
            raise TypeError("Realm() takes a Configuration; use Configuration.flexible_sync()")
        self.config = config
        app = config.user.app
        app._check_open()
        if not config.user.logged_in:
            raise RealmError("the user has logged out; log in again before opening a realm")
        self._models = {m.__name__: m for m in config.schema}
        self._file = RealmFile(config.path, config.tables)
        self._txn: LocalTransaction | None = None
        self._txn_thread: int | None = None
        self._closed = False
        name = (
            config.name
            or f"{os.path.basename(os.path.dirname(config.path))[:8]}/"
            f"{os.path.basename(config.path)}"
        )
        self._session = Session(self, app, config.user, self._file, name)
        app._register_realm(self)
        self._session._start()

    # -- public -------------------------------------------------------------------

    @property
    def sync_session(self) -> Session:
        self._check_open()
        return self._session

    @property
    def path(self) -> str:
        return self._file.path

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def is_in_transaction(self) -> bool:
        return self._txn is not None

    @contextlib.contextmanager
    def write(self) -> Iterator[Realm]:
        """One write transaction: commits on exit, rolls back if the block raises."""
        self._check_open()
        if self._txn is not None:
            raise RealmError("already inside a write transaction; write() does not nest")
        txn = self._file.begin()
        self._txn = txn
        self._txn_thread = threading.get_ident()
        try:
            yield self
        except BaseException:
            self._txn = None
            txn.rollback()
            raise
        self._txn = None
        if txn.commit() is not None:
            self._session._local_commit(txn.parts, txn.bodies)

    def add(self, obj: M, update: bool = False) -> M:
        """Add an unmanaged object (or upsert with ``update=True``); returns the managed one.

        Raises:
            ValidationError: wrong types, missing or duplicate primary key; nothing written.
        """
        txn = self._txn
        model = type(obj)
        if (
            txn is not None
            and self._models.get(model.__name__) is model
            and obj._realm is None
            and self._txn_thread == threading.get_ident()
            and not self._closed
        ):  # the usual case, checked in one step: it runs once per object of a bulk write
            pk = txn.create(model.__name__, obj._values, update=update, checked=True)
            return model._bind(self, pk)  # type: ignore[return-value]
        txn = self._require_write("add")
        if not isinstance(obj, Model):
            raise TypeError(f"add() takes a Model instance, got {type(obj).__name__}")
        model = type(obj)
        self._check_model(model)
        if obj._realm is not None:
            if obj._realm is self:
                return obj
            raise RealmError("this object is managed by another realm; add a copy")
        pk = txn.create(model.__name__, obj._values, update=update, checked=True)
        return model._bind(self, pk)  # type: ignore[return-value]

    def delete(self, obj: Model) -> None:
        """Delete a managed object."""
        txn = self._require_write("delete")
        if not isinstance(obj, Model) or obj._realm is not self:
            raise RealmError("delete() takes an object managed by this realm")
        txn.delete(type(obj).__name__, obj._pk)

    def find(self, model: type[M], pk: Value) -> M | None:
        """The live object with this primary key, or None."""
        self._check_open()
        self._check_model(model)
        # An IntEnum or StrEnum key names the object stored under its plain value;
        # the managed object holds that value, as the one add() returns does.
        pk = plain_key(pk)
        # A key of another type (True or 1.0 for an int key) would find object 1,
        # since SQLite compares them equal, but bind a key no change may carry.
        problem = check_value(model.__table_schema__.primary_key, pk)
        if problem is not None:
            raise ValidationError(
                f"{model.__name__}: find() {problem}",
                model=model.__name__,
                field=model.__table_schema__.primary_key.name,
            )
        if not self._exists(model, pk):
            return None
        return model._bind(self, pk)  # type: ignore[return-value]

    def all(self, model: type[M]) -> Results[M]:
        self._check_open()
        self._check_model(model)
        return Results(self, model)

    def close(self) -> None:
        """Stop the session and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._txn is not None:
            txn, self._txn = self._txn, None
            txn.rollback()
        self._session._close()
        self._file.close()

    def __enter__(self) -> Realm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Realm {self.path}{' closed' if self._closed else ''}>"

    # -- used by Model and Results ------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RealmClosedError(f"the realm at {self._file.path} is closed")

    def _check_model(self, model: type[Model]) -> None:
        if self._models.get(getattr(model, "__name__", "")) is not model:
            raise SchemaError(f"{model!r} is not in this realm's schema")

    def _require_write(self, what: str) -> LocalTransaction:
        self._check_open()
        txn = self._txn
        if txn is None or self._txn_thread != threading.get_ident():
            raise RealmError(f"{what}() must be called inside `with realm.write():`")
        return txn

    def _read_field(self, model: type[Model], pk: Value, name: str) -> Value:
        self._check_open()
        with self._file.lock:
            exists, value = self._file.user_objects().get_field(model.__name__, pk, name)
        if not exists:
            raise RealmError(f"{model.__name__} {pk!r} was deleted; it can no longer be read")
        return value

    def _write_field(self, model: type[Model], pk: Value, name: str, value: Value) -> None:
        txn = self._require_write("setting a field of a managed object")
        txn.update(model.__name__, pk, name, value)

    def _read_object(self, model: type[Model], pk: Value) -> dict[str, Value]:
        self._check_open()
        with self._file.lock:
            row = self._file.user_objects().get(model.__name__, pk)
        if row is None:
            raise RealmError(f"{model.__name__} {pk!r} was deleted")
        return row

    def _exists(self, model: type[Model], pk: Value) -> bool:
        if self._closed:
            return False
        with self._file.lock:
            return self._file.user_objects().get(model.__name__, pk) is not None

    def _count(self, model: type[Model]) -> int:
        self._check_open()
        with self._file.lock:
            return self._file.user_objects().count(model.__name__)

    def _pks(self, model: type[Model]) -> list[Value]:
        self._check_open()
        with self._file.lock:
            return list(self._file.user_objects().pks(model.__name__))

    def _pk_at(self, model: type[Model], index: int) -> Value | None:
        with self._file.lock:
            return self._file.user_objects().pk_at(model.__name__, index)

    def _rows(self, model: type[Model]) -> list[dict[str, Value]]:
        self._check_open()
        with self._file.lock:
            return self._file.user_objects().rows(model.__name__)

    def snapshot(self) -> dict[str, dict[Any, dict[str, Value]]]:
        """Every live object, by model name and primary key (for tests and debugging)."""
        self._check_open()
        return self._file.snapshot()

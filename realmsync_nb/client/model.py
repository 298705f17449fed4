"""Model classes: typed fields declared with annotations, turned into a TableSchema.

::

    class Task(rs.Model):
        id: str = rs.primary_key()
        title: str = ""
        due: datetime | None = None

An instance is *unmanaged* (a plain value holder) until ``realm.add()`` returns
its *managed* twin, whose attributes read and write the realm file live.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import inspect
import sys
import types
import typing
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import RealmError, SchemaError, ValidationError
from ..protocol.changeset import VALUE_DEFAULTS
from ..protocol.schema import FieldSchema, TableSchema, Value, ValueType, check_value

if TYPE_CHECKING:
    from .realm import Realm

__all__ = ["Model", "primary_key"]

_TYPES: dict[Any, ValueType] = {
    int: ValueType.INT,
    float: ValueType.FLOAT,
    str: ValueType.STR,
    bool: ValueType.BOOL,
    bytes: ValueType.BYTES,
    _dt.datetime: ValueType.DATETIME,
    uuid.UUID: ValueType.UUID,
    decimal.Decimal: ValueType.DECIMAL,
}


# Field type -> the Python type a value may have to skip the general check.
_PLAIN: dict[ValueType, type] = {
    ValueType.INT: int,
    ValueType.FLOAT: float,
    ValueType.STR: str,
    ValueType.BOOL: bool,
    ValueType.BYTES: bytes,
}
_INT_MIN, _INT_MAX = -(1 << 63), 1 << 63


def _all_plain_check(schema: TableSchema) -> typing.Callable[[dict[str, Any]], bool]:
    """A function telling whether a keyword dict gives every field of ``schema``,
    nothing else, each as exactly its plain type (ints in the 64-bit range).

    Such values need no further check: the constructor keeps the dict as it is. The
    test is generated as one expression, since it runs once per object of a bulk
    write, where a loop over the fields costs about twice as much. When a field's
    type has no plain form, the function always says no.
    """
    if any(f.type not in _PLAIN for f in schema.fields):
        return lambda values: False
    ns: dict[str, Any] = {"type": type, "len": len, "MIN": _INT_MIN, "MAX": _INT_MAX}
    terms = [f"len(v) == {len(schema.fields)}"]
    for i, f in enumerate(schema.fields):
        t = _PLAIN[f.type]
        ns[f"T{i}"] = t
        if t is int:
            terms.append(f"type(x{i} := v.get({f.name!r})) is T{i} and MIN <= x{i} < MAX")
        else:
            terms.append(f"type(v.get({f.name!r})) is T{i}")
    exec(f"def check(v):\n    return {' and '.join(terms)}\n", ns)
    check: typing.Callable[[dict[str, Any]], bool] = ns["check"]
    return check


class _PrimaryKeyMarker:
    __slots__ = ()

    def __repr__(self) -> str:
        return "primary_key()"


def primary_key() -> Any:
    """Mark a field as the model's primary key: ``id: str = rs.primary_key()``."""
    return _PrimaryKeyMarker()


class _Field:
    """Descriptor for one model field; reads and writes go to the realm when managed."""

    def __init__(self, schema: FieldSchema, model: str) -> None:
        self.schema = schema
        self.model = model
        self.name = schema.name

    def __get__(self, obj: Model | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        realm = obj._realm
        if realm is None:
            return obj._values[self.name]
        if self.schema.primary_key:
            return obj._pk
        return realm._read_field(type(obj), obj._pk, self.name)

    def __set__(self, obj: Model, value: Any) -> None:
        problem = check_value(self.schema, value)
        if problem is not None:
            raise ValidationError(f"{self.model}: {problem}", model=self.model, field=self.name)
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and (self.schema.type is ValueType.FLOAT)
        ):
            value = float(value)  # check_value made sure it has one
        realm = obj._realm
        if realm is None:
            obj._values[self.name] = value
            return
        if self.schema.primary_key:
            raise RealmError(
                f"{self.model}: the primary key {self.name} of a managed object cannot change"
            )
        realm._write_field(type(obj), obj._pk, self.name, value)


def _field_type(annotation: Any, where: str) -> tuple[ValueType, bool]:
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(annotation)) != 2:
            raise SchemaError(f"{where}: only `T | None` unions are supported")
        annotation, optional = args[0], True
    vt = _TYPES.get(annotation)
    if vt is None:
        names = ", ".join(sorted(t.__name__ for t in _TYPES))
        raise SchemaError(f"{where}: type {annotation!r} is not supported; use one of {names}")
    return vt, optional


def _own_hints(cls: type) -> dict[str, Any]:
    """Evaluated annotations of ``cls`` and its Model bases, not of Model itself."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is Model or not issubclass(klass, Model):
            continue
        module = sys.modules.get(klass.__module__)
        globalns = dict(vars(module)) if module is not None else {}
        for name, ann in inspect.get_annotations(klass).items():
            if isinstance(ann, str):
                try:
                    ann = eval(ann, globalns, dict(vars(klass)))
                except Exception as exc:
                    raise SchemaError(
                        f"cannot resolve the annotation of {klass.__name__}.{name}: {exc}"
                    ) from exc
            hints[name] = ann
    return hints


class Model:
    """Base class of synced object types. See the module docstring."""

    __table_schema__: ClassVar[TableSchema]
    __defaults__: ClassVar[dict[str, Value]]
    __plain_types__: ClassVar[dict[str, type]]
    __field_names__: ClassVar[frozenset[str]]
    __all_plain__: ClassVar[typing.Callable[[dict[str, Any]], bool]]

    # Class-level defaults: an unmanaged instance never has to set these itself.
    _realm: Realm | None = None
    _pk: Value = None
    _values: dict[str, Value]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hints = _own_hints(cls)
        fields: list[FieldSchema] = []
        defaults: dict[str, Value] = {}
        pk: FieldSchema | None = None
        for name, ann in hints.items():
            if name.startswith("_") or typing.get_origin(ann) is ClassVar:
                continue
            vt, optional = _field_type(ann, f"{cls.__name__}.{name}")
            default = cls.__dict__.get(name, None)
            if isinstance(default, _PrimaryKeyMarker):
                if pk is not None:
                    raise SchemaError(f"{cls.__name__} has two primary keys: {pk.name}, {name}")
                pk = FieldSchema(name, vt, optional, primary_key=True)
                continue
            f = FieldSchema(name, vt, optional)
            if name in cls.__dict__:
                problem = check_value(f, default)
                if problem is not None:
                    raise SchemaError(f"{cls.__name__}: default of {problem}")
                if vt is ValueType.FLOAT and isinstance(default, int):
                    default = float(default)  # as assigning it would store it
                defaults[name] = default
            else:
                defaults[name] = None if optional else VALUE_DEFAULTS[vt]
            fields.append(f)
        if pk is None:
            raise SchemaError(
                f"{cls.__name__} has no primary key; declare one as `id: str = rs.primary_key()`"
            )
        try:
            schema = TableSchema(cls.__name__, (pk, *fields))
        except ValueError as exc:
            raise SchemaError(str(exc)) from None
        cls.__table_schema__ = schema
        cls.__defaults__ = defaults
        # Values whose exact type needs no further check (ints are range-checked
        # inline); anything else takes the descriptor's full check.
        cls.__plain_types__ = {f.name: _PLAIN[f.type] for f in schema.fields if f.type in _PLAIN}
        cls.__field_names__ = frozenset(f.name for f in schema.fields)
        cls.__all_plain__ = staticmethod(_all_plain_check(schema))
        for f in schema.fields:
            setattr(cls, f.name, _Field(f, cls.__name__))

    def __init__(self, **values: Any) -> None:
        cls = type(self)
        if cls.__all_plain__(values):
            # Every field given, each of exactly its plain type (the bulk-write case):
            # keep the keyword dict itself.
            self._values = values
            return
        schema = cls.__table_schema__
        if not values.keys() <= cls.__field_names__:
            unknown = sorted(set(values) - cls.__field_names__)
            raise ValidationError(
                f"{schema.name} has no field(s) {', '.join(unknown)}",
                model=schema.name,
                field=unknown[0],
            )
        plain = cls.__plain_types__
        self._values = own = dict(cls.__defaults__)
        own[schema.primary_key.name] = None
        for name, value in values.items():
            t = type(value)
            if plain.get(name) is t and (t is not int or _INT_MIN <= value < _INT_MAX):
                own[name] = value
            else:
                setattr(self, name, value)

    @classmethod
    def _bind(cls, realm: Realm, pk: Value) -> Model:
        obj = cls.__new__(cls)
        obj._realm = realm
        obj._pk = pk
        obj._values = {}
        return obj

    @property
    def is_managed(self) -> bool:
        return self._realm is not None

    @property
    def is_valid(self) -> bool:
        """False once a managed object was deleted (here or by another device)."""
        realm = self._realm
        return realm is None or realm._exists(type(self), self._pk)

    def to_dict(self) -> dict[str, Value]:
        """All field values as a plain dict (one read for a managed object)."""
        realm = self._realm
        if realm is None:
            return dict(self._values)
        return realm._read_object(type(self), self._pk)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Model) or type(other) is not type(self):
            return NotImplemented
        if self._realm is not None and other._realm is self._realm:
            return bool(self._pk == other._pk)
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._pk if self._realm else id(self)))

    def __repr__(self) -> str:
        name = type(self).__name__
        if self._realm is not None and not self.is_valid:
            return f"<{name} {self._pk!r} (deleted)>"
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{name}({body})"

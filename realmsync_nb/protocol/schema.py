"""Schema descriptions shared by the client, the server and the wire format.

A schema is a tuple of :class:`TableSchema`; each table has exactly one primary-key
field. Values are plain Python objects of the types in :class:`ValueType`.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "FieldSchema",
    "TableSchema",
    "Value",
    "ValueType",
    "check_value",
    "merge_schemas",
    "schema_by_name",
]

Value = int | float | str | bool | bytes | _dt.datetime | uuid.UUID | decimal.Decimal | None


class ValueType(IntEnum):
    """Storable field types; the numbers are part of the wire format."""

    INT = 1
    FLOAT = 2
    STR = 3
    BOOL = 4
    BYTES = 5
    DATETIME = 6
    UUID = 7
    DECIMAL = 8


PYTHON_TYPES: dict[ValueType, type] = {
    ValueType.INT: int,
    ValueType.FLOAT: float,
    ValueType.STR: str,
    ValueType.BOOL: bool,
    ValueType.BYTES: bytes,
    ValueType.DATETIME: _dt.datetime,
    ValueType.UUID: uuid.UUID,
    ValueType.DECIMAL: decimal.Decimal,
}

PRIMARY_KEY_TYPES = frozenset({ValueType.INT, ValueType.STR, ValueType.UUID})


@dataclass(frozen=True, slots=True)
class FieldSchema:
    """One field: its name, type, whether None is allowed, whether it is the key."""

    name: str
    type: ValueType
    optional: bool = False
    primary_key: bool = False


@dataclass(frozen=True, slots=True)
class TableSchema:
    """One object type. ``fields[0]`` is always the primary key."""

    name: str
    fields: tuple[FieldSchema, ...]

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"table name {self.name!r} is not an identifier")
        if self.name.startswith("_") or self.name.lower().startswith("sqlite_"):
            # Such names belong to the database: the store's own tables (_meta,
            # _history, _users, ...) and SQLite's (sqlite_*) live beside the models'.
            raise ValueError(
                f"table name {self.name!r} is reserved: it must not start with '_' or 'sqlite_'"
            )
        if not self.fields or not self.fields[0].primary_key:
            raise ValueError(f"table {self.name}: the first field must be the primary key")
        if sum(f.primary_key for f in self.fields) != 1:
            raise ValueError(f"table {self.name}: exactly one primary key is required")
        pk = self.fields[0]
        if pk.type not in PRIMARY_KEY_TYPES or pk.optional:
            raise ValueError(
                f"table {self.name}: primary key {pk.name} must be a non-optional str, int or UUID"
            )
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: duplicate field names")
        for n in names:
            if not n.isidentifier() or n.startswith("_"):
                raise ValueError(
                    f"table {self.name}: field name {n!r} must be an identifier "
                    "not starting with '_'"
                )

    @property
    def primary_key(self) -> FieldSchema:
        return self.fields[0]

    def field(self, name: str) -> FieldSchema | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None


def schema_by_name(tables: Iterable[TableSchema]) -> dict[str, TableSchema]:
    return {t.name: t for t in tables}


def check_value(field: FieldSchema, value: Value) -> str | None:
    """Return why ``value`` cannot be stored in ``field``, or None when it can."""
    if value is None:
        return None if field.optional else f"{field.name} is not optional; None given"
    expected = PYTHON_TYPES[field.type]
    # bool is an int subclass; keep the two apart in both directions.
    if field.type is ValueType.INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not -(1 << 63) <= value < (1 << 63):  # type: ignore[operator]
            return f"{field.name}: {value!r} does not fit in 64 bits"
    elif field.type is ValueType.FLOAT:
        ok = isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool))
        if ok and isinstance(value, int):  # stored as a float: it must have one
            try:
                float(value)
            except OverflowError:
                return f"{field.name}: {value!r:.60} is too large for a float"
    else:
        ok = isinstance(value, expected)
    if not ok:
        return (
            f"{field.name} expects {expected.__name__}, got {type(value).__name__} ({value!r:.60})"
        )
    if field.type is ValueType.DATETIME:
        assert isinstance(value, _dt.datetime)
        if value.tzinfo is None or value.utcoffset() is None:
            return (
                f"{field.name}: naive datetime {value!s}; pass an aware one, "
                "e.g. datetime.now(timezone.utc)"
            )
        try:  # stored as UTC microseconds: the UTC instant must be a datetime too
            value.astimezone(_dt.UTC)
        except OverflowError:
            return f"{field.name}: {value!s} is out of range once converted to UTC"
    if field.type is ValueType.DECIMAL:
        assert isinstance(value, decimal.Decimal)
        if not value.is_finite():
            return f"{field.name}: Decimal {value} is not finite"
    return None


def merge_schemas(
    current: Mapping[str, TableSchema], incoming: Iterable[TableSchema]
) -> dict[str, TableSchema]:
    """Combine a stored schema with a client's, additively.

    New tables and new optional-or-defaulted fields are accepted; a field whose
    type, optionality or key status differs is a conflict.

    Raises:
        ValueError: naming the table and field that conflict.
    """
    merged = dict(current)
    for table in incoming:
        old = merged.get(table.name)
        if old is None:
            # SQLite folds ASCII case in table and column names: "task" would be the
            # same table as "Task", and fields "a" and "A" the same column.
            same = [n for n in merged if _fold(n) == _fold(table.name)]
            if same:
                raise ValueError(
                    f"table {table.name}: differs only in case from the table {same[0]}"
                )
            _check_field_case(table, table.fields)
            merged[table.name] = table
            continue
        extra: list[FieldSchema] = []
        for f in table.fields:
            g = old.field(f.name)
            if g is None:
                if f.primary_key:
                    raise ValueError(f"table {table.name}: primary key differs")
                extra.append(f)
            elif g != f:
                raise ValueError(
                    f"table {table.name}: field {f.name} is {_describe(g)} on the server "
                    f"but {_describe(f)} in this client"
                )
        if extra:
            _check_field_case(table, old.fields + tuple(extra))
            merged[table.name] = TableSchema(table.name, old.fields + tuple(extra))
    return merged


def _fold(name: str) -> str:
    """``name`` with ASCII letters lowered: how SQLite compares identifiers."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _check_field_case(table: TableSchema, fields: Iterable[FieldSchema]) -> None:
    seen: dict[str, str] = {}
    for f in fields:
        other = seen.setdefault(_fold(f.name), f.name)
        if other != f.name:
            raise ValueError(
                f"table {table.name}: field {f.name} differs only in case from field {other}"
            )


def _describe(f: FieldSchema) -> str:
    s = f.type.name.lower() + (" | None" if f.optional else "")
    return s + (" (primary key)" if f.primary_key else "")

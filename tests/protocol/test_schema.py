"""Tests for realmsync_nb.protocol.schema: table shapes, value checks, additive merge."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realmsync_nb.protocol.schema import (
    FieldSchema,
    TableSchema,
    ValueType,
    check_value,
    merge_schemas,
    schema_by_name,
)

PK = FieldSchema("id", ValueType.STR, primary_key=True)


def table(name: str, *fields: FieldSchema, pk: FieldSchema = PK) -> TableSchema:
    return TableSchema(name, (pk, *fields))


# -- TableSchema -------------------------------------------------------------------


def test_table_schema_accessors() -> None:
    title = FieldSchema("title", ValueType.STR)
    t = table("Task", title)
    assert t.primary_key is PK
    assert t.field("title") is title
    assert t.field("id") is PK
    assert t.field("nope") is None


@pytest.mark.parametrize("pk_type", [ValueType.INT, ValueType.STR, ValueType.UUID])
def test_allowed_primary_key_types(pk_type: ValueType) -> None:
    t = TableSchema("T", (FieldSchema("k", pk_type, primary_key=True),))
    assert t.primary_key.type is pk_type


@pytest.mark.parametrize(
    ("name", "fields", "why"),
    [
        ("", (PK,), "identifier"),
        ("1T", (PK,), "identifier"),
        ("T x", (PK,), "identifier"),
        ("T", (), "first field must be the primary key"),
        ("T", (FieldSchema("a", ValueType.STR), PK), "first field must be the primary key"),
        ("T", (PK, FieldSchema("b", ValueType.INT, primary_key=True)), "exactly one"),
        ("T", (FieldSchema("id", ValueType.FLOAT, primary_key=True),), "str, int or UUID"),
        ("T", (FieldSchema("id", ValueType.BOOL, primary_key=True),), "str, int or UUID"),
        (
            "T",
            (FieldSchema("id", ValueType.STR, optional=True, primary_key=True),),
            "non-optional",
        ),
        ("T", (PK, FieldSchema("id", ValueType.INT)), "duplicate field names"),
        ("T", (PK, FieldSchema("_hidden", ValueType.INT)), "not starting with '_'"),
        ("T", (PK, FieldSchema("a-b", ValueType.INT)), "identifier"),
    ],
)
def test_invalid_tables(name: str, fields: tuple[FieldSchema, ...], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        TableSchema(name, fields)


def test_unicode_identifiers_are_allowed() -> None:
    t = TableSchema("Tâche", (FieldSchema("clé", ValueType.STR, primary_key=True),))
    assert t.primary_key.name == "clé"


def test_value_type_numbers_are_stable() -> None:
    # These numbers are on the wire (BIND schemas); changing one breaks old clients.
    assert {t.name: t.value for t in ValueType} == {
        "INT": 1,
        "FLOAT": 2,
        "STR": 3,
        "BOOL": 4,
        "BYTES": 5,
        "DATETIME": 6,
        "UUID": 7,
        "DECIMAL": 8,
    }


# -- check_value ---------------------------------------------------------------------

UTC_NOW = dt.datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=dt.UTC)
GOOD: dict[ValueType, list[object]] = {
    ValueType.INT: [0, -1, 2**63 - 1, -(2**63)],
    ValueType.FLOAT: [0.0, -1.5, float("inf"), 3],  # an int is a valid float
    ValueType.STR: ["", "héllo ✓"],
    ValueType.BOOL: [True, False],
    ValueType.BYTES: [b"", b"\x00\xff"],
    ValueType.DATETIME: [
        UTC_NOW,
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
    ],
    ValueType.UUID: [uuid.UUID(int=0), uuid.uuid4()],
    ValueType.DECIMAL: [decimal.Decimal("1.10"), decimal.Decimal("-0")],
}
BAD: dict[ValueType, list[object]] = {
    ValueType.INT: [True, False, 1.0, "1", 2**63, -(2**63) - 1],
    ValueType.FLOAT: [True, "1.0", decimal.Decimal(1)],
    ValueType.STR: [b"x", 1, uuid.UUID(int=1)],
    ValueType.BOOL: [0, 1, "true"],
    ValueType.BYTES: ["x", bytearray(b"x"), 0],
    ValueType.DATETIME: [dt.datetime(2024, 1, 1), dt.date(2024, 1, 1), "2024-01-01", 0],
    ValueType.UUID: [str(uuid.UUID(int=1)), 1, b"\x00" * 16],
    ValueType.DECIMAL: [
        1.5,
        1,
        "1.5",
        decimal.Decimal("NaN"),
        decimal.Decimal("Infinity"),
        decimal.Decimal("-Infinity"),
        decimal.Decimal("sNaN"),
    ],
}


@pytest.mark.parametrize(
    ("vtype", "value"), [(t, v) for t, vs in GOOD.items() for v in vs], ids=repr
)
def test_check_value_accepts(vtype: ValueType, value: object) -> None:
    assert check_value(FieldSchema("f", vtype), value) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("vtype", "value"), [(t, v) for t, vs in BAD.items() for v in vs], ids=repr
)
def test_check_value_rejects_naming_the_field(vtype: ValueType, value: object) -> None:
    problem = check_value(FieldSchema("f", vtype, optional=True), value)  # type: ignore[arg-type]
    assert problem is not None
    assert problem.startswith("f")


@pytest.mark.parametrize("vtype", list(ValueType))
def test_none_only_for_optional_fields(vtype: ValueType) -> None:
    assert check_value(FieldSchema("f", vtype, optional=True), None) is None
    problem = check_value(FieldSchema("f", vtype), None)
    assert problem is not None and "not optional" in problem


def test_naive_datetime_message_says_what_to_do() -> None:
    problem = check_value(FieldSchema("due", ValueType.DATETIME), dt.datetime(2024, 1, 1))
    assert problem is not None
    assert "naive" in problem and "timezone.utc" in problem


def test_bool_and_int_are_kept_apart_both_ways() -> None:
    assert check_value(FieldSchema("n", ValueType.INT), True) is not None
    assert check_value(FieldSchema("b", ValueType.BOOL), 1) is not None


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=5))),
        dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    ],
)
def test_datetime_outside_utc_range_is_rejected(value: dt.datetime) -> None:
    # Such a value is stored as microseconds since the epoch in UTC; its UTC instant
    # does not exist as a datetime, so it could be written but never read back.
    problem = check_value(FieldSchema("due", ValueType.DATETIME), value)
    assert problem is not None and "due" in problem


@given(st.integers(-(2**63), 2**63 - 1))
def test_every_64_bit_int_is_valid(n: int) -> None:
    assert check_value(FieldSchema("n", ValueType.INT), n) is None


@given(st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1)))
def test_ints_beyond_64_bits_are_invalid(n: int) -> None:
    problem = check_value(FieldSchema("n", ValueType.INT), n)
    assert problem is not None and "64 bits" in problem


# -- merge_schemas -------------------------------------------------------------------

TITLE = FieldSchema("title", ValueType.STR)
DONE = FieldSchema("done", ValueType.BOOL)
DUE = FieldSchema("due", ValueType.DATETIME, optional=True)


def test_merge_into_empty_takes_everything() -> None:
    t = table("Task", TITLE)
    assert merge_schemas({}, [t]) == {"Task": t}


def test_merge_is_additive() -> None:
    current = schema_by_name([table("Task", TITLE, DONE), table("Note", TITLE)])
    incoming = [table("Task", TITLE, DUE), table("Tag", TITLE)]
    merged = merge_schemas(current, incoming)
    assert set(merged) == {"Task", "Note", "Tag"}
    # Existing fields keep their order; new fields are appended; none are dropped.
    assert [f.name for f in merged["Task"].fields] == ["id", "title", "done", "due"]
    assert merged["Note"] is current["Note"]
    assert merged["Tag"] == incoming[1]
    # The stored mapping is not modified in place.
    assert [f.name for f in current["Task"].fields] == ["id", "title", "done"]


def test_merging_the_same_schema_changes_nothing() -> None:
    current = schema_by_name([table("Task", TITLE, DONE)])
    assert merge_schemas(current, [table("Task", DONE, TITLE)]) == current
    assert merge_schemas(current, []) == current


def test_a_subset_is_accepted() -> None:
    current = schema_by_name([table("Task", TITLE, DONE)])
    assert merge_schemas(current, [table("Task")]) == current


@pytest.mark.parametrize(
    "incoming_field",
    [
        FieldSchema("title", ValueType.INT),  # type differs
        FieldSchema("title", ValueType.STR, optional=True),  # optionality differs
    ],
)
def test_field_conflict_names_table_and_field(incoming_field: FieldSchema) -> None:
    current = schema_by_name([table("Task", TITLE)])
    with pytest.raises(ValueError, match="table Task: field title") as info:
        merge_schemas(current, [table("Task", incoming_field)])
    # The message says what each side has, so the user can tell which to change.
    assert "str" in str(info.value)


def test_primary_key_type_conflict() -> None:
    current = schema_by_name([table("Task", TITLE)])
    int_pk = FieldSchema("id", ValueType.INT, primary_key=True)
    with pytest.raises(ValueError, match="table Task: field id") as info:
        merge_schemas(current, [table("Task", TITLE, pk=int_pk)])
    assert "primary key" in str(info.value)


def test_primary_key_name_conflict() -> None:
    current = schema_by_name([table("Task", TITLE)])
    other_pk = FieldSchema("key", ValueType.STR, primary_key=True)
    with pytest.raises(ValueError, match="table Task: primary key differs"):
        merge_schemas(current, [table("Task", TITLE, pk=other_pk)])


def test_existing_field_cannot_become_the_key() -> None:
    current = schema_by_name([table("Task", FieldSchema("code", ValueType.STR))])
    code_pk = FieldSchema("code", ValueType.STR, primary_key=True)
    with pytest.raises(ValueError, match="field code"):
        merge_schemas(current, [TableSchema("Task", (code_pk, FieldSchema("id", ValueType.STR)))])


_FIELD_NAMES = ["a", "b", "c", "d"]


@st.composite
def tables_named_t(draw: st.DrawFn) -> TableSchema:
    names = draw(st.lists(st.sampled_from(_FIELD_NAMES), unique=True, max_size=4))
    return table(
        "T",
        *(
            FieldSchema(
                n, draw(st.sampled_from([ValueType.INT, ValueType.STR])), draw(st.booleans())
            )
            for n in names
        ),
    )


@given(tables_named_t(), tables_named_t())
def test_merge_either_conflicts_or_keeps_every_field(a: TableSchema, b: TableSchema) -> None:
    try:
        merged = merge_schemas({"T": a}, [b])["T"]
    except ValueError as exc:
        conflicting = [f.name for f in b.fields if (g := a.field(f.name)) is not None and g != f]
        assert conflicting
        assert f"field {conflicting[0]}" in str(exc)
        return
    names = [f.name for f in merged.fields]
    assert names[: len(a.fields)] == [f.name for f in a.fields]
    assert set(names) == {f.name for f in a.fields} | {f.name for f in b.fields}
    for f in (*a.fields, *b.fields):
        assert merged.field(f.name) == f

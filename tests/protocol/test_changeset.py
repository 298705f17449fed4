"""Tests for realmsync_nb.protocol.changeset: codec, validation, compaction, merge rules, clock."""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import itertools
import math
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realmsync_nb.protocol.changeset import (
    CHANGESET_FORMAT,
    VALUE_DEFAULTS,
    Changeset,
    Clock,
    HybridClock,
    Instruction,
    ObjectState,
    Op,
    apply_instruction,
    compact,
    decode_changeset,
    encode_changeset,
    encode_creates,
    validate_changeset,
)
from realmsync_nb.protocol.schema import (
    FieldSchema,
    TableSchema,
    Value,
    ValueType,
    check_value,
    schema_by_name,
)
from realmsync_nb.protocol.wire import DecodeError, Writer

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
U64 = st.integers(0, 2**64 - 1)

# -- value strategies ----------------------------------------------------------------

INTS = st.one_of(
    st.integers(I64_MIN, I64_MAX),
    st.sampled_from([0, -1, 1, I64_MIN, I64_MAX, I64_MIN + 1, I64_MAX - 1, 2**32, -(2**32)]),
)
FLOATS = st.floats(allow_nan=False)  # NaN != NaN, so it is tested on its own below
UTC_DATETIMES = st.datetimes(timezones=st.just(dt.UTC))
OFFSET_DATETIMES = st.datetimes(
    min_value=dt.datetime(2, 1, 1),
    max_value=dt.datetime(9998, 12, 31),
    timezones=st.integers(-1439, 1439).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
)
DECIMALS = st.decimals(allow_nan=False, allow_infinity=False)
VALUES: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    FLOATS,
    st.text(max_size=20),
    st.binary(max_size=20),
    UTC_DATETIMES,
    OFFSET_DATETIMES,
    st.uuids(),
    DECIMALS,
)


def typed(v: object) -> object:
    """A comparison key that tells apart values Python calls equal (1, 1.0, True...)."""
    if isinstance(v, float):
        return ("float", struct.pack("<d", v))
    if isinstance(v, decimal.Decimal):
        return ("Decimal", str(v))
    if isinstance(v, dt.datetime):
        return ("datetime", v.astimezone(dt.UTC))
    return (type(v).__name__, v)


def typed_changeset(cs: Changeset) -> object:
    return (
        cs.ts,
        cs.origin,
        [
            (ins.op, ins.table, typed(ins.pk), [(n, typed(v)) for n, v in ins.values])
            for ins in cs.instructions
        ],
    )


@st.composite
def instructions(draw: st.DrawFn, values: st.SearchStrategy[Value] = VALUES) -> Instruction:
    op = draw(st.sampled_from(Op))
    table = draw(st.text(max_size=10))
    pk = draw(values)
    if op is Op.DELETE:
        return Instruction(op, table, pk)
    vals = draw(st.lists(st.tuples(st.text(max_size=8), values), max_size=5))
    return Instruction(op, table, pk, tuple(vals))


CHANGESETS = st.builds(Changeset, U64, U64, st.lists(instructions(), max_size=6).map(tuple))


# -- codec: round trips --------------------------------------------------------------


@given(
    U64,
    U64,
    st.text(max_size=6),
    st.lists(st.text(max_size=6), max_size=5),  # names may repeat
    st.data(),
)
def test_encode_creates_is_encode_changeset_of_the_same_creates(
    ts: int, origin: int, table: str, fields: list[str], data: st.DataObject
) -> None:
    # The writer's shortcut for small transactions must be byte for byte the general
    # encoder: another device (or the server) decodes either the same way. Names may
    # repeat the table's, and a row may hold any value, NaN included.
    row_values = st.one_of(VALUES, st.just(math.nan))
    rows = data.draw(st.lists(st.tuples(*[row_values] * (len(fields) + 1)), max_size=4))
    creates = tuple(
        Instruction(Op.CREATE, table, row[0], tuple(zip(fields, row[1:], strict=True)))
        for row in rows
    )
    expected = encode_changeset(Changeset(ts, origin, creates))
    assert encode_creates(ts, origin, table, tuple(fields), rows) == expected


@pytest.mark.parametrize("length", [0, 1, 127, 128, 129, 300, 16_384, 16_385])
@pytest.mark.parametrize("char", ["x", "é", "🙂"])
def test_strings_round_trip_on_each_side_of_a_length_byte(length: int, char: str) -> None:
    # Strings whose UTF-8 length fits one varint byte are decoded inline; longer ones
    # (128 bytes and up, two- and three-byte lengths) go the general way.
    text = char * length
    cs = Changeset(1, 2, (Instruction(Op.CREATE, text or "t", text, (("f", text), ("g", 1))),))
    body = encode_changeset(cs)
    assert decode_changeset(body) == cs
    for cut in range(len(body) - 3, len(body)):  # truncated inside the last values
        with pytest.raises(DecodeError):
            decode_changeset(body[:cut])


@given(CHANGESETS)
def test_changeset_round_trip(cs: Changeset) -> None:
    encoded = encode_changeset(cs)
    decoded = decode_changeset(encoded)
    assert decoded == cs
    assert typed_changeset(decoded) == typed_changeset(cs)
    assert encode_changeset(decoded) == encoded


def _round_trip_value(v: Value) -> Value:
    cs = Changeset(1, 2, (Instruction(Op.UPDATE, "T", "k", (("f", v),)),))
    return decode_changeset(encode_changeset(cs)).instructions[0].values[0][1]


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        I64_MIN,
        I64_MAX,
        0.0,
        -0.0,
        1.5,
        math.inf,
        -math.inf,
        5e-324,
        "",
        "héllo ✓ \U0001f600 \u0000",
        b"",
        b"\x00\xff" * 10,
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=dt.UTC),  # negative micros
        dt.datetime.min.replace(tzinfo=dt.UTC),
        dt.datetime.max.replace(tzinfo=dt.UTC),
        uuid.UUID(int=0),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        decimal.Decimal("1.10"),
        decimal.Decimal("-0"),
        decimal.Decimal("1E+999999"),
        decimal.Decimal("-123456789012345678901234567890.000000001"),
    ],
    ids=repr,
)
def test_value_round_trip_keeps_type_and_value(value: Value) -> None:
    got = _round_trip_value(value)
    assert type(got) is type(value)
    assert typed(got) == typed(value)


@given(st.one_of(UTC_DATETIMES, OFFSET_DATETIMES))
def test_datetimes_come_back_as_the_same_instant_in_utc(value: dt.datetime) -> None:
    got = _round_trip_value(value)
    assert isinstance(got, dt.datetime)
    assert got == value
    assert got.utcoffset() == dt.timedelta(0)
    assert got.microsecond == value.astimezone(dt.UTC).microsecond


@given(VALUES)
def test_value_round_trip_property(value: Value) -> None:
    got = _round_trip_value(value)
    assert type(got) is type(value) or isinstance(value, dt.datetime)
    assert typed(got) == typed(value)


@pytest.mark.parametrize(
    "nan", [math.nan, -math.nan, struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]]
)
def test_nan_survives_bit_exact(nan: float) -> None:
    cs = Changeset(1, 2, (Instruction(Op.CREATE, "T", 1, (("f", nan),)),))
    encoded = encode_changeset(cs)
    got = decode_changeset(encoded).instructions[0].values[0][1]
    assert isinstance(got, float) and math.isnan(got)
    assert struct.pack("<d", got) == struct.pack("<d", nan)
    assert encode_changeset(decode_changeset(encoded)) == encoded


def test_unencodable_value_type() -> None:
    cs = Changeset(1, 1, (Instruction(Op.UPDATE, "T", 1, (("f", [1]),)),))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list"):
        encode_changeset(cs)


def test_known_encoding() -> None:
    """Pins the byte layout documented in docs/protocol.md."""
    cs = Changeset(5, 7, (Instruction(Op.UPDATE, "T", 1, (("a", True),)),))
    assert encode_changeset(cs) == bytes(
        [
            1,  # format 1: a changeset without NewObjects groups is written as before
            5,  # ts
            7,  # origin
            2,  # string table: 2 names
            1, ord("T"),
            1, ord("a"),
            1,  # one instruction
            Op.UPDATE,
            0,  # table = names[0]
            1, 2,  # pk: INT tag, zig-zag 1
            1,  # one value
            1,  # field = names[1]
            5,  # TRUE tag
        ]
    )  # fmt: skip


def test_delete_carries_no_values_and_names_are_interned() -> None:
    long = "AVeryLongTableName"
    cs = Changeset(
        1,
        1,
        (
            Instruction(Op.CREATE, long, "a", (("title", "x"),)),
            Instruction(Op.UPDATE, long, "b", (("title", "y"),)),
            Instruction(Op.DELETE, long, "c"),
        ),
    )
    encoded = encode_changeset(cs)
    assert encoded.count(long.encode()) == 1
    assert encoded.count(b"title") == 1
    assert decode_changeset(encoded) == cs
    # A DELETE's values are not part of the format.
    with_values = Changeset(1, 1, (Instruction(Op.DELETE, "T", 1, (("f", 1),)),))
    assert decode_changeset(encode_changeset(with_values)).instructions[0].values == ()


# -- codec: bad input -----------------------------------------------------------------


def _raw_changeset(
    names: Sequence[str], body: bytes, n_names: int | None = None, fmt: int = 1
) -> bytes:
    """A changeset written by hand; format 1 (instructions only) unless ``fmt``."""
    w = Writer()
    w.byte(fmt)
    w.uint(1)
    w.uint(2)
    w.uint(len(names) if n_names is None else n_names)
    for n in names:
        w.str_(n)
    w.raw(body)
    return w.getvalue()


def _one_update(value_bytes: bytes) -> bytes:
    # one instruction: UPDATE names[0], pk INT 0, one value named names[1]
    return _raw_changeset(["T", "f"], bytes([1, Op.UPDATE, 0, 1, 0, 1, 1]) + value_bytes)


def _str_bytes(s: str) -> bytes:
    w = Writer()
    w.str_(s)
    return w.getvalue()


def _sint_bytes(n: int) -> bytes:
    w = Writer()
    w.sint(n)
    return w.getvalue()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (b"\x03", "unknown changeset format 3"),
        (b"\x00", "unknown changeset format 0"),
        (_raw_changeset(["T"], bytes([1, 4, 0, 1, 0])), "unknown instruction 4"),
        (_raw_changeset(["T"], bytes([1, 0, 0, 1, 0])), "unknown instruction 0"),
        (_raw_changeset(["T"], bytes([1, Op.DELETE, 1, 1, 0])), "string index 1 outside"),
        (_raw_changeset(["T"], bytes([1, Op.DELETE, 0, 42])), "unknown value tag 42"),
        (_one_update(bytes([10])), "unknown value tag 10"),
        (_one_update(b"\x09" + _str_bytes("abc")), "invalid decimal"),
        (_one_update(b"\x09" + _str_bytes("NaN")), "decimal must be finite"),
        (_one_update(b"\x09" + _str_bytes("-Infinity")), "decimal must be finite"),
        (_one_update(b"\x09" + _str_bytes("sNaN")), "decimal must be finite"),
        (_one_update(b"\x09" + _str_bytes("1e9999999999999999999999999")), "invalid decimal"),
        (_one_update(b"\x07" + _sint_bytes(2**62)), "datetime out of range"),
        (_one_update(b"\x07" + _sint_bytes(-(2**63))), "datetime out of range"),
        (_one_update(b"\x01" + _sint_bytes(2**63)), "larger than 64 bits"),
        (_one_update(b"\x08" + b"\x00" * 15), "need 16 bytes"),
        (_one_update(b"\x03\x01\xff"), "UTF-8"),
        (_raw_changeset([], b"\x00", n_names=2**40), "string table larger"),
        (_raw_changeset([], b"\xff\xff\xff\xff\x0f"), "instruction count larger"),
        (_raw_changeset(["T"], bytes([1, Op.CREATE, 0, 0, 0x80, 0x80, 0x80, 0x10])), "value count"),
        (_raw_changeset([], b"\x00\x00"), "trailing"),
    ],
)
def test_bad_changesets(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_changeset(data)


def _decode_or_decode_error(data: bytes) -> None:
    try:
        cs = decode_changeset(data)
    except DecodeError as exc:
        assert str(exc)
        return
    again = encode_changeset(cs)
    assert typed_changeset(decode_changeset(again)) == typed_changeset(cs)


@given(st.binary(max_size=200))
def test_fuzzed_bytes_fail_only_with_decode_error(data: bytes) -> None:
    _decode_or_decode_error(data)


@given(st.binary(max_size=150))
def test_fuzzed_bytes_after_the_format_byte(data: bytes) -> None:
    _decode_or_decode_error(bytes([CHANGESET_FORMAT]) + data)


@given(CHANGESETS, st.data())
def test_every_strict_prefix_fails(cs: Changeset, data: st.DataObject) -> None:
    encoded = encode_changeset(cs)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        decode_changeset(encoded[:cut])


@given(CHANGESETS, st.binary(min_size=1, max_size=16))
def test_appended_bytes_fail(cs: Changeset, extra: bytes) -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode_changeset(encode_changeset(cs) + extra)


@given(CHANGESETS, st.data())
def test_bit_flips_fail_only_with_decode_error(cs: Changeset, data: st.DataObject) -> None:
    buf = bytearray(encode_changeset(cs))
    for bit in data.draw(st.lists(st.integers(0, len(buf) * 8 - 1), min_size=1, max_size=4)):
        buf[bit // 8] ^= 1 << (bit % 8)
    _decode_or_decode_error(bytes(buf))


@given(CHANGESETS, st.data())
def test_byte_replacements_fail_only_with_decode_error(cs: Changeset, data: st.DataObject) -> None:
    buf = bytearray(encode_changeset(cs))
    i = data.draw(st.integers(0, len(buf) - 1))
    buf[i] = data.draw(st.integers(0, 255))
    _decode_or_decode_error(bytes(buf))


# -- validate_changeset ---------------------------------------------------------------

TASK = TableSchema(
    "Task",
    (
        FieldSchema("id", ValueType.STR, primary_key=True),
        FieldSchema("title", ValueType.STR),
        FieldSchema("n", ValueType.INT, optional=True),
        FieldSchema("score", ValueType.FLOAT),
        FieldSchema("done", ValueType.BOOL),
        FieldSchema("blob", ValueType.BYTES),
        FieldSchema("due", ValueType.DATETIME, optional=True),
        FieldSchema("ref", ValueType.UUID, optional=True),
        FieldSchema("price", ValueType.DECIMAL),
    ),
)
COUNTER = TableSchema("Counter", (FieldSchema("k", ValueType.INT, primary_key=True),))
SCHEMA = schema_by_name([TASK, COUNTER])


def _cs(*instrs: Instruction) -> Changeset:
    return Changeset(10, 1, instrs)


def _create(pk: Value, **values: Value) -> Instruction:
    return Instruction(Op.CREATE, "Task", pk, tuple(values.items()))


@pytest.mark.parametrize(
    "cs",
    [
        _cs(),
        _cs(
            _create(
                "t1",
                title="milk",
                n=None,
                score=2,  # an int is a valid float
                done=True,
                blob=b"\x00",
                due=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                ref=uuid.uuid4(),
                price=decimal.Decimal("9.99"),
            )
        ),
        _cs(
            Instruction(Op.UPDATE, "Task", "t1", (("done", False),)),
            Instruction(Op.DELETE, "Task", "t2"),
            Instruction(Op.CREATE, "Counter", 1),
            Instruction(Op.CREATE, "Counter", -(2**63)),
        ),
        # The same primary key in two tables is two objects.
        _cs(Instruction(Op.DELETE, "Task", "1"), Instruction(Op.DELETE, "Counter", 1)),
    ],
)
def test_valid_changesets(cs: Changeset) -> None:
    assert validate_changeset(cs, SCHEMA) is None


@pytest.mark.parametrize(
    ("cs", "expected"),
    [
        (_cs(Instruction(Op.CREATE, "Nope", "x")), "unknown table 'Nope'"),
        (_cs(_create("t1", colour="red")), "unknown field 'colour'"),
        (_cs(_create("t1", title=5)), "title expects str"),
        (_cs(_create("t1", n=True)), "n expects int"),
        (_cs(_create("t1", score=True)), "score expects float"),
        (_cs(_create("t1", done=1)), "done expects bool"),
        (_cs(_create("t1", n=2**63)), "does not fit in 64 bits"),
        (_cs(_create("t1", due=dt.datetime(2024, 1, 1))), "naive datetime"),
        (_cs(_create("t1", price=decimal.Decimal("NaN"))), "not finite"),
        (_cs(_create("t1", title=None)), "not optional"),
        (_cs(_create(None, title="x")), "bad primary key"),
        (_cs(Instruction(Op.DELETE, "Task", None)), "bad primary key"),
        (_cs(_create(1, title="x")), "bad primary key"),
        (_cs(Instruction(Op.UPDATE, "Counter", True)), "bad primary key"),
        (_cs(Instruction(Op.UPDATE, "Counter", 2**64)), "bad primary key"),
        (_cs(_create("t1"), Instruction(Op.DELETE, "Task", "t1")), "appears twice"),
        (_cs(_create("t1", id="t2")), "primary key id cannot be set"),
        (
            _cs(Instruction(Op.UPDATE, "Task", "t1", (("title", "a"), ("title", "b")))),
            "field title set twice",
        ),
    ],
)
def test_invalid_changesets(cs: Changeset, expected: str) -> None:
    problem = validate_changeset(cs, SCHEMA)
    assert problem is not None
    assert expected in problem


def test_validation_reports_the_first_problem() -> None:
    cs = _cs(_create("t1", title=1), Instruction(Op.CREATE, "Nope", "x"))
    problem = validate_changeset(cs, SCHEMA)
    assert problem is not None and "title" in problem


def _valid_value(f: FieldSchema) -> st.SearchStrategy[Value]:
    base: dict[ValueType, st.SearchStrategy[Value]] = {
        ValueType.INT: INTS,
        ValueType.FLOAT: st.floats(),
        ValueType.STR: st.text(max_size=10),
        ValueType.BOOL: st.booleans(),
        ValueType.BYTES: st.binary(max_size=10),
        ValueType.DATETIME: st.one_of(UTC_DATETIMES, OFFSET_DATETIMES),
        ValueType.UUID: st.uuids(),
        ValueType.DECIMAL: DECIMALS,
    }
    return base[f.type] | st.none() if f.optional else base[f.type]


@st.composite
def valid_changesets(draw: st.DrawFn) -> Changeset:
    instrs = []
    for pk in draw(st.lists(st.text(max_size=5), unique=True, max_size=4)):
        op = draw(st.sampled_from(Op))
        vals: tuple[tuple[str, Value], ...] = ()
        if op is not Op.DELETE:
            chosen = draw(st.lists(st.sampled_from(TASK.fields[1:]), unique=True))
            vals = tuple((f.name, draw(_valid_value(f))) for f in chosen)
        instrs.append(Instruction(op, "Task", pk, vals))
    return Changeset(draw(U64), draw(U64), tuple(instrs))


@given(valid_changesets())
def test_generated_valid_changesets_validate_and_survive_the_wire(cs: Changeset) -> None:
    assert validate_changeset(cs, SCHEMA) is None
    decoded = decode_changeset(encode_changeset(cs))
    assert validate_changeset(decoded, SCHEMA) is None


def test_value_defaults_are_valid_for_their_types() -> None:
    assert set(VALUE_DEFAULTS) == set(ValueType)
    for vtype, default in VALUE_DEFAULTS.items():
        assert check_value(FieldSchema("f", vtype), default) is None
        assert typed(_round_trip_value(default)) == typed(default)


# -- merge rules ----------------------------------------------------------------------

Key = tuple[str, Value]
State = dict[Key, ObjectState]
OBJECTS: list[Key] = [("A", 1), ("A", 2), ("B", 1)]
FIELDS = ["x", "y", "z"]


def apply_changeset(state: State, cs: Changeset) -> bool:
    changed = False
    for ins in cs.instructions:
        obj = state.setdefault((ins.table, ins.pk), ObjectState())
        changed |= apply_instruction(obj, ins, cs.clock)
    return changed


def apply_all(changesets: Iterable[Changeset]) -> State:
    state: State = {}
    for cs in changesets:
        apply_changeset(state, cs)
    return state


@st.composite
def changeset_sets(
    draw: st.DrawFn, ops: Sequence[Op] = tuple(Op), max_size: int = 6, max_ts: int = 6
) -> list[Changeset]:
    """Changesets with unique clocks (few timestamps, so origins often break ties),
    each touching an object at most once, as compact() guarantees."""
    clocks = draw(
        st.lists(
            st.tuples(st.integers(1, max_ts), st.integers(1, 3)),
            unique=True,
            min_size=1,
            max_size=max_size,
        )
    )
    out = []
    for ts, origin in clocks:
        instrs = []
        for table, pk in draw(st.lists(st.sampled_from(OBJECTS), unique=True, min_size=1)):
            op = draw(st.sampled_from(ops))
            vals: tuple[tuple[str, Value], ...] = ()
            if op is not Op.DELETE:
                names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=3))
                # Values name their writer so a wrong winner can never look right.
                vals = tuple((n, f"{n}@{ts}/{origin}#{draw(st.integers(0, 3))}") for n in names)
            instrs.append(Instruction(op, table, pk, vals))
        out.append(Changeset(ts, origin, tuple(instrs)))
    return out


def specification(changesets: Iterable[Changeset]) -> State:
    """The merge rules stated declaratively, independent of any order of application."""
    state: State = {}
    for cs in changesets:
        for ins in cs.instructions:
            obj = state.setdefault((ins.table, ins.pk), ObjectState())
            c = cs.clock
            if ins.op is Op.DELETE:
                obj.deleted = max(obj.deleted or c, c)
                continue
            if ins.op is Op.CREATE:
                obj.created = max(obj.created or c, c)
            for name, value in ins.values:
                if name not in obj.clocks or obj.clocks[name] < c:
                    obj.clocks[name] = c
                    obj.values[name] = value
    return state


@given(changeset_sets(), st.data())
def test_any_order_converges_to_the_specification(
    changesets: list[Changeset], data: st.DataObject
) -> None:
    expected = specification(changesets)
    order = data.draw(st.permutations(changesets))
    assert apply_all(order) == expected
    assert apply_all(changesets) == expected


@given(changeset_sets(), st.data())
def test_duplicates_in_any_order_change_nothing(
    changesets: list[Changeset], data: st.DataObject
) -> None:
    repeats = data.draw(st.lists(st.sampled_from(changesets), max_size=8))
    delivery = data.draw(st.permutations(changesets + repeats))
    assert apply_all(delivery) == specification(changesets)


@given(changeset_sets())
def test_applying_a_changeset_again_changes_nothing(changesets: list[Changeset]) -> None:
    state = apply_all(changesets)
    for cs in changesets:
        before = copy.deepcopy(state)
        for ins in cs.instructions:
            assert apply_instruction(state[(ins.table, ins.pk)], ins, cs.clock) is False
        assert state == before


@given(changeset_sets())
def test_applying_twice_in_a_row_changes_nothing(changesets: list[Changeset]) -> None:
    for cs in changesets:
        state: State = {}
        apply_changeset(state, cs)
        once = copy.deepcopy(state)
        assert apply_changeset(state, cs) is False
        assert state == once


@given(changeset_sets(), st.data())
def test_changed_flag_is_exact(changesets: list[Changeset], data: st.DataObject) -> None:
    state: State = {}
    for cs in data.draw(st.permutations(changesets)):
        for ins in cs.instructions:
            obj = state.setdefault((ins.table, ins.pk), ObjectState())
            before = copy.deepcopy(obj)
            changed = apply_instruction(obj, ins, cs.clock)
            assert changed == (obj != before)


@given(changeset_sets(ops=(Op.UPDATE, Op.DELETE)))
def test_updates_never_make_an_object_exist(changesets: list[Changeset]) -> None:
    for obj in apply_all(changesets).values():
        assert not obj.exists
        assert obj.created is None


@given(changeset_sets())
def test_existence_depends_only_on_creates_and_deletes(changesets: list[Changeset]) -> None:
    without_updates = [
        Changeset(cs.ts, cs.origin, tuple(i for i in cs.instructions if i.op is not Op.UPDATE))
        for cs in changesets
    ]
    full = apply_all(changesets)
    reduced = apply_all(without_updates)
    for key, obj in full.items():
        assert obj.exists == (key in reduced and reduced[key].exists)


def _all_orders(*changesets: Changeset) -> list[ObjectState]:
    """The single object's state after every order of application."""
    states = []
    for order in itertools.permutations(changesets):
        state = apply_all(order)
        assert len(state) == 1
        states.append(next(iter(state.values())))
    assert all(s == states[0] for s in states)
    return states


def _one(op: Op, ts: int, origin: int, **values: Value) -> Changeset:
    return Changeset(ts, origin, (Instruction(op, "Task", "t1", tuple(values.items())),))


def test_rule_different_fields_of_one_object_merge() -> None:
    base = _one(Op.CREATE, 1, 1, title="milk", done=False)
    phone = _one(Op.UPDATE, 5, 1, title="oat milk")
    laptop = _one(Op.UPDATE, 4, 2, done=True)
    for state in _all_orders(base, phone, laptop):
        assert state.exists
        assert state.values == {"title": "oat milk", "done": True}
        assert state.clocks == {"title": (5, 1), "done": (4, 2)}


def test_rule_same_field_later_clock_wins() -> None:
    for state in _all_orders(
        _one(Op.UPDATE, 7, 1, title="late"), _one(Op.UPDATE, 6, 9, title="early")
    ):
        assert state.values["title"] == "late"
        assert state.clocks["title"] == (7, 1)


def test_rule_same_timestamp_higher_origin_wins() -> None:
    for state in _all_orders(_one(Op.UPDATE, 7, 2, title="b"), _one(Op.UPDATE, 7, 1, title="a")):
        assert state.values["title"] == "b"
        assert state.clocks["title"] == (7, 2)


def test_rule_delete_beats_a_concurrent_update() -> None:
    created = _one(Op.CREATE, 1, 1, title="milk")
    deleted = _one(Op.DELETE, 2, 1)
    updated = _one(Op.UPDATE, 3, 2, title="bread")  # later clock than the delete
    for state in _all_orders(created, deleted, updated):
        assert not state.exists
        assert state.deleted == (2, 1)
        assert state.created == (1, 1)


def test_rule_create_after_delete_recreates() -> None:
    created = _one(Op.CREATE, 1, 1, title="milk")
    deleted = _one(Op.DELETE, 2, 1)
    recreated = _one(Op.CREATE, 3, 2, title="bread")
    for state in _all_orders(created, deleted, recreated):
        assert state.exists
        assert state.values["title"] == "bread"
    # ...but a CREATE older than the DELETE does not.
    for state in _all_orders(_one(Op.CREATE, 3, 2, title="x"), _one(Op.DELETE, 4, 1)):
        assert not state.exists


def test_rule_delete_and_create_with_one_clock_does_not_exist() -> None:
    # created > deleted is strict; compact() never emits both for one object.
    for state in _all_orders(_one(Op.CREATE, 3, 1), _one(Op.DELETE, 3, 1)):
        assert not state.exists


def test_object_state_exists() -> None:
    assert not ObjectState().exists
    assert ObjectState(created=(1, 1)).exists
    assert ObjectState(created=(2, 1), deleted=(1, 5)).exists
    assert not ObjectState(created=(1, 5), deleted=(2, 1)).exists
    assert not ObjectState(deleted=(1, 1)).exists


def test_apply_instruction_reports_changes() -> None:
    obj = ObjectState()
    ins = Instruction(Op.CREATE, "T", 1, (("a", 1),))
    assert apply_instruction(obj, ins, (2, 1)) is True
    assert apply_instruction(obj, ins, (2, 1)) is False
    assert apply_instruction(obj, ins, (1, 1)) is False  # older: nothing to do
    assert obj == ObjectState(created=(2, 1), values={"a": 1}, clocks={"a": (2, 1)})
    assert apply_instruction(obj, Instruction(Op.DELETE, "T", 1), (3, 1)) is True
    assert apply_instruction(obj, Instruction(Op.DELETE, "T", 1), (3, 1)) is False
    assert apply_instruction(obj, Instruction(Op.DELETE, "T", 1), (2, 9)) is False
    assert obj.deleted == (3, 1)
    assert apply_instruction(obj, Instruction(Op.UPDATE, "T", 1), (9, 9)) is False


# -- compact ---------------------------------------------------------------------------


@dataclass
class View:
    """What the writing replica sees of one object while it runs a transaction."""

    exists: bool
    fields: dict[str, Value] = field(default_factory=dict)


def reference_view(prior: ObjectState, transaction: Iterable[Instruction]) -> View:
    """The transaction applied strictly in order to a local view of one object.

    A DELETE removes the object and everything it held; a CREATE of a missing object
    makes a fresh one with just the fields it sets, and of an existing one updates it
    (an upsert); an UPDATE of a missing object does nothing, since a local view cannot
    write to an object it does not have. Later writes override earlier ones.

    Fields the view does not hold (those of a re-created object that its CREATE did
    not set) are left open: the merge rules keep the last merged value there, and the
    client is expected to send every field in a CREATE.
    """
    view = View(prior.exists, dict(prior.values) if prior.exists else {})
    for ins in transaction:
        if ins.op is Op.DELETE:
            view = View(False)
        elif ins.op is Op.CREATE:
            if not view.exists:
                view = View(True)
            view.fields.update(ins.values)
        elif view.exists:
            view.fields.update(ins.values)
    return view


@st.composite
def transactions(draw: st.DrawFn) -> list[Instruction]:
    out: list[Instruction] = []
    for _ in range(draw(st.integers(0, 10))):
        table, pk = draw(st.sampled_from(OBJECTS))
        op = draw(st.sampled_from(Op))
        vals: tuple[tuple[str, Value], ...] = ()
        if op is not Op.DELETE:
            names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=3))
            vals = tuple((n, f"{n}#{len(out)}") for n in names)  # unique per position
        out.append(Instruction(op, table, pk, vals))
    return out


TXN_CLOCK: Clock = (100, 2)  # later than every prior clock (timestamps <= 6)


@given(changeset_sets(max_size=4), transactions())
def test_compact_matches_in_order_application(
    prior_changesets: list[Changeset], transaction: list[Instruction]
) -> None:
    prior = apply_all(prior_changesets)
    net = compact(transaction)

    keys = [(i.table, i.pk) for i in net]
    assert len(keys) == len(set(keys)), "at most one instruction per object"
    assert set(keys) == {(i.table, i.pk) for i in transaction}

    after = copy.deepcopy(prior)
    apply_changeset(after, Changeset(*TXN_CLOCK, net))

    for key in set(prior) | set(after):
        mine = [i for i in transaction if (i.table, i.pk) == key]
        expected = reference_view(prior.get(key, ObjectState()), mine)
        got = after[key]
        assert got.exists == expected.exists, (key, mine)
        if expected.exists:
            for name, value in expected.fields.items():
                assert got.values.get(name) == value, (key, name, mine)


@given(transactions())
def test_compact_on_the_writer_matches_in_order_exactly(transaction: list[Instruction]) -> None:
    """When every object exists and is never deleted, nothing is left open."""
    creates = [
        Instruction(Op.CREATE, t, pk, tuple((n, "old") for n in FIELDS)) for t, pk in OBJECTS
    ]
    prior = apply_all([Changeset(1, 1, tuple(creates))])
    body = [i for i in transaction if i.op is Op.UPDATE]
    after = copy.deepcopy(prior)
    apply_changeset(after, Changeset(*TXN_CLOCK, compact(body)))
    for key in OBJECTS:
        expected: dict[str, Value] = {n: "old" for n in FIELDS}
        for i in body:
            if (i.table, i.pk) == key:
                expected.update(i.values)
        assert after[key].values == expected
        assert after[key].exists


@given(transactions())
def test_compact_is_idempotent(transaction: list[Instruction]) -> None:
    once = compact(transaction)
    assert compact(once) == once


@given(st.lists(st.sampled_from(OBJECTS), unique=True), st.sampled_from(Op))
def test_compact_keeps_single_instructions_as_they_are(keys: list[Key], op: Op) -> None:
    vals = () if op is Op.DELETE else (("x", 1),)
    instrs = tuple(Instruction(op, t, pk, vals) for t, pk in keys)
    assert compact(instrs) == instrs


@pytest.mark.parametrize(
    ("transaction", "expected"),
    [
        (
            [
                _create("a", title="x", done=False),
                Instruction(Op.UPDATE, "Task", "a", (("done", True),)),
            ],
            [_create("a", title="x", done=True)],
        ),
        (
            [
                Instruction(Op.UPDATE, "Task", "a", (("title", "x"),)),
                Instruction(Op.UPDATE, "Task", "a", (("title", "y"), ("done", True))),
            ],
            [Instruction(Op.UPDATE, "Task", "a", (("title", "y"), ("done", True)))],
        ),
        (
            [_create("a", title="x"), Instruction(Op.DELETE, "Task", "a")],
            [Instruction(Op.DELETE, "Task", "a")],
        ),
        (
            [
                Instruction(Op.DELETE, "Task", "a"),
                Instruction(Op.UPDATE, "Task", "a", (("title", "y"),)),
            ],
            [Instruction(Op.DELETE, "Task", "a")],
        ),
        (
            [_create("a", title="x"), Instruction(Op.DELETE, "Task", "a"), _create("a", title="y")],
            [_create("a", title="y")],
        ),
        (
            [Instruction(Op.UPDATE, "Task", "a", (("done", True),)), _create("a", title="y")],
            [_create("a", done=True, title="y")],
        ),
    ],
    ids=[
        "create+update",
        "update+update",
        "create+delete",
        "delete+update",
        "recreate",
        "update+create",
    ],
)
def test_compact_examples(transaction: list[Instruction], expected: list[Instruction]) -> None:
    assert list(compact(transaction)) == expected


# -- HybridClock -------------------------------------------------------------------------


class FakeWall:
    def __init__(self, readings_ns: Iterable[int]) -> None:
        self.readings = iter(readings_ns)

    def __call__(self) -> int:
        return next(self.readings)


def test_tick_follows_the_wall_clock_in_microseconds() -> None:
    clock = HybridClock(now=FakeWall([5_000_000, 9_000_000]))
    assert clock.tick() == 5_000
    assert clock.tick() == 9_000


def test_tick_strictly_increases_when_the_wall_clock_goes_backwards() -> None:
    clock = HybridClock(now=FakeWall([9_000_000, 1_000_000, 1_000_000, 9_000_000, 9_500_000]))
    assert [clock.tick() for _ in range(5)] == [9_000, 9_001, 9_002, 9_003, 9_500]


@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=50), st.integers(0, 2**50))
def test_tick_is_strictly_increasing_and_never_behind_the_wall(
    walls_ns: list[int], start: int
) -> None:
    clock = HybridClock(last=start, now=FakeWall(walls_ns))
    previous = start
    for wall in walls_ns:
        t = clock.tick()
        assert t > previous
        assert t >= wall // 1000
        previous = t


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.integers(0, 2**40)),
            st.tuples(st.just("observe"), st.integers(0, 2**42)),
        ),
        max_size=40,
    )
)
def test_tick_is_after_everything_ticked_or_observed(steps: list[tuple[str, int]]) -> None:
    walls = [v for kind, v in steps if kind == "tick"]
    clock = HybridClock(now=FakeWall(walls))
    high = 0
    for kind, value in steps:
        if kind == "observe":
            clock.observe(value)
            high = max(high, value)
        else:
            t = clock.tick()
            assert t > high
            high = t


def test_observe_moves_the_next_tick_past_a_remote_clock() -> None:
    clock = HybridClock(now=FakeWall([1_000_000] * 3))
    assert clock.tick() == 1_000
    clock.observe(50_000)  # a peer whose clock is ahead
    assert clock.tick() == 50_001
    clock.observe(10)  # an older reading changes nothing
    assert clock.tick() == 50_002


def test_default_clock_uses_real_time() -> None:
    clock = HybridClock()
    now_us = dt.datetime.now(dt.UTC).timestamp() * 1e6
    t1, t2 = clock.tick(), clock.tick()
    assert t2 > t1
    assert abs(t1 - now_us) < 60e6
    resumed = HybridClock(last=t2 + 10**9)
    assert resumed.tick() == t2 + 10**9 + 1

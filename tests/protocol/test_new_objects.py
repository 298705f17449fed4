"""NewObjects groups: the bulk, column-wise form of CREATEs in a changeset.

Checks the codec (round trips, what a decoder refuses), validation against a schema,
and that a group means exactly the CREATE instructions it stands for.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realmsync_nb.protocol.changeset import (
    Changeset,
    Instruction,
    NewObjects,
    Op,
    decode_changeset,
    encode_changeset,
    validate_changeset,
)
from realmsync_nb.protocol.schema import FieldSchema, TableSchema, ValueType, schema_by_name
from realmsync_nb.protocol.wire import DecodeError, Writer

I64_MIN, I64_MAX = -(2**63), 2**63 - 1

ROW = TableSchema(
    "Row",
    (
        FieldSchema("id", ValueType.INT, primary_key=True),
        FieldSchema("name", ValueType.STR),
        FieldSchema("n", ValueType.INT, optional=True),
        FieldSchema("x", ValueType.FLOAT),
        FieldSchema("ok", ValueType.BOOL),
    ),
)
TAG = TableSchema(
    "Tag",
    (FieldSchema("key", ValueType.STR, primary_key=True), FieldSchema("blob", ValueType.BYTES)),
)
SCHEMA = schema_by_name([ROW, TAG])
FIELDS = ("name", "n", "x", "ok")

# JSON carries these exactly: every int in 64 bits, finite floats (NaN and ±inf
# never go in a group; the writer sends them as tagged instructions), any str.
ROWS = st.lists(
    st.tuples(
        st.text(max_size=12),
        st.one_of(st.none(), st.integers(I64_MIN, I64_MAX)),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
    ),
    max_size=30,
)


def group(keys: list[object], rows: list[tuple[object, ...]], fields: tuple[str, ...] = FIELDS):
    columns = tuple(zip(*rows, strict=True)) if rows else tuple(() for _ in fields)
    return NewObjects("Row", fields, tuple(keys), columns)  # type: ignore[arg-type]


@st.composite
def groups(draw: st.DrawFn) -> NewObjects:
    rows = draw(ROWS)
    keys = draw(
        st.lists(st.integers(I64_MIN, I64_MAX), min_size=len(rows), max_size=len(rows), unique=True)
    )
    return group(keys, rows)  # type: ignore[arg-type]


def float_bits(g: NewObjects) -> list[bytes]:
    return [struct.pack("<d", v) for v in g.columns[2]]  # type: ignore[arg-type]


# -- codec ----------------------------------------------------------------------------


@given(groups(), st.lists(st.integers(0, 2**40), max_size=3))
def test_group_round_trip_keeps_values_types_and_bytes(g: NewObjects, deletes: list[int]) -> None:
    cs = Changeset(7, 9, tuple(Instruction(Op.DELETE, "Other", k) for k in deletes), (g,))
    encoded = encode_changeset(cs)
    decoded = decode_changeset(encoded)
    assert decoded == cs
    (back,) = decoded.groups
    for col, orig in zip(back.columns, g.columns, strict=True):
        assert [type(v) for v in col] == [type(v) for v in orig]  # True stays bool, 1.0 float
    assert float_bits(back) == float_bits(g)  # -0.0 stays -0.0
    assert encode_changeset(decoded) == encoded


@given(groups())
def test_a_group_means_its_create_instructions(g: NewObjects) -> None:
    expanded = list(g.instructions())
    assert [i.pk for i in expanded] == list(g.keys)
    for i, ins in enumerate(expanded):
        assert ins.op is Op.CREATE and ins.table == "Row"
        assert ins.values == tuple((f, g.columns[j][i]) for j, f in enumerate(FIELDS))
    cs = Changeset(1, 1, (), (g,))
    assert cs.all_instructions() == expanded
    assert cs.object_count == len(g)


@given(groups())
def test_split_halves_keep_every_row_once(g: NewObjects) -> None:
    a, b = g.split()
    assert list(a.instructions()) + list(b.instructions()) == list(g.instructions())


def _raw_group(payload: bytes, n_fields: int = 1, rows: int = 1) -> bytes:
    w = Writer()
    w.byte(2)
    w.uint(1)  # ts
    w.uint(2)  # origin
    w.uint(2)  # names
    w.str_("Row")
    w.str_("name")
    w.uint(0)  # no instructions
    w.uint(1)  # one group
    w.uint(0)  # table = names[0]
    w.uint(n_fields)
    for _ in range(min(n_fields, 8)):  # a huge count is refused before any index is read
        w.uint(1)
    w.uint(rows)
    w.bytes_(payload)
    return w.getvalue()


def test_raw_group_helper_builds_a_valid_changeset() -> None:
    cs = decode_changeset(_raw_group(b'[[1],["a"]]'))
    assert cs.groups == (NewObjects("Row", ("name",), (1,), (("a",),)),)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_raw_group(b"[[1],"), "malformed group"),
        (_raw_group(b"\xff\xfe"), "malformed group"),
        (_raw_group(b"[" * 100_000 + b"]" * 100_000), "malformed group"),
        (_raw_group(b'{"a": 1}'), "not 2 columns of 1 values"),
        (_raw_group(b"[[1]]"), "not 2 columns of 1 values"),
        (_raw_group(b'[[1],["a","b"]]'), "not 2 columns of 1 values"),
        (_raw_group(b"[[1],[[2]]]"), "not a number, string or null"),
        (_raw_group(b'[[1],[{"k":2}]]'), "not a number, string or null"),
        (_raw_group(b"[[9223372036854775808],[1]]"), "64-bit range"),
        (_raw_group(b'[[-9223372036854775809],["a"]]'), "64-bit range"),
        # Beyond 64 bits unsigned, orjson would read these as floats.
        (_raw_group(b'[[18446744073709551616],["a"]]'), "64-bit range"),
        (_raw_group(b"[[1],[1.5,100000000000000000000000]]", rows=2), "not 2 columns"),
        (_raw_group(b"[[1,2],[1.5,100000000000000000000000]]", rows=2), "64-bit range"),
        (_raw_group(b"[[1,2],[-1e19,-100000000000000000000000]]", rows=2), "64-bit range"),
        (_raw_group(b"[[1" + b"0" * 5000 + b'],["a"]]'), "malformed group"),
        (_raw_group(b"[[1],[NaN]]"), "NaN is not allowed"),
        (_raw_group(b"[[1],[1e400]]"), "not finite"),
        (_raw_group(b'[[1],["a\\ud800"]]'), "invalid UTF-8"),
        (_raw_group(b'[["\\udfff"],["a"]]'), "invalid UTF-8"),
        (_raw_group(b"[[1],[-Infinity]]"), "-Infinity is not allowed"),
        (_raw_group(b'[[1],["a"]]')[:-3], "truncated group"),
        (_raw_group(b'[[1],["a"]]', n_fields=2**40), "field count larger"),
    ],
)
def test_bad_groups_fail_with_a_decode_error(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_changeset(data)


_scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),  # often beyond 64 bits
    st.sampled_from([I64_MAX, I64_MAX + 1, 2**64 - 1, 2**64, I64_MIN, I64_MIN - 1, -(10**30)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
)


@given(st.lists(st.lists(_scalars, min_size=3, max_size=3), min_size=1, max_size=4))
def test_a_group_decodes_to_exactly_what_the_json_module_reads(columns: list[list[object]]) -> None:
    """Groups are parsed by orjson where that is provably what ``json`` gives; the
    values (and their types) must be json's, and a too-large integer is refused."""
    payload = json.dumps(columns).encode()
    expected = json.loads(payload)
    try:
        cs = decode_changeset(_raw_group(payload, n_fields=len(columns) - 1, rows=3))
    except DecodeError as exc:
        assert "64-bit range" in str(exc)
        assert any(type(v) is int and not I64_MIN <= v <= I64_MAX for c in expected for v in c)
        return
    assert all(type(v) is not int or I64_MIN <= v <= I64_MAX for c in expected for v in c)
    (g,) = cs.groups
    got = [list(g.keys), *map(list, g.columns)]
    assert got == expected
    assert [[type(v) for v in c] for c in got] == [[type(v) for v in c] for c in expected]


# orjson reads this 777-digit number as 1100000.8571755434; json (correctly) rounds
# it down to 1100000.8571755432.
_LONG_NUMBER = b"11000008571755433218" + b"0" * 750 + b".6e-763"


@pytest.mark.parametrize(
    "payload",
    [
        b"[[1],[" + _LONG_NUMBER + b"]]",
        b"[[1,2],[0.5," + _LONG_NUMBER + b"]]",
        b"[[1,2],[100000000000000000,-100000000000000000]]",  # 18 digits, in range
        b'[[1,2],["123456789012345678901234567890","a"]]',  # a long run inside a string
    ],
)
def test_a_long_run_of_digits_decodes_as_the_json_module_reads_it(payload: bytes) -> None:
    expected = json.loads(payload)
    rows = len(expected[0])
    (g,) = decode_changeset(_raw_group(payload, rows=rows)).groups
    got = [list(g.keys), *map(list, g.columns)]
    assert got == expected
    assert [[type(v) for v in c] for c in got] == [[type(v) for v in c] for c in expected]


@pytest.mark.parametrize(
    "payload",
    [
        b"[[1]," + b"[" * 1000 + b"]" * 1000 + b"]",  # deeper than json reads, not orjson
        b"[[1],[" + b"[" * 1000 + b"]" * 1000 + b"]]",
        b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b"[[1],[[2]]]",
        b'[[1],["a\\ud800"]]',
    ],
)
def test_a_refused_group_gets_the_json_modules_error(payload: bytes) -> None:
    """Whatever is refused is refused with the error ``json`` alone leads to."""
    try:
        cols = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        expected = f"malformed group of Row: {exc}"
    else:
        expected = None
    with pytest.raises(DecodeError) as info:
        decode_changeset(_raw_group(payload))
    if expected is not None:
        assert str(info.value) == expected
    else:
        assert cols != []  # it parsed: the column checks refuse it, as they always did
        assert "malformed" not in str(info.value)


@given(st.binary(max_size=60))
def test_fuzzed_group_payloads_fail_only_with_decode_error(payload: bytes) -> None:
    try:
        decode_changeset(_raw_group(payload))
    except DecodeError:
        pass


# -- validation -----------------------------------------------------------------------


def _cs(*groups: NewObjects, instructions: tuple[Instruction, ...] = ()) -> Changeset:
    return Changeset(10, 1, instructions, groups)


GOOD = group([1, 2], [("a", None, 1.5, True), ("b", 7, 2, False)])  # an int is a valid float


def test_valid_group() -> None:
    assert validate_changeset(_cs(GOOD), SCHEMA) is None
    # A group may set some fields only (a client that does not know the others).
    assert validate_changeset(_cs(group([3], [("c",)], ("name",))), SCHEMA) is None


INVALID = [
    (_cs(NewObjects("Nope", (), (1,), ())), "unknown table 'Nope'"),
    (_cs(NewObjects("Tag", ("blob",), ("k",), ((b"x",),))), "cannot be sent as a group"),
    (_cs(group([1], [("a",)], ("colour",))), "unknown field 'colour'"),
    (_cs(group([1], [(2,)], ("id",))), "primary key id cannot be set"),
    (_cs(group([1], [("a", "b")], ("name", "name"))), "set twice"),
    (_cs(group(["1"], [("a", None, 1.0, True)])), "bad primary key"),
    (_cs(group([True], [("a", None, 1.0, True)])), "bad primary key"),
    (_cs(group([None], [("a", None, 1.0, True)])), "bad primary key"),
    (_cs(group([2**63], [("a", None, 1.0, True)])), "bad primary key"),
    (_cs(group([1, 1], [("a", None, 1.0, True)] * 2)), "appears twice"),
    (_cs(GOOD, GOOD), "appears twice"),
    (_cs(GOOD, instructions=(Instruction(Op.DELETE, "Row", 2),)), "appears twice"),
    (_cs(group([1], [(5, None, 1.0, True)])), "name expects str"),
    (_cs(group([1], [(None, None, 1.0, True)])), "not optional"),
    (_cs(group([1], [("a", True, 1.0, True)])), "n expects int"),
    (_cs(group([1], [("a", 2**63, 1.0, True)])), "does not fit in 64 bits"),
    (_cs(group([1], [("a", None, True, True)])), "x expects float"),
    (_cs(group([1], [("a", None, 1.0, 1)])), "ok expects bool"),
]


@pytest.mark.parametrize(("cs", "expected"), INVALID)
def test_invalid_groups(cs: Changeset, expected: str) -> None:
    problem = validate_changeset(cs, SCHEMA)
    assert problem is not None
    assert expected in problem


@pytest.mark.parametrize(
    "cs", [_cs(GOOD), _cs(NewObjects("Tag", (), ("a", "b"), ())), *(cs for cs, _ in INVALID)]
)
def test_a_decoded_group_validates_as_the_group_it_was(cs: Changeset) -> None:
    """Validation reuses the types the decoder found in each column; the verdict
    must be the one the values themselves give."""
    try:
        decoded = decode_changeset(encode_changeset(cs))
    except (ValueError, TypeError):  # JSON cannot carry it, or the decoder refuses it
        pytest.skip("this group does not survive encoding and decoding")
    assert all(g.kinds is not None for g in decoded.groups)
    assert validate_changeset(decoded, SCHEMA) == validate_changeset(cs, SCHEMA)


def test_an_instruction_may_name_a_key_of_another_table() -> None:
    cs = _cs(GOOD, instructions=(Instruction(Op.DELETE, "Tag", "1"),))
    assert validate_changeset(cs, SCHEMA) is None


def test_json_in_the_payload_is_compact_and_exact() -> None:
    """The payload is plain JSON: readable with any tool, floats in shortest repr."""
    g = group([1], [("é", None, 0.1, False)])
    body = encode_changeset(_cs(g))
    payload = body[body.index(b"[[") :]
    assert json.loads(payload) == [[1], ["é"], [None], [0.1], [False]]
    assert b" " not in payload
    assert math.isclose(json.loads(payload)[3][0], 0.1)


@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf])
def test_a_group_holding_a_non_finite_float_is_refused_not_written_as_null(odd: float) -> None:
    """JSON has no NaN or infinity; written as null it would arrive as a None."""
    with pytest.raises(ValueError, match="NaN or an infinity"):
        encode_changeset(_cs(group([1, 2], [("a", None, 1.5, True), ("b", 3, odd, False)])))


def test_a_float_subclass_is_written_as_its_value_and_its_nan_refused() -> None:
    np = pytest.importorskip("numpy")
    g = group([1], [("a", None, np.float64(0.25), True)])
    assert decode_changeset(encode_changeset(_cs(g))).groups[0].columns[2] == (0.25,)
    with pytest.raises(ValueError, match="NaN or an infinity"):
        encode_changeset(_cs(group([1], [("a", None, np.float64("nan"), True)])))


def test_a_group_holding_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON cannot carry"):
        encode_changeset(_cs(group([1], [("\ud800", None, 0.5, True)])))


def test_a_changeset_without_groups_is_written_in_format_1() -> None:
    """So a reader that knows format 1 only still reads every changeset that has no
    groups (all small transactions)."""
    plain = encode_changeset(Changeset(1, 2, (Instruction(Op.DELETE, "Row", 5),)))
    assert plain[0] == 1
    assert encode_changeset(_cs(GOOD))[0] == 2


def test_a_key_only_group_expands_to_creates_without_values() -> None:
    g = NewObjects("Tag", (), ("a", "b"), ())
    assert list(g.instructions()) == [
        Instruction(Op.CREATE, "Tag", "a", ()),
        Instruction(Op.CREATE, "Tag", "b", ()),
    ]
    assert decode_changeset(encode_changeset(_cs(g))).groups == (g,)

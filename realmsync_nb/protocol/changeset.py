"""Changesets: what one write transaction did, and the rules that merge them.

A changeset is one committed transaction: a clock ``(ts, origin)`` and a list of
instructions, at most one per object (see :func:`compact`). ``ts`` is a hybrid
logical clock reading (see :class:`HybridClock`) and ``origin`` the writing
replica's peer id, so clocks are unique and totally ordered.

Merge rules (docs/merge-rules.md). Every replica keeps, per object, the clock
of the latest CREATE, the clock of the latest DELETE, and a clock per field:

* CREATE sets ``created = max(created, c)`` and each field it carries whose
  clock is older than ``c``;
* UPDATE sets each field it carries whose clock is older than ``c``; it never
  makes an object exist, so a delete beats a concurrent update;
* DELETE sets ``deleted = max(deleted, c)``;
* an object exists when ``created > deleted``.

Each rule takes maxima, so applying changesets in any order, or twice, gives the
same state: replicas converge.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import functools
import json
import math
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from enum import IntEnum

import orjson

from .schema import PYTHON_TYPES, FieldSchema, TableSchema, Value, ValueType, check_value
from .wire import DecodeError, Reader, Writer, uint_at

_F64 = struct.Struct("<d")

__all__ = [
    "Changeset",
    "Clock",
    "HybridClock",
    "Instruction",
    "NewObjects",
    "ObjectState",
    "Op",
    "apply_instruction",
    "changeset_ts",
    "compact",
    "decode_changeset",
    "encode_changeset",
    "encode_creates",
    "fold",
    "pk_key",
    "validate_changeset",
]

Clock = tuple[int, int]  # (hybrid timestamp, origin peer id)
CHANGESET_FORMAT = 2  # 1: instructions only; 2: instructions, then NewObjects groups
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class Op(IntEnum):
    CREATE = 1
    UPDATE = 2
    DELETE = 3


@dataclass(frozen=True, slots=True)
class Instruction:
    op: Op
    table: str
    pk: Value
    values: tuple[tuple[str, Value], ...] = ()


# Types a NewObjects group can hold (JSON's own scalars, so a group encodes and
# decodes at C speed), and the primary-key types it can be keyed by.
BULK_TYPES = frozenset({ValueType.INT, ValueType.FLOAT, ValueType.STR, ValueType.BOOL})
BULK_KEY_TYPES = frozenset({ValueType.INT, ValueType.STR})


@dataclass(frozen=True, slots=True)
class NewObjects:
    """CREATEs of objects of one table that each set the same fields, kept by column.

    Row ``i`` means ``Instruction(CREATE, table, keys[i], ((fields[0], columns[0][i]),
    ...))``. This is the bulk form a large transaction of new objects takes: it is
    encoded as JSON arrays, so it crosses the wire and is checked and stored in C
    loops rather than one Python step per value (docs/protocol.md). Only fields of
    :data:`BULK_TYPES` and keys of :data:`BULK_KEY_TYPES` go in a group.
    """

    table: str
    fields: tuple[str, ...]
    keys: tuple[Value, ...]
    columns: tuple[tuple[Value, ...], ...]
    # The types found in the keys and in each column, by the decoder, which has also
    # checked that every int fits in 64 bits: validation need not look at every
    # value again. None for a group built here (or split from one). A group made from
    # this one with other keys or columns must not carry them: dataclasses.replace
    # would, and validation would then trust types these values do not have.
    kinds: tuple[frozenset[type], ...] | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def instructions(self) -> Iterator[Instruction]:
        """The group as one CREATE instruction per object."""
        fields = self.fields
        if not fields:  # a table with a key only: zip() of no columns would be empty
            for key in self.keys:
                yield Instruction(Op.CREATE, self.table, key, ())
            return
        for key, row in zip(self.keys, zip(*self.columns, strict=True), strict=True):
            yield Instruction(Op.CREATE, self.table, key, tuple(zip(fields, row, strict=True)))

    def split(self, at: int | None = None) -> tuple[NewObjects, NewObjects]:
        """The rows before ``at`` (default: half of them) and the rest, as two groups."""
        h = len(self.keys) // 2 if at is None else at
        first = NewObjects(
            self.table, self.fields, self.keys[:h], tuple(c[:h] for c in self.columns)
        )
        rest = NewObjects(
            self.table, self.fields, self.keys[h:], tuple(c[h:] for c in self.columns)
        )
        return first, rest


@dataclass(frozen=True, slots=True)
class Changeset:
    ts: int
    origin: int
    instructions: tuple[Instruction, ...]
    groups: tuple[NewObjects, ...] = ()

    @property
    def clock(self) -> Clock:
        return (self.ts, self.origin)

    @property
    def object_count(self) -> int:
        """How many objects the changeset names."""
        return len(self.instructions) + sum(len(g) for g in self.groups)

    def all_instructions(self) -> list[Instruction]:
        """Every instruction, with the groups expanded (the slow, general form)."""
        out = list(self.instructions)
        for g in self.groups:
            out.extend(g.instructions())
        return out


# -- values -----------------------------------------------------------------

_T_NULL, _T_INT, _T_FLOAT, _T_STR, _T_FALSE, _T_TRUE = 0, 1, 2, 3, 4, 5
_T_BYTES, _T_DATETIME, _T_UUID, _T_DECIMAL = 6, 7, 8, 9


def _write_value(w: Writer, v: Value) -> None:
    # Order matters: bool before int, since bool is an int subclass.
    if v is None:
        w.byte(_T_NULL)
    elif v is True:
        w.byte(_T_TRUE)
    elif v is False:
        w.byte(_T_FALSE)
    elif isinstance(v, int):
        w.byte(_T_INT)
        w.sint(v)
    elif isinstance(v, str):
        w.byte(_T_STR)
        w.str_(v)
    elif isinstance(v, float):
        w.byte(_T_FLOAT)
        w.f64(v)
    elif isinstance(v, bytes):
        w.byte(_T_BYTES)
        w.bytes_(v)
    elif isinstance(v, _dt.datetime):
        w.byte(_T_DATETIME)
        w.sint(datetime_to_micros(v))
    elif isinstance(v, uuid.UUID):
        w.byte(_T_UUID)
        w.raw(v.bytes)
    elif isinstance(v, decimal.Decimal):
        w.byte(_T_DECIMAL)
        w.str_(str(v))
    else:
        raise TypeError(f"cannot encode {type(v).__name__}")


def _read_value(r: Reader) -> Value:
    tag = r.byte()
    if tag == _T_STR:
        return r.str_()
    if tag == _T_INT:
        v = r.sint()
        if not -(1 << 63) <= v < (1 << 63):
            raise DecodeError("integer value out of 64-bit range")
        return v
    if tag == _T_NULL:
        return None
    if tag == _T_TRUE:
        return True
    if tag == _T_FALSE:
        return False
    if tag == _T_FLOAT:
        return r.f64()
    if tag == _T_BYTES:
        return r.bytes_()
    if tag == _T_DATETIME:
        return micros_to_datetime(r.sint())
    if tag == _T_UUID:
        return uuid.UUID(bytes=r.raw(16))
    if tag == _T_DECIMAL:
        s = r.str_()
        try:
            d = decimal.Decimal(s)
        except decimal.InvalidOperation:
            raise DecodeError(f"invalid decimal {s[:40]!r}") from None
        if not d.is_finite():
            raise DecodeError("decimal must be finite")
        return d
    raise DecodeError(f"unknown value tag {tag}")


def datetime_to_micros(v: _dt.datetime) -> int:
    delta = v - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_to_datetime(us: int) -> _dt.datetime:
    try:
        return _EPOCH + _dt.timedelta(microseconds=us)
    except OverflowError:
        raise DecodeError("datetime out of range") from None


# -- codec ------------------------------------------------------------------


def _put_uint(buf: bytearray, v: int) -> None:
    if v < 0x80:
        buf.append(v)
        return
    while v >= 0x80:
        buf.append((v & 0x7F) | 0x80)
        v >>= 7
    buf.append(v)


def _put_str(buf: bytearray, v: str) -> None:
    data = v.encode("utf-8")
    _put_uint(buf, len(data))
    buf += data


def _put_value(buf: bytearray, v: Value) -> None:
    # The hot path of every local commit: dispatch on the exact type first, and
    # fall back to the general encoder for subclasses and rarer types.
    t = type(v)
    if t is str:
        buf.append(_T_STR)
        _put_str(buf, v)  # type: ignore[arg-type]
    elif t is int:
        buf.append(_T_INT)
        _put_uint(buf, (v << 1) if v >= 0 else ((-v) << 1) - 1)  # type: ignore[operator]
    elif t is bool:
        buf.append(_T_TRUE if v else _T_FALSE)
    elif t is float:
        buf.append(_T_FLOAT)
        buf += _F64.pack(v)
    elif v is None:
        buf.append(_T_NULL)
    else:
        w = Writer()
        _write_value(w, v)
        buf += w.buf


def encode_changeset(cs: Changeset) -> bytes:
    """Encode ``cs``; names are interned in a string table at the front."""
    names: dict[str, int] = {}
    body = bytearray()
    _put_uint(body, len(cs.instructions))
    for ins in cs.instructions:
        body.append(ins.op)
        idx = names.get(ins.table)
        if idx is None:
            idx = names[ins.table] = len(names)
        _put_uint(body, idx)
        _put_value(body, ins.pk)
        if ins.op != Op.DELETE:
            _put_uint(body, len(ins.values))
            for name, value in ins.values:
                idx = names.get(name)
                if idx is None:
                    idx = names[name] = len(names)
                _put_uint(body, idx)
                _put_value(body, value)
    if cs.groups:  # without groups the changeset is written in format 1, byte for byte
        _put_uint(body, len(cs.groups))
    for g in cs.groups:
        for name in (g.table, *g.fields):
            if name not in names:
                names[name] = len(names)
        _put_uint(body, names[g.table])
        _put_uint(body, len(g.fields))
        for name in g.fields:
            _put_uint(body, names[name])
        _put_uint(body, len(g.keys))
        for column in g.columns:
            if not _floats_finite(column, set(map(type, column))):
                raise ValueError(f"a group of {g.table} holds a NaN or an infinity")
        # orjson writes compact JSON that json.loads reads back to the same values
        # (non-ASCII as UTF-8, exponents as 1e-7), 10-15× faster than json.dumps. It
        # would write a NaN as null, which the check above rules out.
        try:
            payload = orjson.dumps((g.keys, *g.columns), default=_plain_float)
        except TypeError as exc:  # a lone surrogate, which UTF-8 cannot carry either
            raise ValueError(
                f"a group of {g.table} holds a value JSON cannot carry: {exc}"
            ) from None
        _put_uint(body, len(payload))
        body += payload
    out = bytearray((CHANGESET_FORMAT if cs.groups else 1,))
    _put_uint(out, cs.ts)
    _put_uint(out, cs.origin)
    _put_uint(out, len(names))
    for name in names:
        _put_str(out, name)
    out += body
    return bytes(out)


@functools.lru_cache(maxsize=256)
def _creates_head(table: str, fields: tuple[str, ...]) -> tuple[bytes, tuple[bytes, ...]]:
    """The string table of :func:`encode_creates` and each field's encoded index."""
    names = dict.fromkeys((table, *fields))
    head = bytearray()
    _put_uint(head, len(names))
    for name in names:
        _put_str(head, name)
    index = {name: i for i, name in enumerate(names)}
    refs = []
    for name in fields:
        ref = bytearray()
        _put_uint(ref, index[name])
        refs.append(bytes(ref))
    return bytes(head), tuple(refs)


def encode_creates(
    ts: int, origin: int, table: str, fields: tuple[str, ...], rows: Iterable[Sequence[Value]]
) -> bytes:
    """The changeset of one CREATE of ``table`` per row (its key, then a value for
    each of ``fields``), byte for byte what :func:`encode_changeset` makes of those
    instructions, without building them: the shape of every small local write."""
    rows = list(rows)
    if not rows:  # no instructions name anything: the string table is empty
        return encode_changeset(Changeset(ts, origin, ()))
    head, refs = _creates_head(table, fields)
    out = bytearray((1,))
    _put_uint(out, ts)
    _put_uint(out, origin)
    out += head
    _put_uint(out, len(rows))
    n_fields = bytearray()
    _put_uint(n_fields, len(fields))
    for row in rows:
        out.append(Op.CREATE)
        out.append(0)  # the table: the first name of the string table
        _put_value(out, row[0])
        out += n_fields
        for ref, value in zip(refs, row[1:], strict=True):
            out += ref
            _put_value(out, value)
    return bytes(out)


def decode_changeset(data: bytes) -> Changeset:
    """Decode a changeset.

    Raises:
        DecodeError: the bytes are not a well-formed changeset.
    """
    try:
        return _decode_changeset(data)
    # The fast path reads bytes directly: running off the end or bad UTF-8 surface
    # as these, and mean the same as the Reader's errors.
    except IndexError:
        raise DecodeError("truncated input") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 string: {exc.reason}") from None
    except struct.error as exc:
        raise DecodeError(f"malformed changeset: {exc}") from None


def changeset_ts(data: bytes) -> int:
    """The timestamp in a changeset's header, without decoding the rest.

    Raises:
        DecodeError: the header is malformed.
    """
    r = Reader(data)
    if r.byte() not in (1, CHANGESET_FORMAT):
        raise DecodeError("unknown changeset format")
    return r.uint()


def _uint_at(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it (IndexError past the end)."""
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    return uint_at(data, pos, len(data))  # timestamps and peer ids: 8-10 bytes


def _value_at(data: bytes, pos: int) -> tuple[Value, int]:
    tag = data[pos]
    pos += 1
    if tag == _T_STR:
        n, pos = _uint_at(data, pos)
        end = pos + n
        if end > len(data):
            raise DecodeError("truncated string")
        return data[pos:end].decode("utf-8"), end
    if tag == _T_INT:
        v, pos = _uint_at(data, pos)
        return (v >> 1) if not v & 1 else -((v + 1) >> 1), pos
    if tag == _T_TRUE:
        return True, pos
    if tag == _T_FALSE:
        return False, pos
    if tag == _T_NULL:
        return None, pos
    if tag == _T_FLOAT:
        if pos + 8 > len(data):
            raise DecodeError("truncated float")
        return _F64.unpack_from(data, pos)[0], pos + 8
    r = Reader(data, pos - 1)
    value = _read_value(r)
    return value, r.pos


def _decode_changeset(data: bytes) -> Changeset:
    fmt = data[0]
    if fmt not in (1, CHANGESET_FORMAT):
        raise DecodeError(f"unknown changeset format {fmt}")
    ts, pos = _uint_at(data, 1)
    origin, pos = _uint_at(data, pos)
    n_names, pos = _uint_at(data, pos)
    size = len(data)
    if n_names > size:
        raise DecodeError("string table larger than the changeset")
    names = []
    for _ in range(n_names):  # the Reader's str_(), inline: a few per changeset
        length, pos = _uint_at(data, pos)
        end = pos + length
        if end > size:
            raise DecodeError(f"need {length} bytes, {size - pos} left")
        names.append(data[pos:end].decode("utf-8"))
        pos = end
    n, pos = _uint_at(data, pos)
    if n > size:
        raise DecodeError("instruction count larger than the changeset")
    out: list[Instruction] = []
    append = out.append
    ops = _OPS
    n_known = len(names)
    for _ in range(n):
        op = ops.get(data[pos])
        if op is None:
            raise DecodeError(f"unknown instruction {data[pos]}")
        t, pos = _uint_at(data, pos + 1)
        if t >= n_known:
            raise DecodeError(f"string index {t} outside the table of {n_known}")
        pk, pos = _value_at(data, pos)
        values: tuple[tuple[str, Value], ...] = ()
        if op is not Op.DELETE:
            nv, pos = _uint_at(data, pos)
            if nv > size:
                raise DecodeError("value count larger than the changeset")
            vals: list[tuple[str, Value]] = []
            for _ in range(nv):
                f = data[pos]  # a field's index in the string table: one byte, usually
                if f < 0x80:
                    pos += 1
                else:
                    f, pos = _uint_at(data, pos)
                if f >= n_known:
                    raise DecodeError(f"string index {f} outside the table of {n_known}")
                if data[pos] == _T_STR and data[pos + 1] < 0x80:  # a short string, inline
                    end = pos + 2 + data[pos + 1]
                    if end > size:
                        raise DecodeError("truncated string")
                    vals.append((names[f], data[pos + 2 : end].decode("utf-8")))
                    pos = end
                else:
                    v, pos = _value_at(data, pos)
                    vals.append((names[f], v))
            values = tuple(vals)
        append(Instruction(op, names[t], pk, values))
    groups: tuple[NewObjects, ...] = ()
    if fmt >= 2:
        groups, pos = _decode_groups(data, pos, names)
    if pos != size:
        raise DecodeError(f"{size - pos} unexpected trailing bytes")
    return Changeset(ts, origin, tuple(out), groups)


def _no_constant(name: str) -> None:
    # NaN and ±Infinity are not JSON, and a group never carries them: the writer
    # sends rows with non-finite floats as tagged instructions, which keep the bits.
    raise ValueError(f"{name} is not allowed in a group")


def _floats_finite(column: Sequence[Value], kinds: Set[type]) -> bool:
    """Whether every float in a group's column (``kinds``: the types in it) is
    finite. JSON has no spelling for NaN or ±inf: the encoder refuses them (the
    writer sends such rows as tagged instructions, which keep the bits), and the
    decoder refuses the 1e400 that parses as inf."""
    if not any(issubclass(k, float) for k in kinds):  # numpy.float64 is a float too
        return True
    floats = column if kinds == {float} else [v for v in column if isinstance(v, float)]
    return all(map(math.isfinite, floats))  # type: ignore[arg-type]


def _plain_float(value: object) -> float:
    """orjson's fallback: a subclass of float (numpy.float64, say) as a plain float,
    as json.dumps writes it. Anything else stays unserializable."""
    if isinstance(value, float):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_JSON_SCALARS = frozenset({int, float, str, bool, type(None)})
# 18 digits in a row: an integer of at least 10**17 (every one outside the 64-bit
# range has 19 or more), or a long number orjson might round differently from json.
# Found by mapping every digit to "0" and everything else to "x" (about 1.5 ms for
# 2 MB; a regular expression took 20).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x78 for i in range(256))
_DIGIT_RUN = b"0" * 18


def _group_columns(
    payload: bytes, table: str, width: int, rows: int
) -> tuple[list[list[Value]], list[frozenset[type]]]:
    """A group's columns, parsed and checked, and the types found in each.

    orjson parses them about twice as fast as ``json`` and is used where it reads
    the same values; ``json`` decides everything else, so values, refusals and
    error messages are exactly what ``json`` alone gives. Where orjson
    differs, the group goes to ``json``:

    - it reads an integer outside [-2**63, 2**64) as a float, which the range
      check would not see, and may round a number of hundreds of digits to the
      wrong neighbouring float: a run of 18 digits anywhere in the group (a
      large integer, a long number, or just a string holding one) goes to
      ``json``;
    - it refuses some text ``json`` reads (a lone surrogate, 1e400), and nests
      deeper than ``json`` before giving up: whatever orjson refuses, and any
      group the checks refuse, is parsed again by ``json`` for the error.

    Our writer never sends such a group, except one holding an integer of at
    least 10**17 or a string with a run of 18 digits, which only takes the
    slower way."""
    if payload.translate(_DIGITS_AS_ZERO).find(_DIGIT_RUN) < 0:
        try:
            cols = orjson.loads(payload)
            kinds = _check_group_columns(cols, table, width, rows)
        except (orjson.JSONDecodeError, DecodeError):
            pass
        else:
            return cols, kinds
    try:
        cols = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, nesting
        raise DecodeError(f"malformed group of {table}: {exc}") from None
    return cols, _check_group_columns(cols, table, width, rows)


def _check_group_columns(cols: object, table: str, width: int, rows: int) -> list[frozenset[type]]:
    """Refuse a group whose columns are not ``width`` lists of ``rows`` scalars,
    each in range: an integer in 64 bits, a finite float, a string UTF-8 can hold.
    Returns the types found in each column."""
    if not (
        type(cols) is list
        and len(cols) == width
        and all(type(c) is list and len(c) == rows for c in cols)
    ):
        raise DecodeError(f"group of {table}: not {width} columns of {rows} values")
    found = []
    for c in cols:
        kinds = frozenset(map(type, c))
        found.append(kinds)
        if not kinds <= _JSON_SCALARS:
            raise DecodeError(f"group of {table}: a value is not a number, string or null")
        if int in kinds:
            ints = c if len(kinds) == 1 else [v for v in c if type(v) is int]
            if min(ints) < -(1 << 63) or max(ints) >= 1 << 63:
                raise DecodeError("integer value out of 64-bit range")
        if not _floats_finite(c, kinds):
            raise DecodeError(f"group of {table}: a float is not finite")
        if str in kinds:  # JSON can spell lone surrogates (\ud800); UTF-8 cannot
            strs = c if len(kinds) == 1 else [v for v in c if type(v) is str]
            try:
                "".join(strs).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DecodeError(f"invalid UTF-8 string: {exc.reason}") from None
    return found


def _decode_groups(data: bytes, pos: int, names: list[str]) -> tuple[tuple[NewObjects, ...], int]:
    size = len(data)
    n, pos = _uint_at(data, pos)
    if n > size:
        raise DecodeError("group count larger than the changeset")
    groups = []
    for _ in range(n):
        t, pos = _uint_at(data, pos)
        nf, pos = _uint_at(data, pos)
        if nf > size:
            raise DecodeError("field count larger than the changeset")
        idx = [t]
        for _ in range(nf):
            f, pos = _uint_at(data, pos)
            idx.append(f)
        table, *fields = (_name(names, i) for i in idx)
        rows, pos = _uint_at(data, pos)
        length, pos = _uint_at(data, pos)
        end = pos + length
        if end > size:
            raise DecodeError("truncated group")
        cols, kinds = _group_columns(data[pos:end], table, nf + 1, rows)
        pos = end
        keys, columns = tuple(cols[0]), tuple(map(tuple, cols[1:]))
        groups.append(NewObjects(table, tuple(fields), keys, columns, tuple(kinds)))
    return tuple(groups), pos


_OPS = {op.value: op for op in Op}


def _name(names: list[str], idx: int) -> str:
    if idx >= len(names):
        raise DecodeError(f"string index {idx} outside the table of {len(names)}")
    return names[idx]


def validate_changeset(cs: Changeset, schema: Mapping[str, TableSchema]) -> str | None:
    """Return why ``cs`` breaks ``schema`` (first problem found), or None."""
    seen: set[tuple[str, object]] = set()
    if cs.groups:  # groups are checked as wholes, including against the instructions
        problem = _validate_groups(cs, schema)
        if problem is not None:
            return problem
    fast: dict[str, dict[str, tuple[type, bool]]] = {}
    for ins in cs.instructions:
        table = schema.get(ins.table)
        if table is None:
            return f"unknown table {ins.table!r}"
        problem = check_value(table.primary_key, ins.pk)
        if problem is not None or ins.pk is None:
            return f"{ins.table}: bad primary key: {problem or 'None'}"
        key = (ins.table, ins.pk)
        if key in seen:
            return f"{ins.table}: object {ins.pk!r} appears twice in one changeset"
        seen.add(key)
        # Values of the plain types whose exact Python type matches need no further
        # check (the decoder already bounds ints); everything else goes through
        # check_value, which also writes the message.
        types = fast.get(ins.table)
        if types is None:
            types = fast[ins.table] = {
                f.name: (_FAST_TYPES.get(f.type, _NoFastPath), f.optional) for f in table.fields[1:]
            }
        names: set[str] = set()
        for name, value in ins.values:
            expected = types.get(name)
            if (
                expected is not None
                and name not in names
                and (type(value) is expected[0] or (value is None and expected[1]))
            ):
                names.add(name)
                continue
            f = table.field(name)
            if f is None:
                return f"{ins.table}: unknown field {name!r}"
            if f.primary_key:
                return f"{ins.table}: the primary key {name} cannot be set"
            if name in names:
                return f"{ins.table}: field {name} set twice"
            names.add(name)
            problem = check_value(f, value)
            if problem is not None:
                return f"{ins.table}: {problem}"
    return None


def _validate_groups(cs: Changeset, schema: Mapping[str, TableSchema]) -> str | None:
    keys_by_table: dict[str, set[Value]] = {}
    for g in cs.groups:
        table = schema.get(g.table)
        if table is None:
            return f"unknown table {g.table!r}"
        pk = table.primary_key
        if pk.type not in BULK_KEY_TYPES:
            return f"{g.table}: objects keyed by {pk.type.name} cannot be sent as a group"
        kinds = g.kinds or (None,) * (len(g.fields) + 1)
        problem = _check_column(pk, g.keys, "primary key", kinds[0])
        if problem is not None:
            return f"{g.table}: bad primary key: {problem}"
        keys = keys_by_table.setdefault(g.table, set())
        before = len(keys)
        keys.update(g.keys)
        if len(keys) != before + len(g.keys):
            return f"{g.table}: an object appears twice in one changeset"
        if len(set(g.fields)) != len(g.fields):
            return f"{g.table}: a field is set twice"
        for name, column, found in zip(g.fields, g.columns, kinds[1:], strict=True):
            f = table.field(name)
            if f is None:
                return f"{g.table}: unknown field {name!r}"
            if f.primary_key:
                return f"{g.table}: the primary key {name} cannot be set"
            if f.type not in BULK_TYPES:
                return f"{g.table}: field {name} of type {f.type.name} cannot be sent as a group"
            problem = _check_column(f, column, name, found)
            if problem is not None:
                return f"{g.table}: {problem}"
    for ins in cs.instructions:
        if ins.pk in keys_by_table.get(ins.table, ()):
            return f"{ins.table}: object {ins.pk!r} appears twice in one changeset"
    return None


def _check_column(
    f: FieldSchema, column: tuple[Value, ...], what: str, kinds: frozenset[type] | None
) -> str | None:
    """Why a group's column of values cannot be stored in ``f``, or None (C-speed checks).

    ``kinds``: the types in the column, as the decoder found them (every int then
    known to fit in 64 bits), or None to look at the values."""
    allowed: set[type] = {PYTHON_TYPES[f.type]}
    if f.type is ValueType.FLOAT:
        allowed.add(int)
    if f.optional:
        allowed.add(type(None))
    ranged = kinds is not None
    if kinds is None:
        kinds = frozenset(map(type, column))
    if not kinds <= allowed:
        bad = next(v for v in column if type(v) not in allowed)
        return check_value(f, bad) or f"{what}: {type(bad).__name__} is not allowed"
    if int in kinds and f.type is ValueType.INT and not ranged:
        ints = [v for v in column if v is not None] if f.optional else column
        if min(ints) < -(1 << 63) or max(ints) >= 1 << 63:  # type: ignore[type-var,operator]
            return f"{what}: a value does not fit in 64 bits"
    return None


class _NoFastPath:
    pass


_FAST_TYPES: dict[ValueType, type] = {
    ValueType.STR: str,
    ValueType.FLOAT: float,
    ValueType.BOOL: bool,
    ValueType.BYTES: bytes,
}


# -- compaction -------------------------------------------------------------


def compact(instructions: Iterable[Instruction]) -> tuple[Instruction, ...]:
    """Fold a transaction's instructions into at most one net instruction per object.

    The result has the same effect as the input applied in order, under a single
    clock: a DELETE wins over what came before it, a CREATE after a DELETE
    re-creates, and UPDATEs fold into the CREATE or UPDATE they follow.
    """
    net: dict[tuple[str, object], Instruction] = {}
    for ins in instructions:
        key = (ins.table, pk_key(ins.pk))
        folded = fold(net.get(key), ins)
        if folded is not None:
            net[key] = folded
    return tuple(net.values())


def fold(prev: Instruction | None, ins: Instruction) -> Instruction | None:
    """The net instruction of ``prev`` followed by ``ins`` on the same object.

    Returns None only when both are absent in effect (an UPDATE with nothing before
    it is kept: it updates an object created in an earlier transaction).
    """
    if prev is None:
        return ins
    if ins.op == Op.DELETE:
        return Instruction(Op.DELETE, ins.table, ins.pk)
    if ins.op == Op.CREATE:
        if prev.op == Op.DELETE:
            return ins
        return Instruction(Op.CREATE, ins.table, ins.pk, _merge_values(prev.values, ins.values))
    if prev.op == Op.DELETE:
        return prev  # an update of a deleted object does nothing
    return Instruction(prev.op, prev.table, prev.pk, _merge_values(prev.values, ins.values))


def pk_key(pk: Value) -> object:
    # 1 == True in Python; primary keys are never bool, but keep keys typed.
    return (type(pk), pk)


def _merge_values(
    old: tuple[tuple[str, Value], ...], new: tuple[tuple[str, Value], ...]
) -> tuple[tuple[str, Value], ...]:
    d = dict(old)
    d.update(new)
    return tuple(d.items())


# -- merge ------------------------------------------------------------------


@dataclass(slots=True)
class ObjectState:
    """One object's merge state: existence clocks, field values and field clocks."""

    created: Clock | None = None
    deleted: Clock | None = None
    values: dict[str, Value] = field(default_factory=dict)
    clocks: dict[str, Clock] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.created is not None and (self.deleted is None or self.created > self.deleted)


_ZERO: Clock = (0, 0)


def apply_instruction(state: ObjectState, ins: Instruction, clock: Clock) -> bool:
    """Apply one instruction at ``clock`` to ``state`` in place.

    Returns:
        Whether anything in ``state`` changed.
    """
    changed = False
    if ins.op == Op.DELETE:
        if state.deleted is None or clock > state.deleted:
            state.deleted = clock
            changed = True
        return changed
    if ins.op == Op.CREATE and (state.created is None or clock > state.created):
        state.created = clock
        changed = True
    clocks = state.clocks
    for name, value in ins.values:
        if clock > clocks.get(name, _ZERO):
            clocks[name] = clock
            state.values[name] = value
            changed = True
    return changed


# -- clock ------------------------------------------------------------------


class HybridClock:
    """A hybrid logical clock: wall-clock microseconds, never going backwards.

    ``tick()`` returns a value greater than every value it returned or
    ``observe()``d before, so a write made after integrating a remote change is
    ordered after it even when this machine's clock is behind.
    """

    __slots__ = ("last", "now")

    def __init__(self, last: int = 0, now: Callable[[], int] | None = None) -> None:
        self.last = last
        self.now = now if now is not None else time.time_ns

    def tick(self) -> int:
        wall: int = self.now() // 1000
        self.last = wall if wall > self.last else self.last + 1
        return self.last

    def observe(self, ts: int) -> None:
        if ts > self.last:
            self.last = ts


VALUE_DEFAULTS: dict[ValueType, Value] = {
    ValueType.INT: 0,
    ValueType.FLOAT: 0.0,
    ValueType.STR: "",
    ValueType.BOOL: False,
    ValueType.BYTES: b"",
    ValueType.DATETIME: _EPOCH,
    ValueType.UUID: uuid.UUID(int=0),
    ValueType.DECIMAL: decimal.Decimal(0),
}

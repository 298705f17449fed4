"""Tests for realmsync_nb.protocol.wire: varints, strings, floats, bounds checks."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realmsync_nb.protocol.wire import DecodeError, Reader, Writer

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1


def _written(fn_name: str, value: object) -> bytes:
    w = Writer()
    getattr(w, fn_name)(value)
    return w.getvalue()


# -- known encodings -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (U64_MAX, b"\xff" * 9 + b"\x01"),
    ],
)
def test_uint_known_encodings(value: int, encoded: bytes) -> None:
    assert _written("uint", value) == encoded
    r = Reader(encoded)
    assert r.uint() == value
    assert r.at_end()


@pytest.mark.parametrize(
    ("value", "zigzag"),
    [(0, 0), (-1, 1), (1, 2), (-2, 3), (2, 4), (I64_MAX, U64_MAX - 1), (I64_MIN, U64_MAX)],
)
def test_sint_is_zigzag(value: int, zigzag: int) -> None:
    assert _written("sint", value) == _written("uint", zigzag)
    assert Reader(_written("uint", zigzag)).sint() == value


def test_f64_is_little_endian_ieee754() -> None:
    assert _written("f64", 1.0) == b"\x00\x00\x00\x00\x00\x00\xf0\x3f"
    assert Reader(b"\x00\x00\x00\x00\x00\x00\xf0\x3f").f64() == 1.0


def test_str_is_length_prefixed_utf8() -> None:
    assert _written("str_", "é") == b"\x02\xc3\xa9"
    assert _written("bytes_", b"") == b"\x00"
    assert _written("bytes_", b"abc") == b"\x03abc"


def test_writer_byte_and_raw() -> None:
    w = Writer()
    w.byte(7)
    w.raw(b"xy")
    assert w.getvalue() == b"\x07xy"


# -- round trips -------------------------------------------------------------------


@given(st.integers(0, U64_MAX))
def test_uint_round_trip(value: int) -> None:
    data = _written("uint", value)
    assert len(data) <= 10
    assert len(data) == max(1, math.ceil(value.bit_length() / 7))
    r = Reader(data)
    assert r.uint() == value
    r.expect_end()


@given(st.integers(I64_MIN, I64_MAX))
def test_sint_round_trip(value: int) -> None:
    r = Reader(_written("sint", value))
    assert r.sint() == value
    r.expect_end()


@given(st.text())
def test_str_round_trip(value: str) -> None:
    r = Reader(_written("str_", value))
    assert r.str_() == value
    r.expect_end()


@given(st.binary())
def test_bytes_round_trip(value: bytes) -> None:
    r = Reader(_written("bytes_", value))
    assert r.bytes_() == value
    r.expect_end()


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_f64_round_trip_is_bit_exact(value: float) -> None:
    data = _written("f64", value)
    assert len(data) == 8
    got = Reader(data).f64()
    assert struct.pack("<d", got) == struct.pack("<d", value)


@given(st.lists(st.one_of(st.integers(0, U64_MAX), st.text(max_size=5)), max_size=20))
def test_mixed_sequence_round_trip(values: list[int | str]) -> None:
    w = Writer()
    for v in values:
        w.uint(v) if isinstance(v, int) else w.str_(v)
    r = Reader(w.getvalue())
    for v in values:
        assert (r.uint() if isinstance(v, int) else r.str_()) == v
    assert r.at_end()
    r.expect_end()


# -- rejections --------------------------------------------------------------------


def test_writer_refuses_negative_uint() -> None:
    with pytest.raises(ValueError, match="-1"):
        Writer().uint(-1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated varint"),
        (b"\x80", "truncated varint"),
        (b"\xff" * 9, "truncated varint"),
        (b"\x80" * 10 + b"\x00", "longer than 10 bytes"),
        (b"\xff" * 9 + b"\x02", "larger than 64 bits"),
        (b"\xff" * 10 + b"\x7f", "longer than 10 bytes"),
    ],
)
def test_bad_varints(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        Reader(data).uint()


def test_varint_error_leaves_position_unchanged() -> None:
    r = Reader(b"\x80")
    with pytest.raises(DecodeError):
        r.uint()
    assert r.pos == 0


def test_truncated_reads() -> None:
    with pytest.raises(DecodeError):
        Reader(b"").byte()
    with pytest.raises(DecodeError):
        Reader(b"\x00" * 7).f64()
    with pytest.raises(DecodeError, match="need 4 bytes, 3 left"):
        Reader(b"\x04abc").bytes_()
    with pytest.raises(DecodeError):
        Reader(b"abc").raw(-1)


def test_invalid_utf8_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        Reader(b"\x01\xff").str_()
    # An encoded surrogate is not valid UTF-8 either.
    with pytest.raises(DecodeError, match="UTF-8"):
        Reader(b"\x03\xed\xa0\x80").str_()


def test_bool_bytes() -> None:
    r = Reader(b"\x00\x01\x02")
    assert r.bool_() is False
    assert r.bool_() is True
    with pytest.raises(DecodeError, match="boolean"):
        r.bool_()


def test_expect_end_reports_trailing_bytes() -> None:
    r = Reader(b"\x01\x02\x03")
    r.byte()
    assert not r.at_end()
    with pytest.raises(DecodeError, match="2 unexpected trailing bytes"):
        r.expect_end()


def test_reader_window_respects_pos_and_end() -> None:
    data = b"\x05\x01\x02\x03\x09"
    r = Reader(data, pos=1, end=3)
    assert r.byte() == 1
    assert r.byte() == 2
    assert r.at_end()
    with pytest.raises(DecodeError):
        r.byte()
    with pytest.raises(DecodeError):
        Reader(data, pos=1, end=3).raw(3)
    # A length prefix pointing past the window is refused even though the buffer is longer.
    with pytest.raises(DecodeError):
        Reader(b"\x03abc", end=3).bytes_()


_READ_OPS = ["uint", "sint", "byte", "bytes_", "str_", "f64", "bool_"]


@given(st.binary(max_size=64), st.lists(st.sampled_from(_READ_OPS), max_size=12))
def test_reader_fails_only_with_decode_error(data: bytes, ops: list[str]) -> None:
    r = Reader(data)
    for op in ops:
        before = r.pos
        try:
            getattr(r, op)()
        except DecodeError:
            return
        assert before < r.pos <= len(data)

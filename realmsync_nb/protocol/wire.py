"""Binary primitives shared by the message and changeset codecs.

Integers are LEB128 varints (signed ones zig-zag encoded first), strings and
byte strings are length-prefixed, floats are IEEE-754 little-endian doubles.
Every read checks bounds and raises :class:`DecodeError`, which callers turn into a
documented protocol error; nothing here raises anything else on bad input.
"""

from __future__ import annotations

import struct

__all__ = ["DecodeError", "Reader", "Writer", "uint_at"]

_F64 = struct.Struct("<d")
MAX_VARINT_BYTES = 10  # 64-bit values need at most 10 groups of 7 bits


class DecodeError(ValueError):
    """Input bytes do not follow the wire format."""


def uint_at(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` (ending before ``end``) and the position after it.

    Raises:
        DecodeError: truncated, longer than MAX_VARINT_BYTES, or over 64 bits.
    """
    result = 0
    shift = 0
    for _ in range(MAX_VARINT_BYTES):
        if pos >= end:
            raise DecodeError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >= 1 << 64:
                raise DecodeError("varint larger than 64 bits")
            return result, pos
        shift += 7
    raise DecodeError(f"varint longer than {MAX_VARINT_BYTES} bytes")


class Writer:
    """Append-only encoder into a bytearray."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def uint(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"unsigned varint cannot hold {value}")
        buf = self.buf
        while value >= 0x80:
            buf.append((value & 0x7F) | 0x80)
            value >>= 7
        buf.append(value)

    def sint(self, value: int) -> None:
        self.uint((value << 1) if value >= 0 else ((-value) << 1) - 1)

    def byte(self, value: int) -> None:
        self.buf.append(value)

    def bytes_(self, value: bytes) -> None:
        self.uint(len(value))
        self.buf += value

    def raw(self, value: bytes | bytearray) -> None:
        self.buf += value

    def str_(self, value: str) -> None:
        self.bytes_(value.encode("utf-8"))

    def f64(self, value: float) -> None:
        self.buf += _F64.pack(value)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class Reader:
    """Bounds-checked decoder over a bytes object."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def at_end(self) -> bool:
        return self.pos >= self.end

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise DecodeError(f"{self.end - self.pos} unexpected trailing bytes")

    def uint(self) -> int:
        data, pos = self.data, self.pos
        if pos < self.end and data[pos] < 0x80:  # one byte: most counts, lengths and indexes
            self.pos = pos + 1
            return data[pos]
        value, self.pos = uint_at(data, pos, self.end)
        return value

    def sint(self) -> int:
        v = self.uint()
        return (v >> 1) if not v & 1 else -((v + 1) >> 1)

    def byte(self) -> int:
        if self.pos >= self.end:
            raise DecodeError("truncated input")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise DecodeError(f"need {n} bytes, {self.end - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def bytes_(self) -> bytes:
        return self.raw(self.uint())

    def str_(self) -> str:
        try:
            return self.bytes_().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid UTF-8 string: {exc.reason}") from None

    def f64(self) -> float:
        value: float = _F64.unpack(self.raw(8))[0]
        return value

    def bool_(self) -> bool:
        b = self.byte()
        if b > 1:
            raise DecodeError(f"invalid boolean byte {b}")
        return b == 1

"""Small text formatters shared by reprs, widgets and plots."""

from __future__ import annotations

import datetime as _dt

__all__ = ["format_bytes", "format_duration", "format_rate", "format_time"]

_UNITS = ("B", "kB", "MB", "GB", "TB")


def format_bytes(n: float | None) -> str:
    """``1234`` → ``"1.2 kB"`` (decimal units, as network tools count)."""
    if n is None:
        return "n/a"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(bytes_per_second: float | None) -> str:
    if bytes_per_second is None:
        return "n/a"
    return f"{format_bytes(bytes_per_second)}/s"


def format_duration(seconds: float) -> str:
    """A span for humans: ``0.0123`` → ``"12.3 ms"``, ``75`` → ``"1 min 15 s"``."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes:.0f} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours:.0f} h {minutes:.0f} min"


def format_time(time: _dt.datetime) -> str:
    """Wall-clock time of day in UTC with milliseconds, as the event tail shows it."""
    if time.tzinfo is not None:
        time = time.astimezone(_dt.UTC)
    return time.strftime("%H:%M:%S.") + f"{time.microsecond // 1000:03d}"

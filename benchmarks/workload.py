"""What every engine writes, and the small tools both client sides share.

A record has six fields and encodes to about 100 bytes: ``id`` (int, primary key),
``a`` and ``b`` (32-character strings), ``c`` (int), ``d`` (float), ``e`` (bool).
Our engine stores it as a Model with those fields; the peer as one Y.Map entry
(key ``str(id)``, value a dict of the other five).
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BULK_PART",
    "CATCH_UP_BATCH",
    "IDLE_WARM",
    "READY_PREFIX",
    "RESULT_PREFIX",
    "emit",
    "peak_rss_mib",
    "percentile",
    "record",
    "record_size",
    "summary",
]

# A client process prints exactly one line starting with RESULT_PREFIX (its JSON
# result) on stdout; the harness ignores everything else there.
RESULT_PREFIX = "RESULT "
READY_PREFIX = "READY "

# Scenario 4: A writes this many records per transaction while B is away, so
# 100k records are 1,000 changesets (one per record would make the writer phase,
# which is not measured, most of the run).
CATCH_UP_BATCH = 100

# Scenario 2's floor (limits.bulk_floor) stores A's records as one changeset per
# this many, as our engine splits a large transaction (FLUSH_OBJECTS).
BULK_PART = 20_000

# Scenario 5a: the server's baseline is taken with this many sessions already
# connected, so what the first connection costs once (code paths, buffers, caches)
# is not counted per session. The client prints a READY line after these, and
# another after all of them.
IDLE_WARM = 10


def record(i: int) -> dict[str, Any]:
    """The fields of record ``i`` (deterministic, so both ends can check contents)."""
    return {
        "id": i,
        "a": f"alpha-{i:012d}-abcdefghijklmn",
        "b": f"bravo-{i:012d}-opqrstuvwxyzab",
        "c": i * 7,
        "d": i * 0.5,
        "e": i % 2 == 0,
    }


def record_size() -> int:
    """Bytes of one record as compact JSON: the size the scenarios call "about 100 bytes"."""
    return len(json.dumps(record(123_456), separators=(",", ":")).encode())


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    # The smallest value with at least q % of them at or below it: rank ceil(q·n/100).
    # (q * n / 100, not q / 100 * n: 0.99 * 500 is 495.00000000000006.)
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered) / 100) - 1))
    return ordered[k]


def summary(values: Sequence[float]) -> dict[str, float]:
    """median, min and max of a list of numbers (each NaN for an empty list)."""
    if not values:
        nan = float("nan")
        return {"median": nan, "min": nan, "max": nan}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def emit(prefix: str, payload: dict[str, Any]) -> None:
    """Print one protocol line to the harness and flush it at once."""
    sys.stdout.write(prefix + json.dumps(payload) + "\n")
    sys.stdout.flush()

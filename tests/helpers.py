"""Shared test helpers: models, the timeout unit, waiting for conditions."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime

from websockets.sync.client import ClientConnection, connect

import realmsync_nb as rs
from realmsync_nb.protocol.messages import SUBPROTOCOL

# Every timeout in the tests is a multiple of UNIT seconds; raise RS_TEST_TIMEOUT_SCALE
# on a slow machine instead of editing numbers (websockets' tests do the same with MS).
UNIT = float(os.environ.get("RS_TEST_TIMEOUT_SCALE", "1")) * 1.0


def T(n: float = 1) -> float:
    return n * UNIT


class Task(rs.Model):
    id: str = rs.primary_key()
    title: str = ""
    done: bool = False
    priority: int = 0
    due: datetime | None = None


class Note(rs.Model):
    id: int = rs.primary_key()
    text: str = ""


def wait_until(cond: Callable[[], bool], timeout: float = 5, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail the test with ``what`` after ``timeout`` units."""
    deadline = time.monotonic() + T(timeout)
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {T(timeout):.1f} s waiting for {what}")


# Reliability and convergence tests run a bounded number of iterations in CI; set
# RS_SOAK=1 for the long soak (minutes to hours), which each test sizes for itself.
SOAK = bool(os.environ.get("RS_SOAK"))


def soak(ci: int, long: int) -> int:
    """``ci`` iterations normally, ``long`` under ``RS_SOAK``."""
    return long if SOAK else ci


def open_raw(server: rs.SyncServer, path: str = "/sync") -> ClientConnection:
    """A raw protocol connection to ``server`` (loopback, no proxy), for bad-input tests."""
    return connect(
        server.url + path,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        proxy=None,
        compression=None,
        open_timeout=T(5),
        close_timeout=T(2),
        max_size=None,
    )

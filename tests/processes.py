"""Real processes for crash tests: start, read, kill -9, restart, inspect their files.

The ``spawn`` fixture (tests/conftest.py) starts Python subprocesses in the repo and
kills and reaps every one at the end of the test; the helpers here read their
output with timeouts, kill them without a goodbye, run the ``realmsync-server`` CLI,
and check what a crash left on disk with plain sqlite3, as any SQLite tool would.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from realmsync_nb.store.realm_file import last_client_version
from tests.helpers import T

REPO = Path(__file__).resolve().parents[1]

Spawn = Callable[..., subprocess.Popen[bytes]]

LISTENING = re.compile(r"realmsync-server listening on (ws://127\.0\.0\.1:(\d+))")


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The next line ``proc`` prints, failing the test after ``timeout`` seconds.

    Reads one byte at a time once a line has started, so nothing after the newline
    is consumed: the next call sees the next line.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line from pid {proc.pid} within {timeout:.0f} s: {buf!r}")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"pid {proc.pid} exited ({proc.wait()}) before a line: {buf!r}")
        buf += chunk
    return buf.decode()


class LineReader:
    """Reads a subprocess's output line by line, in chunks (for chatty processes)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def lines(self, timeout: float) -> list[str]:
        """Every complete line available within ``timeout`` (at least one, unless EOF)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no line from pid {self.proc.pid} within {timeout:.0f} s")
            chunk = os.read(self.fd, 65536)
            self.eof = not chunk
            self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        return [line.decode() for line in done]

    def rest(self, timeout: float) -> list[str]:
        """Every complete line left, once the process has exited (its pipe ends)."""
        out: list[str] = []
        while not self.eof:
            out += self.lines(timeout)
        return out


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no close, no flush, no goodbye; reaped before returning."""
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(T(10)) == -signal.SIGKILL


def start_cli(
    spawn: Spawn, data_dir: Path | str, port: int, log: str, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``realmsync-server`` on ``data_dir`` (port 0 picks one); returns it and its URL."""
    proc = spawn(
        "-m",
        "realmsync_nb.server.cli",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        *extra,
        log=log,
    )
    line = read_line(proc, T(30))
    m = LISTENING.fullmatch(line.strip())
    assert m is not None, line
    return proc, m.group(1)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def integrity(path: str | Path) -> str:
    """``PRAGMA integrity_check`` of a realm or server file ("ok" when sound)."""
    c = sqlite3.connect(path)
    try:
        return str(c.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        c.close()


def server_history(data_dir: str | Path) -> list[tuple[int, int]]:
    """``(origin, client_version)`` of every changeset the server stored, in order."""
    c = sqlite3.connect(os.path.join(data_dir, "server.sqlite"))
    try:
        return c.execute(
            "SELECT origin, client_version FROM _history ORDER BY server_version"
        ).fetchall()
    finally:
        c.close()


def client_id(realm_path: str | Path) -> int:
    """The peer id a realm file uploads as."""
    c = sqlite3.connect(realm_path)
    try:
        return int(c.execute("SELECT value FROM _meta WHERE key = 'client_id'").fetchone()[0])
    finally:
        c.close()


def local_commits(realm_path: str | Path) -> int:
    """How many changesets the realm file ever committed (its last client version)."""
    c = sqlite3.connect(realm_path)
    try:
        return last_client_version(c)
    finally:
        c.close()


def assert_exactly_once(history: list[tuple[int, int]], origin: int, commits: int) -> None:
    """The server holds client versions 1..commits of ``origin``, each once, in order."""
    assert len(set(history)) == len(history), "a changeset was stored twice"
    versions = [cv for o, cv in history if o == origin]
    assert versions == list(range(1, commits + 1)), (
        f"expected client versions 1..{commits} once each, got {len(versions)}: "
        f"missing {sorted(set(range(1, commits + 1)) - set(versions))[:10]}"
    )


def rss_kib(pid: int) -> int:
    """Resident memory (VmRSS) of a live process, in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")

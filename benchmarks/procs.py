"""Processes: a server in its own process, a client process, and their memory.

Every run gets a fresh server process (and data directory), so its peak RSS is
that run's alone and no state leaks from one run into the next. Everything
started here is stopped here, by its own pid, with bounded waits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .workload import READY_PREFIX, RESULT_PREFIX

__all__ = ["ClientProcess", "ServerProcess", "frozen_engine", "rss_mib"]

ROOT = Path(__file__).resolve().parent.parent


_code_dir: str | None = None  # a frozen copy of realmsync_nb/, first on every child's path


@contextlib.contextmanager
def frozen_engine() -> Iterator[str]:
    """Copy realmsync_nb/ and benchmarks/ aside, so every process runs the same code.

    The engine may be edited while a long run goes on; each process started here
    runs in (and imports from) the copy taken at the start instead. Yields a short
    hash of the copied realmsync_nb/.
    """
    global _code_dir
    tmp = tempfile.mkdtemp(prefix="rs-bench-code-")
    try:
        for package in ("realmsync_nb", "benchmarks"):
            shutil.copytree(
                ROOT / package,
                Path(tmp, package),
                ignore=shutil.ignore_patterns("__pycache__", "results"),
            )
        digest = hashlib.sha1()
        for path in sorted(Path(tmp, "realmsync_nb").rglob("*.py")):
            digest.update(str(path.relative_to(tmp)).encode())
            digest.update(path.read_bytes())
        _code_dir = tmp
        yield digest.hexdigest()[:12]
    finally:
        _code_dir = None
        shutil.rmtree(tmp, ignore_errors=True)


def _cwd() -> str:
    # ``python -m`` puts the working directory first on sys.path.
    return _code_dir or str(ROOT)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [_code_dir, str(ROOT), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def rss_mib(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a live process, in MiB."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for key, name in (("VmRSS", "rss_mib"), ("VmHWM", "peak_rss_mib")):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        if m:
            out[name] = round(int(m.group(1)) / 1024, 1)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server did not listen on port {port} within {timeout} s")


def _stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


@dataclass
class ServerProcess:
    """One engine's server on 127.0.0.1, in its own process."""

    engine: str
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    data_dir: tempfile.TemporaryDirectory[str] | None = None
    log: IO[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.data_dir = tempfile.TemporaryDirectory(prefix="rs-bench-srv-")
        self.log = open(os.path.join(self.data_dir.name, "server.log"), "wb")  # noqa: SIM115
        port = free_port()
        if self.engine == "ours":
            cmd = [sys.executable, "-m", "realmsync_nb", "server"]
            cmd += ["--data-dir", self.data_dir.name, "--port", str(port)]
            cmd += ["--log-level", "WARNING"]
            self.url = f"ws://127.0.0.1:{port}"
        else:
            transport = self.engine.removeprefix("peer-")
            cmd = [sys.executable, "-m", "benchmarks.peer_server", transport, "--port", str(port)]
            self.url = f"{'http' if transport == 'hypercorn' else 'ws'}://127.0.0.1:{port}"
        cmd += self.extra_args
        self.proc = subprocess.Popen(
            cmd, cwd=_cwd(), env=_env(), stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            _wait_port(port, self.proc, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def memory(self) -> dict[str, float]:
        return rss_mib(self.proc.pid) if self.proc is not None else {}

    def log_tail(self, chars: int = 2000) -> str:
        if self.data_dir is None:
            return ""
        try:
            return Path(self.data_dir.name, "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.data_dir is not None:
            self.data_dir.cleanup()
            self.data_dir = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClientProcess:
    """``python -m benchmarks.client ...``: one scenario, one RESULT line."""

    def __init__(self, engine: str, scenario: str, url: str, n: int, **options: float) -> None:
        cmd = [sys.executable, "-m", "benchmarks.client", engine, scenario]
        cmd += ["--url", url, "--n", str(n)]
        for key, value in options.items():
            cmd += [f"--{key}", str(value)]
        self.cmd = cmd
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=_cwd(),
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._early_result: str | None = None  # a RESULT seen while waiting for READY
        self._eof = False
        threading.Thread(target=self._read, name="bench-client-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.decode(errors="replace"))
        self._lines.put(None)

    def _line(self, prefix: str, timeout: float) -> dict[str, Any] | None:
        """The next stdout line starting with ``prefix``, parsed; None at EOF or timeout."""
        if prefix == RESULT_PREFIX and self._early_result is not None:
            found: dict[str, Any] = json.loads(self._early_result[len(prefix) :])
            return found
        deadline = time.monotonic() + timeout
        while not self._eof:
            try:
                text = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if text is None:
                self._eof = True
                return None
            if text.startswith(prefix):
                parsed: dict[str, Any] = json.loads(text[len(prefix) :])
                return parsed
            if text.startswith(RESULT_PREFIX):  # it ended (failed) while we waited
                self._early_result = text  # for result()
                return None
        return None

    def ready(self, timeout: float) -> dict[str, Any] | None:
        """Wait for the client's READY line (idle-sessions scenario)."""
        return self._line(READY_PREFIX, timeout)

    def release(self) -> None:
        """Tell a READY client to finish."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def result(self, timeout: float) -> dict[str, Any]:
        """The client's RESULT; an error result if it dies or overruns ``timeout``."""
        parsed = self._line(RESULT_PREFIX, timeout)
        if parsed is None:
            _stop(self.proc, grace=2.0)
            parsed = {"converged": False, "error": f"no result within {timeout:.0f} s"}
        else:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                _stop(self.proc, grace=2.0)
        if "error" in parsed:
            parsed["stderr"] = self.stderr_tail()
        self._stderr.close()
        return parsed

    def stderr_tail(self, chars: int = 1500) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")[-chars:]
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        _stop(self.proc, grace=2.0)

"""Fixtures for fault tests: a fault proxy in front of the test server, an echo target."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

import realmsync_nb as rs
from realmsync_nb.faults import FaultProxy
from tests.conftest import FAST
from tests.helpers import T


@pytest.fixture
def proxy(server: rs.SyncServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of ``server``, seeded so a failing run can be replayed."""
    p = FaultProxy(server.url, seed=4).start()
    yield p
    p.stop()


@pytest.fixture
def app(proxy: FaultProxy) -> Iterator[rs.App]:
    """Overrides the root ``app``: here every app (and ``open_realm``) goes through the proxy."""
    a = rs.App(rs.AppConfiguration(proxy.url, sync_timeouts=FAST))
    yield a
    a.close()


class EchoServer:
    """A threaded TCP echo server on 127.0.0.1: the simplest target to measure a proxy by."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        except OSError:
            pass
        self.sock.close()
        self._accepter.join(T(5))
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
        for t in self._threads:
            t.join(T(5))


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    yield srv
    srv.close()


@pytest.fixture
def echo_proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    p = FaultProxy(echo.address, seed=7).start()
    yield p
    p.stop()

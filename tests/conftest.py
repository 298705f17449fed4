"""Fixtures: a real server on 127.0.0.1, apps, and realms in the test's tmp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import realmsync_nb as rs
from tests.helpers import Note, T, Task
from tests.processes import REPO, Spawn

os.environ.setdefault("MPLBACKEND", "Agg")

FAST = rs.SyncTimeoutOptions(
    connect_timeout=5.0,
    ping_interval=1.0,
    pong_timeout=2.0,
    backoff_initial=0.1,
    backoff_max=1.0,
)


@pytest.fixture
def server_config() -> dict[str, Any]:
    """Extra ``ServerConfig`` fields for ``server``; a test module overrides this fixture
    (for example to return ``{"enable_test_commands": True}``)."""
    return {}


@pytest.fixture
def server(tmp_path: Path, server_config: dict[str, Any]) -> Iterator[rs.SyncServer]:
    srv = rs.SyncServer(data_dir=str(tmp_path / "server"), scrypt_n=2**10, **server_config)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def app(server: rs.SyncServer) -> Iterator[rs.App]:
    a = rs.App(rs.AppConfiguration(server.url, sync_timeouts=FAST))
    yield a
    a.close()


OpenRealm = Callable[..., rs.Realm]


@pytest.fixture
def open_realm(app: rs.App, tmp_path: Path) -> Iterator[OpenRealm]:
    """``open_realm("A")`` opens a realm for a fresh anonymous user (or ``user=``)."""
    opened: list[rs.Realm] = []

    def open_(
        name: str = "A",
        *,
        user: rs.User | None = None,
        models: tuple[type[rs.Model], ...] = (Task, Note),
        target_app: rs.App | None = None,
    ) -> rs.Realm:
        a = target_app or app
        if user is None:
            user = a.log_in(rs.Credentials.anonymous()).result(10)
        config = rs.Configuration.flexible_sync(
            user, list(models), path=str(tmp_path / f"{name}.realm"), name=name
        )
        realm = rs.Realm(config)
        opened.append(realm)
        return realm

    yield open_
    for r in opened:
        r.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(*python_args, log=name)`` starts a Python subprocess in the repo (stdout
    piped, stderr to ``tmp_path / log``); every one is killed and reaped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn_(*args: str, log: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=err
            )
        procs.append(proc)
        return proc

    yield spawn_
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(T(10))
        assert proc.stdout is not None
        proc.stdout.close()

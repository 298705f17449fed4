"""Fixtures: a real server on 127.0.0.1, apps, and realms in the test's tmp dir."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import realmsync_nb as rs
from tests.helpers import Note, Task

os.environ.setdefault("MPLBACKEND", "Agg")

FAST = rs.SyncTimeoutOptions(
    connect_timeout=5.0,
    ping_interval=1.0,
    pong_timeout=2.0,
    backoff_initial=0.1,
    backoff_max=1.0,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[rs.SyncServer]:
    srv = rs.SyncServer(data_dir=str(tmp_path / "server"), scrypt_n=2**10).start()
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

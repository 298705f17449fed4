"""The public names: everything in __all__ exists, and API.md's names are all public."""

from __future__ import annotations

import realmsync_nb as rs

# The names ../shared/API.md fixes (rs.<name>).
API_NAMES = {
    "App", "AppConfiguration", "AuthError", "Configuration", "ConnectionState",
    "ConnectionStateChange", "Credentials", "Model", "ProgressDirection", "ProgressMode",
    "Realm", "RealmError", "RealmSyncError", "Session", "SessionPausedError", "SessionState",
    "Stream", "SyncEvent", "SyncFuture", "SyncProgress", "SyncServer", "primary_key",
}  # fmt: skip


def test_every_exported_name_exists() -> None:
    missing = [name for name in rs.__all__ if not hasattr(rs, name)]
    assert not missing


def test_the_api_contract_names_are_exported() -> None:
    assert set(rs.__all__) >= API_NAMES, API_NAMES - set(rs.__all__)


def test_all_is_unique() -> None:
    assert len(set(rs.__all__)) == len(rs.__all__)


def test_every_error_derives_from_the_root() -> None:
    for name in rs.__all__:
        obj = getattr(rs, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, rs.RealmSyncError), name


def test_session_members_of_the_contract_exist() -> None:
    for member in (
        "state", "connection_state", "pause", "resume", "wait_for_upload",
        "wait_for_download", "get_progress_stream", "connection_state_changes", "user",
        "realm_path", "events",
    ):  # fmt: skip
        assert hasattr(rs.Session, member) or member == "user", member  # user: per instance

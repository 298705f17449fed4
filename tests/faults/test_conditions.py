"""NetworkConditions (faults/conditions.py): validation, changes, descriptions, jitter draws."""

from __future__ import annotations

import itertools

import pytest

from realmsync_nb.faults import NetworkConditions, jitter_delays


def test_default_is_a_perfect_network() -> None:
    c = NetworkConditions()
    assert c.latency("up") == c.latency("down") == 0
    assert c.bandwidth("up") is None and c.bandwidth("down") is None
    assert not c.blackhole and not c.offline
    assert c.describe() == "normal"


def test_with_changes_sets_one_direction_or_both() -> None:
    c = NetworkConditions().with_changes(latency=0.2, bandwidth_down=10_000)
    assert (c.latency_up, c.latency_down) == (0.2, 0.2)
    assert (c.bandwidth_up, c.bandwidth_down) == (None, 10_000)
    c2 = c.with_changes(jitter_up=0.05, blackhole=True)
    assert (c2.jitter_up, c2.jitter_down, c2.blackhole) == (0.05, 0.0, True)
    assert c.blackhole is False  # frozen: changes make a copy


@pytest.mark.parametrize(
    "changes",
    [
        {"latency_up": -0.1},
        {"jitter": float("nan")},
        {"bandwidth_down": 0},
        {"slice_writes": 0},
        {"close_after_bytes": 1.5},
    ],
)
def test_out_of_range_values_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes)).split("_")[0]):
        NetworkConditions().with_changes(**changes)


def test_unknown_names_are_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(TypeError, match="latency_up"):
        NetworkConditions().with_changes(latncy=0.1)


def test_describe_and_diff_say_what_changed() -> None:
    old = NetworkConditions()
    new = old.with_changes(latency_up=0.2, bandwidth_down=10_000, blackhole=True)
    assert new.describe() == "latency up 200 ms; bandwidth down 10 kB/s; blackhole on"
    assert new.diff(old) == (
        "latency up 0 ms → 200 ms; bandwidth down unlimited → 10 kB/s; blackhole off → on"
    )
    assert old.diff(new).endswith("blackhole on → off")
    assert new.diff(new) == "unchanged"


def test_jitter_draws_replay_per_seed_connection_and_direction() -> None:
    def draws(seed: int | None, conn: int, direction: str) -> list[float]:
        return list(itertools.islice(jitter_delays(seed, conn, direction), 20))  # type: ignore[arg-type]

    assert draws(1, 0, "up") == draws(1, 0, "up")
    assert all(0 <= x < 1 for x in draws(1, 0, "up"))
    assert draws(1, 0, "up") != draws(2, 0, "up")
    assert draws(1, 0, "up") != draws(1, 1, "up")
    assert draws(1, 0, "up") != draws(1, 0, "down")
    assert draws(None, 0, "up") != draws(None, 0, "up")  # unseeded: fresh each time

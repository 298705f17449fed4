"""NetworkConditionsWidget (notebook/network.py): controls and the proxy stay in step.

No kernel: moving a control is setting its value, as the front end's comm message does.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from realmsync_nb.faults import FaultProxy, NetworkConditions
from realmsync_nb.notebook import NetworkConditionsWidget
from tests.helpers import T, wait_until


class Recording:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def record_condition(self, message: str) -> None:
        self.messages.append(message)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    target = socket.create_server(("127.0.0.1", 0))  # accepts into its backlog; enough here
    p = FaultProxy(target.getsockname()[:2]).start()
    yield p
    p.stop()
    target.close()


@pytest.fixture
def panel(proxy: FaultProxy) -> Iterator[NetworkConditionsWidget]:
    w = NetworkConditionsWidget(proxy)
    yield w
    w.close()


def test_controls_write_the_proxy_live(proxy: FaultProxy, panel: NetworkConditionsWidget) -> None:
    watcher = Recording()
    proxy.watch(watcher)
    panel.latency["up"].value = 200  # "same both ways" is ticked: down follows
    assert panel.latency["down"].value == 200
    assert (proxy.conditions.latency_up, proxy.conditions.latency_down) == (0.2, 0.2)
    panel.same_both_ways.value = False
    panel.jitter["down"].value = 50
    panel.bandwidth["down"].value = 10_000
    assert proxy.conditions == NetworkConditions(
        latency_up=0.2, latency_down=0.2, jitter_down=0.05, bandwidth_down=10_000
    )
    assert panel.jitter["up"].value == 0 and panel.bandwidth["up"].value == 0
    panel.blackhole.value = True
    assert proxy.conditions.blackhole
    # Each move is one change of conditions, recorded in watched sessions' events.
    assert watcher.messages[0] == "latency up 0 ms → 200 ms; latency down 0 ms → 200 ms"
    assert watcher.messages[-1] == "blackhole off → on"
    assert len(watcher.messages) == 4
    assert "blackhole on" in panel.status.value


def test_changes_from_code_move_the_controls(
    proxy: FaultProxy, panel: NetworkConditionsWidget
) -> None:
    watcher = Recording()
    proxy.watch(watcher)
    proxy.update(latency_down=0.35, bandwidth_up=12_345, blackhole=True)
    assert panel.latency["down"].value == 350
    assert panel.latency["up"].value == 0  # moved to match, not mirrored
    assert panel.bandwidth["up"].value == 12_345  # a stop of its own
    assert panel.blackhole.value is True
    assert proxy.conditions.latency_up == 0  # and nothing was written back
    assert len(watcher.messages) == 1
    proxy.reset()
    assert panel.bandwidth["up"].value == 0 and panel.blackhole.value is False


def test_offline_refuses_and_cuts_and_the_button_cuts(
    proxy: FaultProxy, panel: NetworkConditionsWidget
) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=T(5)):
        wait_until(lambda: proxy.stats.open == 1, what="the connection")
        panel.cut_button.click()
        wait_until(lambda: proxy.stats.open == 0, what="the cut")
    assert "cut 1 connection" in panel.status.value
    with socket.create_connection(("127.0.0.1", port), timeout=T(5)):
        wait_until(lambda: proxy.stats.open == 1, what="the connection")
        panel.offline.value = True
        assert proxy.conditions.offline
        wait_until(lambda: proxy.stats.open == 0, what="offline to cut it")
    panel.offline.value = False
    assert not proxy.conditions.offline


def test_close_stops_following_and_text_front_ends_get_a_summary(
    proxy: FaultProxy, panel: NetworkConditionsWidget
) -> None:
    bundle = panel._repr_mimebundle_()
    assert bundle["text/plain"] == "Network conditions: normal"
    assert "application/vnd.jupyter.widget-view+json" in bundle
    panel.close()
    panel.close()  # idempotent
    proxy.update(latency=0.1)  # no error from a closed panel
    assert panel.latency["up"].value == 0

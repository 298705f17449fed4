"""Network conditions and faults: a loopback proxy with latency, bandwidth caps and drops.

Put a :class:`FaultProxy` between an app and its server and make the network bad on
purpose, live, while a session syncs::

    import realmsync_nb as rs
    from realmsync_nb.faults import FaultProxy

    server = rs.SyncServer().start()
    proxy = FaultProxy(server.url).start()
    app = rs.App(proxy.url)                 # auth and sync both go through the proxy
    ...
    proxy.watch(realm.sync_session)         # every change becomes a CONDITIONS event
    proxy.update(latency=0.2)               # 200 ms each way
    proxy.update(bandwidth_down=10_000)     # 10 kB/s to the client
    proxy.update(blackhole=True)            # connections stay open, nothing passes
    proxy.reset()                           # a perfect network again
    proxy.cut()                             # reset every open connection now
    proxy.stop()

``realmsync_nb.notebook.NetworkConditionsWidget(proxy)`` steers the same from sliders.
"""

from __future__ import annotations

from .conditions import Direction, NetworkConditions, jitter_delays
from .proxy import ConditionsWatcher, FaultProxy, ProxyStats

__all__ = [
    "ConditionsWatcher",
    "Direction",
    "FaultProxy",
    "NetworkConditions",
    "ProxyStats",
    "jitter_delays",
]

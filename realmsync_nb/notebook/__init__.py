"""The notebook layer: live widgets, event logs as DataFrames, plots.

Built only on the public Session API and ``session.events`` (see
``realmsync_nb.observe``)::

    from realmsync_nb.notebook import Dashboard, EventLog, plot_progress

    log = EventLog([session_a, session_b])
    Dashboard([session_a, session_b])        # last expression of a cell: shows the panels
    ...
    plot_progress(log)
    log.to_dataframe()
"""

from __future__ import annotations

from realmsync_nb.notebook.asyncio_helpers import (
    enable_nested_asyncio,
    nested_asyncio_enabled,
    run,
)
from realmsync_nb.notebook.eventlog import COLUMN_DTYPES, EventLog, read_csv
from realmsync_nb.notebook.network import NetworkConditionsWidget
from realmsync_nb.notebook.plots import (
    plot_ack_latency,
    plot_connection_timeline,
    plot_progress,
    plot_throughput,
)
from realmsync_nb.notebook.throttle import Throttle
from realmsync_nb.notebook.widgets import (
    Dashboard,
    SessionWidget,
    session_mimebundle,
    session_summary,
    widget_for,
)

__all__ = [
    "COLUMN_DTYPES",
    "Dashboard",
    "EventLog",
    "NetworkConditionsWidget",
    "SessionWidget",
    "Throttle",
    "enable_nested_asyncio",
    "nested_asyncio_enabled",
    "plot_ack_latency",
    "plot_connection_timeline",
    "plot_progress",
    "plot_throughput",
    "read_csv",
    "run",
    "session_mimebundle",
    "session_summary",
    "widget_for",
]

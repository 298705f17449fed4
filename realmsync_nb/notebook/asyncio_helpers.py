"""Running a coroutine to completion from inside a notebook's running event loop.

realmsync_nb itself never needs this: waits return :class:`~realmsync_nb.SyncFuture`,
which a cell can ``await`` or block on with ``.result()``. It is for other code that
calls ``asyncio.run()`` or ``loop.run_until_complete()`` while IPython's loop is
already running, which plain asyncio refuses ("asyncio.run() cannot be called from a
running event loop").

The fix is re-entrant loops, and we use the maintained fork ``nest-asyncio2``, not
``nest-asyncio``: nest-asyncio 1.6.0 is archived and, with ipykernel 7, breaks
JupyterLab's "Run All" (after the first ``asyncio.run`` every later cell stays
queued forever; seen with ipykernel 7.4.0 on Python 3.11 to 3.13). Patching asyncio
changes it for the whole process, so it is an explicit opt-in here and never happens
on import.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["enable_nested_asyncio", "nested_asyncio_enabled", "run"]

T = TypeVar("T")

_enabled = False
_lock = threading.Lock()


def enable_nested_asyncio() -> None:
    """Let ``asyncio.run`` and ``run_until_complete`` work inside a running loop.

    Applies ``nest_asyncio2`` (to the running loop, if any, and to asyncio); calling
    it again does nothing. It patches asyncio process-wide, which is why it is only
    done when asked.

    Raises:
        ImportError: nest-asyncio2 is not installed.
    """
    global _enabled
    with _lock:
        if _enabled:
            return
        try:
            import nest_asyncio2
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ImportError(
                "enable_nested_asyncio needs nest-asyncio2: `pip install nest-asyncio2`"
            ) from exc
        nest_asyncio2.apply()
        _enabled = True


def nested_asyncio_enabled() -> bool:
    """Whether :func:`enable_nested_asyncio` has been applied in this process."""
    return _enabled


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result, in a script or a notebook cell.

    With no running loop this is ``asyncio.run``. Inside a running loop (a notebook
    cell) it needs :func:`enable_nested_asyncio` first; without it this raises
    instead of patching asyncio behind the caller's back.

    Raises:
        RuntimeError: called from a running loop without enable_nested_asyncio().
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    if not _enabled:
        coro.close()
        raise RuntimeError(
            "run() was called inside a running event loop (a notebook cell?). Use "
            "`await coro` there, or call realmsync_nb.notebook.enable_nested_asyncio() once "
            "to allow nested loops"
        )
    return loop.run_until_complete(coro)

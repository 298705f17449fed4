from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

import realmsync_nb.notebook as nb
from realmsync_nb.notebook import asyncio_helpers
from tests.helpers import T


async def answer() -> int:
    await asyncio.sleep(0)
    return 42


def test_importing_the_notebook_layer_does_not_patch_asyncio() -> None:
    code = textwrap.dedent(
        """
        import asyncio
        run = asyncio.run
        import realmsync_nb.notebook as nb
        assert asyncio.run is run
        assert not nb.nested_asyncio_enabled()
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=T(60), check=True
    )
    assert out.stdout.strip() == "ok"


def test_run_outside_a_loop() -> None:
    assert nb.run(answer()) == 42


def test_run_inside_a_loop_needs_the_opt_in() -> None:
    if nb.nested_asyncio_enabled():
        pytest.skip("nested asyncio was enabled in this process")

    async def cell() -> None:
        coro = answer()
        with pytest.raises(RuntimeError, match="enable_nested_asyncio"):
            nb.run(coro)

    asyncio.run(cell())


def test_enable_nested_asyncio_lets_run_work_inside_a_loop() -> None:
    # In a child process: the patch is process-wide and must not leak into other tests.
    code = textwrap.dedent(
        """
        import asyncio
        import realmsync_nb.notebook as nb

        async def answer():
            await asyncio.sleep(0)
            return 42

        async def cell():
            return nb.run(answer())

        nb.enable_nested_asyncio()
        nb.enable_nested_asyncio()  # idempotent
        assert nb.nested_asyncio_enabled()
        print(asyncio.run(cell()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=T(60),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_docstring_explains_the_fork() -> None:
    doc = asyncio_helpers.__doc__ or ""
    assert "nest-asyncio2" in doc and "archived" in doc and "Run All" in doc

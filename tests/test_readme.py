"""The README's example runs as written (in a subprocess, in a scratch directory)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import T

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The API in one example", 1)[-1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README lost its Python example"
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=T(60),
    )
    assert result.returncode == 0, result.stderr
    assert "paused disconnected" in result.stdout
    assert "1.0" in result.stdout  # the progress stream's initial value, delivered at once
    assert "connecting -> connected" in result.stdout

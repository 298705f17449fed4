"""The README's commands: the headless demo, the JupyterLab launcher, the server CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers import T

ROOT = Path(__file__).resolve().parent.parent


def test_demo_prints_events_and_converges(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "realmsync_nb", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=T(60),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "connection: connected → disconnected" in out  # the pause
    assert "connection: connecting → connected" in out  # the resume
    assert "upload acked" in out and "download:" in out
    assert "all replicas identical: True" in out
    # The conflict resolved field by field: the phone's later title and its done
    # flag, and the laptop's priority.
    assert out.count("'title': 'buy milk (2 l)', 'done': True, 'priority': 3") == 3


def test_unknown_command_is_refused_with_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "realmsync_nb", "nonsense"],
        capture_output=True,
        text=True,
        timeout=T(30),
    )
    assert result.returncode == 2
    assert "unknown command" in result.stderr


def test_lab_serves_the_quickstart_on_loopback(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "t0ken"
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "realmsync_nb",
            "lab",
            "--no-browser",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={ROOT}",
        ],
        stdout=log,
        stderr=log,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + T(60)
        url = f"http://127.0.0.1:{port}/api/contents/notebooks/01-quickstart.ipynb?content=0"
        while True:
            try:
                req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(req, timeout=T(5)) as resp:
                    model = json.loads(resp.read())
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "JupyterLab did not come up"
                time.sleep(0.3)
        assert model["type"] == "notebook"
    finally:
        proc.terminate()
        proc.wait(T(20))
        log.close()

"""The quickstart in a real browser: JupyterLab on 127.0.0.1, headless Chromium.

Runs the quickstart notebook (all but its teardown cell) in a real kernel, then
checks what a person sees: the progress bars render and move, and clicking a
session's pause toggle pauses the real session in the kernel and the badge follows.
Saves a screenshot (to docs/images/ when RS_SAVE_SCREENSHOT=1).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import T

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip("playwright.sync_api")
jupyter_client = pytest.importorskip("jupyter_client")

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium")
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Lab:
    def __init__(self, root: Path, port: int, token: str, runtime: Path) -> None:
        self.root, self.port, self.token, self.runtime = root, port, token, runtime

    def api(self, path: str) -> object:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=T(5)) as resp:
            return json.loads(resp.read())

    def kernel_client(self) -> jupyter_client.BlockingKernelClient:
        sessions = self.api("/api/sessions")
        assert isinstance(sessions, list) and sessions, "no kernel session is running"
        kid = sessions[0]["kernel"]["id"]
        client = jupyter_client.BlockingKernelClient(
            connection_file=str(self.runtime / f"kernel-{kid}.json")
        )
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=T(30))
        return client


def run_in_kernel(client: jupyter_client.BlockingKernelClient, code: str) -> str:
    """Execute ``code`` in the notebook's own kernel; return what it printed."""
    out: list[str] = []

    def hook(msg: dict[str, object]) -> None:
        content = msg["content"]
        assert isinstance(content, dict)
        if msg["msg_type"] == "stream":
            out.append(str(content["text"]))
        elif msg["msg_type"] == "error":
            out.append("ERROR " + str(content.get("evalue")))

    client.execute_interactive(code, output_hook=hook, timeout=T(30))
    return "".join(out).strip()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    runtime = tmp_path / "runtime"
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ, JUPYTER_RUNTIME_DIR=str(runtime), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg")
    )
    env["JUPYTERLAB_SETTINGS_DIR"] = str(tmp_path / "lab-settings")
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    lab = Lab(root, port, token, runtime)
    try:
        deadline = time.monotonic() + T(60)
        while True:
            try:
                lab.api("/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.2)
        yield lab
    finally:
        proc.terminate()
        try:
            proc.wait(T(20))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# Records every width a progress bar takes, from before the cells run.
OBSERVE_BARS = """
() => {
  window.__barWidths = [];
  const seen = (el) => {
    const w = el.style.width || el.style.flexBasis || '';
    if (w) window.__barWidths.push(w);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      const t = r.target;
      if (t.nodeType === 1 && t.classList.contains('progress-bar')) seen(t);
      if (r.type === 'childList') {
        for (const n of r.addedNodes) {
          if (n.nodeType === 1) n.querySelectorAll?.('.progress-bar').forEach(seen);
        }
      }
    }
  }).observe(document.body, {subtree: true, attributes: true, childList: true,
                             attributeFilter: ['style']});
}
"""


def test_quickstart_widgets_live_in_jupyterlab(lab: Lab, tmp_path: Path) -> None:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{lab.port}/lab/tree/01-quickstart.ipynb?token={lab.token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=T(60) * 1000)
            page.wait_for_function(
                "() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session"
                "?.kernel?.connectionStatus === 'connected'",
                timeout=T(60) * 1000,
            )
            page.evaluate(OBSERVE_BARS)
            # Run everything above the teardown cell (the last one), so the sessions stay
            # alive for the clicks below.
            page.evaluate(
                """() => {
                  const nb = window.jupyterapp.shell.currentWidget;
                  nb.content.activeCellIndex = nb.content.widgets.length - 1;
                  return window.jupyterapp.commands.execute('notebook:run-all-above');
                }"""
            )
            page.wait_for_selector(".widget-toggle-button", timeout=T(60) * 1000)
            page.wait_for_function(
                "() => document.querySelectorAll('.jp-Cell-outputArea').length > 0 && "
                "[...document.querySelectorAll('.jp-InputArea-prompt')]"
                ".every(p => !p.textContent.includes('*'))",
                timeout=T(60) * 1000,
            )
            client = lab.kernel_client()
            try:
                count = run_in_kernel(client, "print(len(laptop.all(Task)))")
                assert count == "500", f"the quickstart's write did not sync: {count}"

                # Make upload work the bars must show: while paused, new commits are
                # outstanding (the phone's upload bar drops); after resume it fills.
                page.evaluate("() => { window.__barWidths = []; }")
                run_in_kernel(
                    client,
                    "phone.sync_session.pause()\n"
                    "with phone.write():\n"
                    "    for i in range(200):\n"
                    "        phone.add(Task(id=f'more-{i}', title='x' * 50))",
                )
                page.wait_for_function(
                    "() => window.__barWidths.some(w => w !== '100%')", timeout=T(10) * 1000
                )
                run_in_kernel(
                    client,
                    "phone.sync_session.resume()\n"
                    "phone.sync_session.wait_for_upload().result(30)\n"
                    "laptop.sync_session.wait_for_download().result(30)",
                )
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.progress-bar')]"
                    ".every(b => b.style.width === '100%')",
                    timeout=T(10) * 1000,
                )
                widths = page.evaluate("() => window.__barWidths")
                assert widths and widths[-1] == "100%", f"bars did not end complete: {widths}"
                assert any(w != "100%" for w in widths), f"progress bars never moved: {widths}"
                assert run_in_kernel(client, "print(len(laptop.all(Task)))") == "700"

                toggles = page.locator(".widget-toggle-button")
                assert toggles.count() >= 2, "one pause toggle per session was expected"
                before = run_in_kernel(client, "print(phone.sync_session.state)")
                assert before == "active"
                toggles.first.click()
                deadline = time.monotonic() + T(10)
                state = before
                while time.monotonic() < deadline and state != "paused":
                    state = run_in_kernel(client, "print(phone.sync_session.state)")
                assert state == "paused", "clicking the toggle did not pause the real session"
                other = run_in_kernel(client, "print(laptop.sync_session.state)")
                assert other == "active", "pausing one device's session touched the other"
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.widget-html')]"
                    ".some(e => e.textContent.includes('paused'))",
                    timeout=T(10) * 1000,
                )

                run_in_kernel(client, "phone.sync_session.resume()")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.widget-toggle-button')]"
                    ".every(b => !b.classList.contains('mod-active'))",
                    timeout=T(10) * 1000,
                )
                no_news = page.locator(".jp-Notification-Toast button", has_text="No")
                if no_news.count():
                    no_news.first.click()  # JupyterLab's "notify about news?" toast
                shot = tmp_path / "quickstart.png"
                page.screenshot(path=str(shot), full_page=False)
                assert shot.stat().st_size > 10_000
                if os.environ.get("RS_SAVE_SCREENSHOT"):
                    target = ROOT / "docs" / "images" / "jupyterlab-quickstart.png"
                    target.parent.mkdir(exist_ok=True)
                    shutil.copy(shot, target)
                run_in_kernel(client, "app.close(); server.stop()")
            finally:
                client.stop_channels()
        finally:
            browser.close()

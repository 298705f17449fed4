"""The notebooks run in a fresh virtual environment made from binder/requirements.txt.

This is what Binder (repo2docker) builds; if a notebook needs something the file
does not list, this test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.helpers import T

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
# An install plus every notebook: more than the suite's 120 s per test, and bounded
# by the subprocess timeouts below instead.
@pytest.mark.timeout(T(1800))
def test_notebooks_run_in_a_fresh_binder_environment(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt", "nbmake"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=T(900),
        env=clean_env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # Copies, run from a directory of their own: the project's pytest configuration
    # (and its plugins) must not leak into the Binder environment.
    work = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", work)
    (work / "pytest.ini").write_text("[pytest]\n")
    notebooks = sorted(p.name for p in work.glob("*.ipynb"))
    assert len(notebooks) >= 5
    run = subprocess.run(
        [str(python), "-m", "pytest", "--nbmake", "-p", "no:cacheprovider", "-q", *notebooks],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=T(900),
        env=clean_env,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"{len(notebooks)} passed" in run.stdout
    assert sys.executable != str(python)

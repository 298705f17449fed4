"""``python -m realmsync_nb lab | demo | server``.

``lab`` opens the quickstart notebook in JupyterLab (on 127.0.0.1), ``demo`` runs the
headless tour in a terminal, ``server`` runs a standalone sync server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

USAGE = "usage: python -m realmsync_nb lab | demo | server --data-dir DIR [--port N]"


def lab(extra: list[str]) -> int:
    """Start JupyterLab on the quickstart notebook of this checkout."""
    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "01-quickstart.ipynb"
    if not notebook.exists():
        print(f"{notebook} is missing: `lab` runs from a source checkout", file=sys.stderr)
        return 2
    args = [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")  # containers and sandboxes often run as root
    args += [*extra, str(notebook)]
    os.execv(sys.executable, args)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "lab":
        return lab(args[1:])
    if args[0] == "demo":
        from .demo import main as demo

        return demo()
    if args[0] == "server":
        from .server.cli import main as serve

        return serve(args[1:])
    print(f"unknown command {args[0]!r}; try: python -m realmsync_nb demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

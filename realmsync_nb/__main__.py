"""``python -m realmsync_nb demo`` runs the headless tour; ``server`` runs a server."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m realmsync_nb demo | server --data-dir DIR [--port N]")
        return 0 if args else 2
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

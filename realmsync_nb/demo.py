"""A short headless tour: ``python -m realmsync_nb demo``.

An embedded server, two devices, a write that crosses, a pause and resume, and a
conflict that every replica resolves the same way. Prints the session events and
the converged state.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import realmsync_nb as rs
from realmsync_nb.observe import SyncEvent


class Task(rs.Model):
    id: str = rs.primary_key()
    title: str = ""
    done: bool = False
    priority: int = 0


def _print_event(e: SyncEvent) -> None:
    if e.kind == rs.EventKind.PROGRESS and e.estimate not in (0.0, 1.0):
        return  # keep the printout short: only start and end of progress
    print(f"  {e.time:%H:%M:%S.%f}"[:-3] + f"  {e.session:<8} {e.describe()}")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="realmsync-demo-"))
    print(f"realmsync_nb {rs.__version__} demo (files in {workdir})\n")
    with rs.SyncServer(data_dir=str(workdir / "server")) as server:
        print(f"embedded sync server at {server.url}")
        app = rs.App(server.url)
        try:
            return _tour(app, server, workdir)
        finally:
            app.close()


def _tour(app: rs.App, server: rs.SyncServer, workdir: Path) -> int:
    alice = app.log_in(rs.Credentials.anonymous()).result(10)
    bob = app.log_in(rs.Credentials.anonymous()).result(10)
    phone = rs.Realm(
        rs.Configuration.flexible_sync(
            alice, [Task], path=str(workdir / "phone.realm"), name="phone"
        )
    )
    laptop = rs.Realm(
        rs.Configuration.flexible_sync(
            bob, [Task], path=str(workdir / "laptop.realm"), name="laptop"
        )
    )
    subs = [r.sync_session.events.listen(_print_event) for r in (phone, laptop)]

    print("\n1. the phone writes; the laptop waits for it")
    with phone.write():
        phone.add(Task(id="milk", title="buy milk", priority=1))
    phone.sync_session.wait_for_upload().result(10)
    laptop.sync_session.wait_for_download().result(10)
    print(f"   laptop sees: {laptop.find(Task, 'milk')}")

    print("\n2. the laptop pauses; both edit the same task while apart")
    laptop.sync_session.pause()
    print(f"   laptop session: {laptop.sync_session.state}, {laptop.sync_session.connection_state}")
    with laptop.write():
        t = laptop.find(Task, "milk")
        assert t is not None
        t.title = "buy oat milk"  # same field as the phone: the later write wins
        t.priority = 3  # a field only the laptop changes: kept
    with phone.write():
        t = phone.find(Task, "milk")
        assert t is not None
        t.title = "buy milk (2 l)"
        t.done = True  # a field only the phone changes: kept
    phone.sync_session.wait_for_upload().result(10)

    print("\n3. the laptop resumes; both converge")
    laptop.sync_session.resume()
    for r in (laptop, phone, laptop):
        r.sync_session.wait_for_upload().result(10)
        r.sync_session.wait_for_download().result(10)
    for sub in subs:
        sub.cancel()

    states = {"phone": phone.snapshot(), "laptop": laptop.snapshot(), "server": server.snapshot()}
    print("\nconverged state:")
    for name, snap in states.items():
        for pk, row in snap.get("Task", {}).items():
            print(f"  {name:<7} Task {pk}: {row}")
    same = states["phone"] == states["laptop"] == states["server"]
    print(f"\nall replicas identical: {same}")
    phone.close()
    laptop.close()
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

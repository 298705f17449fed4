"""A client process that commits in a loop until it is killed (tests/reliability).

``python -m tests.reliability.writer_process URL PATH EMAIL PASSWORD SEED`` opens the
realm at PATH as that user and commits forever, as writer 0 of
:mod:`tests.reliability.workload`, continuing the file's numbering. After each commit
returns it prints ``committed N`` and flushes, so the test knows which commits the
process saw succeed before it killed it.
"""

from __future__ import annotations

import random
import sys

import realmsync_nb as rs
from tests.helpers import Note, Task
from tests.processes import local_commits
from tests.reliability.workload import commit_one


def main(url: str, path: str, email: str, password: str, seed: str) -> None:
    timeouts = rs.SyncTimeoutOptions(backoff_initial=0.1, backoff_max=1.0)
    app = rs.App(rs.AppConfiguration(url, sync_timeouts=timeouts, upload_batch_bytes=2000))
    user = app.log_in(rs.Credentials.email_password(email, password)).result(30)
    realm = rs.Realm(rs.Configuration.flexible_sync(user, [Task, Note], path=path))
    n = local_commits(path)
    rng = random.Random(f"{seed}/{n}")
    print(f"opened {n}", flush=True)
    while True:
        n += 1
        commit_one(realm, 0, n, rng)
        print(f"committed {n}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Protocol fuzzing with Hypothesis against a real server on a real socket.

Random frames, mutated encodings of every message type, and near-valid UPLOADs
(right tables, wrong types, foreign origins, broken bytes) are sent to ``/sync``,
before a BIND and after one (tests/reliability/protocol_fuzz.py has the inputs and
the oracle). The server never crashes or hangs: it answers every case, and two
real sessions on the same server keep syncing throughout without losing their
connection. It never stores anything from a frame it rejects, and never accepts a
malformed one. CI runs a bounded number of cases; ``RS_SOAK=1`` runs 100,000.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

import realmsync_nb as rs
from realmsync_nb.protocol.changeset import Changeset, Instruction, Op
from tests.conftest import OpenRealm
from tests.helpers import SOAK, soak
from tests.reliability.protocol_fuzz import CASES, FUZZ_CLIENT_ID, FrameSpec, Target
from tests.server.test_bad_input import Witness

if SOAK:
    pytestmark = pytest.mark.timeout(0)

_soak = os.environ.get("RS_SOAK", "")
# RS_SOAK=1: 100,000 cases; RS_SOAK=N (N > 1): N cases.
CASES_TO_TRY = int(_soak) if _soak.isdigit() and int(_soak) > 1 else soak(400, 100_000)


def test_fuzzed_frames_never_crash_the_server_nor_persist_anything(
    server: rs.SyncServer, open_realm: OpenRealm
) -> None:
    witness = Witness(open_realm("A"), open_realm("B"))
    target = Target.prepare(server)
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=CASES_TO_TRY,
        deadline=None,
        database=None,  # each run explores afresh; a failure prints its reproducer
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(case=CASES)
    def fuzz(case: tuple[bool, FrameSpec]) -> None:
        after_bind, frame = case
        accepted = target.run_case(after_bind, frame)
        outcomes[
            f"{'after' if after_bind else 'before'} bind, {'accepted' if accepted else 'rejected'}"
        ] += 1
        n = sum(outcomes.values())
        if n % 200 == 0:
            witness.still_serving()
        if n % 10_000 == 0:
            print(f"\n{n} cases: {dict(outcomes)}", flush=True)

    fuzz()
    witness.still_serving()  # the server is alive and serving others after all of it
    print(f"\nRELIABILITY fuzz: {sum(outcomes.values())} cases: {dict(outcomes)}")
    assert sum(outcomes.values()) >= CASES_TO_TRY // 2


# Found by the soak run: the server took a changeset clocked at 2**64 - 1, every
# replica that downloaded it moved its hybrid clock there, and from then on every
# local write failed (the clock no longer fits SQLite's INTEGER).
@pytest.mark.parametrize(
    ("seconds_ahead", "accepted"),
    [
        pytest.param(3600, True, id="an hour ahead: a skewed device clock is fine"),
        pytest.param(10 * 365 * 86400, False, id="ten years ahead"),
        pytest.param(None, False, id="2**64 - 1"),
    ],
)
def test_a_changeset_clocked_far_in_the_future_is_refused(
    server: rs.SyncServer, open_realm: OpenRealm, seconds_ahead: int | None, accepted: bool
) -> None:
    witness = Witness(open_realm("A"), open_realm("B"))
    target = Target.prepare(server)
    now_us = time.time_ns() // 1000
    ts = 2**64 - 1 if seconds_ahead is None else now_us + seconds_ahead * 1_000_000
    write = Instruction(Op.CREATE, "Task", "from-the-future", (("title", "x"),))
    frame = FrameSpec("upload", upload=((1, Changeset(ts, FUZZ_CLIENT_ID, (write,))),))
    assert target.run_case(True, frame) is accepted
    witness.still_serving()  # both replicas still write and sync
    assert ("from-the-future" in server.snapshot()["Task"]) is accepted

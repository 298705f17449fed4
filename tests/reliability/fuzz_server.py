"""Coverage-guided fuzzing of the server's message handling with atheris (run by hand).

The Hypothesis test (test_protocol_fuzz.py) draws frames from grammars; this harness
lets libFuzzer evolve raw bytes by the code they reach instead. Same real server,
real socket and oracle (tests/reliability/protocol_fuzz.py): the first input byte
picks "before" or "after BIND", the rest is the frame. Not part of CI::

    pip install atheris
    python -m tests.reliability.fuzz_server -atheris_runs=100000 [CORPUS_DIR ...]

Without a corpus directory it starts from the encodings of a few valid messages.
A failure prints the input and writes it as ``crash-*`` in the current directory;
replay it with ``python -m tests.reliability.fuzz_server crash-...``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import atheris

with atheris.instrument_imports(include=["realmsync_nb"]):
    import realmsync_nb as rs
    from realmsync_nb.protocol import messages as m
    from realmsync_nb.protocol.changeset import Changeset, Instruction, Op, encode_changeset

from tests.reliability.protocol_fuzz import FUZZ_CLIENT_ID, SCHEMA, FrameSpec, Target


def seed_corpus() -> str:
    """A directory of valid encodings to start from: the fuzzer mutates what works."""
    body = encode_changeset(
        Changeset(
            time.time_ns() // 1000,
            FUZZ_CLIENT_ID,
            (Instruction(Op.CREATE, "Task", "t1", (("title", "x"), ("done", True))),),
        )
    )
    seeds = [
        m.Bind(m.PROTOCOL_VERSION, "token", FUZZ_CLIENT_ID, 0, 0, SCHEMA),
        m.Upload((m.UploadChangeset(10**6, body),)),
        m.Mark(1),
        m.Ping(1),
        m.TestCommand(1, "pause_uploads"),
    ]
    d = tempfile.mkdtemp(prefix="rs-fuzz-corpus-")
    for i, msg in enumerate(seeds):
        for first in (b"\x00", b"\x01"):
            with open(os.path.join(d, f"seed-{i}-{first[0]}"), "wb") as f:
                f.write(first + m.encode(msg))
    return d


def main() -> None:
    server = rs.SyncServer(scrypt_n=2**10).start()
    target = Target.prepare(server)

    def one_input(data: bytes) -> None:
        if data:
            target.run_case(bool(data[0] & 1), FrameSpec("raw", raw=data[1:]))

    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(seed_corpus())
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""Crash safety: a writer killed with SIGKILL at a random point leaves a sound, gapless log holding every
event it reported as published."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from rtopt import Engine, Feedback

CHILD = """
import sys
from rtopt import Engine, Feedback

engine = Engine.open(sys.argv[1], seed=1, handlers=[])
out = sys.stdout


def event(i, batch, size, index):
    return Feedback(
        prompt_id=f"p{i % 5}",
        variant_id=f"v{i % 3}",
        response_time_ms=float(i),
        success=i % 2 == 0,
        quality_score=(i % 11) / 10,
        metadata={"i": str(i), "batch": str(batch), "size": str(size), "index": str(index)},
    )


i = 0
for batch in range(10**6):
    if batch % 7 == 3:  # now and then several events in one transaction
        size = 2 + batch % 4
        envelopes = engine.publish_many([event(i + k, batch, size, k) for k in range(size)], time=float(batch))
    else:
        size = 1
        envelopes = [engine.publish(event(i, batch, 1, 0), time=float(batch))]
    i += size
    for env in envelopes:
        out.write(f"{env.seq} {env.id}\\n")
    out.flush()
"""


def _run_and_kill(path: Path, script: Path, stop_after: int, stderr_path: Path) -> list[tuple[int, str]]:
    """Run the writer until it has reported ``stop_after`` events, SIGKILL it, return every reported (seq, id)."""
    reported: list[tuple[int, str]] = []
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        try:
            assert proc.stdout is not None
            while len(reported) < stop_after:
                line = proc.stdout.readline()
                if not line:
                    pytest.fail(f"writer ended early (rc={proc.wait()}): {stderr_path.read_text()}")
                seq, event_id = line.split()
                reported.append((int(seq), event_id))
            os.kill(proc.pid, signal.SIGKILL)
            # lines already in the pipe were printed after their commit: they count too
            *complete, _cut_short = proc.stdout.read().split("\n")
            for line in complete:
                seq, event_id = line.split()
                reported.append((int(seq), event_id))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return reported


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sigkill_leaves_a_sound_gapless_log(tmp_path: Path, seed: int) -> None:
    stop_after = random.Random(seed).randint(200, 2000)
    path = tmp_path / "log.sqlite"
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    reported = _run_and_kill(path, script, stop_after, tmp_path / "stderr.txt")
    assert len(reported) >= stop_after
    assert [seq for seq, _ in reported] == list(range(1, len(reported) + 1))

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()

    with Engine.open(path, seed=1, handlers=[]) as engine:
        assert engine.log.integrity_check() == "ok"
        envelopes = list(engine.read())
        n = len(envelopes)
        assert n >= len(reported)
        assert [env.seq for env in envelopes] == list(range(1, n + 1))
        assert engine.log.last_seq() == n == engine.position
        by_seq = {env.seq: env.id for env in envelopes}
        for seq, event_id in reported:
            assert by_seq[seq] == event_id
        assert len(set(by_seq.values())) == n
        # the events themselves are intact, in the order they were made, and batches are all-or-nothing
        assert [int(env.metadata["i"]) for env in envelopes] == list(range(n))
        members: dict[str, list[int]] = defaultdict(list)
        for env in envelopes:
            members[env.metadata["batch"]].append(int(env.metadata["index"]))
        for env in envelopes:
            assert members[env.metadata["batch"]] == list(range(int(env.metadata["size"])))

        after = engine.publish(
            Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True, quality_score=1.0)
        )
        assert after.seq == n + 1
        assert after.id not in by_seq.values()

    with Engine.open(path, seed=1, handlers=[], read_only=True) as engine:
        assert [env.seq for env in engine.read(start=n)] == [n, n + 1]

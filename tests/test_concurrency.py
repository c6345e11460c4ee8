"""Many threads publishing into one engine: a gapless log, unique ids, and every caller and subscriber
seeing events in seq order."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import pytest

from rtopt import Engine, Envelope, Feedback

THREADS = 4
PER_THREAD = 10_000
TOTAL = THREADS * PER_THREAD
GUARD = 120.0


def fb(thread: int, i: int) -> Feedback:
    return Feedback(
        prompt_id=f"p{thread}",
        variant_id=f"v{i % 3}",
        response_time_ms=float(i),
        success=i % 2 == 0,
        quality_score=0.5,
        metadata={"thread": str(thread), "i": str(i)},
    )


def _run_threads(target) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def run(k: int) -> None:
        try:
            start.wait(GUARD)
            target(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
        assert not thread.is_alive()
    assert not errors, errors


def _check(engine: Engine, returned: list[list[Envelope[Any]]], delivered: list[Envelope[Any]]) -> None:
    # each thread got its envelopes back in the order it published, with strictly increasing seqs
    for k, envelopes in enumerate(returned):
        assert len(envelopes) == PER_THREAD
        seqs = [env.seq for env in envelopes]
        assert all(a < b for a, b in itertools.pairwise(seqs))
        assert [int(env.metadata["i"]) for env in envelopes] == list(range(PER_THREAD))
        assert {env.metadata["thread"] for env in envelopes} == {str(k)}
    all_returned = [env for envelopes in returned for env in envelopes]
    assert sorted(env.seq for env in all_returned) == list(range(1, TOTAL + 1))

    # the log: exactly 1..TOTAL, unique ids, and each returned envelope recorded as returned
    rows = list(engine.log.rows())
    assert [row[0] for row in rows] == list(range(1, TOTAL + 1))
    assert len({row[1] for row in rows}) == TOTAL
    by_seq = {row[0]: row for row in rows}
    for env in all_returned:
        row = by_seq[env.seq]
        assert row[1] == env.id
        assert row[3] == env.stream
    recorded = list(engine.read())
    assert sorted(recorded, key=lambda env: env.id) == sorted(all_returned, key=lambda env: env.id)
    assert engine.log.last_seq() == engine.position == TOTAL
    assert engine.stats().published == TOTAL

    # the subscriber saw every committed envelope exactly once, in strictly increasing seq order
    assert [env.seq for env in delivered] == list(range(1, TOTAL + 1))
    assert [env.id for env in delivered] == [row[1] for row in rows]


@pytest.mark.slow
def test_threads_publishing_single_events(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "log.sqlite", seed=1, handlers=[]) as engine:
        delivered: list[Envelope[Any]] = []
        engine.subscribe(delivered.append)
        returned: list[list[Envelope[Any]]] = [[] for _ in range(THREADS)]

        def publish(k: int) -> None:
            out = returned[k]
            for i in range(PER_THREAD):
                out.append(engine.publish(fb(k, i)))

        _run_threads(publish)
        _check(engine, returned, delivered)
    with Engine.open(tmp_path / "log.sqlite", seed=1, handlers=[]) as engine:
        assert engine.log.last_seq() == TOTAL
        assert engine.publish(fb(0, 0)).seq == TOTAL + 1


@pytest.mark.parametrize("batch", [100])
def test_threads_publishing_batches_with_default_handlers(tmp_path: Path, batch: int) -> None:
    with Engine.open(tmp_path / "log.sqlite", seed=1) as engine:
        assert engine.handlers()  # the installed handler chains see every event
        delivered: list[Envelope[Any]] = []
        engine.subscribe(delivered.append)
        per_type: list[int] = []
        engine.subscribe(lambda env: per_type.append(env.seq), types=[Feedback], stream="p2")
        returned: list[list[Envelope[Any]]] = [[] for _ in range(THREADS)]

        def publish(k: int) -> None:
            out = returned[k]
            for start in range(0, PER_THREAD, batch):
                envelopes = engine.publish_many([fb(k, i) for i in range(start, start + batch)])
                seqs = [env.seq for env in envelopes]
                assert seqs == list(range(seqs[0], seqs[0] + batch))  # one batch, one transaction
                out.extend(envelopes)

        _run_threads(publish)
        _check(engine, returned, delivered)
        assert per_type == [env.seq for env in returned[2]]
        assert engine.stats().derived == 0  # feedback without a decision teaches the bandit nothing
        assert engine.stats().handler_failures == {}

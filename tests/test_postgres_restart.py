"""The PostgreSQL log across a server restart: calls while the server is down raise StorageUnavailable in the
configured time and name the log without its password, engines go on once it is back without being
reopened, a commit whose connection broke is resolved by looking its first event up, and four writer
processes lose nothing they were told was committed."""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from conftest import derived_events, simulate_into
from rtopt.handlers.bandits import BanditHandler

from rtopt import CommitUncertain, Engine, Feedback, InvalidEvent, StorageUnavailable
from rtopt.copying import copy_log
from rtopt.pgserver import TemporaryServer, server_binaries
from rtopt.storage.postgres import PostgresLog
from rtopt.worker import Worker

pytestmark = pytest.mark.postgres

GUARD = 60.0
"""Seconds after which a wait on a condition gives up, failing the test instead of hanging it."""
SHORT = 0.5
"""A reconnect timeout short enough for a call to give up while the server is down."""


@pytest.fixture(scope="module")
def server() -> Iterator[TemporaryServer]:
    """A server of this module's own (its tests stop and start it), durable: an immediate stop loses no
    acknowledged commit."""
    if server_binaries() is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql-15)")
    with TemporaryServer(durable=True) as server:
        yield server


_databases = iter(range(1, 1000))


@pytest.fixture
def url(server: TemporaryServer) -> str:
    """A new empty database, its URL carrying a password (the server trusts local connections)."""
    plain = server.create_database(f"restart_{next(_databases)}")
    return plain.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")


@contextmanager
def down(server: TemporaryServer, mode: str = "fast") -> Iterator[None]:
    """The server stopped for the block, started again (on the same port, with the same data) after it."""
    server.halt(mode)
    try:
        yield
    finally:
        server.start()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def fb(i: int, prompt: str = "p1") -> Feedback:
    return Feedback(prompt_id=prompt, variant_id=f"v{i % 3}", response_time_ms=1.0, success=True, quality_score=0.5)


def test_calls_while_the_server_is_down_raise_storage_unavailable_in_time_and_the_engine_goes_on(
    server: TemporaryServer, url: str
) -> None:
    with Engine.open(url, seed=1, handlers=[]) as engine:
        engine.publish(fb(0))
        engine.log.reconnect_timeout_s = SHORT
        with down(server):
            for call in (lambda: engine.publish(fb(1)), engine.log.last_seq, lambda: engine.log.wait_for_change(0.0)):
                started = time.monotonic()
                with pytest.raises(StorageUnavailable, match=r"cannot reach the database server") as info:
                    call()
                assert SHORT <= time.monotonic() - started < SHORT + 10.0
                assert "postgres:***@" in str(info.value) and "hunter2" not in str(info.value)
                assert isinstance(info.value.__cause__, psycopg.OperationalError)
            with pytest.raises(StorageUnavailable, match="cannot reach"):
                PostgresLog.open(url, reconnect_timeout_s=SHORT)
        assert engine.publish(fb(2)).seq == 2  # the same engine, not reopened
        assert engine.stats().published == 2
        assert [row[0] for row in engine.log.rows()] == [1, 2]
        assert engine.log.reconnects >= 1


def test_an_engine_with_handlers_keeps_the_log_s_state_through_the_outage(server: TemporaryServer, url: str) -> None:
    with Engine.open(url, seed=1, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("e", ["a", "b"], policy="ucb1", time=0.0)
        for t in range(1, 4):
            decision = engine.decide("e", time=float(t))
            engine.feedback(decision.id, success=True, quality_score=0.9, response_time_ms=1.0, time=t + 0.5)
        engine.log.reconnect_timeout_s = SHORT
        before = engine.state("bandit", "e")
        with down(server):
            with pytest.raises(StorageUnavailable):
                engine.decide("e", time=5.0)  # refused before the append lock was taken: nothing folded
            with pytest.raises(StorageUnavailable):
                engine.state("bandit", "e")  # a state read folds what others appended first: it reads the log
        assert engine.state("bandit", "e") == before
        decision = engine.decide("e", time=6.0)
        engine.feedback(decision.id, success=True, quality_score=0.9, response_time_ms=1.0, time=6.5)
        state = engine.state("bandit", "e")
    assert sum(arm.pulls for arm in state.arms.values()) == 4
    with Engine.open(url, read_only=True, handlers=[BanditHandler()]) as replayed:
        assert replayed.state("bandit", "e") == state
        assert [env.seq for env in replayed.read()] == list(range(1, replayed.log.last_seq() + 1))


def test_a_listener_listens_again_after_a_restart(server: TemporaryServer, url: str) -> None:
    with Engine.open(url, seed=1, handlers=[]) as writer, Engine.open(url, read_only=True, handlers=[]) as reader:
        log = reader.log
        assert log.wait_for_change(0.0)  # starts listening
        with down(server, "immediate"):
            pass
        assert log.wait_for_change(GUARD)  # the listener broke: commits may have been missed, read again
        assert not log.wait_for_change(0.0)
        writer.publish(fb(1))
        assert log.wait_for_change(GUARD)
        assert reader.log.last_seq() == 1 and log.reconnects == 2  # listener and reader
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):  # the reader connected anew is read-only too
            log._reader.execute("DELETE FROM rtopt_meta")


class BreakingCommit:
    """A connection whose next transaction ends with the connection breaking at COMMIT: after the server
    committed (only the answer is lost) or before (it never got the COMMIT); or, ``early``, as soon as the
    transaction begins. ``then`` runs after the break. With ``keep_session`` the server's session outlives the
    break (as when only the network failed)."""

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        committed: bool,
        early: bool = False,
        then: Callable[[], None] = lambda: None,
        keep_session: bool = False,
    ) -> None:
        self.session = conn
        self._committed = committed
        self._early = early
        self._then = then
        self._keep_session = keep_session
        self._broken = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)

    @property
    def closed(self) -> bool:
        return self._broken or self.session.closed

    def close(self) -> None:
        if not self._keep_session:
            self.session.close()

    def execute(self, query: str, params: object = None) -> psycopg.Cursor:
        if query.startswith("BEGIN") and self._early:  # the append lock is never asked for
            self._break()
        if query.endswith("COMMIT") and not query.startswith("BEGIN"):  # the rows, sent with their COMMIT
            if self._committed:
                self.session.execute(query)
            self._break()
        return self.session.execute(query, params)

    def _break(self) -> None:
        self._broken = True
        self.close()
        self._then()
        raise psycopg.OperationalError("server closed the connection unexpectedly")


@pytest.mark.parametrize(
    ("committed", "early"), [(True, False), (False, False), (False, True)], ids=["answer-lost", "commit-lost", "early"]
)
def test_a_commit_whose_connection_broke_is_found_or_made_again(
    url: str, committed: bool, early: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Engine.open(url, seed=1, handlers=[]) as engine:
        engine.publish(fb(0))
        engine.log._writer = BreakingCommit(engine.log._writer, committed=committed, early=early)
        if early:  # broken before COMMIT was sent: nothing committed, the write is simply made again

            def not_asked(*args: object) -> None:
                raise AssertionError("a write that broke before its COMMIT asked whether it committed")

            monkeypatch.setattr(engine.log, "_committed_at", not_asked)
        envelopes = engine.publish_many([fb(i) for i in range(1, 4)])
        # committed once either way: a blind retry would hit the unique ids, a wrong "committed" lose them
        assert [(env.seq, env.id) for env in envelopes] == [engine.log.get(env.id)[:2] for env in envelopes]
        assert [row[0] for row in engine.log.rows()] == [1, 2, 3, 4]
        assert engine.log.reconnects == 1
        assert engine.publish(fb(4)).seq == 5


def test_an_unresolved_commit_raises_commit_uncertain_with_its_ids(server: TemporaryServer, url: str) -> None:
    with Engine.open(url, seed=1, handlers=[]) as engine:
        engine.publish(fb(0))
        engine.log.reconnect_timeout_s = SHORT
        engine.log._writer = BreakingCommit(engine.log._writer, committed=True, then=server.halt)
        try:
            with pytest.raises(CommitUncertain, match="look up 'order-1' once the server is back") as info:
                engine.publish(fb(1), id="order-1")
        finally:
            server.start()
        assert info.value.event_ids == ["order-1"]
        assert "hunter2" not in str(info.value)
        assert engine.log.get("order-1") is not None  # it had committed
        with pytest.raises(InvalidEvent, match="already in the log") as refused:  # an idempotent retry says so
            engine.publish(fb(1), id="order-1")
        assert refused.value.field == "id"
        later = engine.publish(fb(2))
        assert later.seq == 3 and later.id not in info.value.event_ids
        assert engine.log.count_inputs() == 3


def write_until_stopped(
    url: str,
    k: int,
    reconnect_timeout_s: float,
    acknowledged: multiprocessing.Array,
    failures: multiprocessing.Array,
    stop: multiprocessing.Event,
    results: multiprocessing.Queue,
) -> None:
    """Publish Feedback on stream ``w{k}`` until ``stop``, with ids ``w{k}-0``, ``w{k}-1`` ...: after a failure
    the same id again, until it is acknowledged or refused as already in the log (the failed call had
    committed). Puts (k, [(id, seq) acknowledged], reconnects), or (k, traceback) on an unexpected error."""
    try:
        handlers = [BanditHandler()] if k == 3 else []  # handlers on a stream of their own
        acked: list[tuple[str, int]] = []
        # "power": a commit is flushed before it is acknowledged, so the server's crash cannot lose it
        with Engine.open(url, handlers=handlers, durability="power") as engine:
            engine.log.reconnect_timeout_s = reconnect_timeout_s
            i = 0
            while not stop.is_set():
                event_id = f"w{k}-{i}"
                try:
                    seq = engine.publish(fb(i, f"w{k}"), f"w{k}", id=event_id, time=float(i)).seq
                except (StorageUnavailable, CommitUncertain):
                    failures[k] += 1
                    continue
                except InvalidEvent as exc:
                    if exc.field != "id":
                        raise
                    seq = engine.log.get(event_id)[0]
                acked.append((event_id, seq))
                acknowledged[k] += 1
                i += 1
            results.put((k, acked, engine.log.reconnects))
    except BaseException:
        results.put((k, traceback.format_exc()))
        raise


@pytest.mark.slow
def test_four_writer_processes_go_on_after_a_restart_and_lose_nothing_acknowledged(
    server: TemporaryServer, url: str
) -> None:
    writers = 4
    timeouts = [GUARD, GUARD, SHORT, SHORT]  # two ride the outage out, two see it fail their calls
    Engine.open(url, seed=1, handlers=[]).close()
    ctx = multiprocessing.get_context("fork")
    acknowledged, failures = ctx.Array("i", writers), ctx.Array("i", writers)
    stop, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=write_until_stopped, args=(url, k, timeouts[k], acknowledged, failures, stop, results))
        for k in range(writers)
    ]
    for proc in procs:
        proc.start()
    try:
        wait_until(lambda: min(acknowledged) >= 20, "every writer acknowledged 20 events")
        with down(server, "immediate"):
            wait_until(lambda: min(failures[2:]) > 0, "the writers with a short timeout saw a call fail")
        before_restart = list(acknowledged)
        wait_until(
            lambda: all(acknowledged[k] >= before_restart[k] + 20 for k in range(writers)),
            "every writer acknowledged 20 more events after the restart",
        )
    finally:
        stop.set()
        reports = sorted((results.get(timeout=GUARD) for _ in procs), key=lambda report: report[0])
        for proc in procs:
            proc.join(GUARD)
    assert [len(report) for report in reports] == [3] * writers, [r[1] for r in reports if len(r) == 2]
    assert [proc.exitcode for proc in procs] == [0] * writers
    assert all(reconnects >= 1 for _, _, reconnects in reports)
    with psycopg.connect(url, autocommit=True) as conn:
        logged = dict(conn.execute("SELECT id, seq FROM events").fetchall())
    acked = {event_id: seq for _, pairs, _ in reports for event_id, seq in pairs}
    assert len(acked) == sum(len(pairs) for _, pairs, _ in reports)  # no id acknowledged twice
    assert logged == acked  # every acknowledged event, at the seq it was acknowledged at, and nothing else
    assert sorted(logged.values()) == list(range(1, len(logged) + 1))  # gapless
    for _, pairs, _ in reports:  # each writer's events in the order it published them
        assert [seq for _, seq in pairs] == sorted(seq for _, seq in pairs)


def test_a_worker_whose_write_met_the_outage_derives_each_input_once_after_it(
    server: TemporaryServer, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "reference.sqlite"
    simulate_into(reference, steps=150, seed=3, variants=3)
    copy_log(reference, url, inputs_only=True)
    with Worker.open(url, batch=50) as worker:
        assert worker.step() == 50
        worker.log.reconnect_timeout_s = SHORT
        write = worker.log.append_tracked

        def write_after_the_server_stopped(*args: object) -> int:
            monkeypatch.setattr(worker.log, "append_tracked", write)
            server.halt()
            return write(*args)

        monkeypatch.setattr(worker.log, "append_tracked", write_after_the_server_stopped)
        try:
            with pytest.raises(StorageUnavailable):
                worker.step()  # the chains folded 50 inputs whose derived events were not written
            with pytest.raises(StorageUnavailable):
                worker.step()
        finally:
            server.start()
        worker.run(drain=True)
    assert derived_events(url) == derived_events(reference)


def test_a_commit_is_uncertain_while_the_session_that_made_it_runs_on(url: str) -> None:
    with Engine.open(url, seed=1, handlers=[]) as engine:
        engine.log.reconnect_timeout_s = SHORT
        broken = engine.log._writer = BreakingCommit(engine.log._writer, committed=True, keep_session=True)
        started = time.monotonic()
        with pytest.raises(CommitUncertain, match="look up 'order-1'") as info:
            engine.publish(fb(1), id="order-1")
        assert SHORT <= time.monotonic() - started < SHORT + 10.0
        assert info.value.event_ids == ["order-1"]
        broken.session.close()
        assert engine.log.get("order-1") is not None
        with pytest.raises(InvalidEvent, match="already in the log"):
            engine.publish(fb(1), id="order-1")
        assert [row[1] for row in engine.log.rows()] == ["order-1"]

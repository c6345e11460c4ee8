"""Upcasting: a log written with an older schema version of an event type reads, replays and verifies as the
current version; a version that cannot be read is refused naming the type and the versions."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from rtopt import Context, Engine, Envelope, Event, Handler, InvalidLog, UnreadableSchemaVersion
from rtopt.events import Name, decode_payload, encode_payload
from rtopt.upcasting import upcaster


def greeting_type(version: int) -> type[Event]:
    """The event type ``UpcastGreeting`` as the code of ``version`` defines it (both register one tag)."""
    if version == 1:

        class UpcastGreeting(Event, frozen=True):
            name: Name
            stream_field: ClassVar[str] = "name"

    else:

        class UpcastGreeting(Event, frozen=True):  # version 2: name became target, language is new
            target: Name
            language: Name
            stream_field: ClassVar[str] = "target"
            schema_version: ClassVar[int] = 2

    return UpcastGreeting


def tally_type(version: int) -> type[Event]:
    """The derived event type ``UpcastTally``: version 2 renamed ``n`` to ``count``."""
    if version == 1:

        class UpcastTally(Event, frozen=True):
            n: int

    else:

        class UpcastTally(Event, frozen=True):
            count: int
            schema_version: ClassVar[int] = 2

    return UpcastTally


@upcaster("UpcastGreeting", 1)
def _greeting_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    payload["target"] = payload.pop("name")
    payload["language"] = "en"  # the only language version 1 greeted in
    return payload


@upcaster("UpcastTally", 1)
def _tally_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    return {"count": payload["n"]}


class Tally(msgspec.Struct):
    greetings: int = 0


class Greeter(Handler[Tally]):
    """Counts greetings and derives the running tally, in the tally type of its code's version."""

    name = "greeter"
    state_type = Tally

    def __init__(self, version: int) -> None:
        self.accepts = (greeting_type(version),)
        self.tally = tally_type(version)
        self.field = "n" if version == 1 else "count"

    def initial_state(self) -> Tally:
        return Tally()

    def apply(self, state: Tally, envelope: Envelope[Any], ctx: Context) -> tuple[Tally, Sequence[Event]]:
        state.greetings += 1
        return state, [self.tally(**{self.field: state.greetings})]


@pytest.fixture
def old_log(tmp_path: Path) -> Path:
    """A log written by the code of version 1; the code of version 2 is registered when it is returned."""
    path = tmp_path / "old.sqlite"
    greeter = Greeter(1)
    with Engine.open(path, seed=3, handlers=[greeter]) as engine:
        old = greeter.accepts[0]
        engine.publish_many([old(name="api"), old(name="web"), old(name="api")], time=10.0)
    greeting_type(2)  # the code is upgraded: version 2 replaces version 1 under the same tags
    tally_type(2)
    return path


def test_an_old_log_reads_as_the_current_version(old_log: Path) -> None:
    rows = sqlite3.connect(old_log).execute("SELECT type, schema_version FROM events ORDER BY seq").fetchall()
    assert rows == [("UpcastGreeting", 1)] * 3 + [("UpcastTally", 1)] * 3  # stored as version 1 wrote them
    with Engine.open(old_log, read_only=True, handlers=[Greeter(2)]) as engine:
        events = list(engine.read())
        assert [msgspec.to_builtins(e.payload) for e in events[:3]] == [
            {"type": "UpcastGreeting", "target": "api", "language": "en"},
            {"type": "UpcastGreeting", "target": "web", "language": "en"},
            {"type": "UpcastGreeting", "target": "api", "language": "en"},
        ]
        assert [e.payload.count for e in events[3:]] == [1, 2, 3]
        assert {type(e.payload).schema_version for e in events} == {2}
        assert [e.schema_version for e in events] == [1] * 6  # the envelope keeps the version it was recorded at
        assert engine.state("greeter").greetings == 3


def test_an_old_log_replays_and_verifies_under_the_new_code(old_log: Path, tmp_path: Path) -> None:
    report = Engine.verify(old_log, handlers=[Greeter(2)])
    assert report.ok, report.difference
    assert report.derived == 3
    with Engine.replay(old_log, into=tmp_path / "again.sqlite", handlers=[Greeter(2)]) as again:
        assert again.state("greeter").greetings == 3
        assert [e.payload.count for e in again.read(types=["UpcastTally"])] == [1, 2, 3]
    rows = sqlite3.connect(tmp_path / "again.sqlite").execute("SELECT DISTINCT schema_version FROM events").fetchall()
    assert rows == [(2,)]  # replayed events are written at the current version


def test_verify_still_finds_a_difference_in_an_upcast_payload(old_log: Path) -> None:
    class MiscountingGreeter(Greeter):
        def apply(self, state: Tally, envelope: Envelope[Any], ctx: Context) -> tuple[Tally, Sequence[Event]]:
            state.greetings += 2
            return state, [self.tally(count=state.greetings)]

    report = Engine.verify(old_log, handlers=[MiscountingGreeter(2)])
    assert not report.ok and report.difference is not None
    assert report.difference.seq == 4 and report.difference.field == "payload"


def test_a_missing_upcaster_names_the_type_and_the_versions() -> None:
    class UpcastOrphan(Event, frozen=True):
        value: int
        schema_version: ClassVar[int] = 3

    data = encode_payload(UpcastOrphan(value=1))
    with pytest.raises(UnreadableSchemaVersion, match="UpcastOrphan: no upcaster from schema version 1 to 2"):
        decode_payload("UpcastOrphan", data, 1)
    assert decode_payload("UpcastOrphan", data, 3) == UpcastOrphan(value=1)


def test_a_version_newer_than_the_code_is_refused(old_log: Path) -> None:
    connection = sqlite3.connect(old_log)
    (payload,) = connection.execute("SELECT payload FROM events WHERE seq = 1").fetchone()
    with pytest.raises(UnreadableSchemaVersion, match="UpcastGreeting: recorded at schema version 3, newer than"):
        decode_payload("UpcastGreeting", payload, 3)
    assert issubclass(UnreadableSchemaVersion, InvalidLog)  # a log this code cannot read


def test_an_upcaster_that_returns_a_wrong_payload_is_named() -> None:
    class UpcastBroken(Event, frozen=True):
        value: int
        schema_version: ClassVar[int] = 2

    upcaster("UpcastBroken", 1)(lambda payload: {"value": "one"})
    with pytest.raises(UnreadableSchemaVersion, match="UpcastBroken: the payload upcast from schema version 1 to 2"):
        decode_payload("UpcastBroken", encode_payload(UpcastBroken(value=1)), 1)

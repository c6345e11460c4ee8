"""Privacy by crypto-shredding: personal values are stored sealed, read back while their subject's key exists,
and read as a stable pseudonym once it is forgotten, with the log unchanged, verifiable and replayable."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from rtopt.handlers.experiments import ExperimentHandler
from rtopt.handlers.protection import FeedbackGuard, ProtectionHandler

from rtopt import Decision, Engine, Feedback, Privacy, RtoptError, SubjectForgotten, registered_types
from rtopt.cli import main
from rtopt.copying import copy_log, copy_rows
from rtopt.privacy import KEYS_TABLE, is_pseudonym


def feedback(user: str | None, t: float, **fields) -> Feedback:
    return Feedback(
        prompt_id="g",
        variant_id="v",
        response_time_ms=200.0,
        success=True,
        quality_score=0.5 + (t % 7) / 100,
        user_id=user,
        **fields,
    )


def guard() -> ProtectionHandler:
    return ProtectionHandler(FeedbackGuard(user_limit=3, window_s=60.0))


def write_users(path: Path, privacy: Privacy | bool = True) -> None:
    """Five feedback from each of alice and bob within one window (both pass the limit of 3), and one from
    a session with no user carrying an email."""
    with Engine.open(path, seed=11, handlers=[guard()], privacy=privacy) as engine:
        for i in range(5):
            for user in ("alice@example.com", "bob@example.com"):
                engine.publish(feedback(user, float(i), session_id=f"s-{user}"), time=float(i))
        engine.publish(feedback(None, 9.0, session_id="s-anon", metadata={"email": "carol@example.com"}), time=9.0)


def stored_bytes(path: Path) -> bytes:
    """Everything on disk for the log: the database file and its write-ahead log."""
    return b"".join(Path(f"{path}{suffix}").read_bytes() for suffix in ("", "-wal") if Path(f"{path}{suffix}").exists())


def key_bytes(path: Path) -> dict[str, bytes]:
    """The stored key (as its text is stored) of every ref."""
    with sqlite3.connect(path) as conn:
        return {ref: key.encode() for ref, key in conn.execute(f"SELECT ref, key FROM {KEYS_TABLE}")}


def guard_users(path: Path) -> dict[str, tuple[int, int]]:
    with Engine.open(path, handlers=[guard()]) as engine:
        return {user: (s.clean, s.flagged) for user, s in engine.state("protection").users.items()}


def test_personal_values_are_stored_sealed_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    write_users(path, Privacy(personal_metadata=("email",)))
    on_disk = stored_bytes(path)
    for value in (b"alice@example.com", b"bob@example.com", b"s-anon", b"carol@example.com"):
        assert value not in on_disk
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        read = list(engine.read(types=[Feedback]))
        flagged = [env.payload.user for env in engine.read(types=["FeedbackFlagged"])]
    assert [env.user_id for env in read[:4]] == ["alice@example.com", "bob@example.com"] * 2
    assert read[0].session_id == "s-alice@example.com"
    assert read[-1].session_id == "s-anon" and read[-1].metadata == {"email": "carol@example.com"}
    assert sorted(set(flagged)) == ["alice@example.com", "bob@example.com"]  # derived events are sealed too


def test_without_privacy_values_are_stored_as_given(tmp_path: Path) -> None:
    path = tmp_path / "plain.sqlite"
    write_users(path, privacy=False)
    assert b"alice@example.com" in stored_bytes(path)
    assert Engine.verify(path, handlers=[guard()]).ok


def test_forgetting_deletes_the_key_from_the_files_and_leaves_a_pseudonym(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    write_users(path)
    before = guard_users(path)
    keys = key_bytes(path)
    assert len(keys) == 3  # alice, bob and the session with no user
    with Engine.open(path, handlers=[guard()]) as engine:
        first = next(engine.read(types=[Feedback]))  # alice's, read before she is forgotten
        forgotten = engine.forget("alice@example.com", time=20.0)
        pseudonym = f"forgotten:{forgotten.payload.ref}"
        assert engine.state("protection").users[pseudonym].flagged == before["alice@example.com"][1]
        assert "alice@example.com" not in engine.state("protection").users
        assert first.user_id == "alice@example.com"
    assert isinstance(forgotten.payload, SubjectForgotten)
    on_disk = stored_bytes(path)
    assert keys[forgotten.payload.ref] not in on_disk
    assert base64.b64decode(keys[forgotten.payload.ref]) not in on_disk
    assert all(key in on_disk for ref, key in keys.items() if ref != forgotten.payload.ref)
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        read = [env for env in engine.read(types=[Feedback])]
    assert [env.user_id for env in read[:2]] == [pseudonym, "bob@example.com"]
    assert read[0].session_id == pseudonym  # a user's session is sealed with the user's key
    assert Engine.verify(path, handlers=[guard()]).ok
    after = guard_users(path)
    assert after[pseudonym] == before["alice@example.com"]
    assert after["bob@example.com"] == before["bob@example.com"] and after["s-anon"] == before["s-anon"]


def test_forgetting_an_unknown_or_forgotten_subject_is_an_error_that_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    write_users(path)
    with Engine.open(path, handlers=[guard()]) as engine:
        last = engine.log.last_seq()
        with pytest.raises(RtoptError, match="'mallory'"):
            engine.forget("mallory")
        engine.forget("bob@example.com")
        with pytest.raises(RtoptError, match="forgotten already"):
            engine.forget("bob@example.com")
        assert engine.log.last_seq() == last + 1


def arm_for(unit: str) -> str:
    """The arm the A/B test assigns ``unit`` to (by its hash alone)."""
    with Engine.open(":memory:", seed=4, handlers=[ExperimentHandler()]) as engine:
        engine.define_experiment("checkout", arms=["a", "b"], policy="ab_test", start=True, time=0.0)
        return engine.decide("checkout", unit=unit, time=1.0).arm


def test_a_log_with_forgotten_units_verifies_and_notes_the_decisions_it_cannot_remake(tmp_path: Path) -> None:
    path = tmp_path / "ab.sqlite"
    units = [f"user-{i}" for i in range(40)]
    with Engine.open(path, seed=4, handlers=[ExperimentHandler()]) as engine:
        engine.define_experiment("checkout", arms=["a", "b"], policy="ab_test", start=True, time=0.0)
        for step, unit in enumerate(units):
            engine.decide("checkout", unit=unit, time=1.0 + step)
    assert all(unit.encode() not in stored_bytes(path) for unit in units)
    with Engine.open(path, handlers=[ExperimentHandler()]) as engine:
        for unit in units[:10]:
            engine.forget(unit, time=100.0)
        decisions = list(engine.read(types=[Decision]))
    assert all(is_pseudonym(d.unit) for d in decisions[:10])
    assert [d.unit for d in decisions[10:]] == units[10:]
    report = Engine.verify(path, handlers=[ExperimentHandler()])
    assert report.ok, report.difference
    assert report.decisions == 40
    # a pseudonym hashes to the recorded arm's buckets or not, by chance: those that left are noted
    moved = sum(arm_for(d.unit) != d.arm for d in decisions[:10])
    expected = [f"{moved} decisions were not re-made"] if moved else []
    assert [note[: len(expected[0])] for note in report.notes if "not re-made" in note] == expected


def test_the_same_events_seal_to_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    write_users(path)
    again = tmp_path / "again.sqlite"
    with Engine.replay(path, into=again, handlers=[guard()]):
        pass
    with Engine.open(path, read_only=True, handlers=[]) as first, Engine.open(again, read_only=True) as second:
        assert [row[9] for row in first.log.rows()] == [row[9] for row in second.log.rows()]


def test_a_copy_keeps_its_own_keys(tmp_path: Path) -> None:
    path, copy = tmp_path / "log.sqlite", tmp_path / "copy.sqlite"
    write_users(path)
    copy_log(path, copy)
    with Engine.open(path, handlers=[]) as engine:
        engine.forget("alice@example.com")
    with Engine.open(copy, read_only=True, handlers=[]) as engine:
        assert next(engine.read(types=[Feedback])).user_id == "alice@example.com"


def test_rows_copied_without_their_keys_read_as_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    write_users(path)
    with Engine.open(path, read_only=True, handlers=[]) as source, Engine.open(":memory:", handlers=[]) as bare:
        copy_rows(source.log, bare.log, None, None)
        sessions = {env.session_id for env in bare.read(types=[Feedback])}
    assert len(sessions) == 3 and all(is_pseudonym(session) for session in sessions)  # 2 users' and one alone


def test_rtopt_forget_prints_what_was_forgotten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.sqlite"
    write_users(path)
    assert main(["forget", str(path), "alice@example.com"]) == 0
    out = capsys.readouterr().out
    assert "forgotten:" in out and "alice@example.com" in out
    assert main(["forget", str(path), "alice@example.com"]) == 2
    assert "forgotten already" in capsys.readouterr().err


def test_the_privacy_benchmark_reports_both_sides() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "privacy.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for name in ("publish", "publish_new_users", "read"):
        assert data[f"{name}_sealed_events_per_s"] > 0 and data[f"{name}_plain_events_per_s"] > 0
        assert data[f"{name}_sealed_to_plain"] == pytest.approx(
            data[f"{name}_sealed_events_per_s"] / data[f"{name}_plain_events_per_s"]
        )
    assert data["encode_sealed_us_per_event"] > 0 and data["forget_ms"] > 0


def test_forgetting_works_on_either_backend(location: str) -> None:
    with Engine.open(location, seed=3, handlers=[guard()]) as engine:
        for t in range(5):
            engine.publish(feedback("dora", float(t)), time=float(t))
        assert {env.user_id for env in engine.read(types=[Feedback])} == {"dora"}
        ref = engine.forget("dora").payload.ref
        assert {env.user_id for env in engine.read(types=[Feedback])} == {f"forgotten:{ref}"}
        assert engine.state("protection").users[f"forgotten:{ref}"].flagged == 2  # the 4th and 5th passed the limit
    assert Engine.verify(location, handlers=[guard()]).ok


def test_no_personal_field_bounds_its_length() -> None:
    # a sealed value is longer than the plain one: a maximum length would make the stored event unreadable
    bounded = []
    for tag, cls in registered_types().items():
        fields = {f.name: f.type for f in msgspec.inspect.type_info(cls).fields}
        for name in cls.personal_fields:
            members = getattr(fields[name], "types", (fields[name],))
            if any(getattr(member, "max_length", None) is not None for member in members):
                bounded.append(f"{tag}.{name}")
    assert "Feedback" in registered_types() and "RateLimitExceeded" in registered_types()
    assert bounded == []


def test_a_long_user_id_seals_and_reads_back_in_every_event() -> None:
    user = "u" * 500
    with Engine.open(":memory:", seed=1, handlers=[guard()]) as engine:
        for t in range(5):
            engine.publish(feedback(user, float(t)), time=float(t))
        limits = [env.who for env in engine.read(types=["RateLimitExceeded"])]
    assert limits == [user]


def test_a_key_stored_by_a_write_that_rolled_back_is_not_used_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=3, handlers=[]) as engine:
        log = engine.log
        insert = log._insert

        def fail(*args: object) -> None:
            raise OSError("disk full")

        # the key is made inside the write transaction, which then fails and rolls back
        monkeypatch.setattr(engine.writer.keys, "prepare", lambda events: None)
        monkeypatch.setattr(log, "_insert", fail)
        with pytest.raises(OSError, match="disk full"):
            engine.publish(feedback("dave", 1.0), time=1.0)
        monkeypatch.setattr(log, "_insert", insert)
        engine.publish(feedback("dave", 2.0), time=2.0)
    with Engine.open(path, handlers=[]) as engine:
        assert [envelope.payload.user_id for envelope in engine.read(types=[Feedback])] == ["dave"]

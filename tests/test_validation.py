"""Input validation matches what the log stores: whatever is accepted can be read back, replayed and verified;
whatever is refused raises InvalidEvent naming the field, is counted, and leaves the log and the state as
they were. Regressions first, then a property-based fuzz suite over event constructors and engine calls."""

from __future__ import annotations

import datetime
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rtopt.handlers.bandits import BanditHandler
from rtopt.handlers.bayesopt import BayesOptHandler

from rtopt import (
    Draft,
    Engine,
    Event,
    ExperimentDefined,
    Feedback,
    Handler,
    InvalidEvent,
    Limits,
    default_handlers,
    registered_types,
)
from rtopt.cli import main as cli_main
from rtopt.events import decode_payload, encode_payload, validate
from rtopt.ids import ordered_id
from rtopt.storage.factory import open_log

VALID = {"prompt_id": "greeting", "variant_id": "v1", "response_time_ms": 420.0, "success": True, "quality_score": 0.8}
NAN = float("nan")
AWARE = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
SURROGATE = "a\ud800b"


class Nested(list):
    """A list nested deeper than anything can encode or print; its repr says so (hypothesis prints it)."""

    def __repr__(self) -> str:
        return f"<a list nested {NESTING} deep>"


NESTING = sys.getrecursionlimit() * 2


def nested() -> Nested:
    value: list[Any] = []
    for _ in range(NESTING):
        value = [value]
    return Nested(value)


def chains() -> list[Handler[Any]]:
    return [BanditHandler(), BayesOptHandler()]


def assert_sound(path: Path | str, handlers: list[Handler[Any]] | None = None) -> None:
    """The log opens, reads back every event, and replay (through the handlers that wrote it) verifies it."""
    handlers = chains() if handlers is None else handlers
    with Engine.open(path, read_only=True, handlers=handlers) as engine:
        assert len(list(engine.read())) == engine.log.last_seq()
    report = Engine.verify(path, handlers=chains() if handlers else [])
    assert report.ok, report.difference


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A file log with a bandit experiment (one decision made) and a study, for commands to act on."""
    with Engine.open(tmp_path / "log.sqlite", seed=3, handlers=chains()) as engine:
        engine.define_experiment("greeting", arms=["v1", "v2"], policy="thompson", time=0.0)
        engine.define_study("temperature", space={"t": (0.0, 1.0)}, n_initial=2, time=0.0)
        engine.decide("greeting", time=1.0)
        yield engine


def first_decision(engine: Engine) -> str:
    return next(engine.read(types=["Decision"])).id


def refused(engine: Engine, call: Callable[[], object], field: str) -> InvalidEvent:
    """Run ``call``, which must be refused naming ``field``, counted once, with nothing written or rebuilt."""
    seq, rejected, rebuilt = engine.log.last_seq(), sum(engine.stats().rejected.values()), engine.rebuilt
    with pytest.raises(InvalidEvent) as info:
        call()
    assert info.value.field == field, info.value
    assert engine.log.last_seq() == seq
    assert sum(engine.stats().rejected.values()) == rejected + 1
    assert engine.rebuilt is rebuilt  # refused before folding: the state never had to be rebuilt
    return info.value


def answer(engine: Engine, **fields: object) -> Callable[[], object]:
    """Feedback on the engine's first decision with ``fields`` besides valid success, quality and latency."""
    return lambda: engine.feedback(
        first_decision(engine), success=True, quality_score=0.8, response_time_ms=420.0, time=2.0, **fields
    )


# --- 1. an accepted call must never make the log unreadable ----------------------------------------


UNREADABLE_FEEDBACK = [
    ("user_id", NAN),
    ("session_id", math.inf),
    ("error", NAN),
    ("user_id", b"u1"),
    ("error", AWARE),
    ("metadata", {42: "x"}),
    ("metadata", {"k": b"v"}),
    ("decision_id", NAN),
]


@pytest.mark.parametrize(("field", "value"), UNREADABLE_FEEDBACK, ids=[f"{f}={v!r}" for f, v in UNREADABLE_FEEDBACK])
def test_values_msgpack_cannot_read_back_are_refused_and_the_log_stays_readable(
    engine: Engine, field: str, value: object
) -> None:
    bad = msgspec.structs.replace(Feedback(**VALID), **{field: value})  # past the constructor, as the engine sees it
    refused(engine, lambda: engine.publish(bad), field)
    if field != "decision_id":
        refused(engine, answer(engine, **{field: value}), field)
    with pytest.raises(InvalidEvent) as info:
        Feedback(**VALID, **{field: value})
    assert info.value.field == field
    engine.close()
    assert_sound(engine.location)
    assert cli_main(["inspect", engine.location]) == 0


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (lambda e: e.decide("greeting", unit=NAN, time=3.0), "unit"),
        (lambda e: e.decide("greeting", context={1: 0.5}, time=3.0), "context"),
        (lambda e: e.decide("greeting", context={"x": NAN}, time=3.0), "context"),
        (lambda e: e.define_study("other", space={"t": (0.0, 1.0)}, seed=NAN), "seed"),
        (lambda e: e.define_experiment("other", arms=["a", "b"], note=b"bytes"), "options"),
    ],
    ids=["decide-unit-nan", "decide-context-int-key", "decide-context-nan", "study-seed-nan", "options-bytes"],
)
def test_commands_refuse_what_the_log_could_not_read_back(engine: Engine, command: Callable, field: str) -> None:
    refused(engine, lambda: command(engine), field)
    engine.close()
    assert_sound(engine.location)


# --- 3. an int given for a float field is the same number, live and in replay ------------------------


def test_an_int_for_a_float_is_stored_as_the_float_replay_sees(engine: Engine) -> None:
    envelope = engine.feedback(first_decision(engine), success=True, quality_score=1, response_time_ms=300, time=2.0)
    assert type(envelope.payload.quality_score) is float  # live handlers fold what replay will decode
    assert type(envelope.payload.response_time_ms) is float
    engine.publish(Feedback(**{**VALID, "quality_score": 0, "cost_usd": 1}), time=3.0)
    stored = list(engine.read(types=[Feedback]))
    assert [e.payload for e in stored] == [e.payload for e in engine.read(types=[Feedback])]
    assert all(type(e.payload.quality_score) is float for e in stored)
    engine.close()
    assert_sound(engine.location)


def test_a_log_holding_an_int_for_a_float_verifies_clean(tmp_path: Path) -> None:
    """Logs written before inputs were normalised hold msgpack ints in float fields; replay derives floats."""
    written, old = tmp_path / "written.sqlite", tmp_path / "old.sqlite"
    with Engine.open(written, seed=5, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("greeting", arms=["v1", "v2"], policy="thompson", time=0.0)
        for second in range(3):
            decision = engine.decide("greeting", time=float(second))
            engine.feedback(decision.id, success=True, quality_score=1, response_time_ms=2, time=second + 0.5)
    source, target = open_log(written, read_only=True), open_log(old, seed=5)
    rows = []
    for row in source.rows():
        if row[2] == "Feedback":  # as the log was written then: the ints kept as given
            payload = msgspec.structs.replace(decode_payload("Feedback", row[9]), quality_score=1, response_time_ms=2)
            row = (*row[:9], encode_payload(payload))
            assert type(msgspec.msgpack.decode(row[9])["quality_score"]) is int
        rows.append(row)
    target.append(rows)
    source.close()
    target.close()
    report = Engine.verify(old, handlers=[BanditHandler()])
    assert report.ok, report.difference
    assert (report.decisions, report.derived) == (3, 3)


# --- 5. one call cannot write without bound ---------------------------------------------------------


@pytest.mark.parametrize("n", [3_000_000, 10_001, 2**80])
def test_suggest_refuses_more_than_max_batch(engine: Engine, n: int) -> None:
    refused(engine, lambda: engine.suggest("temperature", n=n, time=3.0), "n")
    assert len(engine.suggest("temperature", n=2, time=3.0)) == 2


def test_limits_are_configurable_and_bound_publish_many_and_suggest(tmp_path: Path) -> None:
    limits = Limits(max_batch=3, max_key_length=8, max_event_bytes=200)
    with Engine.open(tmp_path / "log.sqlite", seed=1, handlers=chains(), limits=limits) as engine:
        assert engine.limits == limits
        engine.define_study("s", space={"t": (0.0, 1.0)}, time=0.0)
        refused(engine, lambda: engine.suggest("s", n=4, time=1.0), "n")
        assert len(engine.suggest("s", n=3, time=1.0)) == 3
        refused(engine, lambda: engine.publish_many([Feedback(**VALID)] * 4), "events")
        refused(engine, lambda: engine.publish_many(Feedback(**VALID) for _ in range(10**9)), "events")
        assert len(engine.publish_many([Feedback(**VALID)] * 3)) == 3
        refused(engine, lambda: engine.publish(Feedback(**VALID), "s" * 9), "stream")
        refused(engine, lambda: engine.publish(Feedback(**VALID, metadata={"k": "v" * 200})), "payload")
        engine.publish(Feedback(**VALID), "s" * 8)
    assert_sound(tmp_path / "log.sqlite")


def test_limits_are_checked_when_built() -> None:
    with pytest.raises(InvalidEvent) as info:
        Engine.open(":memory:", handlers=[], limits=msgspec.structs.replace(Limits(), max_batch=0))
    assert info.value.field == "max_batch"


# --- 8. refusals are InvalidEvent naming the field, before anything is folded ------------------------


def test_numpy_scalars_are_accepted_as_their_python_values(engine: Engine) -> None:
    event = Feedback(
        **{
            **VALID,
            "quality_score": np.float64(0.5),
            "response_time_ms": np.float32(12.5),
            "success": np.bool_(True),
            "tokens_in": np.int64(7),
        }
    )
    assert (type(event.quality_score), type(event.response_time_ms), type(event.success), type(event.tokens_in)) == (
        float,
        float,
        bool,
        int,
    )
    assert engine.publish(event, time=2.0).payload == event
    answered = engine.feedback(
        first_decision(engine), success=np.bool_(False), quality_score=np.float64(0.25), response_time_ms=np.int16(9)
    )
    assert answered.payload.response_time_ms == 9.0 and answered.payload.success is False
    assert len(engine.suggest("temperature", n=np.int64(2), time=3.0)) == 2
    assert engine.decide("greeting", slots=np.int8(1), time=3.0).payload.arm in ("v1", "v2")
    refused(engine, lambda: engine.publish(Feedback(**VALID), time=2.0, id=np.str_("\ud800")), "id")
    with pytest.raises(InvalidEvent) as info:
        Feedback(**{**VALID, "tokens_in": np.float64(1.5)})
    assert info.value.field == "tokens_in"
    with pytest.raises(InvalidEvent) as info:
        Feedback(**{**VALID, "quality_score": np.array([0.5, 0.6])})
    assert info.value.field == "quality_score"
    engine.close()
    assert_sound(engine.location)


@pytest.mark.parametrize("field", ["prompt_id", "variant_id", "decision_id", "no_such_field"])
def test_feedback_refuses_a_field_the_decision_sets_or_an_unknown_one(engine: Engine, field: str) -> None:
    error = refused(engine, lambda: answer(engine, **{field: "x"})(), field)
    assert field in str(error)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokens_in", 2**64),
        ("tokens_out", -(2**63) - 1),
        ("error", SURROGATE),
        ("metadata", {"k": nested()}),
        ("metadata", {"k": "v", SURROGATE: "w"}),
        ("user_satisfaction", {1, 2}),
    ],
    ids=["int-2**64", "int-below-int64", "lone-surrogate", "deep-nesting", "surrogate-key", "set"],
)
def test_values_that_cannot_be_encoded_are_refused_before_folding(engine: Engine, field: str, value: object) -> None:
    bad = msgspec.structs.replace(Feedback(**VALID), **{field: value})
    error = refused(engine, lambda: engine.publish(bad, time=2.0), field)
    assert field in str(error)
    assert len(str(error)) < 1000  # the value is shown, shortened
    refused(engine, answer(engine, **{field: value}), field)
    with pytest.raises(InvalidEvent) as info:
        Feedback(**VALID, **{field: value})
    assert info.value.field == field


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("stream", ["a", "b"]), ("stream", b"greeting"), ("stream", 7), ("id", 7), ("id", ""), ("correlation_id", b"c")],
)
def test_envelope_arguments_of_the_wrong_type_are_refused(engine: Engine, keyword: str, value: object) -> None:
    refused(engine, lambda: engine.publish(Feedback(**VALID), time=2.0, **{keyword: value}), keyword)
    refused(engine, lambda: engine.publish_many([Draft(Feedback(**VALID), **{keyword: value})], time=2.0), keyword)
    engine.close()
    assert_sound(engine.location)
    assert cli_main(["inspect", engine.location]) == 0


def test_define_experiment_refusals_are_counted(engine: Engine) -> None:
    refused(engine, lambda: engine.define_experiment("other", arms=[]), "arms")
    refused(engine, lambda: engine.define_experiment("", arms=["a"]), "experiment")
    refused(engine, lambda: engine.define_experiment("other", arms=["a", "a"]), "arms")
    refused(engine, lambda: engine.define_study("other", space=[("t", (0, 1))]), "space")
    refused(engine, lambda: engine.define_study("other", space={"t": (0, 1)}, n_initial=0), "n_initial")
    for dimension in (np.float64(0.5), range(3), SURROGATE, {"type": "int", "low": SURROGATE}):
        refused(engine, lambda: engine.define_study("other", space={"t": dimension}), "space")  # noqa: B023


def test_command_arguments_of_the_wrong_type_are_refused(engine: Engine) -> None:
    refused(engine, lambda: engine.decide(["greeting"], time=3.0), "experiment")
    refused(
        engine,
        lambda: engine.feedback([first_decision(engine)], success=True, quality_score=0.5, response_time_ms=1.0),
        "decision_id",
    )
    refused(engine, lambda: engine.suggest({"temperature"}), "study")
    refused(engine, lambda: engine.tell(b"id", 1.0), "suggestion_id")
    suggestion = engine.suggest("temperature", time=3.0)[0]
    refused(engine, lambda: engine.tell(suggestion.id, 2**64), "value")
    refused(engine, lambda: engine.publish_many(7), "events")


# --- 9. wrong input is not accepted silently --------------------------------------------------------


def test_a_str_is_not_taken_apart_into_arms(engine: Engine) -> None:
    refused(engine, lambda: engine.define_experiment("other", arms="v1"), "arms")
    refused(engine, lambda: engine.decide("greeting", available="v1", time=3.0), "available")


def test_keys_longer_than_the_limit_or_unencodable_are_refused(engine: Engine) -> None:
    refused(engine, lambda: engine.publish(Feedback(**VALID), "s" * 201, time=2.0), "stream")
    refused(engine, lambda: engine.publish(Feedback(**VALID), SURROGATE, time=2.0), "stream")
    refused(engine, lambda: engine.publish(Feedback(**VALID), id="i" * 201, time=2.0), "id")
    refused(engine, lambda: engine.publish(Feedback(**VALID), correlation_id=SURROGATE, time=2.0), "correlation_id")
    assert engine.publish(Feedback(**VALID), "s" * 200, id="i" * 200, correlation_id="ü", time=2.0).seq > 0


@pytest.mark.parametrize(
    "fields",
    [{"error": "x" * 50 * 2**20}, {"metadata": {str(i): "" for i in range(20_000)}}],
    ids=["50-MB-error", "20k-metadata-keys"],
)
def test_payloads_over_the_size_limit_are_refused(engine: Engine, fields: dict[str, object]) -> None:
    error = refused(engine, lambda: engine.publish(Feedback(**VALID, **fields), time=2.0), "payload")
    assert error.value > engine.limits.max_event_bytes
    assert f"largest field is {next(iter(fields))}" in str(error)
    assert len(str(error)) < 1000
    refused(engine, answer(engine, **fields), "payload")


# --- fuzz: hostile values everywhere ----------------------------------------------------------------

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
KERNEL_PACKAGES = ("rtopt.", "handlers.", "streams.")
default_handlers()  # loading the installed handlers registers their event types
EVENT_TYPES = {tag: cls for tag, cls in registered_types().items() if cls.__module__.startswith(KERNEL_PACKAGES)}
DEEP = nested()

hostile_scalars = st.one_of(
    st.sampled_from([NAN, math.inf, -math.inf, -0.0, 1e308, 5e-324]),
    st.sampled_from([2**64, 2**63, -(2**63) - 1, 2**80, -1, 0, True, False]),
    st.binary(max_size=4),
    st.just(AWARE),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
    st.sampled_from(
        [
            np.float64(0.5),
            np.float32(NAN),
            np.int64(3),
            np.uint64(2**64 - 1),
            np.bool_(True),
            np.str_("x"),
            np.bytes_(b"x"),
            np.float16(2.0),
            np.complex128(1j),
            np.datetime64("2026-01-01"),
        ]
    ),
    st.just(None),
    st.sampled_from([object(), Feedback(**VALID), ...]),
    st.sampled_from([(), set(), frozenset({1}), range(3)]),
    st.just(DEEP),
)
hostile = st.recursive(
    hostile_scalars | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2) | st.integers(), inner, max_size=3),
    max_leaves=6,
)
names = st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=6)


def valid_value(info: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """Values that meet the type ``info`` and its constraints (floats kept moderate)."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.StrType):
        low = info.min_length or 0
        return st.text(st.characters(codec="utf-8"), min_size=low, max_size=max(low, min(info.max_length or 8, 8)))
    if isinstance(info, inspect.BoolType):
        return st.booleans()
    if isinstance(info, inspect.IntType):
        low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else -5)
        return st.integers(min_value=low, max_value=info.le if info.le is not None else low + 20)
    if isinstance(info, inspect.FloatType):
        low = info.ge if info.ge is not None else info.gt if info.gt is not None else -1e6
        high = info.le if info.le is not None else info.lt if info.lt is not None else 1e6
        return st.floats(low, high, exclude_min=info.gt is not None, exclude_max=info.lt is not None) | st.integers(
            math.ceil(low), math.floor(high)
        )
    if isinstance(info, inspect.NoneType):
        return st.none()
    if isinstance(info, inspect.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, inspect.UnionType):
        return st.one_of(*map(valid_value, info.types))
    if isinstance(info, inspect.ListType):
        low = info.min_length or 0
        return st.lists(valid_value(info.item_type), min_size=low, max_size=low + 2)
    if isinstance(info, inspect.DictType):
        low = info.min_length or 0
        return st.dictionaries(valid_value(info.key_type), valid_value(info.value_type), min_size=low, max_size=low + 2)
    if isinstance(info, inspect.StructType):
        return st.fixed_dictionaries(
            {f.name: valid_value(f.type) for f in info.fields if f.required},
            optional={f.name: valid_value(f.type) for f in info.fields if not f.required},
        ).map(lambda kwargs: info.cls(**kwargs))
    return hostile


def maybe_hostile(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``strategy``; one draw in eight a hostile value instead."""
    return st.integers(0, 7).flatmap(lambda k: hostile if k == 0 else strategy)


def event_arguments(cls: type[Event]) -> st.SearchStrategy[dict[str, Any]]:
    fields = msgspec.inspect.type_info(cls).fields
    return st.fixed_dictionaries(
        {f.name: maybe_hostile(valid_value(f.type)) for f in fields if f.required},
        optional={f.name: maybe_hostile(valid_value(f.type)) for f in fields if not f.required}
        | {"no_such_field": hostile},
    )


def check_refusal(error: InvalidEvent, allowed: set[str] | None = None) -> None:
    assert error.field, error
    if allowed is not None:
        assert error.field in allowed, error


def test_the_fuzz_covers_every_event_type_of_the_kernel_and_the_installed_handlers() -> None:
    assert {"Feedback", "Decision", "StudyDefined", "Example", "WindowClosed", "FeedbackFlagged"} <= set(EVENT_TYPES)


@pytest.mark.parametrize("tag", sorted(EVENT_TYPES))
def test_every_event_constructor_refuses_or_builds_what_the_log_reads_back(tag: str, tmp_path: Path) -> None:
    cls = EVENT_TYPES[tag]
    fields = set(cls.__struct_fields__) | {"no_such_field"}
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[]) as engine:  # storage only: what handlers make of it is not the point

        @settings(FUZZ, max_examples=40)
        @given(arguments=event_arguments(cls), stream=st.none() | maybe_hostile(names))
        def build_and_publish(arguments: dict[str, Any], stream: Any) -> None:
            try:
                event = cls(**arguments)
            except InvalidEvent as error:
                check_refusal(error, fields)
                return
            data = encode_payload(event)
            assert decode_payload(tag, data) == event  # read back as built, and built as it is folded
            assert encode_payload(decode_payload(tag, data)) == data
            assert validate(event) == event
            before = engine.log.last_seq()
            try:
                engine.publish(event, stream, time=1.0)
            except InvalidEvent as error:
                check_refusal(error, fields | {"stream", "payload"})
                assert engine.log.last_seq() == before

        build_and_publish()
    assert_sound(path, handlers=[])


Call = Callable[[Engine, st.DataObject], object]


def fuzz_publish(engine: Engine, data: st.DataObject) -> object:
    experiment = ExperimentDefined(experiment=data.draw(names), arms=["a", "b"], policy="thompson")
    event = Feedback(**VALID) if data.draw(st.booleans()) else experiment
    field = data.draw(st.sampled_from(event.__struct_fields__))
    event = msgspec.structs.replace(event, **{field: data.draw(maybe_hostile(st.just(getattr(event, field))))})
    envelope = {k: data.draw(st.none() | maybe_hostile(names)) for k in ("stream", "id", "correlation_id")}
    return engine.publish(event, **envelope, time=data.draw(maybe_hostile(st.just(5.0))))


def fuzz_publish_many(engine: Engine, data: st.DataObject) -> object:
    feedback = Feedback(**VALID)
    item = st.builds(lambda user: msgspec.structs.replace(feedback, user_id=user), maybe_hostile(names)) | hostile
    draft = st.builds(Draft, item, stream=st.none() | maybe_hostile(names), id=st.none() | maybe_hostile(names))
    return engine.publish_many(data.draw(maybe_hostile(st.lists(item | draft, max_size=3))), time=6.0)


def fuzz_define_experiment(engine: Engine, data: st.DataObject) -> object:
    options = data.draw(st.dictionaries(st.sampled_from(["decay", "note"]), maybe_hostile(st.floats(0, 1)), max_size=1))
    return engine.define_experiment(
        data.draw(maybe_hostile(names)),
        data.draw(maybe_hostile(st.lists(names, min_size=1, max_size=3))),
        data.draw(maybe_hostile(st.sampled_from(["thompson", "ucb1", "epsilon_greedy"]))),
        time=7.0,
        **options,
    )


def fuzz_decide(engine: Engine, data: st.DataObject) -> object:
    return engine.decide(
        data.draw(maybe_hostile(st.just("greeting"))),
        context=data.draw(st.none() | maybe_hostile(st.dictionaries(names, st.floats(-9, 9), max_size=2))),
        available=data.draw(st.none() | maybe_hostile(st.lists(st.sampled_from(["v1", "v2"]), min_size=1))),
        unit=data.draw(st.none() | maybe_hostile(names)),
        slots=data.draw(maybe_hostile(st.integers(1, 2))),
        time=8.0,
    )


def fuzz_feedback(engine: Engine, data: st.DataObject) -> object:
    decisions = [e.id for e in engine.read(types=["Decision"])]
    extra = data.draw(
        st.dictionaries(
            st.sampled_from(["user_id", "error", "metadata", "tokens_in", "cost_usd", "prompt_id", "junk"]),
            hostile,
            max_size=2,
        )
    )
    return engine.feedback(
        data.draw(maybe_hostile(st.sampled_from(decisions))),
        success=data.draw(maybe_hostile(st.booleans())),
        quality_score=data.draw(maybe_hostile(st.floats(0, 1))),
        response_time_ms=data.draw(maybe_hostile(st.integers(0, 500))),
        time=9.0,
        **extra,
    )


def fuzz_define_study(engine: Engine, data: st.DataObject) -> object:
    dimension = st.tuples(st.floats(-5, 0), st.floats(1, 5)) | st.fixed_dictionaries(
        {"type": st.sampled_from(["int", "categorical", "log"])}, optional={"low": hostile, "choices": hostile}
    )
    return engine.define_study(
        data.draw(maybe_hostile(names)),
        data.draw(maybe_hostile(st.dictionaries(names, maybe_hostile(dimension), min_size=1, max_size=2))),
        seed=data.draw(st.none() | maybe_hostile(st.integers(0, 9))),
        n_initial=data.draw(maybe_hostile(st.integers(1, 3))),
        time=10.0,
    )


def fuzz_suggest(engine: Engine, data: st.DataObject) -> object:
    return engine.suggest(
        data.draw(maybe_hostile(st.just("temperature"))), n=data.draw(maybe_hostile(st.integers(1, 2))), time=11.0
    )


def fuzz_tell(engine: Engine, data: st.DataObject) -> object:
    suggestions = [e.id for e in engine.read(types=["Suggested"])]
    return engine.tell(
        data.draw(maybe_hostile(st.sampled_from(suggestions))), data.draw(maybe_hostile(st.floats(-9, 9))), time=12.0
    )


CALLS: list[Call] = [
    fuzz_publish,
    fuzz_publish_many,
    fuzz_define_experiment,
    fuzz_decide,
    fuzz_feedback,
    fuzz_define_study,
    fuzz_suggest,
    fuzz_tell,
]


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_engine_calls_refuse_cleanly_and_leave_a_log_that_opens_reads_and_verifies(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "log.sqlite"
    with Engine.open(path, seed=2, handlers=chains(), limits=Limits(max_batch=20)) as engine:
        engine.define_experiment("greeting", arms=["v1", "v2"], policy="thompson", time=0.0)
        engine.define_study("temperature", space={"t": (0.0, 1.0)}, n_initial=2, time=0.0)
        engine.decide("greeting", time=1.0)
        engine.suggest("temperature", time=1.0)
        for call in data.draw(st.lists(st.sampled_from(CALLS), min_size=1, max_size=6)):
            seq, rejected = engine.log.last_seq(), sum(engine.stats().rejected.values())
            try:
                call(engine, data)
            except InvalidEvent as error:
                check_refusal(error)
                assert engine.log.last_seq() == seq, error
                assert sum(engine.stats().rejected.values()) == rejected + 1, error
            else:
                assert engine.log.last_seq() >= seq
    assert_sound(path)


def test_an_id_the_engine_generates_for_a_later_input_is_refused_and_later_writes_go_on(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    namespace = b"rtopt/input/7/"
    rating = {"prompt_id": "p", "variant_id": "v", "response_time_ms": 1.0, "success": True, "quality_score": 0.5}
    with Engine.open(path, seed=7, handlers=[]) as engine:
        fifth = ordered_id(5, namespace, "5")
        with pytest.raises(InvalidEvent, match="later input of its own") as refused:
            engine.publish(Feedback(**rating), id=fifth, time=1.0)
        assert refused.value.field == "id" and engine.stats().rejected == {"reserved id": 1}
        # the id an input gets anyway is no threat: republishing a log's inputs in order keeps their ids
        first = engine.publish(Feedback(**rating), id=ordered_id(1, namespace, "1"), time=1.0)
        written = [engine.publish(Feedback(**rating), time=2.0 + i) for i in range(6)]
        assert fifth in {envelope.id for envelope in written} and first.seq == 1
    assert Engine.verify(path).ok

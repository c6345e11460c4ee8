"""Event validation, payload encoding, the tag registry and what Engine.publish accepts."""

from __future__ import annotations

import json
import math
import types

import msgspec
import pytest

import rtopt
from rtopt import Engine, Event, ExperimentDefined, Feedback, InvalidEvent, UnknownEventType
from rtopt.events import decode_payload, encode_payload, event_from_dict, event_type, registered_types

VALID = {
    "prompt_id": "greeting",
    "variant_id": "v1",
    "response_time_ms": 420.0,
    "success": True,
    "quality_score": 0.8,
}


def feedback(**changes: object) -> Feedback:
    return Feedback(**{**VALID, **changes})


# --- field validation ----------------------------------------------------------------------------

INVALID_VALUES = [
    ("response_time_ms", -1.0),
    ("response_time_ms", -0.001),
    ("quality_score", 1.7),
    ("quality_score", -0.5),
    ("quality_score", math.nan),
    ("response_time_ms", math.nan),
    ("cost_usd", math.nan),
    ("user_satisfaction", math.nan),
    ("user_satisfaction", math.inf),
    ("quality_score", math.inf),
    ("response_time_ms", math.inf),
    ("response_time_ms", -math.inf),
    ("cost_usd", math.inf),
    ("quality_score", "high"),
    ("success", "yes"),
    ("tokens_in", 1.5),
    ("user_satisfaction", -0.1),
    ("user_satisfaction", 1.01),
    ("tokens_in", -1),
    ("tokens_out", -3),
    ("cost_usd", -0.01),
    ("prompt_id", ""),
    ("variant_id", ""),
    ("environment", ""),
    ("prompt_id", "x" * 201),
]


@pytest.mark.parametrize(("field", "value"), INVALID_VALUES, ids=[f"{f}={v!r}"[:40] for f, v in INVALID_VALUES])
def test_invalid_feedback_field_raises_invalid_event_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(InvalidEvent) as info:
        feedback(**{field: value})
    exc = info.value
    assert exc.field == field
    message = str(exc)
    assert field in message
    assert repr(value) in message
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(exc.value, float) and math.isnan(exc.value)
    else:
        assert exc.value == value
    assert isinstance(exc, ValueError)  # callers may catch it as a ValueError


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_reported_as_such(value: float) -> None:
    with pytest.raises(InvalidEvent, match="finite") as info:
        feedback(quality_score=value)
    assert info.value.field == "quality_score"


@pytest.mark.parametrize("missing", ["success", "prompt_id", "quality_score", "response_time_ms"])
def test_missing_required_field(missing: str) -> None:
    fields = {k: v for k, v in VALID.items() if k != missing}
    with pytest.raises(InvalidEvent) as info:
        Feedback(**fields)
    assert info.value.field == missing
    assert missing in str(info.value)


def test_unknown_keyword_is_invalid_event() -> None:
    with pytest.raises(InvalidEvent) as info:
        feedback(qualty_score=0.5)
    assert "qualty_score" in str(info.value)


def test_boundary_values_are_accepted() -> None:
    event = feedback(
        quality_score=0.0,
        user_satisfaction=1.0,
        response_time_ms=0.0,
        cost_usd=0.0,
        tokens_in=0,
        prompt_id="x" * 200,
    )
    assert event.quality_score == 0.0
    assert feedback(quality_score=1.0).quality_score == 1.0


def test_invalid_nested_value() -> None:
    with pytest.raises(InvalidEvent) as info:
        ExperimentDefined(experiment="e", arms=["a", ""], policy="thompson")
    assert info.value.field == "arms"
    with pytest.raises(InvalidEvent) as info:
        ExperimentDefined(experiment="e", arms=[], policy="thompson")
    assert info.value.field == "arms"


# --- payload encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        feedback(),
        feedback(
            decision_id="d-1",
            user_satisfaction=0.25,
            error="timeout",
            cost_usd=0.0123,
            tokens_in=17,
            tokens_out=2**40,
            environment="staging",
            user_id="u",
            session_id="s",
            metadata={"k": "v", "ünïcode": "✓"},
            quality_score=1.0,
            response_time_ms=1e-300,
        ),
        feedback(quality_score=0.1 + 0.2, response_time_ms=1e300),
        ExperimentDefined(experiment="e", arms=["a", "b"], policy="thompson", options={"x": 1, "y": 0.5, "z": "s"}),
    ],
)
def test_payload_round_trip(event: Event) -> None:
    data = encode_payload(event)
    assert isinstance(data, bytes)
    back = decode_payload(event.tag(), data)
    assert type(back) is type(event)
    assert back == event
    assert msgspec.structs.asdict(back) == msgspec.structs.asdict(event)
    assert encode_payload(back) == data


def test_decode_payload_unknown_tag() -> None:
    with pytest.raises(UnknownEventType):
        decode_payload("NoSuchEventTypeAnywhere", encode_payload(feedback()))


# --- event_from_dict -----------------------------------------------------------------------------


def test_event_from_dict_valid() -> None:
    assert event_from_dict({"type": "Feedback", **VALID}) == feedback()


def test_event_from_dict_missing_field() -> None:
    data = {"type": "Feedback", **VALID}
    del data["success"]
    with pytest.raises(InvalidEvent) as info:
        event_from_dict(data)
    assert info.value.field == "success"
    assert "success" in str(info.value)


def test_event_from_dict_invalid_value() -> None:
    with pytest.raises(InvalidEvent) as info:
        event_from_dict({"type": "Feedback", **VALID, "quality_score": 1.7})
    assert info.value.field == "quality_score"
    assert info.value.value == 1.7


def test_event_from_dict_unknown_tag() -> None:
    with pytest.raises(UnknownEventType, match="NoSuchEventTypeAnywhere"):
        event_from_dict({"type": "NoSuchEventTypeAnywhere", **VALID})


@pytest.mark.parametrize("data", [{**VALID}, {}, ["Feedback"], None])
def test_event_from_dict_without_type(data: object) -> None:
    with pytest.raises(InvalidEvent) as info:
        event_from_dict(data)  # type: ignore[arg-type]
    assert info.value.field == "type"


@pytest.mark.parametrize("field", ["response_time_ms", "cost_usd"])
def test_event_from_dict_rejects_infinity_like_the_constructor(field: str) -> None:
    # JSON as Python's json module reads it: "Infinity" becomes float('inf'). The constructor refuses a
    # non-finite value; the module promises the same constraints when an event is decoded from JSON.
    data = json.loads(json.dumps({"type": "Feedback", **VALID, field: math.inf}))
    assert data[field] == math.inf
    with pytest.raises(InvalidEvent) as info:
        event_from_dict(data)
    assert info.value.field == field


# --- the registry --------------------------------------------------------------------------------


def _define(name: str, module: str, qualname: str | None = None) -> type[Event]:
    def body(ns: dict) -> None:
        ns["__module__"] = module
        ns["__qualname__"] = qualname or name
        ns["__annotations__"] = {"value": int}

    return types.new_class(name, (Event,), {"frozen": True}, body)


def test_same_name_in_another_module_is_refused() -> None:
    first = _define("RtoptTestClashProbe", "tests.fake_plugin_a")
    assert event_type("RtoptTestClashProbe") is first
    with pytest.raises(TypeError, match="RtoptTestClashProbe"):
        _define("RtoptTestClashProbe", "tests.fake_plugin_b")
    assert event_type("RtoptTestClashProbe") is first
    assert first(value=3).value == 3


def test_kernel_tag_cannot_be_taken_over() -> None:
    with pytest.raises(TypeError, match=r"rtopt\.events\.Feedback"):
        _define("Feedback", "some_plugin.events")
    with pytest.raises(TypeError):

        class Feedback(Event, frozen=True):  # same module as this test, but a different qualname
            value: int

    assert event_type("Feedback") is rtopt.Feedback
    assert registered_types()["Feedback"] is rtopt.Feedback


def test_redefinition_at_the_same_place_replaces_the_type() -> None:
    # what importlib.reload does: same module and qualname
    first = _define("RtoptTestReloadProbe", "tests.fake_plugin_reload")
    second = _define("RtoptTestReloadProbe", "tests.fake_plugin_reload")
    assert first is not second
    assert event_type("RtoptTestReloadProbe") is second


def test_registered_types_is_a_copy() -> None:
    found = registered_types()
    found["Feedback"] = ExperimentDefined  # type: ignore[assignment]
    assert event_type("Feedback") is rtopt.Feedback


# --- what Engine.publish accepts -----------------------------------------------------------------


class NotAnEvent(msgspec.Struct, frozen=True):
    prompt_id: str = "greeting"


class LooksLikeFeedback(msgspec.Struct, frozen=True, tag="Feedback"):
    prompt_id: str = "greeting"


@pytest.mark.parametrize(
    "obj", [dict(VALID), {"type": "Feedback", **VALID}, NotAnEvent(), LooksLikeFeedback(), "Feedback", None]
)
def test_publish_refuses_non_events(tmp_path, obj: object) -> None:
    with Engine.open(tmp_path / "log.sqlite", seed=1, handlers=[]) as engine:
        engine.publish(feedback())
        before = engine.log.last_seq()
        with pytest.raises(InvalidEvent) as info:
            engine.publish(obj, "greeting")  # type: ignore[arg-type]
        assert info.value.field == "type"
        assert engine.log.last_seq() == before == 1
        assert engine.stats().last_seq == 1
        assert engine.stats().published == 1
        assert sum(engine.stats().rejected.values()) == 1
        with pytest.raises(InvalidEvent):
            engine.publish_many([feedback(), obj], "greeting")  # type: ignore[list-item]
        assert engine.log.last_seq() == 1
        assert sum(engine.stats().rejected.values()) == 2
        # the engine still works afterwards
        assert engine.publish(feedback()).seq == 2


def test_publish_without_stream_is_refused(tmp_path) -> None:
    with Engine.open(tmp_path / "log.sqlite", seed=1, handlers=[]) as engine:
        from rtopt import FeedbackRejected

        with pytest.raises(InvalidEvent) as info:
            engine.publish(FeedbackRejected(reason="r"))
        assert info.value.field == "stream"
        assert engine.log.last_seq() == 0
        assert engine.stats().rejected == {"no stream": 1}


@pytest.mark.parametrize("when", [math.nan, math.inf, "yesterday", True])
def test_publish_with_bad_time_is_refused(tmp_path, when: object) -> None:
    with Engine.open(tmp_path / "log.sqlite", seed=1, handlers=[]) as engine:
        with pytest.raises(InvalidEvent) as info:
            engine.publish(feedback(), time=when)  # type: ignore[arg-type]
        assert info.value.field == "time"
        assert engine.log.last_seq() == 0


def test_publish_revalidates_events_built_without_the_constructor(tmp_path) -> None:
    # msgspec.structs.replace builds a Struct without calling the class, so without the constructor's
    # checks. Such an event must not reach the log: its payload would fail decoding and make the log
    # unreadable for good (the log is append-only).
    invalid = msgspec.structs.replace(feedback(), quality_score=5.0)
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[]) as engine:
        with pytest.raises(InvalidEvent) as info:
            engine.publish(invalid)
        assert info.value.field == "quality_score"
        assert engine.log.last_seq() == 0
    with Engine.open(path, seed=1, handlers=[]) as engine:
        assert [env.payload for env in engine.read()] == []

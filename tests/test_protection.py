"""Feedback protection: each abuse signal on a constructed stream, clean traffic left alone, and flagged
feedback kept in the log but out of what the bandit learns, live and in replay."""

from __future__ import annotations

from pathlib import Path

import pytest
from rtopt.handlers.bandits import BanditHandler
from rtopt.handlers.experiments import ExperimentHandler
from rtopt.handlers.protection import FeedbackGuard, ProtectionHandler

from rtopt import Engine, Feedback, InvalidEvent


def feedback(user: str | None = "u1", quality: float = 0.7, ms: float = 300.0, **fields) -> Feedback:
    return Feedback(
        prompt_id="g", variant_id="v", response_time_ms=ms, success=True, quality_score=quality, user_id=user, **fields
    )


def verdicts(guard: FeedbackGuard, stream: list[tuple[float, Feedback]]) -> list[list[str]]:
    return [guard.check(fb, t) for t, fb in stream]


def test_clean_traffic_is_not_flagged() -> None:
    stream = [(10.0 * i, feedback(f"u{i % 7}", quality=0.5 + (i % 5) / 10)) for i in range(500)]
    assert all(v == [] for v in verdicts(FeedbackGuard(), stream))


def test_a_user_past_the_limit_within_the_window_is_flagged_until_the_window_slides() -> None:
    guard = FeedbackGuard(user_limit=3, window_s=60.0)
    stream = [(t, feedback(quality=0.5 + t / 1000)) for t in (0.0, 10.0, 20.0, 30.0, 40.0, 95.0)]
    flagged = ["user_rate_limit" in v for v in verdicts(guard, stream)]
    # at t=30 and 40 the window (t - 60, t] holds 4 and 5; at 95 it holds 40 and 95: 2
    assert flagged == [False, False, False, True, True, False]


def test_a_source_has_its_own_limit() -> None:
    guard = FeedbackGuard(source_limit=4)
    stream = [(float(t), feedback(f"u{t}", metadata={"source": "widget"})) for t in range(6)]
    assert ["source_rate_limit" in v for v in verdicts(guard, stream)] == [False] * 4 + [True] * 2


def test_bursts_repeats_extremes_and_implausible_timing_are_each_recognised() -> None:
    burst = verdicts(FeedbackGuard(burst_count=3), [(t, feedback(quality=t)) for t in (0.0, 0.3, 0.6)])
    assert burst[-1] == ["burst"] and burst[:2] == [[], []]
    repeated = verdicts(FeedbackGuard(repeat_limit=3), [(10.0 * i, feedback()) for i in range(3)])
    assert repeated == [[], [], ["identical_payloads"]]
    extremes = verdicts(FeedbackGuard(extreme_run=4), [(10.0 * i, feedback(quality=float(i % 2))) for i in range(4)])
    assert extremes == [[], [], [], ["extreme_ratings_only"]]
    assert FeedbackGuard().check(feedback(ms=0.2), 0.0) == ["implausible_timing"]


def test_reliability_is_the_laplace_share_of_clean_feedback_and_a_low_one_flags_the_user() -> None:
    guard = FeedbackGuard(burst_count=2, burst_s=1.0, extreme_run=3, min_reliability=0.45)
    stream = [(0.0, feedback(quality=0.1)), (0.5, feedback(quality=0.2)), (0.9, feedback(quality=0.3))]
    stream += [(100.0, feedback(quality=0.4))]
    assert verdicts(guard, stream) == [[], ["burst"], ["burst"], ["unreliable_user"]]
    # before the 4th: 3 judged (at least extreme_run), 1 clean, 2 flagged -> 2/5 = 0.4 < 0.45; after: 2/6
    assert guard.reliability("u1") == pytest.approx(2 / 6)
    assert guard.reliability("nobody") is None


def test_feedback_without_a_user_is_judged_on_its_source_and_timing_only() -> None:
    guard = FeedbackGuard(burst_count=2)
    assert verdicts(guard, [(0.0, feedback(None)), (0.1, feedback(None))]) == [[], []]
    assert guard.users == {}


def test_bad_settings_name_the_field_and_the_value() -> None:
    with pytest.raises(InvalidEvent) as raised:
        FeedbackGuard(user_limit=1)
    assert (raised.value.field, raised.value.value) == ("user_limit", 1)


def test_flagged_feedback_stays_in_the_log_marked_and_the_bandit_does_not_learn_from_it(tmp_path: Path) -> None:
    guard = FeedbackGuard(burst_count=3, burst_s=2.0)
    handlers = [BanditHandler(guard=guard), ProtectionHandler(guard)]
    path = tmp_path / "guarded.sqlite"
    with Engine.open(path, seed=4, handlers=handlers) as engine:
        engine.define_experiment("g", arms=["a", "b"], policy="thompson", time=0.0)
        learnt_quality = []
        for i in range(40):
            t = 10.0 * i
            decision = engine.decide("g", time=t)
            spam = i % 10 == 9  # every 10th request a user floods three answers within a second
            user = "spammer" if spam else f"user-{i}"
            for k in range(3 if spam else 1):
                quality = 0.1 if spam else 0.8
                engine.publish(
                    Feedback(
                        prompt_id="g",
                        variant_id=decision.arm,
                        decision_id=decision.id,
                        response_time_ms=200.0,
                        success=True,
                        quality_score=quality,
                        user_id=user,
                    ),
                    time=t + 1.0 + k * 0.3,
                )
            if not spam:
                learnt_quality.append(quality)
        flagged = [e for e in engine.read(types=["FeedbackFlagged"])]
        rejected = [e for e in engine.read(types=["FeedbackRejected"]) if e.payload.reason.startswith("flagged")]
        feedback_ids = {e.id for e in engine.read(types=["Feedback"])}
        arms = engine.state("bandit", "g").arms
        assert len(feedback_ids) == 40 + 4 * 2  # every answer stays in the log
        assert [e.payload.reasons for e in flagged] == [["burst"]] * 4  # the third of each flood
        assert {e.payload.feedback_id for e in flagged} <= feedback_ids
        assert [e.causation_id for e in rejected] == [e.causation_id for e in flagged]
        learnt = sum(arm.rewards for arm in arms.values())
        # the first answer of a flood is learnt (binary reward 0), the second is a duplicate, the third flagged
        assert learnt == 36 + 4
        assert engine.state("bandit").ledger.rejected["flagged by the feedback guard"] == 4
    assert Engine.verify(path, handlers=[BanditHandler(guard=guard), ProtectionHandler(guard)]).ok


def test_a_rate_limit_passed_is_recorded_once_per_passing() -> None:
    handler = ProtectionHandler(FeedbackGuard(user_limit=2, window_s=60.0))
    with Engine.open(":memory:", seed=1, handlers=[handler]) as engine:
        for t in (0.0, 5.0, 10.0, 15.0, 100.0, 105.0, 110.0):
            engine.publish(feedback(quality=0.3 + t / 1000), time=t)
        passed = [(e.time, e.payload.count) for e in engine.read(types=["RateLimitExceeded"])]
    assert passed == [(10.0, 3), (110.0, 3)]


def test_an_ab_test_does_not_analyse_flagged_feedback(tmp_path: Path) -> None:
    guard = FeedbackGuard(min_response_ms=20.0)  # a response faster than 20 ms is implausible
    path = tmp_path / "guarded-ab.sqlite"
    with Engine.open(path, seed=4, handlers=[ExperimentHandler(guard=guard)]) as engine:
        engine.define_experiment("ab", arms=["control", "v2"], policy="ab_test", start=True, time=0.0)
        for i in range(30):
            decision = engine.decide("ab", unit=f"user-{i}", time=10.0 * i)
            implausible = i % 3 == 2
            engine.feedback(
                decision.id,
                success=True,
                quality_score=0.1 if implausible else 0.8,
                response_time_ms=5.0 if implausible else 300.0,
                time=10.0 * i + 1.0,
            )
        exp = engine.state("experiments", "ab")
        rejected = [e.payload for e in engine.read(types=["FeedbackRejected"])]
        assert sum(arm.feedback for arm in exp.stats.values()) == 20
        assert all(arm.reward.mean == pytest.approx(0.8) for arm in exp.stats.values() if arm.feedback)
        assert [(r.reason, r.handler) for r in rejected] == [("flagged by the feedback guard", "experiments")] * 10
    assert Engine.verify(path, handlers=[ExperimentHandler(guard=guard)]).ok

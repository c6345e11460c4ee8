"""The bandit handler: experiments, their decisions, and learning from the feedback on them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from handlers.bandits import thompson
from handlers.bandits.thompson import BetaArm, ThompsonOptions
from rtopt import (
    ArmUpdated,
    Context,
    Decision,
    Envelope,
    Event,
    ExperimentDefined,
    Feedback,
    FeedbackRejected,
    Handler,
    InvalidEvent,
)


class ExperimentState(msgspec.Struct):
    """One experiment: its arms in definition order, their posteriors and its options."""

    policy: str
    options: ThompsonOptions
    arms: dict[str, BetaArm]
    decisions: int = 0


class PendingDecision(msgspec.Struct, array_like=True):
    """A decision still waiting for its feedback."""

    experiment: str
    arm: str
    time: float


class BanditState(msgspec.Struct):
    """Everything the bandit handler knows; rebuilt by replay and stored in snapshots.

    ``horizon`` lists (event time, id) of every decision still remembered, oldest first from
    ``horizon_start``; a decision leaves ``pending`` when its feedback is learnt (it then stays in
    ``settled``, with the feedback's time, to recognise a second feedback) and both forget it once it is
    older than the horizon.
    """

    experiments: dict[str, ExperimentState] = {}
    pending: dict[str, PendingDecision] = {}
    settled: dict[str, float] = {}
    horizon: list[tuple[float, str]] = []
    horizon_start: int = 0
    rejected: dict[str, int] = {}


class BanditHandler(Handler[BanditState]):
    """Runs bandit experiments: answers ``decide`` and learns from feedback that names its decision.

    Feedback is matched to its decision by ``decision_id`` within ``feedback_horizon_s`` seconds of event
    time. Feedback for an unknown or expired decision, a second feedback for one decision, or feedback
    whose prompt and variant do not match its decision is rejected with a ``FeedbackRejected`` event and
    never changes what the policy learnt.

    >>> from rtopt import Engine
    >>> with Engine.open(":memory:", seed=1, handlers=[BanditHandler()]) as engine:
    ...     _ = engine.define_experiment("g", arms=["a", "b"], policy="thompson")
    ...     d = engine.decide("g", time=0.0)
    ...     _ = engine.feedback(d.id, success=True, quality_score=0.9, response_time_ms=80.0, time=1.0)
    ...     arm = engine.state("bandit", "g").arms[d.arm]
    ...     (arm.pulls, arm.alpha, arm.beta)
    (1, 2.0, 1.0)
    """

    name = "bandit"
    accepts = (ExperimentDefined, Decision, Feedback)
    state_type = BanditState
    policies: ClassVar[tuple[str, ...]] = ("thompson",)

    def __init__(self, feedback_horizon_s: float = 86_400.0) -> None:
        if not feedback_horizon_s > 0:
            raise ValueError(f"feedback_horizon_s must be positive, not {feedback_horizon_s!r}")
        self.feedback_horizon_s = feedback_horizon_s

    def config(self) -> dict[str, Any]:
        return {"feedback_horizon_s": self.feedback_horizon_s}

    def initial_state(self) -> BanditState:
        return BanditState()

    # --- commands' side ----------------------------------------------------------------------------

    def check_definition(self, state: BanditState, definition: ExperimentDefined) -> None:
        if definition.experiment in state.experiments:
            raise InvalidEvent(
                f"experiment = {definition.experiment!r}: already defined",
                field="experiment",
                value=definition.experiment,
            )
        repeated = sorted({arm for arm in definition.arms if definition.arms.count(arm) > 1})
        if repeated:
            raise InvalidEvent(
                f"arms = {definition.arms!r}: {repeated} appear more than once", field="arms", value=definition.arms
            )
        _options(definition)

    def has_experiment(self, state: BanditState, experiment: str) -> bool:
        return experiment in state.experiments

    def decide(
        self,
        state: BanditState,
        experiment: str,
        ctx: Context,
        context: dict[str, float] | None,
        available: Sequence[str] | None,
    ) -> Decision:
        exp = state.experiments[experiment]
        candidates = list(exp.arms) if available is None else list(available)
        unknown = [arm for arm in candidates if arm not in exp.arms]
        if unknown or not candidates:
            raise InvalidEvent(
                f"available = {candidates!r}: "
                + (f"{unknown} are not arms of {experiment!r}" if unknown else "no arm to choose from"),
                field="available",
                value=candidates,
            )
        index, propensity = thompson.choose(
            [exp.arms[arm] for arm in candidates], ctx.rng, exp.options.propensity_draws
        )
        return Decision(
            experiment=experiment,
            arm=candidates[index],
            policy=exp.policy,
            propensity=propensity,
            candidates=candidates,
            context=context,
        )

    def view(self, state: BanditState, key: str | None = None) -> Any:
        if key is None:
            return super().view(state)
        return msgspec.convert(msgspec.to_builtins(state.experiments[key]), ExperimentState)

    # --- the fold ----------------------------------------------------------------------------------

    def apply(self, state: BanditState, envelope: Envelope[Any], ctx: Context) -> tuple[BanditState, Sequence[Event]]:
        event = envelope.payload
        if isinstance(event, Feedback):
            return state, self._learn(state, envelope, event)
        if isinstance(event, Decision):
            exp = state.experiments.get(event.experiment)
            if exp is not None and event.arm in exp.arms:
                exp.decisions += 1
                exp.arms[event.arm].pulls += 1
                state.pending[envelope.id] = PendingDecision(event.experiment, event.arm, envelope.time)
                state.horizon.append((envelope.time, envelope.id))
            return state, ()
        if isinstance(event, ExperimentDefined) and event.experiment not in state.experiments:
            options = _options(event)
            state.experiments[event.experiment] = ExperimentState(
                policy=event.policy,
                options=options,
                arms={arm: BetaArm(alpha=options.prior_alpha, beta=options.prior_beta) for arm in event.arms},
            )
        return state, ()

    def _learn(self, state: BanditState, envelope: Envelope[Any], feedback: Feedback) -> Sequence[Event]:
        decision_id = feedback.decision_id
        if decision_id is None:
            return ()
        self._expire(state, envelope.time)
        pending = state.pending.get(decision_id)
        if pending is None:
            reason = "duplicate feedback" if decision_id in state.settled else "unknown or expired decision"
            return self._reject(state, reason, decision_id)
        if (pending.experiment, pending.arm) != (feedback.prompt_id, feedback.variant_id):
            return self._reject(state, "feedback does not match its decision", decision_id)
        del state.pending[decision_id]
        state.settled[decision_id] = envelope.time
        exp = state.experiments[pending.experiment]
        arm = exp.arms[pending.arm]
        reward = thompson.reward(feedback, exp.options)
        arm.learn(reward)
        return (
            ArmUpdated(
                experiment=pending.experiment,
                arm=pending.arm,
                reward=reward,
                pulls=arm.pulls,
                posterior=arm.posterior(),
                decision_id=decision_id,
            ),
        )

    def _reject(self, state: BanditState, reason: str, decision_id: str) -> Sequence[Event]:
        state.rejected[reason] = state.rejected.get(reason, 0) + 1
        return (FeedbackRejected(reason=reason, decision_id=decision_id, handler=self.name),)

    def _expire(self, state: BanditState, now: float) -> None:
        """Forget decisions made more than the horizon before ``now``."""
        cutoff = now - self.feedback_horizon_s
        horizon, start = state.horizon, state.horizon_start
        while start < len(horizon) and horizon[start][0] < cutoff:
            decision_id = horizon[start][1]
            state.pending.pop(decision_id, None)
            state.settled.pop(decision_id, None)
            start += 1
        if start > 1024 and 2 * start > len(horizon):
            del horizon[:start]
            start = 0
        state.horizon_start = start


def _options(definition: ExperimentDefined) -> ThompsonOptions:
    try:
        return msgspec.convert(definition.options, ThompsonOptions)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.split("`$.")[-1].rstrip("`") if "`$." in message else None
        if field is None and "unknown field" in message:
            field = message.split("`")[1]
        raise InvalidEvent(
            f"options of {definition.experiment!r}: {message}",
            field=f"options.{field}" if field else "options",
            value=definition.options.get(field or ""),
        ) from None

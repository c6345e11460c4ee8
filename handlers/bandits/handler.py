"""The bandit handler: experiments, their decisions, and learning from the feedback on them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

import msgspec
import numpy as np
from rtopt.handlers.bandits.events import (
    ArmAdded,
    ArmChanged,
    ArmPaused,
    ArmResumed,
    ArmRetired,
    ArmSummary,
    ArmUpdated,
    EvidenceDiscounted,
    ExperimentStats,
    PolicyStateImported,
)
from rtopt.handlers.bandits.options import BanditOptions
from rtopt.handlers.bandits.policies import (
    ACTIVE,
    PAUSED,
    POLICIES,
    RETIRED,
    ArmState,
    Policy,
    Turn,
    parse_options,
)
from rtopt.handlers.bandits.rewards import reward
from rtopt.handlers.bandits.transfer import decode_arms
from rtopt.handlers.ledger import DUPLICATE, AwaitingFeedback, DecisionLedger, MatchesFeedback
from rtopt.handlers.protection import FeedbackGuard

from rtopt import (
    Context,
    Decision,
    Envelope,
    Event,
    ExperimentDefined,
    Feedback,
    FeedbackRejected,
    Handler,
    InvalidEvent,
    Request,
    handles,
)

STATS_DRAWS = 2_000


class ExperimentState(msgspec.Struct):
    """One experiment: its policy and options, its arms in the order they joined, and its counters.

    ``window`` holds (arm, reward) of the rewards still inside a sliding window, oldest first from
    ``window_start``.
    """

    policy: str
    options: BanditOptions
    arms: dict[str, ArmState]
    decisions: int = 0
    explored: int = 0
    rewards: int = 0
    window: list[tuple[str, float]] = []
    window_start: int = 0


class PendingDecision(AwaitingFeedback):
    """A decision still waiting for its feedback (with its context vector for the linear policies); a
    slate waits for one feedback per arm in ``slate``."""

    context: list[float] | None = None
    slate: list[str] | None = None
    answered: list[str] = msgspec.field(default_factory=list)


class BanditState(msgspec.Struct):
    """Everything the bandit handler knows; rebuilt by replay and stored in snapshots."""

    experiments: dict[str, ExperimentState] = {}
    ledger: DecisionLedger[PendingDecision] = msgspec.field(default_factory=DecisionLedger)
    guard: FeedbackGuard | None = None


class BanditHandler(MatchesFeedback, Handler[BanditState]):
    """Runs bandit experiments: answers ``decide`` and learns from feedback that names its decision.

    Policies: those registered in :data:`~rtopt.handlers.bandits.policies.POLICIES` (``epsilon_greedy``,
    ``ucb1``, ``thompson``, ``thompson_gaussian``, ``softmax``, ``linucb``, ``lin_thompson`` ...); their
    options are :class:`~rtopt.handlers.bandits.options.BanditOptions`. Arms join, pause, resume and retire
    at run time through :mod:`rtopt.handlers.bandits.events`.

    Feedback is matched to its decision by ``decision_id`` within ``feedback_horizon_s`` seconds of event
    time, among the last ``max_pending`` decisions (older ones are evicted, counted in the ledger's
    ``evicted``). Feedback for an unknown or expired decision, a second feedback for one decision, or feedback
    whose prompt and variant do not match its decision is rejected with a ``FeedbackRejected`` event and
    never changes what the policy learnt. Feedback that names no decision is not a bandit observation and
    is left to other handlers. With a ``guard`` (:class:`~rtopt.handlers.protection.FeedbackGuard`)
    every Feedback is judged by it, and feedback it flags is rejected too.

    >>> from rtopt import Engine
    >>> with Engine.open(":memory:", seed=1, handlers=[BanditHandler()]) as engine:
    ...     _ = engine.define_experiment("g", arms=["a", "b"], policy="ucb1")
    ...     d = engine.decide("g", time=0.0)
    ...     _ = engine.feedback(d.id, success=True, quality_score=0.9, response_time_ms=80.0, time=1.0)
    ...     arm = engine.state("bandit", "g").arms[d.arm]
    ...     (arm.pulls, arm.rewards, arm.mean)
    (1, 1, 1.0)
    """

    name = "bandit"
    state_type = BanditState
    policies: ClassVar[Mapping[str, Policy]] = POLICIES
    answers: ClassVar[dict[str, Collection[str]]] = {"decide": POLICIES}  # the registry: policies registered later too
    version = 8  # 8: Thompson propensities computed exactly (were estimated from posterior draws)

    def initial_state(self) -> BanditState:
        return BanditState(guard=self.fresh_guard())

    # --- commands' side ----------------------------------------------------------------------------

    def screen(self, state: BanditState, event: Event) -> None:
        if isinstance(event, ExperimentDefined):  # the engine checks its name and arms
            if event.policy in self.policies:
                parse_options(event)
        elif isinstance(event, ArmChanged):
            _check_arm_change(state, event)
        elif isinstance(event, PolicyStateImported | EvidenceDiscounted):
            exp = state.experiments.get(event.experiment)
            if exp is None:
                raise InvalidEvent(
                    f"experiment = {event.experiment!r}: no such experiment", field="experiment", value=event.experiment
                )
            if isinstance(event, EvidenceDiscounted):
                return
            unknown = sorted(set(decode_arms(event)) - set(exp.arms))
            if unknown:
                raise InvalidEvent(f"arms: {unknown} are not arms of {event.experiment!r}", field="arms", value=unknown)

    def knows(self, state: BanditState, command: str, target: str) -> bool:
        return target in state.experiments

    def settled(self, state: BanditState, command: str, answer_id: str) -> bool:
        return False  # a second feedback on a decision is not refused: the fold rejects it, as an event

    def answer(self, state: BanditState, command: str, target: str, ctx: Context, request: Request) -> list[Decision]:
        experiment = target
        exp = state.experiments[experiment]
        candidates = _candidates(exp, experiment, request.available)
        if request.slots > len(candidates):
            raise InvalidEvent(
                f"slots = {request.slots}: {experiment!r} has only {len(candidates)} arms to offer",
                field="slots",
                value=request.slots,
            )
        vector = _context_vector(exp, request.context)
        rule, turn = POLICIES[exp.policy], Turn(exp.options, ctx, exp.decisions, vector)
        remaining, slate, choices = list(candidates), [], []
        for _ in range(request.slots):  # each slot is chosen, with exploration, among the arms left
            choice = rule.choose([exp.arms[arm] for arm in remaining], turn)
            slate.append(remaining.pop(choice.index))
            choices.append(choice)
        decision = Decision(
            experiment=experiment,
            arm=slate[0],
            policy=exp.policy,
            propensity=choices[0].propensity,
            candidates=candidates,
            context=request.context,
            explored=choices[0].explored,
            unit=request.unit,
            slate=slate if request.slots > 1 else [],
            slate_propensities=[c.propensity for c in choices] if request.slots > 1 else [],
        )
        return [decision]

    def view(self, state: BanditState, key: str | None = None) -> Any:
        if key is None:
            return super().view(state)
        return msgspec.convert(msgspec.to_builtins(state.experiments[key]), ExperimentState)

    # --- the fold ----------------------------------------------------------------------------------

    @handles(Feedback)
    def _feedback(
        self, state: BanditState, envelope: Envelope[Feedback], ctx: Context
    ) -> tuple[BanditState, Sequence[Event]]:
        return state, self._learn(state, envelope, envelope.payload, ctx)

    @handles(Decision)
    def _decision(
        self, state: BanditState, envelope: Envelope[Decision], ctx: Context
    ) -> tuple[BanditState, Sequence[Event]]:
        event = envelope.payload
        exp = state.experiments.get(event.experiment)
        shown = event.slate or (event.arm,)
        if exp is not None and all(arm in exp.arms for arm in shown):
            exp.decisions += 1
            exp.explored += event.explored
            for arm in shown:
                exp.arms[arm].pulls += 1
            vector = _context_vector(exp, event.context)
            self.await_feedback(
                state.ledger,
                envelope.id,
                PendingDecision(
                    event.experiment,
                    event.arm,
                    envelope.time,
                    None if vector is None else vector.tolist(),
                    list(event.slate) if event.slate else None,
                ),
            )
        return state, ()

    @handles(ExperimentDefined)
    def _defined(
        self, state: BanditState, envelope: Envelope[ExperimentDefined], ctx: Context
    ) -> tuple[BanditState, Sequence[Event]]:
        event = envelope.payload
        if event.experiment not in state.experiments and event.policy in self.policies:
            state.experiments[event.experiment] = ExperimentState(
                policy=event.policy, options=parse_options(event), arms={arm: ArmState() for arm in event.arms}
            )
        return state, ()

    @handles(EvidenceDiscounted)
    def _discounted(
        self, state: BanditState, envelope: Envelope[EvidenceDiscounted], ctx: Context
    ) -> tuple[BanditState, Sequence[Event]]:
        exp = state.experiments.get(envelope.payload.experiment)
        if exp is not None:
            _discount(exp, envelope.payload.factor)
        return state, ()

    @handles(PolicyStateImported)
    def _imported(
        self, state: BanditState, envelope: Envelope[PolicyStateImported], ctx: Context
    ) -> tuple[BanditState, Sequence[Event]]:
        exp = state.experiments.get(envelope.payload.experiment)
        if exp is not None:
            for name, imported in decode_arms(envelope.payload).items():
                if name in exp.arms:
                    exp.arms[name] = imported
        return state, ()

    @handles(ArmAdded)
    def _arm_added(
        self, state: BanditState, envelope: Envelope[ArmAdded], ctx: Context
    ) -> tuple[BanditState, Sequence[Event]]:
        exp = state.experiments.get(envelope.payload.experiment)
        if exp is not None:
            exp.arms.setdefault(envelope.payload.arm, ArmState())
        return state, ()

    @handles(ArmPaused, ArmResumed, ArmRetired)
    def _arm_status_changed(
        self, state: BanditState, envelope: Envelope[ArmChanged], ctx: Context
    ) -> tuple[BanditState, Sequence[Event]]:
        event = envelope.payload
        exp = state.experiments.get(event.experiment)
        arm = None if exp is None else exp.arms.get(event.arm)
        allowed, status = _TRANSITIONS[type(event)]
        if arm is not None and arm.status in allowed:
            arm.status = status
        return state, ()

    def _learn(self, state: BanditState, envelope: Envelope[Any], feedback: Feedback, ctx: Context) -> Sequence[Event]:
        skipped = self.triage(state, feedback, envelope.time)
        if skipped is not None:
            return skipped
        decision_id = feedback.decision_id
        ledger = state.ledger
        pending = ledger.claim(
            decision_id,
            envelope.time,
            self.feedback_horizon_s,
            lambda p: p.experiment == feedback.prompt_id and feedback.variant_id in (p.slate or [p.arm]) + p.answered,
        )
        if pending is not None and feedback.variant_id in pending.answered:
            pending = ledger.reject(DUPLICATE)
        if pending is None:
            return (FeedbackRejected(reason=ledger.last_rejection, decision_id=decision_id, handler=self.name),)
        if pending.slate is not None and len(pending.slate) > 1:
            pending.slate.remove(feedback.variant_id)  # the slate waits for its other arms' feedback
            pending.answered.append(feedback.variant_id)
        else:
            ledger.settle(decision_id, envelope.time)
        exp = state.experiments[pending.experiment]
        options = exp.options
        value, parts = reward(feedback, options)
        arm_name = feedback.variant_id
        arm = exp.arms[arm_name]
        if options.decay < 1.0:
            for other in exp.arms.values():
                other.scale(options.decay)
        vector = None if pending.context is None else np.asarray(pending.context)
        POLICIES[exp.policy].learn(arm, value, options, vector)
        arm.rewards += 1
        arm.reward_sum += value
        arm.last_reward_time = envelope.time
        if options.window is not None:
            _slide(exp, arm_name, value)
        exp.rewards += 1
        if not ctx.derives:
            return ()
        derived: list[Event] = [
            ArmUpdated(
                experiment=pending.experiment,
                arm=arm_name,
                reward=value,
                pulls=arm.pulls,
                posterior={"n": arm.n, "mean": arm.mean},
                decision_id=decision_id,
                parts=parts,
            )
        ]
        if options.stats_every and exp.rewards % options.stats_every == 0:
            derived.append(statistics(pending.experiment, exp, ctx.rng, envelope.time))
        return derived


def statistics(name: str, exp: ExperimentState, rng: np.random.Generator, now: float) -> ExperimentStats:
    """The statistics of an experiment: per-arm means with 95 % credible intervals and the probability
    that each arm is best (a seeded Monte Carlo over the posteriors)."""
    names = list(exp.arms)
    arms = [exp.arms[arm] for arm in names]
    draws = POLICIES[exp.policy].posterior_draws(arms, exp.options, rng, STATS_DRAWS, now)
    live = np.array([arm.status != RETIRED for arm in arms])
    winners = np.where(live, draws, -np.inf).argmax(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    summaries = {
        arm: ArmSummary(
            status=state.status,
            pulls=state.pulls,
            rewards=state.rewards,
            mean=state.reward_sum / state.rewards if state.rewards else None,
            low=float(low[i]) if state.rewards else None,
            high=float(high[i]) if state.rewards else None,
            p_best=float(np.count_nonzero(winners == i)) / STATS_DRAWS,
        )
        for i, (arm, state) in enumerate(zip(names, arms, strict=True))
    }
    return ExperimentStats(
        experiment=name,
        decisions=exp.decisions,
        rewards=exp.rewards,
        exploration_rate=exp.explored / exp.decisions if exp.decisions else 0.0,
        arms=summaries,
    )


def _candidates(exp: ExperimentState, experiment: str, available: Sequence[str] | None) -> list[str]:
    active = [arm for arm, state in exp.arms.items() if state.status == ACTIVE]
    if available is None:
        candidates = active
    else:
        candidates = list(available)
        unknown = [arm for arm in candidates if arm not in exp.arms]
        inactive = [arm for arm in candidates if arm in exp.arms and exp.arms[arm].status != ACTIVE]
        if unknown or inactive:
            problem = f"{unknown} are not arms of {experiment!r}" if unknown else f"{inactive} are paused or retired"
            raise InvalidEvent(f"available = {candidates!r}: {problem}", field="available", value=candidates)
    if not candidates:
        raise InvalidEvent(
            f"available = {candidates!r}: no active arm to choose from in {experiment!r}",
            field="available",
            value=candidates,
        )
    return candidates


def _context_vector(exp: ExperimentState, context: dict[str, float] | None) -> np.ndarray | None:
    if not POLICIES[exp.policy].contextual:
        return None
    features = exp.options.features
    missing = [name for name in features if context is None or name not in context]
    if missing:
        raise InvalidEvent(
            f"context: policy {exp.policy!r} needs the features {missing}", field="context", value=context
        )
    return np.array([context[name] for name in features], dtype=float)


def _slide(exp: ExperimentState, arm: str, value: float) -> None:
    """Keep the experiment's last ``window`` rewards: the oldest one leaves its arm's statistics."""
    exp.window.append((arm, value))
    if len(exp.window) - exp.window_start > exp.options.window:
        old_arm, old_value = exp.window[exp.window_start]
        exp.window_start += 1
        if old_arm in exp.arms:
            exp.arms[old_arm].add(old_value, weight=-1.0)
    if exp.window_start > 1024 and 2 * exp.window_start > len(exp.window):
        del exp.window[: exp.window_start]
        exp.window_start = 0


def _discount(exp: ExperimentState, factor: float) -> None:
    """Scale what every arm has learnt by ``factor``; an experiment with a window forgets it all."""
    if exp.options.window is not None:
        factor = 0.0
        exp.window, exp.window_start = [], 0
    rule = POLICIES[exp.policy]
    for arm in exp.arms.values():
        rule.discount(arm, factor, exp.options)


_TRANSITIONS = {
    ArmPaused: ({ACTIVE}, PAUSED),
    ArmResumed: ({PAUSED}, ACTIVE),
    ArmRetired: ({ACTIVE, PAUSED}, RETIRED),
}


def _check_arm_change(state: BanditState, event: ArmChanged) -> None:
    exp = state.experiments.get(event.experiment)
    if exp is None:
        raise InvalidEvent(
            f"experiment = {event.experiment!r}: no such experiment", field="experiment", value=event.experiment
        )
    arm = exp.arms.get(event.arm)
    if isinstance(event, ArmAdded):
        if arm is not None:
            raise InvalidEvent(
                f"arm = {event.arm!r}: already an arm of {event.experiment!r}", field="arm", value=event.arm
            )
        return
    if arm is None:
        raise InvalidEvent(f"arm = {event.arm!r}: not an arm of {event.experiment!r}", field="arm", value=event.arm)
    allowed, _ = _TRANSITIONS[type(event)]
    if arm.status not in allowed:
        raise InvalidEvent(
            f"arm = {event.arm!r}: a {arm.status} arm cannot be {type(event).__name__[3:].lower()}",
            field="arm",
            value=event.arm,
        )

"""The experiments handler: A/B and multi-variant tests and canary rollouts, answering ``decide``.

Derived lifecycle events record a change the fold has already made to the state (the fold that pauses an
experiment on a guardrail breach sets it paused, then derives ExperimentPaused); folding such an event
finds the change made and does nothing, while the same event published as an input makes the change.
So the feedback that follows in the same commit group already sees the new state, live and in replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
from rtopt.handlers.bandits.rewards import reward
from rtopt.handlers.experiments.analysis import (
    VARIANT_WINS,
    Breach,
    analyse,
    conclusion,
    estimate,
    guardrail_breach,
    guardrail_metrics,
    relative,
    welch,
)
from rtopt.handlers.experiments.assignment import pick, position, thompson_allocation
from rtopt.handlers.experiments.events import (
    DERIVED_ONLY,
    AllocationUpdated,
    CanaryAdvanced,
    CanaryRolledBack,
    ExperimentArchived,
    ExperimentCompleted,
    ExperimentPaused,
    ExperimentResumed,
    ExperimentStarted,
    SampleRatioMismatch,
    WinnerPromoted,
)
from rtopt.handlers.experiments.lifecycle import TRANSITIONS, a, legal, screen_event
from rtopt.handlers.experiments.options import (
    CANARY,
    POLICIES,
    allocation_kind,
    canary_steps,
    check_definition,
    initial_weights,
)
from rtopt.handlers.experiments.state import (
    ARCHIVED,
    COMPLETED,
    DRAFT,
    PAUSED,
    RUNNING,
    ArmStats,
    Experiment,
    ExperimentsState,
    PendingDecision,
    Transition,
)
from rtopt.handlers.experiments.stats import MixtureSPRT
from rtopt.handlers.ledger import MatchesFeedback
from rtopt.streams.moments import RunningMoments

from rtopt import (
    ClockTicked,
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


class ExperimentHandler(MatchesFeedback, Handler[ExperimentsState]):
    """Runs A/B tests (policy ``ab_test``) and canary rollouts (policy ``canary``): assigns units to
    variants, learns from the feedback on its decisions, analyses, guards, stops and promotes, every step
    an event. Options: :class:`~rtopt.handlers.experiments.options.ExperimentOptions`.

    Feedback is matched to its decision by ``decision_id`` within ``feedback_horizon_s`` seconds of event
    time, among the last ``max_pending`` decisions (older ones are evicted, counted in the ledger's
    ``evicted``); feedback on one of its experiments for an unknown or expired decision, a second feedback for a
    decision, or feedback whose variant does not match its decision is rejected with a
    ``FeedbackRejected`` event. Feedback that names no decision is not an observation of the test. With a
    ``guard`` (:class:`~rtopt.handlers.protection.FeedbackGuard`) every Feedback is judged by it, and feedback it
    flags is rejected too.

    Decisions: a draft or archived experiment refuses them (InvalidEvent); a paused one serves its control
    and a completed one its winner (the control if none), with propensity 1 and outside the test. A
    request that ``available`` restricts to some arms is served from the allocation renormalised over them,
    outside the test too: only decisions made while running, over every arm, are analysed.

    >>> from rtopt import Engine
    >>> with Engine.open(":memory:", seed=1, handlers=[ExperimentHandler()]) as engine:
    ...     _ = engine.define_experiment("checkout", arms=["control", "v2"], policy="ab_test",
    ...                                  weights="0.9,0.1", start=True, time=0.0)
    ...     first = engine.decide("checkout", unit="user-42", time=1.0)
    ...     again = engine.decide("checkout", unit="user-42", time=2.0)
    ...     _ = engine.feedback(first.id, success=True, quality_score=0.9, response_time_ms=80.0, time=3.0)
    ...     exp = engine.state("experiments", "checkout")
    ...     (first.arm == again.arm, first.propensity in (0.9, 0.1), exp.status, exp.stats[first.arm].feedback)
    (True, True, 'running', 1)
    """

    name = "experiments"
    state_type = ExperimentsState
    policies: ClassVar[tuple[str, ...]] = POLICIES
    answers: ClassVar[dict[str, tuple[str, ...]]] = {"decide": POLICIES}
    version = 8

    def initial_state(self) -> ExperimentsState:
        return ExperimentsState(guard=self.fresh_guard())

    # --- commands' side ----------------------------------------------------------------------------

    def screen(self, state: ExperimentsState, event: Event) -> None:
        if isinstance(event, ExperimentDefined):  # the engine checks its name and arms
            if event.policy in POLICIES:
                check_definition(event)
        elif not isinstance(event, Decision | Feedback | ClockTicked):
            screen_event(state, event)

    def knows(self, state: ExperimentsState, command: str, target: str) -> bool:
        return target in state.experiments

    def settled(self, state: ExperimentsState, command: str, answer_id: str) -> bool:
        return False  # a second feedback on a decision is not refused: the fold rejects it, as an event

    def answer(
        self, state: ExperimentsState, command: str, target: str, ctx: Context, request: Request
    ) -> list[Decision]:
        experiment = target
        exp = state.experiments[experiment]
        slots = getattr(request, "slots", 1)
        if slots != 1:
            raise InvalidEvent(
                f"slots = {slots!r}: an A/B test or canary assigns one arm per request", field="slots", value=slots
            )
        if exp.status in (DRAFT, ARCHIVED):
            hint = ": publish ExperimentStarted first" if exp.status == DRAFT else ""
            raise InvalidEvent(
                f"experiment = {experiment!r}: {a(exp.status)} experiment serves no decisions{hint}",
                field="experiment",
                value=experiment,
            )
        candidates = _candidates(exp, experiment, request.available)
        explored = False
        if exp.status == RUNNING:
            arms, shares = _shares(exp, candidates)
            total = sum(shares)
            if total <= 0.0:
                raise InvalidEvent(
                    f"available = {candidates!r}: no arm among them has a share of the traffic",
                    field="available",
                    value=candidates,
                )
            salt = exp.options.salt or experiment
            index = pick(shares, position(request.unit, salt, exp.options.buckets, ctx.rng))
            arm, propensity = arms[index], min(shares[index] / total, 1.0)
            if exp.adapted:
                explored = arm != exp.arms[max(range(len(exp.arms)), key=exp.allocation.__getitem__)]
        else:  # paused: the control; completed: the winner (the control if none), outside the test
            arm, propensity = (exp.winner or exp.control) if exp.status == COMPLETED else exp.control, 1.0
            if arm not in candidates:
                raise InvalidEvent(
                    f"available = {candidates!r}: {a(exp.status)} experiment serves {arm!r}, which is not available",
                    field="available",
                    value=candidates,
                )
        decision = Decision(
            experiment=experiment,
            arm=arm,
            policy=exp.policy,
            propensity=propensity,
            candidates=candidates,
            context=request.context,
            explored=explored,
            unit=request.unit,
        )
        return [decision]

    def view(self, state: ExperimentsState, key: str | None = None) -> Any:
        if key is None:
            return super().view(state)
        return msgspec.convert(msgspec.to_builtins(state.experiments[key]), Experiment)

    # --- the fold ----------------------------------------------------------------------------------

    @handles(Feedback)
    def _feedback(
        self, state: ExperimentsState, envelope: Envelope[Feedback], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        return state, self._learn(state, envelope, envelope.payload, ctx)

    @handles(Decision)
    def _decision(
        self, state: ExperimentsState, envelope: Envelope[Decision], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        _record(self, state, envelope, envelope.payload)
        return state, ()

    @handles(ClockTicked)
    def _ticked(
        self, state: ExperimentsState, envelope: Envelope[ClockTicked], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        return state, _end_overdue(state, envelope.time)

    @handles(ExperimentDefined)
    def _defined(
        self, state: ExperimentsState, envelope: Envelope[ExperimentDefined], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        event = envelope.payload
        if event.policy in POLICIES and event.experiment not in state.experiments:
            return state, self._define(state, event, envelope.time)
        return state, ()

    @handles(ExperimentStarted)
    def _started(
        self, state: ExperimentsState, envelope: Envelope[ExperimentStarted], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        event = envelope.payload
        exp = _changed(state, event)
        if exp is None:
            return state, ()
        return state, self._start(event.experiment, exp, envelope.time, event.reason or "started")

    @handles(ExperimentPaused, ExperimentResumed, ExperimentArchived)
    def _status_changed(
        self, state: ExperimentsState, envelope: Envelope[Any], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        event = envelope.payload
        exp = _changed(state, event)
        if exp is not None:
            _, status, done = TRANSITIONS[type(event)]
            exp.set_status(status, envelope.time, event.reason or done)
        return state, ()

    @handles(ExperimentCompleted)
    def _completed(
        self, state: ExperimentsState, envelope: Envelope[ExperimentCompleted], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        event = envelope.payload
        exp = _changed(state, event)
        if exp is not None:
            exp.winner = event.winner
            exp.outcome = exp.outcome or "completed by hand"
            exp.set_status(COMPLETED, envelope.time, event.reason or "completed")
        return state, ()

    @handles(CanaryAdvanced)
    def _advanced(
        self, state: ExperimentsState, envelope: Envelope[CanaryAdvanced], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        event = envelope.payload
        exp = _changed(state, event)
        return state, () if exp is None else _advance_to(event.experiment, exp, event.step, envelope.time)

    @handles(CanaryRolledBack)
    def _rolled_back(
        self, state: ExperimentsState, envelope: Envelope[CanaryRolledBack], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        event = envelope.payload
        exp = _changed(state, event)
        if exp is None:
            return state, ()
        return state, _roll_back(event.experiment, exp, envelope.time, event.reason or "rolled back by hand")

    @handles(*DERIVED_ONLY)
    def _derived_only(
        self, state: ExperimentsState, envelope: Envelope[Any], ctx: Context
    ) -> tuple[ExperimentsState, Sequence[Event]]:
        """Taken so that :meth:`screen` refuses them as inputs; what they record is in the state already."""
        return state, ()

    def _define(self, state: ExperimentsState, event: ExperimentDefined, now: float) -> Sequence[Event]:
        options = check_definition(event)
        arms = list(event.arms)
        if event.policy == CANARY:
            control, weights, steps, challenger = arms[0], [1.0, 0.0], canary_steps(options), arms[1]
        else:
            control, weights, steps, challenger = options.control or arms[0], initial_weights(event, options), [], None
        exp = Experiment(
            policy=event.policy,
            options=options,
            arms=arms,
            control=control,
            weights=weights,
            allocation=list(weights),
            versions=[list(weights)],
            stats={arm: ArmStats() for arm in arms},
            sprt={arm: MixtureSPRT(tau2=options.tau2, alpha=options.alpha, null=0.0) for arm in arms if arm != control},
            defined_at=now,
            transitions=[Transition(now, DRAFT, "defined")],
            adaptive=event.policy != CANARY and allocation_kind(options) == "adaptive",
            challenger=challenger,
            steps=steps,
        )
        state.experiments[event.experiment] = exp
        if not options.start:
            return ()
        reason = "started when defined (options.start)"
        return [
            ExperimentStarted(experiment=event.experiment, reason=reason),
            *self._start(event.experiment, exp, now, reason),
        ]

    @staticmethod
    def _start(name: str, exp: Experiment, now: float, reason: str) -> list[Event]:
        exp.set_status(RUNNING, now, reason)
        if exp.policy != CANARY:
            return []
        return [
            CanaryAdvanced(
                experiment=name,
                arm=exp.challenger,
                step=1,
                share=exp.steps[0],
                previous_share=0.0,
                reason="the canary starts at its first step",
            ),
            *_advance_to(name, exp, 1, now),
        ]

    # --- learning ----------------------------------------------------------------------------------

    def _learn(
        self, state: ExperimentsState, envelope: Envelope[Any], feedback: Feedback, ctx: Context
    ) -> Sequence[Event]:
        skipped = self.triage(state, feedback, envelope.time)
        if skipped is not None:
            return skipped
        decision_id = feedback.decision_id
        ledger = state.ledger
        pending = ledger.claim(
            decision_id,
            envelope.time,
            self.feedback_horizon_s,
            lambda p: (p.experiment, p.arm) == (feedback.prompt_id, feedback.variant_id),
        )
        if pending is None:
            return (FeedbackRejected(reason=ledger.last_rejection, decision_id=decision_id, handler=self.name),)
        ledger.settle(decision_id, envelope.time)
        if pending.version < 0:
            return ()  # a decision outside the test: served, not analysed
        exp = state.experiments[pending.experiment]
        _observe(exp, pending, feedback)
        return _after_feedback(pending.experiment, exp, pending.arm, envelope.time, ctx)


def _changed(state: ExperimentsState, event: Event) -> Experiment | None:
    """The experiment a lifecycle or canary event changes, if the change is legal where it stands."""
    exp = state.experiments.get(event.experiment)
    return exp if exp is not None and legal(exp, event) else None


# --- decisions ------------------------------------------------------------------------------------


def _candidates(exp: Experiment, experiment: str, available: Sequence[str] | None) -> list[str]:
    """The arms a request may take, in the experiment's order (every arm when ``available`` is None)."""
    if available is None:
        return list(exp.arms)
    unknown = [arm for arm in available if arm not in exp.stats]
    if unknown:
        raise InvalidEvent(
            f"available = {list(available)!r}: {unknown} are not arms of {experiment!r}",
            field="available",
            value=list(available),
        )
    candidates = [arm for arm in exp.arms if arm in available]
    if not candidates:
        raise InvalidEvent(f"available = {list(available)!r}: no arm to choose from", field="available", value=[])
    return candidates


def _shares(exp: Experiment, candidates: list[str]) -> tuple[list[str], list[float]]:
    """The arms in bucket order with their shares now, restricted to ``candidates``. A canary's
    challenger owns the first buckets, so its range only grows from step to step."""
    order = [exp.challenger, exp.control] if exp.policy == CANARY else exp.arms
    share = dict(zip(exp.arms, exp.allocation, strict=True))
    arms = [arm for arm in order if arm in candidates]
    return arms, [share[arm] for arm in arms]


def _record(handler: MatchesFeedback, state: ExperimentsState, envelope: Envelope[Any], event: Decision) -> None:
    """Remember a decision of one of the experiments until its feedback; count it in or outside the test.

    A decision is in the test when the experiment was running and every arm was a candidate."""
    exp = state.experiments.get(event.experiment)
    if exp is None or event.policy not in POLICIES or event.arm not in exp.stats:
        return
    stats = exp.stats[event.arm]
    in_test = exp.status == RUNNING and set(event.candidates) == set(exp.arms)
    if in_test:
        stats.decisions += 1
    else:
        stats.served += 1
    version = len(exp.versions) - 1 if in_test else -1
    entry = PendingDecision(event.experiment, event.arm, envelope.time, version)
    handler.await_feedback(state.ledger, envelope.id, entry)


# --- learning -------------------------------------------------------------------------------------


def _observe(exp: Experiment, pending: PendingDecision, feedback: Feedback) -> None:
    """Fold one analysed feedback into its arm's running statistics and the always-valid tests."""
    options = exp.options
    arm = pending.arm
    stats = exp.stats[arm]
    value, _ = reward(feedback, options.reward_options())
    metric = value if options.metric == "reward" else feedback.quality_score
    stats.feedback += 1
    stats.successes += feedback.success
    stats.conversions += feedback.success if options.conversion == "success" else value > options.reward_threshold
    stats.quality.update(feedback.quality_score)
    stats.reward.update(value)
    stats.reward_sum += value
    stats.cost.update(feedback.cost_usd)
    stats.latency.update(feedback.response_time_ms)
    stats.latency_sketch.add(feedback.response_time_ms)
    covariate = _covariate(feedback, options.covariate)
    if covariate is not None:
        stats.covariate.add(covariate, metric)
    for other, share in zip(exp.arms, exp.versions[pending.version], strict=True):
        exp.stats[other].expected += share
    one = RunningMoments(n=1, mean=metric)
    if arm == exp.control:
        for sprt in exp.sprt.values():
            sprt.control.merge(one)
    else:
        exp.sprt[arm].treatment.merge(one)
    exp.analysed += 1


def _covariate(feedback: Feedback, key: str) -> float | None:
    """The pre-period covariate in ``feedback.metadata[key]`` as a finite float, if there is one."""
    text = feedback.metadata.get(key)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value - value == 0.0 else None  # finite


def _after_feedback(name: str, exp: Experiment, arm: str, now: float, ctx: Context) -> list[Event]:
    """What one analysed feedback sets off while the experiment runs: a canary step, a new adaptive
    allocation, and on schedule (or at the maximum duration) an analysis with its consequences."""
    if exp.status != RUNNING:
        return []
    options = exp.options
    derived: list[Event] = []
    if exp.policy == CANARY:
        if arm == exp.challenger:
            exp.step_feedback += 1
            if exp.step_feedback >= options.step_min_feedback:
                derived.extend(_canary_step(name, exp, now))
                if exp.status != RUNNING:
                    return derived
    elif exp.adaptive:
        derived.extend(_reallocate(name, exp, ctx))
    deadline = _deadline_passed(exp, now)
    if exp.analysed % options.analyse_every == 0 or deadline is not None:
        derived.extend(_analyse(name, exp, now, deadline))
    return derived


def _deadline_passed(exp: Experiment, now: float) -> str | None:
    """Why a running A/B test must end at ``now`` because of its maximum duration, or None."""
    limit = exp.options.max_duration_s
    if exp.policy == CANARY or limit is None or exp.elapsed(now) < limit:
        return None
    return f"max_duration_s ({limit:g} s) reached after {exp.elapsed(now):.0f} s"


def _end_overdue(state: ExperimentsState, now: float) -> list[Event]:
    """At a clock tick: the final analysis of every running A/B test past its maximum duration."""
    derived: list[Event] = []
    for name, exp in state.experiments.items():
        deadline = _deadline_passed(exp, now) if exp.status == RUNNING else None
        if deadline is not None:
            derived.extend(_analyse(name, exp, now, deadline))
    return derived


def _reallocate(name: str, exp: Experiment, ctx: Context) -> list[Event]:
    """After the burn-in, every ``reallocate_every`` feedback: a Thompson allocation with a floor."""
    options = exp.options
    counts = [exp.stats[arm].feedback for arm in exp.arms]
    if not exp.adapted:
        if min(counts) < options.burn_in:
            return []
        exp.adapted = True
    else:
        exp.since_reallocation += 1
        if exp.since_reallocation < options.reallocate_every:
            return []
    exp.since_reallocation = 0
    sums = [exp.stats[arm].reward_sum for arm in exp.arms]
    allocation, p_best = thompson_allocation(sums, counts, options.floor, options.adaptive_draws, ctx.rng)
    exp.set_allocation(allocation)
    return [
        AllocationUpdated(
            experiment=name,
            allocation=dict(zip(exp.arms, allocation, strict=True)),
            p_best=dict(zip(exp.arms, p_best, strict=True)),
            feedback=dict(zip(exp.arms, counts, strict=True)),
            means={arm: exp.stats[arm].reward.mean for arm in exp.arms},
            floor=options.floor,
            draws=options.adaptive_draws,
        )
    ]


def _analyse(name: str, exp: Experiment, now: float, deadline: str | None) -> list[Event]:
    """An analysis, then the sample-ratio check, the guardrails and (A/B tests) the stopping rule."""
    analysis = analyse(name, exp, now)
    derived: list[Event] = [analysis]
    srm = analysis.srm
    if srm is not None and srm.mismatch and not exp.srm:  # once found, the data stay suspect: the flag stays
        exp.srm = True
        arms = [arm for arm in exp.arms if exp.stats[arm].expected > 0.0]
        derived.append(
            SampleRatioMismatch(
                experiment=name,
                counts=dict(zip(arms, srm.counts, strict=True)),
                expected=dict(zip(arms, srm.expected, strict=True)),
                statistic=srm.statistic,
                p_value=srm.p_value,
                threshold=srm.threshold,
            )
        )
    breach = guardrail_breach(exp)
    if breach is not None:
        if exp.policy == CANARY:
            derived.extend(_rollback_for(name, exp, now, breach))
        else:
            exp.set_status(PAUSED, now, breach.reason)
            derived.append(
                ExperimentPaused(
                    experiment=name,
                    reason=breach.reason,
                    guardrail=breach.guardrail,
                    arm=breach.arm,
                    metrics=breach.metrics,
                )
            )
        return derived
    if exp.policy == CANARY:
        return derived
    concluded = conclusion(name, exp, analysis, deadline)
    if concluded is None:
        return derived
    derived.append(concluded)
    exp.winner, exp.outcome = concluded.winner, concluded.outcome
    if concluded.outcome == VARIANT_WINS:
        verdict = concluded.verdicts[concluded.winner]
        derived.append(
            WinnerPromoted(
                experiment=name,
                arm=concluded.winner,
                control=exp.control,
                metric=concluded.metric,
                difference=verdict.difference,
                relative=verdict.relative,
                p_value=verdict.p_adjusted,
                reason=concluded.reason,
            )
        )
    reason = f"concluded: {concluded.outcome}"
    exp.set_status(COMPLETED, now, reason)
    derived.append(ExperimentCompleted(experiment=name, reason=reason, winner=concluded.winner))
    return derived


# --- canary rollouts ------------------------------------------------------------------------------


def _canary_step(name: str, exp: Experiment, now: float) -> list[Event]:
    """Enough challenger feedback at this step: roll back on a guardrail breach, else move on once both
    arms have the feedback the guardrails need."""
    breach = guardrail_breach(exp)
    if breach is not None:
        return _rollback_for(name, exp, now, breach)
    options = exp.options
    needed = options.guardrail_min_samples if options.guardrails else 0
    if min(exp.stats[exp.control].feedback, exp.stats[exp.challenger].feedback) < needed:
        return []
    step = exp.step + 1
    share = exp.steps[step - 1]
    advanced = CanaryAdvanced(
        experiment=name,
        arm=exp.challenger,
        step=step,
        share=share,
        previous_share=exp.share,
        reason=f"{exp.step_feedback} challenger feedback at {exp.share:.0%} and no guardrail breached",
        metrics=guardrail_metrics(exp, exp.challenger),
    )
    return [advanced, *_advance_to(name, exp, step, now)]


def _advance_to(name: str, exp: Experiment, step: int, now: float) -> list[Event]:
    """Give the challenger the share of ``step``; the last step (100 %) promotes it and completes."""
    exp.step, exp.share, exp.step_feedback = step, exp.steps[step - 1], 0
    exp.set_allocation([1.0 - exp.share, exp.share])
    if exp.share < 1.0:
        return []
    challenger, metric = exp.challenger, exp.options.metric
    m_c, m_t = exp.stats[exp.control].metric(metric), exp.stats[challenger].metric(metric)
    both = m_c.n > 0 and m_t.n > 0
    compared = welch(estimate(m_c), estimate(m_t)) if both else None
    reason = f"the canary reached 100 % after {len(exp.steps)} steps"
    exp.winner, exp.outcome = challenger, "rolled out"
    exp.set_status(COMPLETED, now, reason)
    return [
        WinnerPromoted(
            experiment=name,
            arm=challenger,
            control=exp.control,
            metric=metric,
            difference=m_t.mean - m_c.mean if both else None,
            relative=relative(m_t.mean, m_c.mean) if both else None,
            p_value=None if compared is None else compared.p_value,
            reason=reason,
        ),
        ExperimentCompleted(experiment=name, reason=reason, winner=challenger),
    ]


def _rollback_for(name: str, exp: Experiment, now: float, breach: Breach) -> list[Event]:
    rolled = CanaryRolledBack(
        experiment=name,
        arm=exp.challenger,
        previous_share=exp.share,
        share=0.0,
        guardrail=breach.guardrail,
        reason=breach.reason,
        metrics=breach.metrics,
    )
    return [rolled, *_roll_back(name, exp, now, breach.reason)]


def _roll_back(name: str, exp: Experiment, now: float, reason: str) -> list[Event]:
    """Take the challenger out of traffic; the canary completes on its baseline."""
    exp.share, exp.step_feedback = 0.0, 0
    exp.set_allocation([1.0, 0.0])
    exp.winner, exp.outcome = exp.control, "rolled back"
    why = f"rolled back: {reason}"
    exp.set_status(COMPLETED, now, why)
    return [ExperimentCompleted(experiment=name, reason=why, winner=exp.control)]

"""The Bayesian-optimisation handler: studies, their suggestions and what the observations teach the model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
import numpy as np
import scipy  # its submodules load on first use
from rtopt.handlers.bandits.rewards import reward
from rtopt.handlers.bayesopt.acquisition import Acquisition, maximize
from rtopt.handlers.bayesopt.events import StudyCompleted, SurrogateFitted
from rtopt.handlers.bayesopt.gp import GaussianProcess, fit_hyperparameters, one_blas_thread, standardise
from rtopt.handlers.bayesopt.kernels import make_kernel
from rtopt.handlers.bayesopt.options import METHODS, StudyOptions, parse_study
from rtopt.handlers.bayesopt.space import Space

from rtopt import (
    Context,
    Envelope,
    Event,
    Feedback,
    FeedbackRejected,
    Handler,
    InvalidEvent,
    Observed,
    RtoptError,
    StudyDefined,
    Suggested,
    SuggestRequest,
    handles,
)
from rtopt.events import ParamValue
from rtopt.randomness import seeded_generator

DEFAULT_LOG_NOISE = float(np.log(1e-3))
SUGGESTION_KEY = "suggestion_id"  # the Feedback metadata key naming the suggestion it reports on
NOT_WAITING = "no study waits for a value of this suggestion"
MAX_MAGNITUDE = 1e100  # the largest objective value (in magnitude) a study takes: beyond, a unit is wrong


class StudyState(msgspec.Struct):
    """One study: its definition, what was observed (unit-cube points and objective values), the
    suggestions still waiting for a value, and the model's hyperparameters.

    ``definition_id`` (the id of the StudyDefined event) seeds the study's initial design; ``best`` indexes
    the best observation. Beyond the option ``max_pending`` suggestions waiting, the oldest is forgotten
    (``evicted`` counts them) and a value told for it is refused.
    """

    definition: StudyDefined
    definition_id: str
    points: list[list[float]] = []
    values: list[float] = []
    pending: dict[str, list[float]] = {}
    issued: int = 0
    hyperparameters: list[float] = []
    fitted_at: int = 0
    best: int | None = None
    since_improvement: int = 0
    completed: str | None = None
    evicted: int = 0

    @property
    def sign(self) -> float:
        """+1 for a study that maximises, -1 for one that minimises."""
        return 1.0 if self.definition.direction == "maximize" else -1.0


class BayesOptState(msgspec.Struct):
    """Every study the handler runs; rebuilt by replay and stored in snapshots."""

    studies: dict[str, StudyState] = {}


@dataclass
class Model:
    """A GP on a study's (bounded) observations, standardised (:func:`~rtopt.handlers.bayesopt.gp.standardise`):
    ``y = (sign * value - offset) / scale``, outliers moved to their fence."""

    gp: GaussianProcess
    offset: float
    scale: float
    observed: int


def training_set(study: StudyState, options: StudyOptions) -> tuple[np.ndarray, np.ndarray]:
    """The points and signed values the model learns from: all of them up to ``max_points``, then the
    best fifth of that many and the most recent ones."""
    x, y = np.array(study.points), study.sign * np.array(study.values)
    if len(y) <= options.max_points:
        return x, y
    best = options.max_points // 5
    keep = set(np.argsort(-y, kind="stable")[:best].tolist())
    recent = len(y) - 1
    while len(keep) < options.max_points:
        keep.add(recent)
        recent -= 1
    rows = sorted(keep)
    return x[rows], y[rows]


def build_model(study: StudyState, options: StudyOptions, space: Space) -> Model:
    """The GP of ``study`` with its current hyperparameters (the kernel's initial ones before a fit)."""
    x, y = training_set(study, options)
    targets, offset, scale = standardise(y)
    kernel = make_kernel(study.definition.kernel, space.width, options.degree)
    theta = (
        np.array(study.hyperparameters)
        if study.hyperparameters
        else np.concatenate([kernel.initial(), [DEFAULT_LOG_NOISE]])
    )
    return Model(GaussianProcess(kernel, theta, x, targets), offset, scale, len(y))


def recommend(study: StudyState) -> tuple[dict[str, ParamValue], float]:
    """The observed parameters with the best predicted objective, and that prediction (the best raw
    observation before a model is fitted).

    >>> from rtopt import Dimension, StudyDefined
    >>> definition = StudyDefined(study="s", space={"t": Dimension.of((0.0, 1.0))})
    >>> state = StudyState(definition, "d1", points=[[0.2], [0.7]], values=[0.3, 0.9], best=1)
    >>> recommend(state)
    ({'t': 0.7}, 0.9)
    """
    space = Space(study.definition.space)
    if not study.hyperparameters:
        return space.decode(np.array(study.points[study.best])), study.values[study.best]
    options = parse_study(study.definition)[1]
    model = build_model(study, options, space)
    x = np.array(study.points)
    mean = model.gp.predict(x)[0] * model.scale + model.offset
    chosen = int(np.argmax(mean))
    return space.decode(x[chosen]), float(study.sign * mean[chosen])


class BayesOptHandler(Handler[BayesOptState]):
    """Runs studies: answers ``suggest`` and learns from the values told for its suggestions.

    Method ``gp``: a Gaussian process (kernel ``rbf``, ``matern32``, ``matern52`` or ``polynomial``) over
    the unit cube with standardised targets, hyperparameters by maximum marginal likelihood, and the
    next points where the acquisition (``ei``, ``ucb`` or ``pi``) is largest; the first ``n_initial``
    suggestions follow a Latin hypercube. Method ``random``: uniform draws, a baseline. Options are
    :class:`~rtopt.handlers.bayesopt.options.StudyOptions`. Points suggested together, or still waiting for
    their value, are spread by believing the model's prediction at them (Kriging believer).

    >>> from rtopt import Engine
    >>> with Engine.open(":memory:", seed=1, handlers=[BayesOptHandler()]) as engine:
    ...     _ = engine.define_study("s", space={"x": (0.0, 1.0)}, n_initial=2, time=0.0)
    ...     for step in range(4):
    ...         (suggestion,) = engine.suggest("s", time=step)
    ...         _ = engine.tell(suggestion.id, -(suggestion.params["x"] - 0.3) ** 2, time=step)
    ...     len(engine.state("bayesopt", "s").values)
    4
    """

    name = "bayesopt"
    version = 4
    state_type = BayesOptState
    parts = "studies"
    methods: ClassVar[tuple[str, ...]] = METHODS
    answers: ClassVar[dict[str, tuple[str, ...]]] = {"suggest": METHODS}

    def __init__(self) -> None:
        # each study's parsed definition, by definition id, beside the definition it was parsed from: kept on
        # the handler, not in the state, which holds only what msgspec encodes for snapshots
        self._parsed_by_id: dict[str, tuple[StudyDefined, Space, StudyOptions]] = {}

    def initial_state(self) -> BayesOptState:
        return BayesOptState()

    def _parsed(self, study: StudyState) -> tuple[Space, StudyOptions]:
        """``parse_study`` of the study's definition, parsed once. An id that comes back with another
        definition (another log folded by the same handler) is parsed again."""
        definition = study.definition
        cached = self._parsed_by_id.get(study.definition_id)
        if cached is None or cached[0] is not definition:
            found = cached[1:] if cached is not None and cached[0] == definition else parse_study(definition)
            cached = (definition, *found)
            self._parsed_by_id[study.definition_id] = cached
        return cached[1], cached[2]

    # --- commands' side ----------------------------------------------------------------------------

    def screen(self, state: BayesOptState, event: Event) -> None:
        if isinstance(event, StudyDefined):
            if event.method in self.methods:
                parse_study(event)
        elif isinstance(event, Observed):
            study = state.studies.get(event.study)
            if study is not None and event.suggestion_id not in study.pending:
                raise InvalidEvent(
                    f"suggestion_id = {event.suggestion_id!r}: not a suggestion of {event.study!r} waiting for a value",
                    field="suggestion_id",
                    value=event.suggestion_id,
                )
            if study is not None and not abs(event.value) <= MAX_MAGNITUDE:
                raise InvalidEvent(
                    f"value = {event.value!r}: beyond {MAX_MAGNITUDE:g} in magnitude, more than any objective of "
                    f"study {event.study!r} can be (a unit or an overflow is wrong)",
                    field="value",
                    value=event.value,
                )

    def knows(self, state: BayesOptState, command: str, target: str) -> bool:
        return target in state.studies

    def settled(self, state: BayesOptState, command: str, answer_id: str) -> bool:
        return not any(answer_id in study.pending for study in state.studies.values())

    def answer(
        self, state: BayesOptState, command: str, target: str, ctx: Context, request: SuggestRequest
    ) -> list[Suggested]:
        """Raises InvalidEvent for a completed study, and RtoptError naming the study when its model fails."""
        study, n = target, request.n
        current = state.studies[study]
        if current.completed is not None:
            raise InvalidEvent(f"study = {study!r}: completed ({current.completed})", field="study", value=study)
        try:
            with one_blas_thread():
                return self._suggest(current, study, ctx, n)
        except Exception as exc:
            raise RtoptError(
                f"study = {study!r}: no suggestion could be made on its {len(current.values)} observations "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def _suggest(self, current: StudyState, study: str, ctx: Context, n: int) -> list[Suggested]:
        definition = current.definition
        space, options = self._parsed(current)
        rng = _rng(current, ctx)
        design = _initial_design(current, space, ctx.seed)
        guided = definition.method == "gp" and len(current.points) >= 2
        model = _with_pending(build_model(current, options, space), current) if guided else None
        made = []
        for index in range(n):
            position = current.issued + index
            if definition.method == "gp" and position < len(design):
                point = space.snap(design[position])
            elif model is None:
                point = space.snap(space.sample(rng, 1)[0])
            else:
                made.append(self._guided(study, current, space, options, model, rng, n, index))
                continue
            made.append(
                Suggested(study=study, params=space.decode(point), method=definition.method, batch=n, index=index)
            )
        return made

    @staticmethod
    def _guided(
        study: str,
        current: StudyState,
        space: Space,
        options: StudyOptions,
        model: Model,
        rng: np.random.Generator,
        n: int,
        index: int,
    ) -> Suggested:
        """One suggestion where the acquisition is largest; ``model`` then believes its prediction there."""
        gp = model.gp
        best = float(np.max(gp.predict(gp.x)[0]))  # believed points count as observed
        acquisition = Acquisition(current.definition.acquisition, best, xi=options.xi, beta=options.beta)
        top = np.argsort(-gp.y[: model.observed], kind="stable")[:2]
        point = maximize(
            gp,
            acquisition,
            rng,
            incumbents=gp.x[top],
            raw_samples=options.raw_samples,
            snap=space.snap,
            neighbours=space.neighbours,
        )
        mean, variance = gp.predict(point[None, :])
        std = float(np.sqrt(variance[0]))
        value = acquisition.report(float(mean[0]), std, model.scale)
        model.gp = gp.believe(point[None, :])
        return Suggested(
            study=study,
            params=space.decode(point),
            method="gp",
            batch=n,
            index=index,
            acquisition=_finite(value),
            mean=_finite(current.sign * (float(mean[0]) * model.scale + model.offset)),
            std=_finite(std * model.scale),
        )

    # --- the fold ----------------------------------------------------------------------------------

    @handles(StudyDefined)
    def _defined(
        self, state: BayesOptState, envelope: Envelope[StudyDefined], ctx: Context
    ) -> tuple[BayesOptState, Sequence[Event]]:
        event = envelope.payload
        if event.method in self.methods and event.study not in state.studies:
            study = StudyState(definition=event, definition_id=envelope.id)
            self._parsed(study)  # checks the definition before the study is added
            state.studies[event.study] = study
        return state, ()

    @handles(Feedback)
    def _told_by_feedback(
        self, state: BayesOptState, envelope: Envelope[Feedback], ctx: Context
    ) -> tuple[BayesOptState, Sequence[Event]]:
        return state, self._feedback(state, envelope.payload)

    @handles(Suggested)
    def _suggestion(
        self, state: BayesOptState, envelope: Envelope[Suggested], ctx: Context
    ) -> tuple[BayesOptState, Sequence[Event]]:
        study = state.studies.get(envelope.payload.study)
        if study is None:
            return state, ()
        return state, self._suggested(study, envelope, envelope.payload, ctx)

    @handles(Observed)
    def _observation(
        self, state: BayesOptState, envelope: Envelope[Observed], ctx: Context
    ) -> tuple[BayesOptState, Sequence[Event]]:
        event = envelope.payload
        study = state.studies.get(event.study)
        point = None if study is None else study.pending.pop(event.suggestion_id, None)
        if study is None or point is None:
            return state, ()
        return state, self._observed(study, point, event, ctx)

    def _feedback(self, state: BayesOptState, feedback: Feedback) -> Sequence[Event]:
        """Feedback naming a suggestion of a study (``metadata["suggestion_id"]``) observes its reward; for a
        suggestion that no study waits a value for, it is rejected."""
        suggestion_id = feedback.metadata.get(SUGGESTION_KEY)
        if suggestion_id is None:
            return ()
        for name, study in state.studies.items():
            if suggestion_id in study.pending:
                value, _ = reward(feedback, self._parsed(study)[1])
                return (Observed(study=name, suggestion_id=suggestion_id, value=value),)
        return (FeedbackRejected(reason=NOT_WAITING, handler=self.name),)

    def _suggested(self, study: StudyState, envelope: Envelope[Any], event: Suggested, ctx: Context) -> Sequence[Event]:
        space, options = self._parsed(study)
        study.pending[envelope.id] = space.encode(event.params).tolist()
        study.issued += 1
        if len(study.pending) > options.max_pending:
            del study.pending[next(iter(study.pending))]
            study.evicted += 1
        threshold = options.ei_threshold
        if (
            threshold is not None
            and study.completed is None
            and study.definition.acquisition == "ei"
            and event.acquisition is not None
            and event.acquisition < threshold
        ):
            return _complete(study, f"expected improvement {event.acquisition:.3g} below {threshold:g}", ctx)
        return ()

    def _observed(self, study: StudyState, point: list[float], event: Observed, ctx: Context) -> Sequence[Event]:
        space, options = self._parsed(study)
        study.points.append(point)
        study.values.append(event.value)
        signed = study.sign * event.value
        if study.best is None or signed > study.sign * study.values[study.best] + options.min_improvement:
            study.best = len(study.values) - 1
            study.since_improvement = 0
        else:
            study.since_improvement += 1
        derived: list[Event] = []
        observations = len(study.points)
        needed = observations >= 2 and max(observations, study.issued) >= study.definition.n_initial
        due = not study.hyperparameters or observations - study.fitted_at >= max(
            1, round(options.refit_growth * observations)
        )
        if study.definition.method == "gp" and needed and due:
            x, y = training_set(study, options)
            y = standardise(y)[0]
            kernel = make_kernel(study.definition.kernel, space.width, options.degree)
            start = np.array(study.hyperparameters) if study.hyperparameters else None
            with one_blas_thread():
                theta, likelihood = fit_hyperparameters(
                    kernel,
                    x,
                    y,
                    _rng(study, ctx),
                    start=start,
                    restarts=options.refit_restarts if start is not None else options.restarts,
                    noise=options.noise,
                    noise_prior=options.noise_prior,
                )
            study.hyperparameters, study.fitted_at = theta.tolist(), observations
            if ctx.derives:
                derived.append(
                    SurrogateFitted(
                        study=event.study,
                        observations=observations,
                        hyperparameters=study.hyperparameters,
                        log_marginal_likelihood=likelihood,
                    )
                )
        if study.completed is None:
            if options.max_evaluations is not None and observations >= options.max_evaluations:
                derived.extend(_complete(study, f"{observations} evaluations", ctx))
            elif options.patience is not None and study.since_improvement >= options.patience:
                derived.extend(_complete(study, f"no improvement in {options.patience} evaluations", ctx))
        return derived


def _finite(value: float) -> float | None:
    """``value`` in the objective's units, or None where they overflow it (objectives near the largest float)."""
    return value if math.isfinite(value) else None


def _rng(study: StudyState, ctx: Context) -> np.random.Generator:
    """The generator of one event's draws: from the study's own seed when it has one, else the engine's."""
    seed = study.definition.seed
    return ctx.rng if seed is None else seeded_generator(seed, ctx.event_id)


def _initial_design(study: StudyState, space: Space, engine_seed: int) -> np.ndarray:
    """The study's Latin hypercube of ``n_initial`` unit-cube points."""
    seed = study.definition.seed if study.definition.seed is not None else engine_seed
    sampler = scipy.stats.qmc.LatinHypercube(d=space.width, rng=seeded_generator(seed, study.definition_id))
    return sampler.random(study.definition.n_initial)


def _with_pending(model: Model, study: StudyState) -> Model:
    """``model`` believing its own prediction at the suggestions still waiting for a value."""
    if not study.pending:
        return model
    model.gp = model.gp.believe(np.array(list(study.pending.values())))
    return model


def _complete(study: StudyState, reason: str, ctx: Context) -> list[Event]:
    study.completed = reason
    if not ctx.derives or study.best is None:
        return []
    recommended, predicted = recommend(study)
    space = Space(study.definition.space)
    return [
        StudyCompleted(
            study=study.definition.study,
            reason=reason,
            evaluations=len(study.values),
            best_params=space.decode(np.array(study.points[study.best])),
            best_value=study.values[study.best],
            recommended=recommended,
            predicted=predicted,
        )
    ]

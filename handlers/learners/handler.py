"""The learner handler: models learnt online from examples, scored by progressive validation, with
versions, champion/challenger promotion and rollback as events."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from rtopt.handlers.learners.events import (
    ChallengerStarted,
    Example,
    ExampleBatch,
    LearnerDefined,
    ModelCheckpointed,
    ModelPromoted,
    ModelRolledBack,
)
from rtopt.handlers.learners.linear import FTRL, LEARNERS, Learner
from rtopt.handlers.learners.metrics import Progressive
from rtopt.handlers.learners.registry import parameters, restore
from rtopt.handlers.options import typed_options

from rtopt import Context, Envelope, Event, Handler, InvalidEvent, handles

STATE_FIELDS = frozenset({"z", "n", "w", "g2"})  # what a learner learns, as opposed to its options


def make_learner(definition: LearnerDefined | ChallengerStarted) -> Learner:
    """A fresh learner of ``definition``; InvalidEvent names an option it does not take or a bad value."""
    kind = LEARNERS[definition.learner]
    return typed_options(definition, kind, set(kind.__struct_fields__) - STATE_FIELDS)


def is_classifier(learner: Learner) -> bool:
    """True if ``learner`` predicts probabilities of label 1."""
    return isinstance(learner, FTRL) or learner.loss == "logistic"


class Contender(msgspec.Struct):
    """A learner with its progressive metrics."""

    learner: Learner
    metrics: Progressive

    @classmethod
    def fresh(cls, learner: Learner) -> Contender:
        """``learner`` with no metrics yet."""
        return cls(learner, Progressive(classification=is_classifier(learner)))

    def score_and_learn(self, features: Sequence[dict[str, float]], labels: Sequence[float]) -> list[float]:
        """Predict each example, count the predictions, then learn (one step per example, or one on a
        mini-batch of several); returns the predictions."""
        predictions = [self.learner.predict_one(x) for x in features]
        for prediction, label in zip(predictions, labels, strict=True):
            self.metrics.update(prediction, label)
        if len(features) == 1:
            self.learner.learn_one(features[0], labels[0])
        else:
            self.learner.learn_many(features, labels)
        return predictions


class ModelState(msgspec.Struct):
    """One model: its champion, the challenger in shadow (with the champion's metrics over the same
    examples), the updates learnt, and the registry of its last versions (version -> parameters)."""

    definition: LearnerDefined
    champion: Contender
    version: int = 0
    updates: int = 0
    versions: dict[int, str] = {}
    latest: int = 0
    challenge: ChallengerStarted | None = None
    challenger: Contender | None = None
    shadow: Progressive | None = None


class LearnersState(msgspec.Struct):
    """Every model; rebuilt by replay and stored in snapshots."""

    models: dict[str, ModelState] = {}


class LearnerHandler(Handler[LearnersState]):
    """Learns models online from Example and ExampleBatch events, keeps their versions and runs
    champion/challenger promotion and rollback.

    >>> from rtopt import Engine
    >>> from rtopt.handlers.learners.events import Example, LearnerDefined
    >>> with Engine.open(":memory:", seed=1, handlers=[LearnerHandler()]) as engine:
    ...     _ = engine.publish(LearnerDefined(model="m", learner="sgd", options={"learning_rate": 0.1},
    ...                                       checkpoint_every=2), time=0.0)
    ...     for t in range(4):
    ...         _ = engine.publish(Example(model="m", features={"x": 1.0}, label=1.0), time=t)
    ...     model = engine.state("learners", "m")
    ...     (model.updates, model.version, sorted(model.versions))
    (4, 2, [1, 2])
    """

    name = "learners"
    state_type = LearnersState
    parts = "models"

    def initial_state(self) -> LearnersState:
        return LearnersState()

    def screen(self, state: LearnersState, event: Event) -> None:
        if isinstance(event, LearnerDefined):
            if event.model in state.models:
                raise InvalidEvent(f"model = {event.model!r}: already defined", field="model", value=event.model)
            make_learner(event)
            return
        model = state.models.get(event.model)
        if model is None:
            raise InvalidEvent(f"model = {event.model!r}: no such model", field="model", value=event.model)
        if isinstance(event, ChallengerStarted):
            make_learner(event)
        elif isinstance(event, ModelRolledBack) and event.version not in model.versions:
            raise InvalidEvent(
                f"version = {event.version}: {event.model!r} keeps versions {sorted(model.versions)}",
                field="version",
                value=event.version,
            )
        elif isinstance(event, Example | ExampleBatch):
            _check_examples(model, event)

    @handles(LearnerDefined)
    def _defined(
        self, state: LearnersState, envelope: Envelope[LearnerDefined], ctx: Context
    ) -> tuple[LearnersState, Sequence[Event]]:
        event = envelope.payload
        if event.model not in state.models:
            state.models[event.model] = ModelState(event, Contender.fresh(make_learner(event)))
        return state, ()

    @handles(ChallengerStarted)
    def _challenged(
        self, state: LearnersState, envelope: Envelope[ChallengerStarted], ctx: Context
    ) -> tuple[LearnersState, Sequence[Event]]:
        event = envelope.payload
        model = state.models.get(event.model)
        if model is not None:
            model.challenge, model.challenger = event, Contender.fresh(make_learner(event))
            model.shadow = Progressive(classification=model.champion.metrics.classification)
        return state, ()

    @handles(ModelRolledBack)
    def _rolled_back(
        self, state: LearnersState, envelope: Envelope[ModelRolledBack], ctx: Context
    ) -> tuple[LearnersState, Sequence[Event]]:
        event = envelope.payload
        model = state.models.get(event.model)
        if model is not None and event.version in model.versions:
            model.champion.learner = restore(model.versions[event.version])
            model.version = event.version
        return state, ()

    @handles(Example, ExampleBatch)
    def _examples(
        self, state: LearnersState, envelope: Envelope[Example | ExampleBatch], ctx: Context
    ) -> tuple[LearnersState, Sequence[Event]]:
        model = state.models.get(envelope.payload.model)
        if model is None:
            return state, ()
        return state, self._learn(model, *_rows(envelope.payload), ctx)

    @staticmethod
    def _learn(
        model: ModelState, features: Sequence[dict[str, float]], labels: Sequence[float], ctx: Context
    ) -> list[Event]:
        before = model.updates
        predictions = model.champion.score_and_learn(features, labels)
        model.updates += len(features)
        derived: list[Event] = []
        if model.challenger is not None and model.shadow is not None and model.challenge is not None:
            for prediction, label in zip(predictions, labels, strict=True):
                model.shadow.update(prediction, label)
            model.challenger.score_and_learn(features, labels)
            derived.extend(_challenge(model, ctx))
        every = model.definition.checkpoint_every
        if model.updates // every > before // every:
            derived.append(_checkpoint(model, model.champion, "champion"))
            model.version = model.latest
        return derived if ctx.derives else []


def _rows(event: Example | ExampleBatch) -> tuple[list[dict[str, float]], list[float]]:
    """The feature vectors of an example or a batch, and their labels."""
    if isinstance(event, Example):
        return [event.features], [event.label]
    return event.features, event.labels


def _check_examples(model: ModelState, event: Example | ExampleBatch) -> None:
    rows, labels = _rows(event)
    if len(rows) != len(labels):
        raise InvalidEvent(f"labels: {len(labels)} for {len(rows)} feature vectors", field="labels", value=labels)
    schema = set(model.definition.features)
    for row in rows:
        unknown = sorted(set(row) - schema) if schema else []
        if unknown:
            raise InvalidEvent(
                f"features: {unknown} are not in the schema of {model.definition.model!r}",
                field="features",
                value=unknown,
            )
    if model.champion.metrics.classification and any(not 0.0 <= y <= 1.0 for y in labels):
        raise InvalidEvent(f"label: a classifier's labels are in [0, 1], not {labels!r}", field="label", value=labels)


def _checkpoint(model: ModelState, contender: Contender, role: str) -> ModelCheckpointed:
    """Register ``contender`` as the model's next version (forgetting the oldest past ``keep_versions``)."""
    model.latest += 1
    text = parameters(contender.learner)
    model.versions[model.latest] = text
    while len(model.versions) > model.definition.keep_versions:
        del model.versions[min(model.versions)]
    return ModelCheckpointed(
        model=model.definition.model,
        version=model.latest,
        learner=contender.learner.__struct_config__.tag,
        parameters=text,
        metrics=contender.metrics.summary(),
        samples=model.updates,
        feature_schema=model.definition.feature_schema,
        role=role,
    )


def _challenge(model: ModelState, ctx: Context) -> list[Event]:
    """Promote the challenger if it has beaten the champion by the stated margin over enough examples."""
    challenge, challenger, shadow = model.challenge, model.challenger, model.shadow
    if challenger.metrics.n < challenge.min_samples or challenger.metrics.loss >= shadow.loss - challenge.margin:
        return []
    checkpoint = _checkpoint(model, challenger, "challenger")
    model.champion, model.version = challenger, model.latest
    model.challenge = model.challenger = model.shadow = None
    reason = (
        f"challenger loss {challenger.metrics.loss:.4g} below the champion's {shadow.loss:.4g} by more than "
        f"{challenge.margin:g} over {challenger.metrics.n} examples"
    )
    return [checkpoint, ModelPromoted(model=checkpoint.model, version=checkpoint.version, reason=reason)]

"""Events of online learners and of their model registry."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from rtopt import Event
from rtopt.events import Count, Name, NonNegative, OptionValue

LearnerName = Literal["ftrl", "sgd", "adagrad"]


class LearnerDefined(Event, frozen=True):
    """A model learnt online by ``learner`` (with its ``options``: alpha, l1, learning_rate, loss ...) from
    feature vectors whose names are ``features`` (any names when empty), version ``feature_schema`` of
    them. It is checkpointed every ``checkpoint_every`` updates; the registry keeps the last
    ``keep_versions`` checkpoints for rollback."""

    model: Name
    learner: LearnerName
    options: dict[str, OptionValue] = msgspec.field(default_factory=dict)
    features: list[Name] = msgspec.field(default_factory=list)
    feature_schema: Count = 1
    checkpoint_every: Annotated[int, Meta(ge=1)] = 1000
    keep_versions: Annotated[int, Meta(ge=1)] = 20

    stream_field: ClassVar[str] = "model"


class ChallengerStarted(Event, frozen=True):
    """A challenger (``learner`` with ``options``) learns in shadow from the model's next examples; it is
    promoted once, over at least ``min_samples`` of them, its progressive loss is below the champion's
    on the same examples by more than ``margin``."""

    model: Name
    learner: LearnerName
    options: dict[str, OptionValue] = msgspec.field(default_factory=dict)
    margin: NonNegative = 0.0
    min_samples: Annotated[int, Meta(ge=1)] = 500

    stream_field: ClassVar[str] = "model"


class Example(Event, frozen=True):
    """One labelled feature vector for ``model``: label 0 or 1 (or a probability) for a classifier, the
    target for a regression."""

    model: Name
    features: dict[str, float]
    label: float

    stream_field: ClassVar[str] = "model"


class ExampleBatch(Event, frozen=True):
    """A mini-batch of labelled feature vectors, learnt in one step on their mean gradient."""

    model: Name
    features: Annotated[list[dict[str, float]], Meta(min_length=1)]
    labels: Annotated[list[float], Meta(min_length=1)]

    stream_field: ClassVar[str] = "model"


class ModelCheckpointed(Event, frozen=True):
    """A version of a model: its parameters (the learner as JSON), progressive metrics, the examples it
    learnt and the feature schema it expects; ``role`` says whether it was the champion or the
    challenger about to be promoted."""

    model: Name
    version: Annotated[int, Meta(ge=1)]
    learner: LearnerName
    parameters: str
    metrics: dict[str, float]
    samples: Count
    feature_schema: Count
    role: Literal["champion", "challenger"] = "champion"

    stream_field: ClassVar[str] = "model"


class ModelPromoted(Event, frozen=True):
    """Version ``version`` became the champion that serves predictions, and why."""

    model: Name
    version: Annotated[int, Meta(ge=1)]
    reason: str

    stream_field: ClassVar[str] = "model"


class ModelRolledBack(Event, frozen=True):
    """The champion is restored to version ``version``, exactly as it was checkpointed."""

    model: Name
    version: Annotated[int, Meta(ge=1)]
    reason: str = ""

    stream_field: ClassVar[str] = "model"

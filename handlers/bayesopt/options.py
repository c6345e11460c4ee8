"""The options of a study, checked when it is defined."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta
from rtopt.handlers.bandits.rewards import RewardOptions
from rtopt.handlers.bayesopt.acquisition import ACQUISITIONS
from rtopt.handlers.bayesopt.kernels import KERNEL_NAMES
from rtopt.handlers.bayesopt.space import Space
from rtopt.handlers.options import typed_options

from rtopt import InvalidEvent, StudyDefined

METHODS = ("gp", "random")
Positive = Annotated[float, Meta(gt=0.0)]
NonNegative = Annotated[float, Meta(ge=0.0)]
AtLeastOne = Annotated[int, Meta(ge=1)]


class StudyOptions(RewardOptions, frozen=True, forbid_unknown_fields=True):
    """How a study searches and when it ends.

    Ending: after ``max_evaluations`` observations; when ``patience`` observations in a row did not beat
    the best by more than ``min_improvement``; or when the expected improvement of a suggestion falls
    below ``ei_threshold`` (objective units; acquisition ``"ei"`` only).

    Model: ``noise`` fixes the noise variance (of the standardised objective) instead of fitting it, else
    it is fitted under an exponential prior of mean ``noise_prior`` (raise it for a noisy objective);
    hyperparameters are first fitted from the kernel's defaults and ``restarts`` random starts, then
    refitted, warm-started plus ``refit_restarts`` random starts, each time the data grew by
    ``refit_growth`` (a fraction, at least one observation) since the last fit; past ``max_points``
    observations the model keeps the best fifth of them and the most recent ones. ``degree`` is the
    polynomial kernel's.

    Acquisition: ``xi`` is the improvement margin of EI and PI, ``beta`` the exploration weight of UCB;
    it is maximised from the best of ``raw_samples`` uniform points and near the incumbents.

    Suggestions waiting for a value are believed by the model; beyond ``max_pending`` of them the oldest
    is forgotten (a value told for it later is refused).

    Feedback that names a suggestion (``metadata["suggestion_id"]``) is observed as its reward: the
    options of :class:`~rtopt.handlers.bandits.rewards.RewardOptions` (composite by default) say how.

    >>> StudyOptions().max_points
    250
    """

    max_evaluations: AtLeastOne | None = None
    patience: AtLeastOne | None = None
    min_improvement: NonNegative = 0.0
    ei_threshold: NonNegative | None = None
    noise: Positive | None = None
    noise_prior: Positive = 0.1
    restarts: Annotated[int, Meta(ge=0, le=50)] = 3
    refit_restarts: Annotated[int, Meta(ge=0, le=50)] = 1
    refit_growth: NonNegative = 0.05
    max_points: Annotated[int, Meta(ge=10)] = 250
    degree: Annotated[int, Meta(ge=1, le=6)] = 2
    xi: NonNegative = 0.0
    beta: NonNegative = 2.0
    raw_samples: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    reward: Literal["binary", "composite"] = "composite"
    max_pending: AtLeastOne = 1_000


def parse_study(definition: StudyDefined) -> tuple[Space, StudyOptions]:
    """The space and typed options of ``definition``; InvalidEvent names what is wrong."""
    for field, value, known in (
        ("kernel", definition.kernel, KERNEL_NAMES),
        ("acquisition", definition.acquisition, ACQUISITIONS),
    ):
        if value not in known:
            raise InvalidEvent(f"{field} = {value!r}: must be one of {list(known)}", field=field, value=value)
    return Space(definition.space), typed_options(definition, StudyOptions, StudyOptions.__struct_fields__)

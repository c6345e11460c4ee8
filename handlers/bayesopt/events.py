"""Events of studies besides the kernel's StudyDefined, Suggested and Observed."""

from __future__ import annotations

from typing import ClassVar

from rtopt import Event
from rtopt.events import Count, Name, ParamValue


class SurrogateFitted(Event, frozen=True):
    """A study's GP hyperparameters were refitted on ``observations`` points: the kernel's (logarithms:
    signal variance, then its own) followed by the log noise variance, with the log marginal likelihood
    they reach on the standardised targets."""

    study: Name
    observations: Count
    hyperparameters: list[float]
    log_marginal_likelihood: float

    stream_field: ClassVar[str] = "study"


class StudyCompleted(Event, frozen=True):
    """A study ended (``reason``) after ``evaluations`` observations. ``recommended`` are the observed
    parameters with the best predicted objective (``predicted``): with a noisy objective the best raw
    observation (``best_params``, ``best_value``) is often a lucky draw."""

    study: Name
    reason: str
    evaluations: Count
    best_params: dict[str, ParamValue]
    best_value: float
    recommended: dict[str, ParamValue]
    predicted: float

    stream_field: ClassVar[str] = "study"

"""Bayesian optimisation of parameters (an LLM's temperature, top_p, max_tokens ...) as studies of events."""

from rtopt.handlers.bayesopt.events import StudyCompleted, SurrogateFitted
from rtopt.handlers.bayesopt.handler import BayesOptHandler, BayesOptState, StudyState, recommend
from rtopt.handlers.bayesopt.options import StudyOptions
from rtopt.handlers.bayesopt.space import Space

__all__ = [
    "BayesOptHandler",
    "BayesOptState",
    "Space",
    "StudyCompleted",
    "StudyOptions",
    "StudyState",
    "SurrogateFitted",
    "recommend",
]

"""Online learners (FTRL-Proximal, SGD, AdaGrad) with progressive validation and a versioned model registry."""

from rtopt.handlers.learners.events import (
    ChallengerStarted,
    Example,
    ExampleBatch,
    LearnerDefined,
    ModelCheckpointed,
    ModelPromoted,
    ModelRolledBack,
)
from rtopt.handlers.learners.handler import LearnerHandler, LearnersState, ModelState
from rtopt.handlers.learners.linear import FTRL, SGD, AdaGrad, Learner
from rtopt.handlers.learners.metrics import Progressive
from rtopt.handlers.learners.registry import parameters, replay_tail, restore

__all__ = [
    "FTRL",
    "SGD",
    "AdaGrad",
    "ChallengerStarted",
    "Example",
    "ExampleBatch",
    "Learner",
    "LearnerDefined",
    "LearnerHandler",
    "LearnersState",
    "ModelCheckpointed",
    "ModelPromoted",
    "ModelRolledBack",
    "ModelState",
    "Progressive",
    "parameters",
    "replay_tail",
    "restore",
]

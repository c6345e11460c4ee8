"""The bandit policies, one class each, registered by name: an experiment names its policy, and the
bandit handler, the options' checks and the commands read them from :data:`POLICIES`.

A new policy is one :class:`Policy` subclass decorated with :func:`register`, in a module imported
before the experiments that name it are defined or replayed.
"""

from rtopt.handlers.bandits.policies import (  # noqa: F401  (each registers its policy)
    epsilon_greedy,
    lin_thompson,
    linucb,
    softmax,
    thompson,
    thompson_gaussian,
    ucb1,
)
from rtopt.handlers.bandits.policies.base import (
    ACTIVE,
    PAUSED,
    POLICIES,
    RETIRED,
    ArmState,
    Choice,
    Evidence,
    Policy,
    Turn,
    parse_options,
    register,
)

__all__ = [
    "ACTIVE",
    "PAUSED",
    "POLICIES",
    "RETIRED",
    "ArmState",
    "Choice",
    "Evidence",
    "Policy",
    "Turn",
    "parse_options",
    "register",
]

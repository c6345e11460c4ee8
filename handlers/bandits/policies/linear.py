"""What the contextual policies share: a ridge regression of each arm's reward on the request's context
vector (the ``features`` named in the options), kept as the inverse design matrix and the response vector
and updated by Sherman-Morrison rank-1 steps.

Reference: L. Li, W. Chu, J. Langford and R. E. Schapire (2010), "A contextual-bandit approach to
personalized news article recommendation".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from rtopt.handlers.bandits.options import BanditOptions
from rtopt.handlers.bandits.policies.base import ArmState, Choice, Policy, Turn

from rtopt import InvalidEvent


def linear_model(arm: ArmState, dimension: int, options: BanditOptions) -> tuple[np.ndarray, np.ndarray]:
    """The ridge estimate of an arm's weights and the inverse of its design matrix.

    >>> theta, a_inv = linear_model(ArmState(), 2, BanditOptions(ridge=2.0))
    >>> theta.tolist(), a_inv.tolist()
    ([0.0, 0.0], [[0.5, 0.0], [0.0, 0.5]])
    """
    if arm.a_inv is None or arm.b is None:
        return np.zeros(dimension), np.eye(dimension) / options.ridge
    a_inv = np.asarray(arm.a_inv).reshape(dimension, dimension)
    return a_inv @ np.asarray(arm.b), a_inv


class LinearModels(NamedTuple):
    """The candidates' models in one decision: each arm's weights, the inverse of its design matrix, and
    its estimated reward for the decision's context vector."""

    thetas: tuple[np.ndarray, ...]
    inverses: tuple[np.ndarray, ...]
    estimates: np.ndarray


class LinearPolicy(Policy):
    """A contextual policy on the arms' linear models: it implements :meth:`select_linear`."""

    contextual = True

    def select(self, arms: Sequence[ArmState], turn: Turn) -> Choice:
        vector = turn.vector
        if vector is None:
            raise ValueError(f"policy {self.name!r} needs a context vector")
        thetas, inverses = zip(*(linear_model(arm, len(vector), turn.options) for arm in arms), strict=True)
        estimates = np.array([theta @ vector for theta in thetas])
        return self.select_linear(LinearModels(thetas, inverses, estimates), vector, turn)

    def select_linear(self, models: LinearModels, vector: np.ndarray, turn: Turn) -> Choice:
        """Choose an arm by the candidates' ``models`` and the context ``vector``."""
        raise NotImplementedError

    def learn(self, arm: ArmState, reward: float, options: BanditOptions, vector: np.ndarray | None) -> None:
        """Learn the reward and add (vector, reward) to the arm's model."""
        if vector is None:
            raise ValueError(f"policy {self.name!r} learns from the context vector of the decision")
        super().learn(arm, reward, options, vector)
        _, a_inv = linear_model(arm, len(vector), options)
        b = np.zeros(len(vector)) if arm.b is None else np.asarray(arm.b)
        projected = a_inv @ vector
        a_inv = a_inv - np.outer(projected, projected) / (1.0 + vector @ projected)
        arm.a_inv = a_inv.ravel().tolist()
        arm.b = (b + reward * vector).tolist()

    def discount(self, arm: ArmState, factor: float, options: BanditOptions) -> None:
        """Scale the arm's evidence; its design matrix keeps its ridge prior."""
        super().discount(arm, factor, options)
        if arm.a_inv is not None and arm.b is not None:
            size = len(arm.b)
            design = np.linalg.inv(np.asarray(arm.a_inv).reshape(size, size))
            prior = options.ridge * np.eye(size)
            arm.a_inv = np.linalg.inv(prior + factor * (design - prior)).ravel().tolist()
            arm.b = (factor * np.asarray(arm.b)).tolist()

    def check(self, options: BanditOptions) -> None:
        if not options.features:
            raise InvalidEvent(
                f"options.features: policy {self.name!r} needs the names of the context features it reads",
                field="options.features",
                value=None,
            )

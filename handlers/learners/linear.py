"""Online linear learners on sparse feature vectors (name -> value): FTRL-Proximal logistic regression,
and SGD and AdaGrad for linear (squared loss) or logistic regression.

Every learner is a msgspec Struct: its parameters are its fields, so a checkpoint is its encoding and a
restored checkpoint is the same learner, bit for bit. A constant feature gives the model an intercept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

Features = Mapping[str, float]


def sigmoid(margin: float) -> float:
    """1 / (1 + exp(-margin)), without overflow.

    >>> sigmoid(0.0), round(sigmoid(-800.0), 6)
    (0.5, 0.0)
    """
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    e = math.exp(margin)
    return e / (1.0 + e)


class OnlineLearner(msgspec.Struct, forbid_unknown_fields=True):
    """A model learnt one example (or one mini-batch) at a time from the gradient of its loss,
    ``(prediction - target) * x`` for both the squared and the logistic loss; subclasses predict and step.

    >>> model = SGD(learning_rate=0.1)
    >>> model.learn_many([{"x": 1.0}], [2.0])  # one step of 0.1 * 2.0 on x's weight
    >>> round(model.predict_one({"x": 1.0}), 6)
    0.2
    """

    def predict_one(self, x: Features) -> float:
        """The prediction for ``x``."""
        raise NotImplementedError

    def learn_one(self, x: Features, y: float) -> None:
        """One step on example ``x`` with target ``y``."""
        error = self.predict_one(x) - y
        self._step({f: error * v for f, v in x.items()})

    def learn_many(self, xs: Sequence[Features], ys: Sequence[float]) -> None:
        """One step on the mean gradient of a mini-batch, taken at the weights before the batch."""
        gradient: dict[str, float] = {}
        for x, y in zip(xs, ys, strict=True):
            error = self.predict_one(x) - y
            for f, v in x.items():
                gradient[f] = gradient.get(f, 0.0) + error * v / len(xs)
        self._step(gradient)

    def _step(self, gradient: Features) -> None:
        raise NotImplementedError


class FTRL(OnlineLearner, tag="ftrl"):
    """FTRL-Proximal logistic regression (McMahan et al., 2013) with L1 and L2 regularisation: per-coordinate
    learning rates ``alpha / (beta + sqrt(sum of squared gradients))``; L1 keeps irrelevant weights at
    exactly zero.

    >>> model = FTRL(alpha=0.5, l1=0.0)
    >>> for _ in range(200):
    ...     model.learn_one({"bias": 1.0, "x": 1.0}, 1.0)
    ...     model.learn_one({"bias": 1.0, "x": -1.0}, 0.0)
    >>> model.predict_one({"bias": 1.0, "x": 1.0}) > 0.9
    True
    """

    alpha: float = 0.1
    beta: float = 1.0
    l1: float = 1.0
    l2: float = 1.0
    z: dict[str, float] = {}
    n: dict[str, float] = {}

    def weight(self, feature: str) -> float:
        """The weight of ``feature`` (zero while L1 holds it there)."""
        z = self.z.get(feature, 0.0)
        if abs(z) <= self.l1:
            return 0.0
        rate = (self.beta + math.sqrt(self.n.get(feature, 0.0))) / self.alpha
        return -(z - math.copysign(self.l1, z)) / (rate + self.l2)

    def weights(self) -> dict[str, float]:
        """Every weight the model has touched."""
        return {feature: self.weight(feature) for feature in self.z}

    def predict_one(self, x: Features) -> float:
        """P(label = 1 | x)."""
        return sigmoid(sum(self.weight(f) * v for f, v in x.items()))

    def _step(self, gradient: Features) -> None:
        for f, g in gradient.items():
            n = self.n.get(f, 0.0)
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / self.alpha
            self.z[f] = self.z.get(f, 0.0) + g - sigma * self.weight(f)
            self.n[f] = n + g * g


class GradientLearner(OnlineLearner):
    """A linear model ``w.x`` (``loss="squared"``) or ``sigmoid(w.x)`` (``loss="logistic"``) learnt by
    gradient steps with L2 regularisation; subclasses set the step size of each coordinate."""

    loss: Literal["squared", "logistic"] = "squared"
    learning_rate: float = 0.05
    l2: float = 0.0
    w: dict[str, float] = {}

    def predict_one(self, x: Features) -> float:
        """The predicted value (squared loss) or probability of label 1 (logistic loss)."""
        margin = sum(self.w.get(f, 0.0) * v for f, v in x.items())
        return sigmoid(margin) if self.loss == "logistic" else margin

    def _step(self, gradient: Features) -> None:
        for f, g in gradient.items():
            w = self.w.get(f, 0.0)
            g += self.l2 * w
            self.w[f] = w - self._rate(f, g) * g

    def _rate(self, feature: str, gradient: float) -> float:
        raise NotImplementedError


class SGD(GradientLearner, tag="sgd"):
    """Plain stochastic gradient descent with a constant step.

    >>> model = SGD(learning_rate=0.1)
    >>> for _ in range(300):
    ...     model.learn_one({"x": 1.0}, 2.0)
    >>> round(model.predict_one({"x": 1.0}), 4)
    2.0
    """

    def _rate(self, feature: str, gradient: float) -> float:
        return self.learning_rate


class AdaGrad(GradientLearner, tag="adagrad"):
    """AdaGrad: each coordinate's step is ``learning_rate / sqrt(eps + sum of its squared gradients)``.

    >>> model = AdaGrad(learning_rate=0.5)
    >>> for _ in range(500):
    ...     model.learn_one({"x": 1.0}, -3.0)
    >>> round(model.predict_one({"x": 1.0}), 3)
    -3.0
    """

    eps: float = 1e-8
    g2: dict[str, float] = {}

    def _rate(self, feature: str, gradient: float) -> float:
        total = self.g2.get(feature, 0.0) + gradient * gradient
        self.g2[feature] = total
        return self.learning_rate / math.sqrt(self.eps + total)


Learner = FTRL | SGD | AdaGrad
LEARNERS: dict[str, type[Learner]] = {"ftrl": FTRL, "sgd": SGD, "adagrad": AdaGrad}

"""Standard test functions of global optimisation, to be minimised, with their known minima."""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec
import numpy as np

HARTMANN6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
HARTMANN6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
HARTMANN6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def branin(x: np.ndarray) -> float:
    """Branin-Hoo on [-5, 10] x [0, 15]; minimum 0.397887 at (-pi, 12.275), (pi, 2.275), (9.42478, 2.475).

    >>> round(branin(np.array([math.pi, 2.275])), 6)
    0.397887
    """
    x1, x2 = float(x[0]), float(x[1])
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def hartmann6(x: np.ndarray) -> float:
    """Hartmann-6 on [0, 1]^6; minimum -3.32237.

    >>> round(hartmann6(np.array([0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573])), 5)
    -3.32237
    """
    inner = (HARTMANN6_A * (np.asarray(x, dtype=float) - HARTMANN6_P) ** 2).sum(axis=1)
    return float(-(HARTMANN6_ALPHA * np.exp(-inner)).sum())


class Objective(msgspec.Struct, frozen=True):
    """A function to minimise over a box, with its known minimum.

    >>> OBJECTIVES["branin"].bounds[0]
    (-5.0, 10.0)
    """

    name: str
    function: Callable[[np.ndarray], float]
    bounds: list[tuple[float, float]]
    minimum: float

    def space(self) -> dict[str, tuple[float, float]]:
        """The search space of a study of this function: ``x0``, ``x1`` ... over the box."""
        return {f"x{i}": bound for i, bound in enumerate(self.bounds)}

    def at(self, params: dict[str, float]) -> float:
        """The function's value at the parameters of a suggestion."""
        return self.function(np.array([params[f"x{i}"] for i in range(len(self.bounds))]))


OBJECTIVES = {
    "branin": Objective("branin", branin, [(-5.0, 10.0), (0.0, 15.0)], 0.397887),
    "hartmann6": Objective("hartmann6", hartmann6, [(0.0, 1.0)] * 6, -3.32237),
}

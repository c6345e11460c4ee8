"""Thompson sampling with a Normal-Inverse-Gamma posterior, for rewards that are not successes (the
composite reward): it samples the uncertainty of each arm's mean, which shrinks as evidence grows.

Reference: O. Chapelle and L. Li (2011), "An empirical evaluation of Thompson sampling".
"""

from __future__ import annotations

import numpy as np
from rtopt.handlers.bandits.options import BanditOptions
from rtopt.handlers.bandits.policies.base import Evidence, register
from rtopt.handlers.bandits.policies.thompson import Thompson


@register
class GaussianThompson(Thompson):
    """Thompson sampling whose posterior of each arm's mean starts from ``prior_mean``, ``prior_kappa``,
    ``prior_shape`` and ``prior_scale``.

    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> evidence = Evidence.of([ArmState(n=100.0, total=60.0, squares=40.0)], BanditOptions(), now=0.0)
    >>> draws = GaussianThompson().mean_draws(evidence, BanditOptions(), np.random.default_rng(0), 2_000)
    >>> round(float(draws.mean()), 2)
    0.6
    """

    name = "thompson_gaussian"
    option_names = frozenset({"prior_mean", "prior_kappa", "prior_shape", "prior_scale", "propensity_draws"})

    def mean_draws(self, evidence: Evidence, options: BanditOptions, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draws of each arm's mean from its Normal-Inverse-Gamma posterior: the uncertainty of the mean,
        not the spread of the rewards (which does not shrink with evidence)."""
        n, total, squares = evidence.arrays()
        m0, k0, a0, b0 = options.prior_mean, options.prior_kappa, options.prior_shape, options.prior_scale
        safe_n = np.where(n > 0, n, 1.0)
        mean = np.where(n > 0, total / safe_n, m0)
        within = np.where(n > 0, np.maximum(squares - total * total / safe_n, 0.0), 0.0)
        kappa = k0 + n
        centre = (k0 * m0 + total) / kappa
        shape = a0 + n / 2.0
        scale = b0 + 0.5 * within + k0 * n * (mean - m0) ** 2 / (2.0 * kappa)
        variance = scale / rng.gamma(shape, 1.0, size=(size, len(n)))
        return centre + rng.standard_normal((size, len(n))) * np.sqrt(variance / kappa)

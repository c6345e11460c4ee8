"""Thompson sampling with a Normal-Inverse-Gamma posterior, for rewards that are not successes (the
composite reward): it samples the uncertainty of each arm's mean, which shrinks as evidence grows.

Reference: O. Chapelle and L. Li (2011), "An empirical evaluation of Thompson sampling".
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from rtopt.handlers.bandits.options import BanditOptions
from rtopt.handlers.bandits.policies.base import Evidence, register
from rtopt.handlers.bandits.policies.propensity import Posteriors, StudentPosteriors
from rtopt.handlers.bandits.policies.thompson import Thompson


class NormalInverseGamma(NamedTuple):
    """Each arm's posterior of (mean, variance): variance ~ InverseGamma(shape, scale) and, given it,
    mean ~ Normal(centre, variance / kappa)."""

    centre: np.ndarray
    kappa: np.ndarray
    shape: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, evidence: Evidence, options: BanditOptions) -> NormalInverseGamma:
        """The posteriors given ``evidence``, from the prior ``prior_mean``, ``prior_kappa``,
        ``prior_shape`` and ``prior_scale``."""
        n, total, squares = evidence.arrays()
        m0, k0, a0, b0 = options.prior_mean, options.prior_kappa, options.prior_shape, options.prior_scale
        safe_n = np.where(n > 0, n, 1.0)
        mean = np.where(n > 0, total / safe_n, m0)
        within = np.where(n > 0, np.maximum(squares - total * total / safe_n, 0.0), 0.0)
        kappa = k0 + n
        scale = b0 + 0.5 * within + k0 * n * (mean - m0) ** 2 / (2.0 * kappa)
        return cls((k0 * m0 + total) / kappa, kappa, a0 + n / 2.0, scale)


@register
class GaussianThompson(Thompson):
    """Thompson sampling whose posterior of each arm's mean starts from ``prior_mean``, ``prior_kappa``,
    ``prior_shape`` and ``prior_scale``; a draw of the mean follows Student's t with 2 * shape degrees of
    freedom, which gives the propensity.

    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> evidence = Evidence.of([ArmState(n=100.0, total=60.0, squares=40.0)], BanditOptions(), now=0.0)
    >>> draws = GaussianThompson().mean_draws(evidence, BanditOptions(), np.random.default_rng(0), 2_000)
    >>> round(float(draws.mean()), 2)
    0.6
    """

    name = "thompson_gaussian"
    option_names = frozenset({"prior_mean", "prior_kappa", "prior_shape", "prior_scale"})

    def mean_draws(self, evidence: Evidence, options: BanditOptions, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draws of each arm's mean from its Normal-Inverse-Gamma posterior: the uncertainty of the mean,
        not the spread of the rewards (which does not shrink with evidence)."""
        post = NormalInverseGamma.of(evidence, options)
        variance = post.scale / rng.gamma(post.shape, 1.0, size=(size, len(post.centre)))
        return post.centre + rng.standard_normal((size, len(post.centre))) * np.sqrt(variance / post.kappa)

    def posteriors(self, evidence: Evidence, options: BanditOptions) -> Posteriors:
        """Each arm's draw of its mean: Student's t with 2 * shape degrees of freedom, location centre and
        scale sqrt(scale / (shape * kappa))."""
        post = NormalInverseGamma.of(evidence, options)
        return StudentPosteriors(2.0 * post.shape, post.centre, np.sqrt(post.scale / (post.shape * post.kappa)))

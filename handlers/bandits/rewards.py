"""Rewards a bandit learns from feedback: binary, or a weighted composite of quality, cost, latency and
user satisfaction."""

from __future__ import annotations

from handlers.bandits.options import BanditOptions
from rtopt import Feedback


def reward(feedback: Feedback, options: BanditOptions) -> tuple[float, dict[str, float]]:
    """The reward in [0, 1] of ``feedback`` and the parts it was made of.

    >>> from rtopt import Feedback
    >>> fb = Feedback(prompt_id="g", variant_id="v", response_time_ms=500.0, success=True, quality_score=0.9,
    ...               cost_usd=0.002)
    >>> reward(fb, BanditOptions())
    (1.0, {'success': 1.0, 'quality': 0.9})
    >>> reward(fb, BanditOptions(reward="composite", w_quality=2.0, w_cost=1.0, w_latency=1.0,
    ...                          cost_budget_usd=0.01, latency_sla_ms=1000.0))
    (0.775, {'success': 1.0, 'quality': 0.9, 'cost': 0.8, 'latency': 0.5})
    """
    parts = {"success": 1.0 if feedback.success else 0.0, "quality": feedback.quality_score}
    if options.reward == "binary":
        value = 1.0 if feedback.success and feedback.quality_score >= options.quality_threshold else 0.0
        return value, parts
    weighted = [(options.w_quality, feedback.quality_score)]
    if options.w_cost:
        parts["cost"] = 1.0 - min(feedback.cost_usd / options.cost_budget_usd, 1.0)
        weighted.append((options.w_cost, parts["cost"]))
    if options.w_latency:
        parts["latency"] = 1.0 - min(feedback.response_time_ms / options.latency_sla_ms, 1.0)
        weighted.append((options.w_latency, parts["latency"]))
    if options.w_satisfaction and feedback.user_satisfaction is not None:
        parts["satisfaction"] = feedback.user_satisfaction
        weighted.append((options.w_satisfaction, feedback.user_satisfaction))
    total_weight = sum(weight for weight, _ in weighted)
    if not feedback.success or total_weight == 0:
        return 0.0, parts
    return sum(weight * part for weight, part in weighted) / total_weight, parts

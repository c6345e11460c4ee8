"""Rewards a bandit learns from feedback: binary, or a weighted composite of quality, cost, latency and
user satisfaction."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from rtopt import Feedback, InvalidEvent

Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Meta(ge=0.0)]
Positive = Annotated[float, Meta(gt=0.0)]


class RewardOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How feedback becomes a reward in [0, 1].

    ``reward="binary"`` is 1 for a successful response whose quality is at least ``quality_threshold``
    and 0 otherwise; ``reward="composite"`` weighs quality, cost against ``cost_budget_usd``, latency
    against ``latency_sla_ms`` and user satisfaction (when given) with the ``w_*`` weights, and is 0 for a
    failed response.
    """

    reward: Literal["binary", "composite"] = "binary"
    quality_threshold: Unit = 0.7
    w_quality: NonNegative = 1.0
    w_cost: NonNegative = 0.0
    w_latency: NonNegative = 0.0
    w_satisfaction: NonNegative = 0.0
    cost_budget_usd: Positive = 0.01
    latency_sla_ms: Positive = 2_000.0

    def check(self) -> None:
        """Raise InvalidEvent if a composite reward has no positive weight."""
        if self.reward == "composite" and self.w_quality + self.w_cost + self.w_latency + self.w_satisfaction <= 0:
            raise InvalidEvent(
                "options: a composite reward needs a positive weight", field="options.w_quality", value=0.0
            )


REWARD_OPTIONS = frozenset(RewardOptions.__struct_fields__)


def reward(feedback: Feedback, options: RewardOptions) -> tuple[float, dict[str, float]]:
    """The reward in [0, 1] of ``feedback`` and the parts it was made of.

    >>> from rtopt import Feedback
    >>> fb = Feedback(prompt_id="g", variant_id="v", response_time_ms=500.0, success=True, quality_score=0.9,
    ...               cost_usd=0.002)
    >>> reward(fb, RewardOptions())
    (1.0, {'success': 1.0, 'quality': 0.9})
    >>> reward(fb, RewardOptions(reward="composite", w_quality=2.0, w_cost=1.0, w_latency=1.0,
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

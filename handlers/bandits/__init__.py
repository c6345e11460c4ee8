"""Bandit policies that choose among prompt variants and learn from feedback."""

from handlers.bandits.events import ArmAdded, ArmPaused, ArmResumed, ArmRetired, ArmSummary, ExperimentStats
from handlers.bandits.handler import BanditHandler, BanditState, ExperimentState, statistics
from handlers.bandits.options import BanditOptions
from handlers.bandits.policies import ArmState, Choice, choose

__all__ = [
    "ArmAdded",
    "ArmPaused",
    "ArmResumed",
    "ArmRetired",
    "ArmState",
    "ArmSummary",
    "BanditHandler",
    "BanditOptions",
    "BanditState",
    "Choice",
    "ExperimentState",
    "ExperimentStats",
    "choose",
    "statistics",
]

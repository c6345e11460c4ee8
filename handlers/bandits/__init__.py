"""Bandit policies that choose among prompt variants and learn from feedback."""

from rtopt.handlers.bandits.events import (
    ArmAdded,
    ArmPaused,
    ArmResumed,
    ArmRetired,
    ArmSummary,
    ArmUpdated,
    EvidenceDiscounted,
    ExperimentStats,
    PolicyStateImported,
)
from rtopt.handlers.bandits.handler import BanditHandler, BanditState, ExperimentState, statistics
from rtopt.handlers.bandits.options import BanditOptions
from rtopt.handlers.bandits.policies import ArmState, Choice, choose
from rtopt.handlers.bandits.transfer import export_policy_state, import_policy_state

__all__ = [
    "ArmAdded",
    "ArmPaused",
    "ArmResumed",
    "ArmRetired",
    "ArmState",
    "ArmSummary",
    "ArmUpdated",
    "BanditHandler",
    "BanditOptions",
    "BanditState",
    "Choice",
    "EvidenceDiscounted",
    "ExperimentState",
    "ExperimentStats",
    "PolicyStateImported",
    "choose",
    "export_policy_state",
    "import_policy_state",
    "statistics",
]

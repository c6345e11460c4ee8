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
from rtopt.handlers.bandits.policies import POLICIES, ArmState, Choice, Policy, Turn, register
from rtopt.handlers.bandits.transfer import export_policy_state, import_policy_state

__all__ = [
    "POLICIES",
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
    "Policy",
    "PolicyStateImported",
    "Turn",
    "export_policy_state",
    "import_policy_state",
    "register",
    "statistics",
]

"""Bandit policies that choose among prompt variants and learn from feedback."""

from handlers.bandits.handler import BanditHandler, BanditState, ExperimentState
from handlers.bandits.thompson import BetaArm, ThompsonOptions

__all__ = ["BanditHandler", "BanditState", "BetaArm", "ExperimentState", "ThompsonOptions"]

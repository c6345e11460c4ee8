"""``rtopt evaluate``: what another policy would have earned on a recorded log, by off-policy estimates.

A real log cannot be re-run with another policy (its feedback exists only for the arms that were chosen),
so the what-if of a bandit policy on it is an estimate from the propensities the decisions recorded:
replay (rejection), IPS and self-normalised IPS, each with its interval and diagnostics. A simulated log
can instead be re-simulated (``rtopt simulate --policy ...`` with the same seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rtopt.handlers.bandits.ope import TargetPolicy, always, evaluate, rounds_from_log, uniform

from rtopt import Engine
from rtopt.arguments import invalid
from rtopt.cli import checked, positive


def target_policy(text: str) -> TargetPolicy:
    """The target policy a command line names: ``uniform`` or ``always:ARM``.

    >>> target_policy("always:v2")(None, ["v1", "v2"])
    {'v2': 1.0}
    """
    if text == "uniform":
        return uniform
    kind, _, arm = text.partition(":")
    if kind == "always" and arm:
        return always(arm)
    raise invalid("policy", text, "expected 'uniform' or 'always:ARM'")


def target_policy_name(text: str) -> str:
    """``text`` if it names a target policy (see :func:`target_policy`)."""
    target_policy(text)
    return text


def register_command(commands: argparse._SubParsersAction) -> None:
    """Add ``rtopt evaluate`` to the command line."""
    command = commands.add_parser(
        "evaluate",
        help="estimate another policy's reward on a recorded log (off-policy)",
        description=__doc__.splitlines()[0],
    )
    command.add_argument("log", type=Path, help="path of the log")
    command.add_argument("--experiment", default="greeting", help="the experiment to evaluate (default greeting)")
    command.add_argument(
        "--policy", type=checked(target_policy_name), default="uniform", help="the target policy: uniform or always:ARM"
    )
    command.add_argument("--clip", type=positive(float), default=None, help="clip importance weights at this level")
    command.add_argument(
        "--floor",
        choices=["min"],
        default=None,
        help="replay assumes a uniform logging policy; 'min' first rejects rounds down to the smallest "
        "propensity, which makes it unbiased for any logging policy at the cost of most rounds",
    )
    command.set_defaults(run=run_command)


def run_command(args: argparse.Namespace, console: Console) -> int:
    """Print the off-policy estimates of the target policy, with their intervals and diagnostics."""
    policy = target_policy(args.policy)
    with Engine.open(args.log, read_only=True, handlers=[]) as engine:
        log = rounds_from_log(engine, args.experiment)
    if not log.rounds:
        raise invalid("experiment", args.experiment, f"no decision with a learnt reward in {args.log}")
    estimates = evaluate(log.rounds, policy, clip=args.clip, floor=args.floor)
    table = Table(title=f"off-policy estimates of {args.policy} on {args.experiment} ({len(log.rounds)} rounds)")
    for column in ("estimator", "value", "95% interval", "effective sample size", "max weight"):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for name, estimate in estimates.items():
        table.add_row(
            name,
            f"{estimate.value:.4f}",
            f"{estimate.low:.4f}-{estimate.high:.4f}",
            f"{estimate.effective_sample_size:,.0f}",
            f"{estimate.max_weight:.1f}",
        )
    console.print(table)
    console.print(
        "These are estimates from the recorded propensities, not a re-run: a small effective sample size or a "
        f"large max weight means the log says little about this policy. {log.unanswered} decisions had no "
        "learnt reward and are left out.",
        soft_wrap=True,
    )
    return 0

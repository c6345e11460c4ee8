"""``rtopt dashboard``: serve the live dashboard of a log in a browser (declared under ``rtopt.commands``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from rtopt.cli import positive

DEFAULT_LOG = Path("event_log") / "demo.sqlite"


def register_command(commands: argparse._SubParsersAction) -> None:
    """Add ``rtopt dashboard`` to the command line."""
    command = commands.add_parser(
        "dashboard",
        help="serve a live dashboard of a log in a browser",
        description="Serve a Panel dashboard of a log on 127.0.0.1 (unless --address says otherwise): event rate, "
        "feedback metrics per variant, allocation and posteriors of the bandits, A/B tests, Bayesian studies, "
        "detections, actions, forecasts and alerts, updated "
        "as another process writes the log; the state at a past seq and other policies' estimated value.",
    )
    command.add_argument(
        "log", nargs="?", type=Path, default=DEFAULT_LOG, help=f"path of the log (default {DEFAULT_LOG})"
    )
    command.add_argument("--port", type=int, default=5006, help="port to serve on (default 5006)")
    command.add_argument(
        "--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    command.add_argument(
        "--refresh", type=positive(float), default=1.0, help="seconds between updates of the page (default 1)"
    )
    command.add_argument("--show", action="store_true", help="open the page in a browser")
    command.set_defaults(run=run_command)


def run_command(args: argparse.Namespace, console: Console) -> int:
    """Serve until interrupted."""
    from apps.ui import serve  # Panel loads slowly: only when the command runs

    console.print(f"serving {args.log} on http://{args.address}:{args.port}/ (Ctrl-C to stop)", soft_wrap=True)
    serve(args.log, port=args.port, address=args.address, period_ms=round(args.refresh * 1000), show=args.show)
    return 0

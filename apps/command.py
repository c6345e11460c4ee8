"""``rtopt dashboard``: serve the live dashboard of a log in a browser (declared under ``rtopt.commands``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rtopt.apps.access import TOKEN_PATTERN, Access, host_name, is_loopback, new_token, resolved, url_of

from rtopt.cli import UsageError, between, non_blank, positive
from rtopt.errors import RtoptError

DEFAULT_LOG = Path("event_log") / "demo.sqlite"


def address(text: str) -> str:
    """An argparse type for an address to listen on: an IP address or a host name that resolves."""
    try:
        resolved(text)
    except (OSError, UnicodeError):
        raise argparse.ArgumentTypeError(f"{text!r} is neither an IP address nor a host name that resolves") from None
    return text


def token_in(path: str) -> str:
    """An argparse type for a file holding a token: the token (the file's text, stripped)."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{path}: cannot be read ({exc})") from None
    if not TOKEN_PATTERN.fullmatch(token):
        raise argparse.ArgumentTypeError(
            f"{path}: must hold one token of at least 16 letters, digits or '-._~' (e.g. openssl rand -hex 32)"
        )
    return token


def register_command(commands: argparse._SubParsersAction) -> None:
    """Add ``rtopt dashboard`` to the command line."""
    command = commands.add_parser(
        "dashboard",
        help="serve a live dashboard of a log in a browser",
        description="Serve a Panel dashboard of a log on 127.0.0.1 (unless --address says otherwise): event rate, "
        "feedback metrics per variant, allocation and posteriors of the bandits, A/B tests, Bayesian studies, "
        "detections, actions, forecasts and alerts, updated "
        "as another process writes the log; the state at a past seq and other policies' estimated value. "
        "Served beyond this machine, every request must carry a token.",
    )
    command.add_argument(
        "log", nargs="?", type=Path, default=DEFAULT_LOG, help=f"path of the log (default {DEFAULT_LOG})"
    )
    command.add_argument("--port", type=between(1, 65535), default=5006, help="port to serve on (default 5006)")
    command.add_argument(
        "--address",
        type=address,
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only); any other needs --token-file or "
        "--generate-token",
    )
    command.add_argument(
        "--refresh", type=positive(float), default=1.0, help="seconds between updates of the page (default 1)"
    )
    tokens = command.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token-file",
        dest="token",
        type=token_in,
        metavar="FILE",
        help="ask every request for the token this file holds (as a Bearer token, the password of basic auth, "
        "or once in the address: /?token=...)",
    )
    tokens.add_argument(
        "--generate-token", action="store_true", help="ask every request for a random token, printed once"
    )
    command.add_argument(
        "--allow-host",
        type=non_blank,
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to this host name (the Host header), e.g. the name of a proxy; repeatable",
    )
    command.add_argument("--show", action="store_true", help="open the page in a browser")
    command.set_defaults(run=run_command, check=check_arguments)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(args.address) and args.token is None and not args.generate_token:
        raise UsageError(
            "--address",
            args.address,
            "serves beyond this machine: give --token-file FILE or --generate-token, so that every request "
            "must carry the token",
        )


def run_command(args: argparse.Namespace, console: Console) -> int:
    """Serve until interrupted."""
    from rtopt.apps.ui import serve  # Panel loads slowly: only when the command runs

    token = new_token() if args.generate_token else args.token
    access = Access.serving(args.address, args.port, token, also=args.allow_host)
    url = url_of(args.address, args.port, from_elsewhere=True)
    if is_loopback(args.address):
        console.print(f"serving {args.log} on {url} (this machine only; Ctrl-C to stop)", soft_wrap=True)
    else:
        Console(stderr=True).print(
            f"warning: serving {args.log} beyond this machine, on {host_name(args.address)}:{args.port}; every "
            "request must carry the token, which plain HTTP does not encrypt: on a network you do not trust, "
            "serve it through a TLS proxy",
            markup=False,
            soft_wrap=True,
        )
    if args.generate_token:
        console.print(f"open {url}?token={token} (the token is shown only now)", markup=False, soft_wrap=True)
    elif token is not None:
        console.print(f"open {url}?token=TOKEN, where TOKEN is the token in the --token-file", soft_wrap=True)
    try:
        serve(
            args.log,
            port=args.port,
            address=args.address,
            period_ms=round(args.refresh * 1000),
            show=args.show,
            access=access,
        )
    except OSError as exc:
        raise RtoptError(f"cannot listen on {host_name(args.address)}:{args.port}: {exc.strerror or exc}") from None
    return 0

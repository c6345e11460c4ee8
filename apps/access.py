"""Who may open the served dashboard: requests must name, in their Host header, an address the server
answers to (which defeats DNS rebinding), and, when a token is set (always beyond this machine), carry it.

A request carries the token as ``Authorization: Bearer TOKEN``, as HTTP basic auth with the token as the
password (a browser asks for it), or in a cookie that ``/?token=TOKEN`` sets before it redirects to the page
without the token. The check runs before any handler of the server sees the request (pages, resources,
websocket), so a refused request reaches nothing: 403 for a Host it does not serve, 401 for a missing or
wrong token.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import re
import secrets
import socket
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode

import msgspec
from tornado.httputil import HTTPServerRequest
from tornado.web import Application, RequestHandler

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
COOKIE = "rtopt_dashboard_token"
TOKEN_PARAMETER = "token"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,}")  # safe in a URL, a header and a cookie; not guessable
REALM = 'Basic realm="rtopt dashboard", charset="UTF-8"'


def new_token() -> str:
    """A random token (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


def resolved(address: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The IP addresses ``address`` (an IP address or a host name) stands for; raises OSError if it
    cannot be resolved."""
    try:
        return [ipaddress.ip_address(address)]
    except ValueError:
        found = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
        return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in found]


def is_unspecified(address: str) -> bool:
    """True if listening on ``address`` listens on every interface (``0.0.0.0``, ``::``, ``""``)."""
    return address == "" or any(ip.is_unspecified for ip in resolved(address))


def is_loopback(address: str) -> bool:
    """True if listening on ``address`` serves this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0"), is_loopback("10.1.2.3")
    (True, True, False, False)
    """
    return address != "" and all(ip.is_loopback for ip in resolved(address))


def host_name(address: str) -> str:
    """``address`` as the host part of a Host header (IPv6 addresses in brackets), in lower case."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.lower()
    return f"[{ip}]" if ip.version == 6 else str(ip)


def url_of(address: str, port: int, *, from_elsewhere: bool = False) -> str:
    """The URL of a server listening on ``address``:``port``; listening on every interface, it is reached
    as localhost, or from elsewhere by this machine's name.

    >>> url_of("::1", 5006), url_of("0.0.0.0", 5006)
    ('http://[::1]:5006/', 'http://localhost:5006/')
    """
    if not is_unspecified(address):
        return f"http://{host_name(address)}:{port}/"
    return f"http://{socket.gethostname() if from_elsewhere else 'localhost'}:{port}/"


def names_of_this_machine() -> set[str]:
    """The host names and addresses this machine is known by (those its name resolves to)."""
    hostname = socket.gethostname()
    names = {hostname, socket.getfqdn()}
    with contextlib.suppress(OSError):
        names.update(str(ip) for ip in resolved(hostname))
    return names


class Access(msgspec.Struct, frozen=True):
    """What the server accepts: ``hosts`` are the ``name:port`` a Host header may name, ``token`` the
    secret every request must carry (None: no token asked, for a server on this machine only).

    >>> access = Access.serving("127.0.0.1", 5006)
    >>> sorted(access.hosts)
    ['127.0.0.1:5006', '[::1]:5006', 'localhost:5006']
    >>> access.allows_host("LOCALHOST:5006"), access.allows_host("evil.example:5006")
    (True, False)
    """

    hosts: frozenset[str]
    token: str | None = None

    @classmethod
    def serving(cls, address: str, port: int, token: str | None = None, also: Iterable[str] = ()) -> Access:
        """The access of a server listening on ``address``:``port``: the loopback names always; a given
        address (or name) itself; for every interface (``0.0.0.0``, ``::``), this machine's names and
        addresses; and the host names ``also`` lists (names by which users reach it, behind a proxy ...)."""
        names = set(LOOPBACK_HOSTS) | set(also)
        names |= names_of_this_machine() if is_unspecified(address) else {address}
        return cls(frozenset(f"{host_name(name)}:{port}" for name in names), token)

    @property
    def origins(self) -> list[str]:
        """The ``host:port`` a websocket's Origin may name (Bokeh's allow list, which takes no IPv6 address)."""
        return sorted(host for host in self.hosts if not host.startswith("["))

    def allows_host(self, host: str) -> bool:
        """True if a request whose Host header is ``host`` is for this server."""
        host = host.strip().lower()
        if not host.endswith("]") and ":" in host:
            return host in self.hosts
        return f"{host}:80" in self.hosts

    def admits(self, request: HTTPServerRequest) -> bool:
        """True if ``request`` may pass: no token is asked, or it carries it in its Authorization header
        or its cookie."""
        if self.token is None:
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        candidates = [_cookie(request)]
        if scheme.lower() == "bearer":
            candidates.append(credentials.strip())
        elif scheme.lower() == "basic":
            candidates.append(_basic_password(credentials))
        return any(self.matches(candidate) for candidate in candidates)

    def matches(self, candidate: str | None) -> bool:
        """True if ``candidate`` is the token (compared in constant time)."""
        return (
            self.token is not None
            and candidate is not None
            and hmac.compare_digest(candidate.encode(), self.token.encode())
        )

    def entry_path(self) -> str:
        """The path that lets a browser in: ``/``, with the token when one is asked."""
        return "/" if self.token is None else f"/?{urlencode({TOKEN_PARAMETER: self.token})}"


def _cookie(request: HTTPServerRequest) -> str | None:
    try:
        morsel = SimpleCookie(request.headers.get("Cookie", "")).get(COOKIE)
    except CookieError:
        return None
    return None if morsel is None else morsel.value


def _basic_password(credentials: str) -> str | None:
    try:
        _, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password


class Refused(RequestHandler):
    """The answer to a request the access refuses, whatever its method."""

    def initialize(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason

    def prepare(self) -> None:
        self.set_status(self.status)
        if self.status == 401:
            self.set_header("WWW-Authenticate", REALM)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(self.reason + "\n")


class TokenAccepted(RequestHandler):
    """``?token=...`` with the right token: set the cookie and send the browser to the same page without it."""

    def initialize(self, token: str) -> None:
        self.token = token

    def prepare(self) -> None:
        self.set_cookie(COOKIE, self.token, path="/", httponly=True, samesite="Strict")
        query = {key: values for key, values in parse_qs(self.request.query).items() if key != TOKEN_PARAMETER}
        self.redirect(self.request.path + (f"?{urlencode(query, doseq=True)}" if query else ""), status=303)


def guard(app: Application, access: Access) -> None:
    """Make ``app`` answer only the requests ``access`` allows: every request goes through the check before
    ``app`` routes it to a handler."""
    route = app.find_handler

    def find_handler(request: HTTPServerRequest, **kwargs: Any) -> Any:
        if not access.allows_host(request.host):
            reason = f"this server does not answer to the host {request.host!r}"
            return app.get_handler_delegate(request, Refused, {"status": 403, "reason": reason})
        if access.admits(request):
            return route(request, **kwargs)
        given = parse_qs(request.query).get(TOKEN_PARAMETER, [None])[-1]
        if access.matches(given):
            return app.get_handler_delegate(request, TokenAccepted, {"token": access.token})
        reason = "this dashboard asks for its token: open the address it printed (/?token=...) or log in with it"
        return app.get_handler_delegate(request, Refused, {"status": 401, "reason": reason})

    app.find_handler = find_handler  # type: ignore[method-assign]

"""A throwaway PostgreSQL server in a temporary directory, for tests, benchmarks and trying scale-out on one
machine.

It runs the server binaries of an installed PostgreSQL (Debian's ``postgresql-NN`` packages put them in
``/usr/lib/postgresql/NN/bin``), listens on 127.0.0.1 at a free port, trusts local connections and is
deleted when stopped. PostgreSQL refuses to run as root, so under root the server runs as the
``postgres`` user (or ``nobody`` where that user does not exist).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from rtopt.arguments import one_of
from rtopt.errors import RtoptError

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"


def server_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` of the newest installed PostgreSQL, or None."""
    found = [Path(p) for p in glob.glob(BIN_GLOB) if (Path(p) / "initdb").exists()]
    if not found:
        initdb = shutil.which("initdb")
        return Path(initdb).parent if initdb else None
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> str | None:
    """The user to run the server as: None for the current one, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in (SUPERUSER, "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RtoptError("PostgreSQL cannot run as root and neither a 'postgres' nor a 'nobody' user exists")


class TemporaryServer:
    """A PostgreSQL cluster created in a fresh temporary directory and started on a free local port.

    ``durable`` False turns fsync off: fast, and safe against a client being killed, not the machine.

    >>> server = TemporaryServer().start()  # doctest: +SKIP
    >>> server.create_database("demo")  # doctest: +SKIP
    'postgresql://postgres@127.0.0.1:54321/demo'
    >>> server.halt()  # doctest: +SKIP
    >>> server.start().url()  # doctest: +SKIP
    'postgresql://postgres@127.0.0.1:54321/postgres'
    >>> server.stop()  # doctest: +SKIP
    """

    def __init__(self, *, durable: bool = False, binaries: Path | None = None) -> None:
        found = binaries or server_binaries()
        if found is None:
            raise RtoptError("no PostgreSQL server binaries found (install postgresql-15, or pass binaries=)")
        self.binaries = found
        self.durable = durable
        self.port = _free_port()
        self._user = _server_user()
        self.directory = Path(tempfile.mkdtemp(prefix="rtopt-pg-"))
        self.data = self.directory / "data"
        self._running = False

    def _run(self, *command: str) -> None:
        argv = [str(self.binaries / command[0]), *command[1:]]
        if self._user is not None:
            argv = ["runuser", "-u", self._user, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=self.directory, check=False)
        if done.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RtoptError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def start(self) -> TemporaryServer:
        """Create the cluster (unless it exists: after :meth:`halt`) and start the server; returns self."""
        if not self.data.exists():
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.directory}",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        log = self.directory / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "-o", " ".join(options), "start")
        self._running = True
        atexit.register(self.stop)  # the server outlives this process otherwise
        return self

    def url(self, database: str = "postgres") -> str:
        """A connection URL for ``database`` on this server."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; returns its URL."""
        import psycopg  # only needed once a server runs

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_schema(self, name: str, database: str = "postgres") -> str:
        """Create an empty schema ``name`` in ``database``; returns a URL whose tables live in it."""
        import psycopg  # only needed once a server runs

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url(database)}?options=-csearch_path%3D{name}"

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data: :meth:`start` brings it back on the same port. ``mode`` is
        pg_ctl's: ``fast`` ends the sessions and writes everything out, ``immediate`` stops as a crash would."""
        one_of("mode", mode, ("fast", "immediate"))
        if self._running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self._running = False

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        atexit.unregister(self.stop)
        self.halt("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> TemporaryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """``python -m rtopt.pgserver``: start a throwaway server, print its URL, stop it on Ctrl-C or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with TemporaryServer(durable=True) as server:
        print(server.url(), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()

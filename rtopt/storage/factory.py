"""Opening a log by its location: a PostgreSQL database for a ``postgresql://`` URL, else an SQLite file."""

from __future__ import annotations

import os
from typing import TypeGuard

from rtopt.arguments import one_of
from rtopt.storage.interface import EventLog
from rtopt.storage.sqlite import SQLiteLog


def is_postgres_url(location: object) -> TypeGuard[str]:
    """True if ``location`` names a PostgreSQL database rather than an SQLite file.

    >>> is_postgres_url("postgresql://app@db:5432/rtopt"), is_postgres_url("event_log/rtopt.sqlite")
    (True, False)
    """
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def open_log(
    location: str | os.PathLike[str],
    *,
    read_only: bool = False,
    seed: int | None = None,
    durability: str = "process",
    file_mode: int = 0o600,
    check: bool = True,
) -> EventLog:
    """The log at ``location``: a PostgreSQL database for a ``postgresql://`` URL, else an SQLite file.

    ``durability`` ``"process"`` makes a commit survive the calling process being killed at any moment
    (SQLite: WAL with ``synchronous=NORMAL``; PostgreSQL: ``synchronous_commit = off``, the server holds the
    commit), ``"power"`` also an operating-system crash or power loss (SQLite: ``synchronous=FULL``;
    PostgreSQL: the commit is flushed to disk before it returns). ``file_mode`` (the permissions of a new
    log's files) applies to SQLite. ``check`` checks the last rows' hash chain and
    the append-only triggers on opening (:meth:`EventLog.audit` checks everything).

    >>> open_log(":memory:", seed=1).meta()["seed"]
    '1'
    """
    if is_postgres_url(location):
        from rtopt.storage.postgres import PostgresLog  # psycopg is only needed for PostgreSQL logs

        return PostgresLog.open(location, read_only=read_only, seed=seed, check=check, durability=durability)
    one_of("durability", durability, ("process", "power"))
    synchronous = "FULL" if durability == "power" else "NORMAL"
    return SQLiteLog.open(
        location, read_only=read_only, seed=seed, synchronous=synchronous, file_mode=file_mode, check=check
    )

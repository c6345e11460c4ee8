"""Opening a log by its location: a PostgreSQL database for a ``postgresql://`` URL, else an SQLite file."""

from __future__ import annotations

import os
from typing import TypeGuard

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
    synchronous: str = "NORMAL",
    file_mode: int = 0o600,
    check: bool = True,
) -> EventLog:
    """The log at ``location``: a PostgreSQL database for a ``postgresql://`` URL, else an SQLite file.

    ``synchronous`` and ``file_mode`` (the permissions of a new log's files) apply to SQLite; a PostgreSQL
    commit is as durable as its server is configured to be. ``check`` checks the last rows' hash chain and
    the append-only triggers on opening (:meth:`EventLog.audit` checks everything).

    >>> open_log(":memory:", seed=1).meta()["seed"]
    '1'
    """
    if is_postgres_url(location):
        from rtopt.storage.postgres import PostgresLog  # psycopg is only needed for PostgreSQL logs

        return PostgresLog.open(location, read_only=read_only, seed=seed, check=check)
    return SQLiteLog.open(
        location, read_only=read_only, seed=seed, synchronous=synchronous, file_mode=file_mode, check=check
    )

"""Errors raised by the rtopt kernel, and how their messages show a value."""

from __future__ import annotations

import reprlib

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlevel = 240, 120, 60, 3


def short_repr(value: object) -> str:
    """``repr(value)``, shortened for an error message: long strings and deep or long containers are cut.

    >>> short_repr("x" * 1000)[:8], len(short_repr("x" * 1000)) < 250
    ("'xxxxxxx", True)
    """
    return _SHORT.repr(value)


class RtoptError(Exception):
    """Base class of every error rtopt raises on purpose."""


class InvalidEvent(RtoptError, ValueError):
    """An event, or a command's arguments that make one (a decision's experiment, a feedback's decision id),
    failed validation.

    ``field`` names the offending field (a dotted path for nested values) and ``value`` holds what was
    given, so callers can report or count the rejection without parsing the message.
    """

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class InvalidArgument(RtoptError, ValueError):
    """A function or constructor was called with an argument it does not take (see :mod:`rtopt.arguments`).

    ``argument`` names the argument (``name[key]`` for an item of it) and ``value`` holds what was given.
    Events and commands refused for their content raise :class:`InvalidEvent` instead.
    """

    def __init__(self, message: str, *, argument: str, value: object = None) -> None:
        super().__init__(message)
        self.argument = argument
        self.value = value


class InvalidLog(RtoptError):
    """A file is not an rtopt log, or is one this version cannot read. Nothing was changed."""


class UnreadableSchemaVersion(InvalidLog):
    """The log holds an event at a schema version this code cannot read as its type's current one: a newer
    version than the class's, or an older one with no upcaster registered for a step (see
    :mod:`rtopt.upcasting`)."""


class ReadOnlyLog(RtoptError):
    """A write was attempted on an engine opened read-only (for instance a replay of a source log), or a log
    the process cannot write was opened without ``read_only=True``."""


class UnknownEventType(RtoptError):
    """The log holds an event type whose class is not registered in this process."""


class StorageError(RtoptError):
    """The database behind a log failed or refused an operation; the driver's error, if any, is the ``__cause__``.

    Unless a subclass says otherwise, nothing of the operation was written.
    """


class StorageUnavailable(StorageError):
    """The database server could not be reached, even after reconnecting for the log's
    ``reconnect_timeout_s``; nothing was written. The engine goes on once the server is back."""


class WriteConflict(StorageError):
    """Another writer took what a write needed first: the seq it would append at, an event id, or the
    tracking position it would move; nothing was written.

    The message names what conflicted. Reading the log again and deriving anew resolves it.

    >>> isinstance(WriteConflict("tracker 'worker:0/1' is at seq 50, not 0"), StorageError)
    True
    """


class CommitUncertain(StorageError):
    """The connection broke while a batch was being committed and the log could not find out whether the
    commit took place: either every event in ``event_ids`` is in the log, or none is.

    Check with ``engine.log.get(event_ids[0])`` once the server is back, or publish again with the same
    explicit ids: a duplicate id is refused with :class:`InvalidEvent`, which means the first attempt
    committed.

    >>> error = CommitUncertain("connection lost during COMMIT", event_ids=["a", "b"])
    >>> error.event_ids
    ['a', 'b']
    """

    def __init__(self, message: str, *, event_ids: list[str]) -> None:
        super().__init__(message)
        self.event_ids = event_ids

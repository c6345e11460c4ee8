"""Errors raised by the rtopt kernel."""

from __future__ import annotations


class RtoptError(Exception):
    """Base class of every error rtopt raises on purpose."""


class InvalidEvent(RtoptError, ValueError):
    """An event, or a command's arguments, failed validation.

    ``field`` names the offending field (a dotted path for nested values) and ``value`` holds what was
    given, so callers can report or count the rejection without parsing the message.
    """

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class InvalidLog(RtoptError):
    """A file is not an rtopt log, or is one this version cannot read. Nothing was changed."""


class ReadOnlyLog(RtoptError):
    """A write was attempted on an engine opened read-only (for instance a replay of a source log), or a log
    the process cannot write was opened without ``read_only=True``."""


class UnknownEventType(RtoptError):
    """The log holds an event type whose class is not registered in this process."""

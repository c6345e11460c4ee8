"""Checks of the arguments functions and constructors take: each returns the value it was given, or raises
:class:`~rtopt.errors.InvalidArgument` naming the argument and the value.

>>> positive("horizon", 30.0)
30.0
>>> in_range("alpha", 1.5, 0.0, 1.0, low_open=True, high_open=True)
Traceback (most recent call last):
rtopt.errors.InvalidArgument: alpha = 1.5: must be in (0.0, 1.0)
>>> one_of("late", "keep", ("drop", "update"))
Traceback (most recent call last):
rtopt.errors.InvalidArgument: late = 'keep': must be one of 'drop', 'update'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sized
from typing import TypeVar

from rtopt.errors import InvalidArgument, short_repr

T = TypeVar("T")
Z = TypeVar("Z", bound=Sized)


def invalid(argument: str, value: object, problem: str) -> InvalidArgument:
    """The error for ``argument`` given as ``value``: ``<argument> = <value>: <problem>``."""
    return InvalidArgument(f"{argument} = {short_repr(value)}: {problem}", argument=argument, value=value)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive(argument: str, value: float) -> float:
    """``value`` if it is a number above 0 (infinity included)."""
    if _is_real(value) and value > 0:
        return value
    raise invalid(argument, value, "must be a positive number")


def non_negative(argument: str, value: float) -> float:
    """``value`` if it is a number of 0 or more (infinity included)."""
    if _is_real(value) and value >= 0:
        return value
    raise invalid(argument, value, "must be a number of 0 or more")


def finite(argument: str, value: float) -> float:
    """``value`` if it is a finite number."""
    if _is_real(value) and math.isfinite(value):
        return value
    raise invalid(argument, value, "must be a finite number")


def in_range(
    argument: str, value: float, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` if it is a number between ``low`` and ``high``, each bound included unless open.

    >>> in_range("q", 1.0, 0.0, 1.0)
    1.0
    """
    if (
        _is_real(value)
        and (low < value if low_open else low <= value)
        and (value < high if high_open else value <= high)
    ):
        return value
    interval = f"{'(' if low_open else '['}{low!r}, {high!r}{')' if high_open else ']'}"
    raise invalid(argument, value, f"must be in {interval}")


def whole(argument: str, value: int, at_least: int = 1) -> int:
    """``value`` if it is a whole number (not a bool) of at least ``at_least``.

    >>> whole("steps", 0)
    Traceback (most recent call last):
    rtopt.errors.InvalidArgument: steps = 0: must be a whole number of at least 1
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= at_least:
        return value
    raise invalid(argument, value, f"must be a whole number of at least {at_least}")


def one_of(argument: str, value: T, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``."""
    known = tuple(choices)
    if value in known:
        return value
    raise invalid(argument, value, f"must be one of {', '.join(map(repr, known))}")


def non_empty(argument: str, value: Z) -> Z:
    """``value`` if it holds at least one item (or character)."""
    if len(value):
        return value
    raise invalid(argument, value, "must not be empty")

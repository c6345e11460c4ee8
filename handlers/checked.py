"""Structs whose constructor checks the constraints of their fields, as decoding does."""

from __future__ import annotations

import re
import threading

import msgspec

from rtopt import InvalidEvent

_FIELD = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")
_checking = threading.local()


class Checked(msgspec.Struct):
    """A struct built in Python is checked against its ``Meta`` constraints (msgspec checks them only when
    decoding); a bad value raises InvalidEvent naming the field and the value.

    >>> class Window(Checked):
    ...     size: int = 10
    >>> Window(size="ten")
    Traceback (most recent call last):
    rtopt.errors.InvalidEvent: Window.size = 'ten': Expected `int`, got `str`
    """

    def __post_init__(self) -> None:
        if getattr(_checking, "active", False):
            return
        _checking.active = True
        try:
            msgspec.convert(msgspec.to_builtins(self), type(self))
        except msgspec.ValidationError as exc:
            match = _FIELD.search(str(exc))
            field = match.group(1) if match else None
            value = getattr(self, field, None) if field else None
            where = f"{type(self).__name__}.{field}" if field else type(self).__name__
            reason = str(exc).split(" - at ")[0]
            raise InvalidEvent(f"{where} = {value!r}: {reason}", field=field, value=value) from None
        finally:
            _checking.active = False
        self.check_fields()

    def check_fields(self) -> None:
        """Raise InvalidEvent if fields that are valid one by one do not go together."""


def at_most(owner: Checked, field: str, value: int, limit_field: str, limit: int) -> None:
    """Refuse ``owner.field`` above ``owner.limit_field`` with InvalidEvent naming the field and the value.

    >>> class Window(Checked):
    ...     size: int = 10
    ...     filled_at: int = 5
    ...     def check_fields(self):
    ...         at_most(self, "filled_at", self.filled_at, "size", self.size)
    >>> Window(filled_at=20)
    Traceback (most recent call last):
    rtopt.errors.InvalidEvent: Window.filled_at = 20: must not exceed size (10)
    """
    if value > limit:
        raise InvalidEvent(
            f"{type(owner).__name__}.{field} = {value!r}: must not exceed {limit_field} ({limit})",
            field=field,
            value=value,
        )

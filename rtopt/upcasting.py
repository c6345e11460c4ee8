"""Upcasting: reading events recorded under an older schema version of their type as the current one.

The log never changes: an event keeps the payload and the ``schema_version`` it was written with. When an
event type changes (a field renamed, added without a default, its meaning changed), its class raises its
``schema_version`` and registers an upcaster for the version it leaves: a function that takes a payload of
that version, as msgpack decodes it (a ``dict`` without the ``type`` tag), and returns it as the next
version would have written it. Decoding a payload older than its class applies the upcasters from its
version up to the class's, then reads the result with the class's strict decoder, so an upcast payload
meets the same checks as a current one. Upcasters must be pure functions of the payload: replay and
verify call them again and must read the same event. Personal values arrive sealed (see
:mod:`rtopt.privacy`); an upcaster moves them but must not read them.

>>> @upcaster("DoctestGreeting", 1)
... def _name_became_target(payload):
...     payload["target"] = payload.pop("name")
...     return payload
>>> upcast("DoctestGreeting", {"name": "api"}, 1, 2)
{'target': 'api'}
>>> upcast("DoctestGreeting", {"target": "api"}, 2, 3)
Traceback (most recent call last):
rtopt.errors.UnreadableSchemaVersion: DoctestGreeting: no upcaster from schema version 2 to 3 is registered
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rtopt.arguments import whole
from rtopt.errors import UnreadableSchemaVersion

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(tag: str, version: int) -> Callable[[Upcaster], Upcaster]:
    """Register the decorated function as the upcaster of ``tag``'s payloads from ``version`` to
    ``version + 1``. One per (tag, version): registering another one for the same step is an error."""
    whole("version", version)

    def register(function: Upcaster) -> Upcaster:
        known = _UPCASTERS.get((tag, version))
        if known is not None and (known.__module__, known.__qualname__) != (function.__module__, function.__qualname__):
            raise TypeError(
                f"{tag}: the upcaster from schema version {version} is already {known.__module__}.{known.__qualname__}"
            )
        _UPCASTERS[(tag, version)] = function
        return function

    return register


def upcast(tag: str, payload: Payload, version: int, current: int) -> Payload:
    """``payload``, recorded under ``tag`` at schema ``version``, as schema version ``current`` holds it.

    Raises :class:`~rtopt.errors.UnreadableSchemaVersion` for a version newer than ``current`` (written by a
    newer rtopt or handler package) or a step with no upcaster registered.
    """
    if version > current:
        raise UnreadableSchemaVersion(
            f"{tag}: recorded at schema version {version}, newer than this code's {current}: "
            "read the log with the version of the package that wrote it, or a newer one"
        )
    for step in range(version, current):
        try:
            function = _UPCASTERS[(tag, step)]
        except KeyError:
            raise UnreadableSchemaVersion(
                f"{tag}: no upcaster from schema version {step} to {step + 1} is registered"
            ) from None
        payload = function(payload)
    return payload

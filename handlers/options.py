"""Typed experiment options: the names a policy takes, converted and checked with msgspec."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

import msgspec

from rtopt import ExperimentDefined, InvalidEvent

Options = TypeVar("Options", bound=msgspec.Struct)


def typed_options(definition: ExperimentDefined, kind: type[Options], allowed: Collection[str]) -> Options:
    """``definition.options`` as a ``kind``; InvalidEvent names an option the policy does not take or an
    invalid value (``options.<name>``)."""
    for name, value in definition.options.items():
        if name not in allowed:
            raise InvalidEvent(
                f"options.{name} = {value!r}: not an option of policy {definition.policy!r} "
                f"(it takes {sorted(allowed)})",
                field=f"options.{name}",
                value=value,
            )
    try:
        return msgspec.convert(definition.options, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.split("`$.")[-1].split("`")[0] if "`$." in message else None
        raise InvalidEvent(
            f"options of {definition.experiment!r}: {message}",
            field=f"options.{field}" if field else "options",
            value=definition.options.get(field or ""),
        ) from None

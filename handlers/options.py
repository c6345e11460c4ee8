"""Typed options of experiments and studies: the names a policy or method takes, converted and checked
with msgspec."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

import msgspec

from rtopt import ExperimentDefined, InvalidEvent, StudyDefined

Options = TypeVar("Options", bound=msgspec.Struct)


def typed_options(
    definition: ExperimentDefined | StudyDefined, kind: type[Options], allowed: Collection[str]
) -> Options:
    """``definition.options`` as a ``kind``; InvalidEvent names an option the policy (or the study's
    method) does not take or an invalid value (``options.<name>``)."""
    if isinstance(definition, ExperimentDefined):
        owner, subject = f"policy {definition.policy!r}", definition.experiment
    else:
        owner, subject = f"method {definition.method!r}", definition.study
    for name, value in definition.options.items():
        if name not in allowed:
            raise InvalidEvent(
                f"options.{name} = {value!r}: not an option of {owner} (it takes {sorted(allowed)})",
                field=f"options.{name}",
                value=value,
            )
    try:
        return msgspec.convert(definition.options, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.split("`$.")[-1].split("`")[0] if "`$." in message else None
        raise InvalidEvent(
            f"options of {subject!r}: {message}",
            field=f"options.{field}" if field else "options",
            value=definition.options.get(field or ""),
        ) from None

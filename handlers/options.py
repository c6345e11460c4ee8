"""Typed options of experiments and studies: the names a policy or method takes, converted and checked
with msgspec."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

import msgspec

from rtopt import Event, InvalidEvent

Options = TypeVar("Options", bound=msgspec.Struct)


OWNERS = ("policy", "method", "learner")  # the field of a definition that says what takes its options
SUBJECTS = ("experiment", "study", "model")  # the field that names what it defines


def typed_options(definition: Event, kind: type[Options], allowed: Collection[str]) -> Options:
    """``definition.options`` (of an ExperimentDefined, StudyDefined, LearnerDefined ...) as a ``kind``;
    InvalidEvent names an option its policy, method or learner does not take or an invalid value
    (``options.<name>``)."""
    owner_field = next(name for name in OWNERS if hasattr(definition, name))
    owner = f"{owner_field} {getattr(definition, owner_field)!r}"
    subject = next(getattr(definition, name) for name in SUBJECTS if hasattr(definition, name))
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

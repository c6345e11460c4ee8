"""The model registry: versions of a learner kept as events, restored exactly for rollback and recovery.

A version's parameters are the learner's JSON encoding, so restoring a version gives back the same
learner, bit for bit; restoring the latest checkpoint and learning the examples after it gives the model
a full replay gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from rtopt.handlers.learners.events import Example, ExampleBatch, ModelCheckpointed
from rtopt.handlers.learners.linear import Learner

from rtopt import Envelope

_DECODER = msgspec.json.Decoder(Learner)


def parameters(learner: Learner) -> str:
    """The checkpointed form of ``learner``.

    >>> from rtopt.handlers.learners.linear import SGD
    >>> parameters(SGD(learning_rate=0.1, w={"x": 2.0}))
    '{"type":"sgd","loss":"squared","learning_rate":0.1,"l2":0.0,"w":{"x":2.0}}'
    """
    return msgspec.json.encode(learner).decode()


def restore(checkpoint: ModelCheckpointed | str) -> Learner:
    """The learner a checkpoint (or its parameters) holds.

    >>> from rtopt.handlers.learners.linear import SGD
    >>> restore(parameters(SGD(w={"x": 2.0}))) == SGD(w={"x": 2.0})
    True
    """
    text = checkpoint if isinstance(checkpoint, str) else checkpoint.parameters
    return _DECODER.decode(text)


def replay_tail(envelopes: Iterable[Envelope[Any]], model: str) -> Learner | None:
    """The champion rebuilt from the latest champion checkpoint of ``model`` among ``envelopes`` (in seq
    order) and the examples it had not learnt yet; None before a first checkpoint.

    A checkpoint is logged after the whole group of examples that led to it, so the tail is found by the
    checkpoint's sample count, not by its position in the log. A rollback or a promotion after the latest
    checkpoint changes the champion in ways this does not follow: rebuild such a model by replay."""
    checkpoint: ModelCheckpointed | None = None
    seen = 0
    tail: list[tuple[int, Example | ExampleBatch]] = []  # (examples seen before it, event)
    for envelope in envelopes:
        event = envelope.payload
        if getattr(event, "model", None) != model:
            continue
        if isinstance(event, Example | ExampleBatch):
            tail.append((seen, event))
            seen += 1 if isinstance(event, Example) else len(event.labels)
        elif isinstance(event, ModelCheckpointed) and event.role == "champion":
            checkpoint = event
            tail = [(before, e) for before, e in tail if before >= event.samples]
    if checkpoint is None:
        return None
    learner = restore(checkpoint)
    for _, event in tail:
        if isinstance(event, Example):
            learner.learn_one(event.features, event.label)
        else:
            learner.learn_many(event.features, event.labels)
    return learner

"""The fold every dashboard view is: per event type it reads, ``(state, envelope) -> state``.

A view has the shape of a handler's fold without what only a handler needs: it derives no events and sees
no :class:`rtopt.Context` (event time is the envelope's, and a view draws nothing at random), and its state
is never persisted, so it may be any Python object that its frame methods read. The view itself holds only
its settings; the state it folds lives in the :class:`rtopt.apps.views.sources.LogModel` that runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import pandas as pd

from rtopt import Envelope, Event
from rtopt.handler import declared_folds

S = TypeVar("S")
ViewFold = Callable[[Any, Envelope[Any]], Any]

DEFAULT_BUCKET_S = 60.0
MAX_POINTS = 400
EVERY = Event.tag()  # a fold declared for Event itself folds events of every type


def merge_factor(buckets: int, max_points: int) -> int:
    """How many adjacent buckets to merge into one point so that ``buckets`` give at most ``max_points``.

    >>> merge_factor(100, 400), merge_factor(1000, 400), merge_factor(1200, 400)
    (1, 3, 3)
    """
    return max(1, math.ceil(buckets / max_points))


class View(Generic[S]):
    """A live aggregate of a log for the dashboard: a fold per event type it reads, declared with
    :func:`rtopt.handles` as a handler's are, from :meth:`initial_state`, and frame methods that give the state
    as tables.

    >>> from rtopt import Feedback, handles
    >>> class Variants(View[set]):
    ...     def initial_state(self): return set()
    ...     @handles(Feedback)
    ...     def feedback(self, state, envelope):
    ...         state.add(envelope.payload.variant_id)
    ...         return state
    ...     def frame(self, state): return pd.DataFrame({"variant": sorted(state)})
    >>> fb = Feedback(prompt_id="p", variant_id="v1", response_time_ms=1.0, success=True, quality_score=0.5)
    >>> view = Variants()
    >>> state = view.fold(view.initial_state(), [Envelope(1, "id", "Feedback", "p", 0.0, 0.0, None, None, 1, fb)])
    >>> sorted(view.tags()), view.frame(state)["variant"].tolist()
    (['Feedback'], ['v1'])
    """

    title: ClassVar[str] = ""
    folds: ClassVar[Mapping[type[Event], str]] = {}  # event type -> name of the method declared as its fold
    fold_names: ClassVar[Mapping[str, str]] = {}  # the same by type tag

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        folds = cls.folds = declared_folds(cls, cls.folds)
        cls.fold_names = {event_type.tag(): method for event_type, method in folds.items()}

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S) -> None:
        self.bucket_s = bucket_s

    def initial_state(self) -> S:
        """The state before any event."""
        raise NotImplementedError

    @classmethod
    def tags(cls) -> frozenset[str] | None:
        """The type tags this view reads (None: all)."""
        return None if Event in cls.folds else frozenset(t.tag() for t in cls.folds)

    @classmethod
    def shown_by(cls) -> frozenset[str] | None:
        """The type tags whose events make the view worth showing (None: any event); its own types unless it
        reads others only to put them beside these."""
        return cls.tags()

    def fold_of(self, tag: str) -> ViewFold | None:
        """The fold of events of type ``tag`` (None if the view does not read them)."""
        method = self.fold_names.get(tag) or self.fold_names.get(EVERY)
        return None if method is None else getattr(self, method)

    def fold(self, state: S, envelopes: Iterable[Envelope[Any]]) -> S:
        """``state`` with ``envelopes`` (in seq order) folded in."""
        for envelope in envelopes:
            fold = self.fold_of(envelope.type)
            if fold is not None:
                state = fold(state, envelope)
        return state

    def bucket(self, time: float) -> int:
        """The index of the event-time bucket ``time`` falls in."""
        return math.floor(time / self.bucket_s)

    def frame(self, state: S) -> pd.DataFrame:
        """The view's aggregate as a table."""
        raise NotImplementedError

    def frames(self, state: S) -> dict[str, pd.DataFrame]:
        """Every table the view gives, by name."""
        return {type(self).__name__: self.frame(state)}

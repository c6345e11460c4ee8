"""What feeds the views: a :class:`LogModel` runs every view's folds over a log, one envelope at a time in seq
order, and keeps their states; a source feeds the model what is new since its last call. A
:class:`LogTail` reads the log from the next seq (another process may be writing it), an
:class:`EngineFeed` receives the committed events of an engine running in the same process. Nothing is
ever read twice.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from rtopt.apps.views.decisions import Allocation, ArmPosteriors, ExperimentTests
from rtopt.apps.views.detection import Detections, Forecasts, Responses
from rtopt.apps.views.overview import AlertFeed, EventRate, FeedbackMetrics
from rtopt.apps.views.studies import Studies
from rtopt.apps.views.view import DEFAULT_BUCKET_S, View, ViewFold

from rtopt import Engine, Envelope, InvalidLog

READ_CHUNK = 50_000
V = TypeVar("V", bound=View[Any])


def default_views(bucket_s: float = DEFAULT_BUCKET_S) -> list[View[Any]]:
    """One of each view the dashboard shows."""
    return [
        cls(bucket_s)
        for cls in (
            EventRate,
            FeedbackMetrics,
            Allocation,
            ArmPosteriors,
            ExperimentTests,
            Studies,
            Detections,
            Responses,
            Forecasts,
            AlertFeed,
        )
    ]


class LogModel:
    """Counts by type and the views of a log with their states, folded one envelope at a time in seq order.

    >>> from rtopt import Feedback
    >>> model = LogModel()
    >>> fb = Feedback(prompt_id="p", variant_id="v1", response_time_ms=90.0, success=True, quality_score=0.7)
    >>> model.add([Envelope(1, "id", "Feedback", "p", 0.0, 0.0, None, None, 1, fb)])
    1
    >>> model.events_seen, [type(view).__name__ for view in model.shown()]
    (1, ['EventRate', 'FeedbackMetrics'])
    >>> model.state_of(model.view(FeedbackMetrics)).first
    0
    """

    def __init__(self, views: Sequence[View[Any]] | None = None) -> None:
        self.views = list(default_views() if views is None else views)
        self.states = [view.initial_state() for view in self.views]
        self.counts: Counter[str] = Counter()
        self.last_seq = 0
        self.first_time: float | None = None
        self.last_time: float | None = None
        self._folds: dict[str, list[tuple[int, ViewFold]]] = {}  # type tag -> (view's index, its fold), as met

    @property
    def events_seen(self) -> int:
        """How many events have been folded."""
        return sum(self.counts.values())

    def add(self, envelopes: Iterable[Envelope[Any]]) -> int:
        """Fold ``envelopes`` (in seq order, each seq once) into the counts and the views reading their type;
        returns how many there were."""
        folds_by_tag, states, counts = self._folds, self.states, self.counts
        before = self.events_seen
        remaining = iter(envelopes)
        first = next(remaining, None)
        if first is None:
            return 0
        if self.first_time is None:
            self.first_time = first.time
        last = first
        for last in itertools.chain((first,), remaining):
            counts[last.type] += 1
            folds = folds_by_tag.get(last.type)
            if folds is None:
                folds = folds_by_tag[last.type] = self._folds_of(last.type)
            for index, fold in folds:
                states[index] = fold(states[index], last)
        self.last_seq, self.last_time = last.seq, last.time
        return self.events_seen - before

    def _folds_of(self, tag: str) -> list[tuple[int, ViewFold]]:
        """The folds of the views that read events of type ``tag``, with each view's index."""
        folds = ((index, view.fold_of(tag)) for index, view in enumerate(self.views))
        return [(index, fold) for index, fold in folds if fold is not None]

    def shown(self) -> list[View[Any]]:
        """The views that have events of their types to show."""
        return [view for view in self.views if self.holds_events_for(view)]

    def holds_events_for(self, view: View[Any]) -> bool:
        """Whether events that make ``view`` worth showing (of any type, if it reads all) have been folded."""
        tags = view.shown_by()
        return self.events_seen > 0 if tags is None else any(self.counts[tag] for tag in tags)

    def view(self, cls: type[V]) -> V:
        """The model's view of class ``cls``."""
        return next(view for view in self.views if isinstance(view, cls))

    def state_of(self, view: View[Any]) -> Any:
        """The state ``view`` has folded so far."""
        return self.states[self.views.index(view)]

    def frame(self, cls: type[View[Any]], **options: Any) -> pd.DataFrame:
        """The main table of the model's view of class ``cls`` (the others are in :meth:`frames`)."""
        view = self.view(cls)
        return view.frame(self.state_of(view), **options)

    def counts_frame(self) -> pd.DataFrame:
        """Events per type, most frequent first."""
        return pd.DataFrame(self.counts.most_common(), columns=["type", "events"])

    def frames(self) -> dict[str, pd.DataFrame]:
        """Every table the dashboard draws, by name: the counts and each view's."""
        tables = {"counts": self.counts_frame()}
        for view, state in zip(self.views, self.states, strict=True):
            tables.update(view.frames(state))
        return tables

    def emptied(self) -> LogModel:
        """A model with the same views, and nothing folded yet."""
        return LogModel(self.views)


class LogTail:
    """Feeds a model the events of a log from the seq after the last one it read; the log may be
    written by another process meanwhile, and may not exist yet (it is opened, read-only, once it does).
    Open on a path or on an engine.

    >>> from rtopt import Feedback
    >>> engine = Engine.open(":memory:", seed=1, handlers=[])
    >>> tail = LogTail(engine)
    >>> _ = engine.publish(Feedback(prompt_id="p", variant_id="v1", response_time_ms=1.0, success=True,
    ...                             quality_score=0.5), time=0.0)
    >>> tail.poll(), tail.poll(), tail.model.events_seen
    (1, 0, 1)
    """

    def __init__(self, source: Engine | str | Path, model: LogModel | None = None) -> None:
        self.path = None if isinstance(source, Engine) else Path(source)
        self._engine = source if isinstance(source, Engine) else None
        self._opened: tuple[int, int] | None = None
        self.model = LogModel() if model is None else model
        self.lock = threading.Lock()

    def _file(self) -> tuple[int, int] | None:
        """The identity of the file at ``path`` (None if there is none)."""
        try:
            found = os.stat(self.path) if self.path is not None else None
        except FileNotFoundError:
            return None
        return None if found is None else (found.st_dev, found.st_ino)

    @property
    def location(self) -> str:
        """Where the log lives."""
        return str(self.path) if self._engine is None else self._engine.location

    @property
    def engine(self) -> Engine | None:
        """The engine reading the log (None while a log given by path does not exist yet)."""
        if self._engine is None and self.path is not None and self.path.exists():
            try:
                identity = self._file()
                self._engine = Engine.open(self.path, read_only=True, handlers=[])
                self._opened = identity
            except InvalidLog:  # still being created by its writer
                return None
        return self._engine

    def poll(self, limit: int = READ_CHUNK) -> int:
        """Fold up to ``limit`` events committed since the last call; returns how many. A log file replaced
        by another (``rtopt simulate`` writes a new one on each run) is read from its start into a new model.
        """
        with self.lock:
            if self._opened is not None and self._file() != self._opened:
                if self._engine is not None:
                    self._engine.close()
                self._engine = self._opened = None
                self.model = self.model.emptied()
            engine = self.engine
            if engine is None:
                return 0
            start = self.model.last_seq + 1
            return self.model.add(engine.read(start=start, until=start + limit - 1))

    def close(self) -> None:
        """Release the log if this tail opened it."""
        if self.path is not None and self._engine is not None:
            self._engine.close()


class EngineFeed(LogTail):
    """Feeds a model what an engine in this process commits, as it commits it (a subscription), after
    reading the events it held before.

    >>> from rtopt import Feedback
    >>> engine = Engine.open(":memory:", seed=1, handlers=[])
    >>> feed = EngineFeed(engine)
    >>> _ = engine.publish(Feedback(prompt_id="p", variant_id="v1", response_time_ms=1.0, success=True,
    ...                             quality_score=0.5), time=0.0)
    >>> feed.poll(), feed.model.events_seen
    (1, 1)
    >>> feed.close()
    """

    def __init__(self, engine: Engine, model: LogModel | None = None) -> None:
        super().__init__(engine, model)
        self.pending: deque[Envelope[Any]] = deque()
        self.subscription = engine.subscribe(self.pending.append)
        self.history_end = engine.position

    def poll(self, limit: int = READ_CHUNK) -> int:
        """Fold up to ``limit`` events: the engine's history first, then what it committed since."""
        if self.model.last_seq < self.history_end:
            return super().poll(min(limit, self.history_end - self.model.last_seq))
        with self.lock:
            batch = []
            while self.pending and len(batch) < limit:
                envelope = self.pending.popleft()
                if envelope.seq > self.model.last_seq:
                    batch.append(envelope)
            return self.model.add(batch)

    def close(self) -> None:
        """Stop receiving the engine's events."""
        self.subscription.dispose()

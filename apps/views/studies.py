"""The view of Bayesian optimisation studies: the values observed, the best so far, the suggestions beside
what the model predicted for them, and each study's status."""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any, ClassVar

import pandas as pd
from rtopt.apps.views.view import DEFAULT_BUCKET_S, MAX_POINTS, View, merge_factor
from rtopt.handlers.bayesopt import StudyCompleted

from rtopt import Envelope, Observed, StudyDefined, Suggested, handles


def _parameters(params: dict[str, Any]) -> str:
    """Parameters as ``name=value`` pairs in name order.

    >>> _parameters({"top_p": 0.9, "model": "small", "temperature": 0.41234})
    'model=small, temperature=0.4123, top_p=0.9'
    """
    return ", ".join(
        f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in sorted(params.items())
    )


class StudyRecord:
    """The studies' definitions, the latest suggestions, the values observed with the best so far, and the
    studies that ended."""

    def __init__(self, limit: int) -> None:
        self.definitions: dict[str, StudyDefined] = {}
        self.suggestions: dict[str, list[Any]] = {}
        self.recent: deque[str] = deque(maxlen=limit)
        self.values: dict[str, list[float]] = defaultdict(list)
        self.best: dict[str, list[float]] = defaultdict(list)
        self.best_params: dict[str, str] = {}
        self.completed: dict[str, StudyCompleted] = {}

    def better(self, study: str, value: float, best: float) -> bool:
        """Whether ``value`` beats ``best`` in the direction of ``study``."""
        definition = self.definitions.get(study)
        return value < best if definition is not None and definition.direction == "minimize" else value > best


class Studies(View[StudyRecord]):
    """Bayesian optimisation studies: per study, each observed value and the best so far (the largest, or the
    smallest for a study that minimises), the suggestions with what the model predicted for them and what
    was then observed, and each study's status.

    >>> from rtopt import Dimension
    >>> studies = Studies()
    >>> defined = StudyDefined(study="s", space={"x": Dimension.of((0.0, 1.0))}, direction="minimize")
    >>> suggested = Suggested(study="s", params={"x": 0.5}, method="gp", acquisition=0.2, mean=1.0, std=0.5)
    >>> observed = Observed(study="s", suggestion_id="s-1", value=0.8)
    >>> record = studies.fold(studies.initial_state(), [
    ...     Envelope(seq, f"s-{seq - 1}", type(event).__name__, "s", 0.0, 0.0, None, None, 1, event)
    ...     for seq, event in enumerate((defined, suggested, observed), start=1)
    ... ])
    >>> studies.frame(record)[["study", "iteration", "value", "best"]].values.tolist()
    [['s', 1, 0.8, 0.8]]
    >>> studies.suggestions_frame(record)[["params", "mean", "value"]].values.tolist()
    [['x=0.5', 1.0, 0.8]]
    """

    title = "Bayesian studies: best value over iterations"
    SUGGESTION_COLUMNS: ClassVar[list[str]] = [
        "seq",
        "time",
        "study",
        "params",
        "acquisition",
        "mean",
        "std",
        "value",
    ]
    STATUS_COLUMNS: ClassVar[list[str]] = [
        "study",
        "direction",
        "method",
        "evaluations",
        "best",
        "best_params",
        "status",
    ]

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S, limit: int = 1000) -> None:
        super().__init__(bucket_s)
        self.limit = limit

    def initial_state(self) -> StudyRecord:
        return StudyRecord(self.limit)

    @handles(StudyDefined)
    def defined(self, record: StudyRecord, envelope: Envelope[Any]) -> StudyRecord:
        event: StudyDefined = envelope.payload
        record.definitions[event.study] = event
        return record

    @handles(Suggested)
    def suggested(self, record: StudyRecord, envelope: Envelope[Any]) -> StudyRecord:
        event: Suggested = envelope.payload
        row = [envelope.seq, envelope.time, event.study, _parameters(event.params)]
        record.suggestions[envelope.id] = [*row, event.acquisition, event.mean, event.std, None]
        if len(record.recent) == record.recent.maxlen:
            record.suggestions.pop(record.recent[0], None)
        record.recent.append(envelope.id)
        return record

    @handles(Observed)
    def observed(self, record: StudyRecord, envelope: Envelope[Any]) -> StudyRecord:
        event: Observed = envelope.payload
        suggestion = record.suggestions.get(event.suggestion_id)
        if suggestion is not None:
            suggestion[-1] = event.value
        best = record.best[event.study]
        if not best or record.better(event.study, event.value, best[-1]):
            best.append(event.value)
            record.best_params[event.study] = "" if suggestion is None else suggestion[3]
        else:
            best.append(best[-1])
        record.values[event.study].append(event.value)
        return record

    @handles(StudyCompleted)
    def completed(self, record: StudyRecord, envelope: Envelope[Any]) -> StudyRecord:
        event: StudyCompleted = envelope.payload
        record.completed[event.study] = event
        return record

    def frame(self, record: StudyRecord, max_points: int = MAX_POINTS) -> pd.DataFrame:
        """One row per observation of each study (at most ``max_points``, evenly spaced and the last
        included): its ``iteration`` (from 1), the observed ``value`` and the ``best`` so far."""
        rows = []
        for study in sorted(record.values):
            values, best = record.values[study], record.best[study]
            step = merge_factor(len(values), max_points)
            kept = sorted({*range(len(values) - 1, -1, -step)})
            rows.extend([study, i + 1, values[i], best[i]] for i in kept)
        return pd.DataFrame(rows, columns=["study", "iteration", "value", "best"])

    def suggestions_frame(self, record: StudyRecord) -> pd.DataFrame:
        """The latest suggestions, newest first: the ``params``, the ``acquisition`` value, the model's
        predicted ``mean`` and ``std`` (NaN while no model guides the study) and the observed ``value`` (NaN
        until it is told)."""
        rows = [record.suggestions[key] for key in reversed(record.recent) if key in record.suggestions]
        return pd.DataFrame(rows, columns=self.SUGGESTION_COLUMNS)

    def status_frame(self, record: StudyRecord) -> pd.DataFrame:
        """One row per study: its direction and method, how many values were observed, the best of them
        with its parameters, and ``running`` or why it ended."""
        rows = []
        for study in sorted(record.definitions.keys() | record.values.keys()):
            definition = record.definitions.get(study)
            best = record.best.get(study)
            completed = record.completed.get(study)
            rows.append(
                [
                    study,
                    "" if definition is None else definition.direction,
                    "" if definition is None else f"{definition.method} {definition.kernel} {definition.acquisition}",
                    len(record.values.get(study, ())),
                    best[-1] if best else None,
                    record.best_params.get(study, ""),
                    "running" if completed is None else f"completed: {completed.reason}",
                ]
            )
        return pd.DataFrame(rows, columns=self.STATUS_COLUMNS)

    def frames(self, record: StudyRecord) -> dict[str, pd.DataFrame]:
        return {
            "Studies": self.frame(record),
            "Suggestions": self.suggestions_frame(record),
            "StudyStatus": self.status_frame(record),
        }

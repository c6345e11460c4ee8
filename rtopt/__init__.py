"""rtopt: an event-sourced reactive engine that optimises LLM prompts, models and parameters from feedback.

The kernel: event schemas, the append-only log, the bus and the :class:`Engine`. Domain handler chains
(bandits, detection, optimisation) live in the ``handlers`` package and register through entry points.
"""

from rtopt.commands import Answerer, Request, SuggestRequest
from rtopt.engine import Engine, default_handlers
from rtopt.errors import (
    CommitUncertain,
    InvalidArgument,
    InvalidEvent,
    InvalidLog,
    ReadOnlyLog,
    RtoptError,
    StorageError,
    StorageUnavailable,
    UnknownEventType,
    UnreadableSchemaVersion,
    WriteConflict,
)
from rtopt.events import (
    ClockTicked,
    Decision,
    Dimension,
    Envelope,
    Event,
    ExperimentDefined,
    Feedback,
    FeedbackRejected,
    HandlerFailed,
    Observed,
    StudyDefined,
    SubjectForgotten,
    Suggested,
    event_type,
    registered_types,
)
from rtopt.handler import Context, Handler, handles
from rtopt.privacy import Privacy
from rtopt.replay import ConfigurationChanged, Rebuilt, VerifyReport
from rtopt.writer import Draft, EngineStats, Limits

__all__ = [
    "Answerer",
    "ClockTicked",
    "CommitUncertain",
    "ConfigurationChanged",
    "Context",
    "Decision",
    "Dimension",
    "Draft",
    "Engine",
    "EngineStats",
    "Envelope",
    "Event",
    "ExperimentDefined",
    "Feedback",
    "FeedbackRejected",
    "Handler",
    "HandlerFailed",
    "InvalidArgument",
    "InvalidEvent",
    "InvalidLog",
    "Limits",
    "Observed",
    "Privacy",
    "ReadOnlyLog",
    "Rebuilt",
    "Request",
    "RtoptError",
    "StorageError",
    "StorageUnavailable",
    "StudyDefined",
    "SubjectForgotten",
    "SuggestRequest",
    "Suggested",
    "UnknownEventType",
    "UnreadableSchemaVersion",
    "VerifyReport",
    "WriteConflict",
    "default_handlers",
    "event_type",
    "handles",
    "registered_types",
]

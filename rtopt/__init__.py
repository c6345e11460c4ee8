"""rtopt: an event-sourced reactive engine that optimises LLM prompts, models and parameters from feedback.

The kernel: event schemas, the append-only log, the bus and the :class:`Engine`. Domain handler chains
(bandits, detection, optimisation) live in the ``handlers`` package and register through entry points.
"""

from rtopt.engine import (
    ConfigurationChanged,
    Draft,
    Engine,
    EngineStats,
    Limits,
    Rebuilt,
    VerifyReport,
    default_handlers,
)
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
from rtopt.handler import Context, Decider, Handler, Request, Suggester
from rtopt.privacy import Privacy

__all__ = [
    "ClockTicked",
    "CommitUncertain",
    "ConfigurationChanged",
    "Context",
    "Decider",
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
    "Suggested",
    "Suggester",
    "UnknownEventType",
    "UnreadableSchemaVersion",
    "VerifyReport",
    "default_handlers",
    "event_type",
    "registered_types",
]

"""Detection and response: drift and anomaly detectors, performance patterns, threshold-driven actions,
forecasts and feedback protection, each detection an event."""

from rtopt.handlers.detection.anomaly import MAD, IQRFences, Mahalanobis, ZScore
from rtopt.handlers.detection.drift import ADWIN, CUSUM, PageHinkley
from rtopt.handlers.detection.events import (
    AnomalyDetected,
    ConfigurationCaptured,
    Correlation,
    DriftDetected,
    Forecast,
    OptimizationAction,
    PatternDetected,
    Recommendation,
    ThresholdBreached,
)
from rtopt.handlers.detection.forecasting import (
    Ensemble,
    ExponentialSmoothing,
    Holt,
    LinearTrend,
    MovingAverage,
    Prediction,
)
from rtopt.handlers.detection.handler import DetectionHandler
from rtopt.handlers.detection.options import DetectionOptions
from rtopt.handlers.detection.patterns import PatternOptions
from rtopt.handlers.detection.state import DetectionState
from rtopt.handlers.protection import FeedbackFlagged, FeedbackGuard, ProtectionHandler, RateLimitExceeded

__all__ = [
    "ADWIN",
    "CUSUM",
    "MAD",
    "AnomalyDetected",
    "ConfigurationCaptured",
    "Correlation",
    "DetectionHandler",
    "DetectionOptions",
    "DetectionState",
    "DriftDetected",
    "Ensemble",
    "ExponentialSmoothing",
    "FeedbackFlagged",
    "FeedbackGuard",
    "Forecast",
    "Holt",
    "IQRFences",
    "LinearTrend",
    "Mahalanobis",
    "MovingAverage",
    "OptimizationAction",
    "PageHinkley",
    "PatternDetected",
    "PatternOptions",
    "Prediction",
    "ProtectionHandler",
    "RateLimitExceeded",
    "Recommendation",
    "ThresholdBreached",
    "ZScore",
]

"""Detection and response: drift and anomaly detectors, performance patterns, threshold-driven actions,
forecasts and feedback protection, each detection an event."""

from handlers.detection.anomaly import MAD, IQRFences, Mahalanobis, ZScore
from handlers.detection.drift import ADWIN, CUSUM, PageHinkley
from handlers.detection.events import (
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
from handlers.detection.forecasting import (
    Ensemble,
    ExponentialSmoothing,
    Holt,
    LinearTrend,
    MovingAverage,
    Prediction,
)
from handlers.detection.handler import DetectionHandler, DetectionState
from handlers.detection.options import DetectionOptions
from handlers.detection.patterns import PatternOptions
from handlers.protection import FeedbackFlagged, FeedbackGuard, ProtectionHandler, RateLimitExceeded

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

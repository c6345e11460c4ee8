"""Detection and response: drift and anomaly detectors, performance patterns, threshold-driven actions,
forecasts and feedback protection, each detection an event."""

from handlers.detection.anomaly import MAD, IQRFences, Mahalanobis, ZScore
from handlers.detection.drift import ADWIN, CUSUM, PageHinkley

__all__ = ["ADWIN", "CUSUM", "MAD", "IQRFences", "Mahalanobis", "PageHinkley", "ZScore"]

"""Progressive validation: each example is scored by the model before the model learns from it, so the
running metrics estimate performance on data the model has not seen."""

from __future__ import annotations

import math

import msgspec

AUC_BINS = 1000
CALIBRATION_BINS = 10
EPS = 1e-15


class Progressive(msgspec.Struct):
    """Running metrics of predictions against labels.

    Classification (probabilities, labels 0 or 1): log loss, accuracy at 0.5, AUC (over predictions
    binned to 1/1000, ties counted half) and expected calibration error over ten bins. Regression: mean
    squared and absolute error.

    >>> m = Progressive()
    >>> for p, y in [(0.9, 1), (0.8, 1), (0.3, 0), (0.6, 0)]:
    ...     m.update(p, y)
    >>> m.summary()["accuracy"], m.summary()["auc"]
    (0.75, 1.0)
    """

    classification: bool = True
    n: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    abs_sum: float = 0.0
    positives: list[int] = msgspec.field(default_factory=lambda: [0] * AUC_BINS)
    negatives: list[int] = msgspec.field(default_factory=lambda: [0] * AUC_BINS)
    bin_count: list[int] = msgspec.field(default_factory=lambda: [0] * CALIBRATION_BINS)
    bin_predicted: list[float] = msgspec.field(default_factory=lambda: [0.0] * CALIBRATION_BINS)
    bin_observed: list[float] = msgspec.field(default_factory=lambda: [0.0] * CALIBRATION_BINS)

    def update(self, prediction: float, label: float) -> None:
        """Count one prediction made before its label was learnt."""
        self.n += 1
        if not self.classification:
            error = prediction - label
            self.loss_sum += error * error
            self.abs_sum += abs(error)
            return
        p = min(max(prediction, EPS), 1.0 - EPS)
        self.loss_sum -= label * math.log(p) + (1.0 - label) * math.log(1.0 - p)
        self.correct += (prediction >= 0.5) == (label >= 0.5)
        counts = self.positives if label >= 0.5 else self.negatives
        counts[min(int(prediction * AUC_BINS), AUC_BINS - 1)] += 1
        b = min(int(prediction * CALIBRATION_BINS), CALIBRATION_BINS - 1)
        self.bin_count[b] += 1
        self.bin_predicted[b] += prediction
        self.bin_observed[b] += label

    @property
    def loss(self) -> float:
        """Mean log loss (classification) or squared error (regression); lower is better."""
        return self.loss_sum / self.n if self.n else math.inf

    def auc(self) -> float:
        """Probability that a positive is scored above a negative (0.5 when a class is missing)."""
        below = 0
        wins = 0.0
        for pos, neg in zip(self.positives, self.negatives, strict=True):
            wins += pos * (below + 0.5 * neg)
            below += neg
        total = sum(self.positives) * below
        return wins / total if total else 0.5

    def calibration_error(self) -> float:
        """Expected calibration error: the count-weighted gap between mean prediction and mean label."""
        gaps = (abs(p - o) for p, o in zip(self.bin_predicted, self.bin_observed, strict=True))
        return sum(gaps) / self.n if self.n else 0.0

    def summary(self) -> dict[str, float]:
        """The metrics so far, by name."""
        if not self.classification:
            return {"samples": float(self.n), "mse": self.loss, "mae": self.abs_sum / self.n if self.n else math.inf}
        return {
            "samples": float(self.n),
            "log_loss": self.loss,
            "accuracy": self.correct / self.n if self.n else 0.0,
            "auc": self.auc(),
            "calibration_error": self.calibration_error(),
        }

"""The settings of the detection handler, checked when it is built."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from rtopt.handlers.checked import Checked, at_most
from rtopt.handlers.detection.drift import CUSUM_THRESHOLD, PAGE_HINKLEY_THRESHOLD
from rtopt.handlers.detection.patterns import PatternOptions

from rtopt import Dimension

DriftName = Literal["adwin", "page_hinkley", "cusum"]
LOWER_IS_BETTER = ("response_time_ms", "cost_usd", "tokens_in", "tokens_out", "error_rate")


class DetectionOptions(Checked, frozen=True):
    """What the detection handler watches and how it responds.

    Watching: the window results of ``pipelines`` (every pipeline when empty), their values named in
    ``metrics`` (every value when empty). Drift: the ``drift`` detectors, ADWIN with ``adwin_delta`` (checked
    at every window), Page-Hinkley and CUSUM with their thresholds, after ``warmup`` windows. Anomalies: the
    ``anomaly`` detector (``zscore``, ``iqr``, ``mad`` or ``none``) over the last ``anomaly_window`` windows,
    and with ``joint_anomalies`` the Mahalanobis distance of a key's watched metrics taken together (a window
    can be unusual in how its metrics go together while each looks ordinary).
    Metrics whose name starts with one of ``lower_is_better`` improve downwards.

    Alerts: a detection within ``alert_windows`` windows of the last one on the same metric updates that
    alert. Patterns: over the last ``pattern_windows`` windows (:class:`PatternOptions`). Thresholds: the
    ``profile`` (``basic``, ``production`` or ``none``). Forecasts: of the values in ``forecast`` (``count``
    is the number of events of a window: the request volume) for the next ``forecast_horizon`` windows.

    Responses, each switchable: ``discount_on_drift`` (a degradation or a drift in the bad direction on an
    experiment scales its bandit's evidence by ``discount_factor``), ``capture_improvements`` (an improvement
    records the configuration behind it), ``act_on_breaches`` (a threshold breach calls for an action) and
    ``ab_test_on_breach`` (a breach whose action is an A/B test defines and starts one, ``<experiment>-ab-<n>``,
    over the variants of the experiment seen in window keys, for the experiments handler to run) and
    ``study_on_breach`` (a breach whose action is a strategy change defines a Bayesian study of these
    parameters, ``<experiment>-study-<n>``, maximising the objective the application tells it, for the
    bayesopt handler to run: a ``(low, high)`` range or a Dimension per parameter). The
    same action on the same target waits ``cooldown_s`` seconds of event time. A window key's experiment is
    its part before the first ``/`` (pipelines keyed by ``("prompt_id", "variant_id")`` give ``exp/arm``).

    >>> DetectionOptions(anomaly="zscore").drift
    ['adwin', 'page_hinkley', 'cusum']
    >>> DetectionOptions(anomaly="median")
    Traceback (most recent call last):
    rtopt.errors.InvalidEvent: DetectionOptions.anomaly = 'median': Expected `str` matching regex ...
    """

    pipelines: list[str] = msgspec.field(default_factory=list)
    metrics: list[str] = msgspec.field(default_factory=list)
    drift: list[DriftName] = msgspec.field(default_factory=lambda: ["adwin", "page_hinkley", "cusum"])
    adwin_delta: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.002
    page_hinkley_threshold: Annotated[float, Meta(gt=0.0)] = PAGE_HINKLEY_THRESHOLD
    cusum_threshold: Annotated[float, Meta(gt=0.0)] = CUSUM_THRESHOLD
    warmup: Annotated[int, Meta(ge=2)] = 10
    anomaly: Annotated[str, Meta(pattern="^(zscore|iqr|mad|none)$")] = "zscore"
    anomaly_window: Annotated[int, Meta(ge=3)] = 50
    joint_anomalies: bool = True
    lower_is_better: list[str] = msgspec.field(default_factory=lambda: list(LOWER_IS_BETTER))
    alert_windows: Annotated[int, Meta(ge=1)] = 10
    pattern_windows: Annotated[int, Meta(ge=4, le=1000)] = 20
    patterns: PatternOptions = msgspec.field(default_factory=PatternOptions)
    profile: Annotated[str, Meta(pattern="^(basic|production|none)$")] = "basic"
    forecast: list[str] = msgspec.field(default_factory=lambda: ["count"])
    forecast_horizon: Annotated[int, Meta(ge=1, le=100)] = 3
    discount_on_drift: bool = True
    discount_factor: Annotated[float, Meta(ge=0.0, lt=1.0)] = 0.0
    capture_improvements: bool = True
    act_on_breaches: bool = True
    ab_test_on_breach: bool = False
    study_on_breach: dict[str, Dimension] = msgspec.field(default_factory=dict)
    cooldown_s: Annotated[float, Meta(ge=0.0)] = 600.0

    def __post_init__(self) -> None:
        space = {name: Dimension.of(value) for name, value in self.study_on_breach.items()}  # (low, high) too
        msgspec.structs.force_setattr(self, "study_on_breach", space)
        super().__post_init__()

    def check_fields(self) -> None:
        at_most(self, "warmup", self.warmup, "anomaly_window", self.anomaly_window)

    def watches(self, pipeline: str) -> bool:
        """True if the results of ``pipeline`` are watched."""
        return not self.pipelines or pipeline in self.pipelines

    def watches_metric(self, metric: str) -> bool:
        """True if the window value ``metric`` is watched."""
        return not self.metrics or metric in self.metrics

    def improves_downwards(self, metric: str) -> bool:
        """True if lower values of ``metric`` are better."""
        return metric.startswith(tuple(self.lower_is_better))

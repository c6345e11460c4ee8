"""The state of the experiments handler: msgspec structs, rebuilt by replay and stored in snapshots."""

from __future__ import annotations

import math

import msgspec
from rtopt.handlers.experiments.options import ExperimentOptions
from rtopt.handlers.experiments.stats import MixtureSPRT
from rtopt.handlers.ledger import AwaitingFeedback, DecisionLedger
from rtopt.handlers.protection import FeedbackGuard
from rtopt.streams.moments import RunningMoments
from rtopt.streams.sketch import DDSketch

DRAFT, RUNNING, PAUSED, COMPLETED, ARCHIVED = "draft", "running", "paused", "completed", "archived"
SKETCH_ACCURACY = 0.01  # relative error of the per-arm latency quantiles


class CoMoments(msgspec.Struct, array_like=True):
    """Running means, sums of squared deviations and co-moment of pairs (x, y): a pre-period covariate
    ``x`` and the metric ``y``. Batches merge exactly (Chan, Golub and LeVeque 1979).

    >>> a, b = CoMoments(), CoMoments()
    >>> for x, y in ((1.0, 2.0), (2.0, 4.0)):
    ...     a.add(x, y)
    >>> for x, y in ((3.0, 5.0), (4.0, 9.0)):
    ...     b.add(x, y)
    >>> ab = a.merge(b)
    >>> ab.n, ab.mean_x, ab.c / ab.m2_x
    (4, 2.5, 2.2)
    """

    n: int = 0
    mean_x: float = 0.0
    mean_y: float = 0.0
    m2_x: float = 0.0
    m2_y: float = 0.0
    c: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        dx = x - self.mean_x
        self.mean_x += dx / self.n
        dy = y - self.mean_y
        self.mean_y += dy / self.n
        self.m2_x += dx * (x - self.mean_x)
        self.m2_y += dy * (y - self.mean_y)
        self.c += dx * (y - self.mean_y)

    def merge(self, other: CoMoments) -> CoMoments:
        if other.n == 0:
            return CoMoments(self.n, self.mean_x, self.mean_y, self.m2_x, self.m2_y, self.c)
        if self.n == 0:
            return CoMoments(other.n, other.mean_x, other.mean_y, other.m2_x, other.m2_y, other.c)
        n = self.n + other.n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        weight = self.n * other.n / n
        return CoMoments(
            n=n,
            mean_x=self.mean_x + dx * other.n / n,
            mean_y=self.mean_y + dy * other.n / n,
            m2_x=self.m2_x + other.m2_x + dx * dx * weight,
            m2_y=self.m2_y + other.m2_y + dy * dy * weight,
            c=self.c + other.c + dx * dy * weight,
        )


def _sketch() -> DDSketch:
    return DDSketch(alpha=SKETCH_ACCURACY)


class ArmStats(msgspec.Struct):
    """One arm: the decisions made for the test (``decisions``) and outside it (``served``: while paused
    or completed, or restricted by ``available``), and running statistics of the feedback analysed.

    ``conversions`` counts the binary outcome of the z-test; ``covariate`` pairs the pre-period covariate
    with the metric for CUPED; ``expected`` sums, over the feedback analysed, the arm's share in the
    allocation the decision was made under (the sample-ratio check compares ``feedback`` with it).
    """

    decisions: int = 0
    served: int = 0
    feedback: int = 0
    successes: int = 0
    conversions: int = 0
    quality: RunningMoments = msgspec.field(default_factory=RunningMoments)
    reward: RunningMoments = msgspec.field(default_factory=RunningMoments)
    cost: RunningMoments = msgspec.field(default_factory=RunningMoments)
    latency: RunningMoments = msgspec.field(default_factory=RunningMoments)
    latency_sketch: DDSketch = msgspec.field(default_factory=_sketch)
    covariate: CoMoments = msgspec.field(default_factory=CoMoments)
    expected: float = 0.0
    reward_sum: float = 0.0

    def metric(self, name: str) -> RunningMoments:
        """The running statistics of the tested metric (``"reward"`` or ``"quality"``)."""
        return self.reward if name == "reward" else self.quality

    def p95(self) -> float | None:
        """The 95th percentile of latency (1 % relative error); None before any feedback."""
        return self.latency_sketch.quantile(0.95) if self.latency_sketch.count else None

    def slower_than(self, value: float) -> int:
        """How many latencies fall in sketch buckets above the bucket of ``value`` (> 0)."""
        log_gamma = math.log((1.0 + SKETCH_ACCURACY) / (1.0 - SKETCH_ACCURACY))
        key = math.ceil(math.log(value) / log_gamma)
        return sum(count for bucket, count in self.latency_sketch.positive.items() if bucket > key)


class Transition(msgspec.Struct, frozen=True, array_like=True):
    """A change of status at event ``time``, and why."""

    time: float
    status: str
    reason: str


class Experiment(msgspec.Struct):
    """One A/B test or canary: its definition, lifecycle, allocation and statistics.

    ``allocation`` is the intended share of each arm (in ``arms`` order) now; ``versions`` lists every
    allocation the experiment has had, and a pending decision remembers the index of the one it was made
    under. ``sprt`` holds one always-valid test per variant against the control. For a canary,
    ``share`` is the challenger's share, ``step`` the 1-based step it is at (0 before the start) and
    ``step_feedback`` the challenger feedback analysed since that step began.
    """

    policy: str
    options: ExperimentOptions
    arms: list[str]
    control: str
    weights: list[float]
    allocation: list[float]
    versions: list[list[float]]
    stats: dict[str, ArmStats]
    sprt: dict[str, MixtureSPRT]
    defined_at: float
    status: str = DRAFT
    started_at: float | None = None
    transitions: list[Transition] = []
    adaptive: bool = False
    adapted: bool = False
    since_reallocation: int = 0
    analysed: int = 0
    analyses: int = 0
    srm: bool = False
    winner: str | None = None
    outcome: str | None = None
    challenger: str | None = None
    steps: list[float] = []
    share: float = 0.0
    step: int = 0
    step_feedback: int = 0

    def variants(self) -> list[str]:
        return [arm for arm in self.arms if arm != self.control]

    def set_status(self, status: str, time: float, reason: str) -> None:
        self.status = status
        self.transitions.append(Transition(time, status, reason))
        if status == RUNNING and self.started_at is None:
            self.started_at = time

    def set_allocation(self, allocation: list[float]) -> None:
        self.allocation = list(allocation)
        self.versions.append(list(allocation))

    def elapsed(self, now: float) -> float:
        return max(now - self.started_at, 0.0) if self.started_at is not None else 0.0


class PendingDecision(AwaitingFeedback):
    """A decision still waiting for its feedback: ``version`` is the allocation it was made under, -1 for
    a decision outside the test (its feedback is accepted but not analysed)."""

    version: int


class ExperimentsState(msgspec.Struct):
    """Everything the experiments handler knows; ``ledger`` follows the decisions awaiting feedback."""

    experiments: dict[str, Experiment] = {}
    ledger: DecisionLedger[PendingDecision] = msgspec.field(default_factory=DecisionLedger)
    guard: FeedbackGuard | None = None

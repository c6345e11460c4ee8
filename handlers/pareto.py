"""Multi-objective choice among models or prompt variants: quality (higher is better), cost and latency
(lower is better).

:func:`pareto_front` keeps the candidates no other candidate dominates (Pareto (1906), "Manuale di
economia politica"; see Miettinen (1999), "Nonlinear multiobjective optimization", ch. 2).
:func:`choose` picks one by weighted scalarisation of the objectives, min-max normalised over the
candidates that meet the constraints (a budget cap, a latency SLA, a minimum quality): the weighted-sum
method (Zadeh (1963), "Optimality and non-scalar-valued performance criteria"; Marler and Arora (2004),
"Survey of multi-objective optimization methods for engineering", section 3.1). A weighted sum only
reaches the points of the front's convex hull; constraints reach the others (the epsilon-constraint
method, Haimes, Lasdon and Wismer (1971)).

:func:`observed_candidates` measures the candidates from the Feedback events of an rtopt log.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import msgspec
import numpy as np

from rtopt import Engine, Feedback
from rtopt.arguments import invalid, non_empty

OBJECTIVES = ("quality", "cost", "latency")


class Candidate(msgspec.Struct, frozen=True):
    """A model or prompt variant with its observed ``quality`` (higher is better), ``cost_usd`` per
    request and ``latency_ms`` (lower is better).

    >>> Candidate("v1", quality=0.8, cost_usd=0.002, latency_ms=900.0).quality
    0.8
    """

    name: str
    quality: float
    cost_usd: float
    latency_ms: float


class NoFeasibleCandidate(ValueError):
    """No candidate meets the constraints; ``constraints`` names the ones that exclude every candidate
    (each alone, or, when none does alone, all of those given, together)."""

    def __init__(self, message: str, constraints: tuple[str, ...]) -> None:
        super().__init__(message)
        self.constraints = constraints


def dominates(a: Candidate, b: Candidate) -> bool:
    """True if ``a`` is at least as good as ``b`` on every objective and strictly better on one.

    >>> fast = Candidate("fast", 0.7, 0.001, 300.0)
    >>> dominates(fast, Candidate("slow", 0.7, 0.001, 900.0)), dominates(fast, fast)
    (True, False)
    """
    at_least = a.quality >= b.quality and a.cost_usd <= b.cost_usd and a.latency_ms <= b.latency_ms
    better = a.quality > b.quality or a.cost_usd < b.cost_usd or a.latency_ms < b.latency_ms
    return at_least and better


def _objectives(candidates: Sequence[Candidate]) -> np.ndarray:
    """An (n, 3) array of objectives to minimise: -quality, cost, latency; refuses non-finite values."""
    values = np.array([(-c.quality, c.cost_usd, c.latency_ms) for c in candidates], dtype=float).reshape(-1, 3)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        raise invalid(f"candidates[{int(bad[0])}]", candidates[int(bad[0])], "has a value that is not a finite number")
    return values


def _front_mask(values: np.ndarray) -> np.ndarray:
    """True for the rows of ``values`` (objectives to minimise) that no other row dominates."""
    # in lexicographic order, a row's dominators all come before it (they are <= everywhere and < once)
    order = np.lexsort(values.T[::-1])
    mask = np.zeros(len(values), dtype=bool)
    front = np.empty((0, values.shape[1]))
    for i in order:
        row = values[i]
        if front.size and np.any(np.all(front <= row, axis=1) & np.any(front < row, axis=1)):
            continue
        mask[i] = True
        front = np.vstack([front, row])
    return mask


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other candidate dominates (see :func:`dominates`), in their given order.

    Ties: candidates with exactly the same quality, cost and latency do not dominate one another, so
    duplicates on the front are all kept (names are not compared); a candidate equal to another on some
    objectives and worse on the rest is dominated, hence dropped. Runs in O(n * front size) after a sort.

    >>> pareto_front([
    ...     Candidate("cheap", 0.6, 0.001, 500.0),
    ...     Candidate("good", 0.9, 0.010, 900.0),
    ...     Candidate("worse", 0.6, 0.002, 500.0),    # as good as "cheap", but costs more
    ...     Candidate("twin", 0.9, 0.010, 900.0),     # the same as "good": both kept
    ... ])  # doctest: +NORMALIZE_WHITESPACE
    [Candidate(name='cheap', quality=0.6, cost_usd=0.001, latency_ms=500.0),
     Candidate(name='good', quality=0.9, cost_usd=0.01, latency_ms=900.0),
     Candidate(name='twin', quality=0.9, cost_usd=0.01, latency_ms=900.0)]
    """
    if not candidates:
        return []
    mask = _front_mask(_objectives(candidates))
    return [c for c, keep in zip(candidates, mask, strict=True) if keep]


def _check_weights(weights: Mapping[str, float]) -> np.ndarray:
    unknown = sorted(set(weights) - set(OBJECTIVES))
    if unknown:
        raise invalid("weights", dict(weights), f"names unknown objectives {unknown}: use {list(OBJECTIVES)}")
    w = np.array([float(weights.get(name, 0.0)) for name in OBJECTIVES])
    if not np.all(np.isfinite(w) & (w >= 0.0)) or w.sum() <= 0.0:
        raise invalid("weights", dict(weights), "must be finite, non-negative and not all zero")
    return w / w.sum()


def _feasible(
    candidates: Sequence[Candidate], budget_cap: float | None, latency_sla: float | None, min_quality: float | None
) -> list[Candidate]:
    tests = {
        "budget_cap": (budget_cap, lambda c: c.cost_usd <= budget_cap),
        "latency_sla": (latency_sla, lambda c: c.latency_ms <= latency_sla),
        "min_quality": (min_quality, lambda c: c.quality >= min_quality),
    }
    given = {name: (limit, test) for name, (limit, test) in tests.items() if limit is not None}
    feasible = [c for c in candidates if all(test(c) for _, test in given.values())]
    if feasible:
        return feasible
    best = {
        "budget_cap": f"the cheapest costs {min(c.cost_usd for c in candidates)!r} USD",
        "latency_sla": f"the fastest takes {min(c.latency_ms for c in candidates)!r} ms",
        "min_quality": f"the best quality is {max(c.quality for c in candidates)!r}",
    }
    alone = [name for name, (_, test) in given.items() if not any(test(c) for c in candidates)]
    if alone:
        detail = "; ".join(f"{name} = {given[name][0]!r} excludes every candidate ({best[name]})" for name in alone)
        raise NoFeasibleCandidate(f"no candidate meets the constraints: {detail}", tuple(alone))
    names = tuple(given)
    limits = " and ".join(f"{name} = {given[name][0]!r}" for name in names)
    raise NoFeasibleCandidate(
        f"no candidate meets {limits} together (each alone leaves some); {'; '.join(best[n] for n in names)}", names
    )


def scores(candidates: Sequence[Candidate], weights: Mapping[str, float]) -> list[float]:
    """Each candidate's weighted score in [0, 1]: the weights (normalised to sum 1) times the objectives
    min-max normalised over ``candidates`` so that 1 is the best value (an objective all candidates share
    scores 0). ``weights`` maps ``"quality"``, ``"cost"`` and ``"latency"`` to non-negative numbers (a
    missing objective weighs 0).

    >>> scores([Candidate("a", 0.6, 0.001, 500.0), Candidate("b", 0.9, 0.003, 500.0)], {"quality": 1, "cost": 1})
    [0.5, 0.5]
    """
    w = _check_weights(weights)
    if not candidates:
        return []
    values = _objectives(candidates)
    span = np.ptp(values, axis=0)
    normalised = np.divide(values.max(axis=0) - values, span, out=np.zeros_like(values), where=span > 0.0)
    return [float(s) for s in normalised @ w]


def choose(
    candidates: Sequence[Candidate],
    weights: Mapping[str, float],
    budget_cap: float | None = None,
    latency_sla: float | None = None,
    min_quality: float | None = None,
) -> Candidate:
    """The candidate with the best weighted score among those that meet the constraints.

    Constraints are inclusive: ``cost_usd <= budget_cap``, ``latency_ms <= latency_sla`` and ``quality >=
    min_quality``; a candidate violating one is excluded, and :class:`NoFeasibleCandidate` (a
    ``ValueError``) names the constraint when none remain. Objectives are normalised over the feasible
    candidates (see :func:`scores`), so units do not matter (but excluding or adding a candidate can
    reorder the others, as min-max normalisation does), and the choice is made on their Pareto front,
    so a dominated candidate is never chosen even when some weights are zero. Equal scores go to higher
    quality, then lower cost, then lower latency, then the earlier candidate.

    >>> models = [Candidate("small", 0.62, 0.0004, 350.0), Candidate("large", 0.86, 0.0060, 1400.0)]
    >>> choose(models, {"quality": 1.0}).name, choose(models, {"quality": 1.0}, latency_sla=1000.0).name
    ('large', 'small')
    """
    w = _check_weights(weights)
    non_empty("candidates", candidates)
    feasible = _feasible(candidates, budget_cap, latency_sla, min_quality)
    scored = scores(feasible, dict(zip(OBJECTIVES, w, strict=True)))
    front = _front_mask(_objectives(feasible))
    best = max(
        (i for i in range(len(feasible)) if front[i]),
        key=lambda i: (scored[i], feasible[i].quality, -feasible[i].cost_usd, -feasible[i].latency_ms, -i),
    )
    return feasible[best]


_PERCENTILE = re.compile(r"p(\d{1,2}(?:\.\d+)?)")


def observed_candidates(
    engine: Engine,
    prompt_id: str | None = None,
    *,
    latency: str = "p95",
    environment: str | None = None,
    min_feedback: int = 1,
) -> list[Candidate]:
    """One candidate per variant, measured from the Feedback events of the log read by ``engine``.

    ``quality`` and ``cost_usd`` are the means of the feedback's ``quality_score`` and ``cost_usd``;
    ``latency_ms`` is the 95th percentile of ``response_time_ms`` by default (``latency="p95"``, linear
    interpolation between order statistics), or another percentile (``"p50"``, ``"p99"``) or the mean
    (``"mean"``). Every feedback counts, failed responses included. Only ``prompt_id``'s feedback is used
    (None: every prompt's, pooled by variant name) and, if ``environment`` is given, only that environment's;
    variants with fewer than ``min_feedback`` feedbacks are left out. Candidates come in the order their
    variants first appear in the log. Reads through ``engine.read(types=[Feedback])`` only.

    >>> with Engine.open(":memory:", seed=1, handlers=[]) as engine:
    ...     for q, ms in [(0.8, 400.0), (0.6, 600.0)]:
    ...         _ = engine.publish(Feedback(prompt_id="g", variant_id="v1", response_time_ms=ms, success=True,
    ...                                     quality_score=q, cost_usd=0.002))
    ...     observed_candidates(engine, "g", latency="mean")
    [Candidate(name='v1', quality=0.7, cost_usd=0.002, latency_ms=500.0)]
    """
    if latency == "mean":
        summarise = np.mean
    else:
        match = _PERCENTILE.fullmatch(latency)
        if match is None or not 0.0 <= float(match.group(1)) <= 100.0:
            raise invalid("latency", latency, "must be 'mean' or a percentile such as 'p95'")
        q = float(match.group(1))

        def summarise(values: list[float]) -> float:
            return float(np.percentile(values, q))

    observed: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for envelope in engine.read(types=[Feedback]):
        feedback = envelope.payload
        if prompt_id is not None and feedback.prompt_id != prompt_id:
            continue
        if environment is not None and feedback.environment != environment:
            continue
        quality, cost, latency_ms = observed.setdefault(feedback.variant_id, ([], [], []))
        quality.append(feedback.quality_score)
        cost.append(feedback.cost_usd)
        latency_ms.append(feedback.response_time_ms)
    return [
        Candidate(
            name=name,
            quality=math.fsum(quality) / len(quality),
            cost_usd=math.fsum(cost) / len(cost),
            latency_ms=float(summarise(latency_ms)),
        )
        for name, (quality, cost, latency_ms) in observed.items()
        if len(quality) >= min_feedback
    ]

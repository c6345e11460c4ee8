"""Assignment of units to arms: a deterministic hash into buckets, bucket ranges by allocation, and the
adaptive (Thompson-like) allocation.

A unit is hashed with the experiment's salt by BLAKE2b into one of ``buckets`` buckets; the arms own
consecutive ranges of buckets in proportion to their shares, so a unit keeps its arm as long as the
allocation does not move (always, in a fixed or weighted test) and, in a canary whose challenger range
only grows, never leaves the challenger before a rollback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def bucket(unit: str, salt: str, buckets: int) -> int:
    """The bucket of ``unit`` in an experiment salted ``salt``: the same inputs always give the same bucket.

    >>> bucket("user-42", "checkout", 10_000) == bucket("user-42", "checkout", 10_000)
    True
    >>> 0 <= bucket("user-42", "checkout", 10_000) < 10_000
    True
    """
    digest = hashlib.blake2b(f"{salt}\x1f{unit}".encode(), digest_size=8, person=b"rtopt/ab").digest()
    return int.from_bytes(digest, "big") % buckets


def position(unit: str | None, salt: str, buckets: int, rng: np.random.Generator) -> float:
    """Where a request falls in [0, 1): its unit's bucket over ``buckets``, or a seeded uniform draw."""
    if unit is None:
        return float(rng.random())
    return bucket(unit, salt, buckets) / buckets


def pick(shares: Sequence[float], at: float) -> int:
    """The index whose cumulative range of ``shares`` (normalised) holds ``at`` in [0, 1).

    >>> [pick([0.9, 0.1], x) for x in (0.0, 0.8999, 0.9, 0.9999)]
    [0, 0, 1, 1]
    """
    total = float(sum(shares))
    edge = 0.0
    last = max(i for i, share in enumerate(shares) if share > 0.0)
    for index, share in enumerate(shares):
        edge += share / total
        if share > 0.0 and (at < edge or index == last):
            return index
    return last  # unreachable: the last positive share closes the range


def thompson_allocation(
    reward_sums: Sequence[float], counts: Sequence[int], floor: float, draws: int, rng: np.random.Generator
) -> tuple[list[float], list[float]]:
    """Each arm's probability of having the best mean reward under a Beta(1 + s, 1 + n - s) posterior
    (rewards in [0, 1] as fractional successes), estimated from ``draws`` seeded draws, and the allocation
    ``floor + (1 - k * floor) * p_best``, which gives every arm at least ``floor``.

    >>> alloc, p_best = thompson_allocation([90.0, 10.0], [100, 100], 0.05, 1000, np.random.default_rng(1))
    >>> p_best, [round(a, 3) for a in alloc]
    ([1.0, 0.0], [0.95, 0.05])
    """
    sums = np.asarray(reward_sums, dtype=float)
    n = np.asarray(counts, dtype=float)
    samples = rng.beta(1.0 + sums, 1.0 + np.maximum(n - sums, 0.0), size=(draws, len(sums)))
    winners = np.bincount(samples.argmax(axis=1), minlength=len(sums))
    p_best = [float(w) / draws for w in winners]
    spread = 1.0 - len(sums) * floor
    return [floor + spread * p for p in p_best], p_best

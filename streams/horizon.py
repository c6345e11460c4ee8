"""Keys remembered for a span of event time, oldest first: the expiry behind dedup and feedback matching."""

from __future__ import annotations

import msgspec


class Horizon(msgspec.Struct):
    """(event time, key) pairs in the order they were added; :meth:`expire` hands back those older than a
    cutoff. Amortised O(1) per key, and a msgspec Struct, so it lives in handler state and snapshots.

    >>> horizon = Horizon()
    >>> for t, key in ((1.0, "a"), (2.0, "b"), (5.0, "c")):
    ...     horizon.add(t, key)
    >>> horizon.expire(cutoff=3.0)
    [(1.0, 'a'), (2.0, 'b')]
    >>> horizon.expire(cutoff=3.0)
    []
    """

    entries: list[tuple[float, str]] = []
    start: int = 0

    def add(self, time: float, key: str) -> None:
        """Remember ``key`` as seen at ``time`` (keys are expected roughly in time order)."""
        self.entries.append((time, key))

    def __len__(self) -> int:
        return len(self.entries) - self.start

    def expire(self, cutoff: float) -> list[tuple[float, str]]:
        """Forget and return the entries, from the oldest, until the first one at or after ``cutoff``."""
        entries = self.entries
        end = self.start
        while end < len(entries) and entries[end][0] < cutoff:
            end += 1
        return self._forget_before(end) if end > self.start else []

    def trim(self, limit: int) -> list[tuple[float, str]]:
        """Forget and return the oldest entries beyond the ``limit`` most recently added.

        >>> horizon = Horizon()
        >>> for t, key in ((1.0, "a"), (2.0, "b"), (5.0, "c")):
        ...     horizon.add(t, key)
        >>> horizon.trim(2), len(horizon)
        ([(1.0, 'a')], 2)
        """
        return self._forget_before(max(self.start, len(self.entries) - limit))

    def _forget_before(self, end: int) -> list[tuple[float, str]]:
        entries = self.entries
        forgotten = entries[self.start : end]
        if end > 1024 and 2 * end > len(entries):
            del entries[:end]
            end = 0
        self.start = end
        return forgotten

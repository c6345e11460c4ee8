"""Copying a log into a new one: the events (or only the inputs), the meta data and the keys of sealed values.

Until its last event is written, a copy is marked incomplete in its meta data, which opening it refuses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rtopt.errors import RtoptError
from rtopt.privacy import copy_keys
from rtopt.storage.factory import open_log
from rtopt.storage.interface import COPY, LOG_KEYS, EventLog, Row


@contextmanager
def copying(target: EventLog, source: EventLog, until: int) -> Iterator[None]:
    """Mark ``target`` as an incomplete copy of ``source`` up to seq ``until`` until the block completes."""
    target.set_meta(COPY, json.dumps({"of": source.location, "until": until, "complete": False}))
    yield
    target.set_meta(COPY, json.dumps({"of": source.location, "until": until, "complete": True}))


def refuse_non_empty(log: EventLog) -> None:
    """Close ``log`` and raise if it holds events: a copy or replay goes into a new log."""
    if log.last_seq():
        location = log.location
        log.close()
        raise RtoptError(f"{location} already holds events: write into a new log")


def copy_rows(
    source: EventLog,
    target: EventLog,
    until_seq: int | None,
    progress: Callable[[int, int], None] | None,
    inputs_only: bool = False,
) -> int:
    """Append ``source``'s events (or only its inputs, numbered anew) up to ``until_seq`` (all if None) to
    ``target``; returns how many. Until the last is written, ``target`` is marked as an incomplete copy,
    which opening it refuses."""
    until = source.last_seq() if until_seq is None else until_seq
    chunk: list[Row] = []
    copied = 0
    with copying(target, source, until):
        for row in source.inputs(1, until) if inputs_only else source.rows(1, until):
            copied += 1
            chunk.append((copied, *row[1:]) if inputs_only else row)
            if len(chunk) == 5000:
                target.append(chunk)
                chunk = []
                if progress is not None:
                    progress(row[0], until)
        target.append(chunk)
    return copied


def copy_log(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    progress: Callable[[int, int], None] | None = None,
    *,
    inputs_only: bool = False,
) -> int:
    """Copy the log at ``source`` into a new log at ``target`` (SQLite or PostgreSQL, either way round): the
    same events with the same seqs, seed and meta data, and the keys of its sealed values; snapshots are not
    copied. Returns the events copied.

    ``inputs_only`` copies only the input events, numbered 1, 2 ... in their order, for workers to derive
    the rest anew. A copy that stops half way is refused when opened: delete it and copy again.

    >>> import tempfile, pathlib
    >>> from rtopt import Engine, Feedback
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with Engine.open(folder / "a.sqlite", seed=1, handlers=[]) as engine:
    ...     _ = engine.publish(Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True,
    ...                                 quality_score=0.5))
    >>> copy_log(folder / "a.sqlite", folder / "b.sqlite")
    1
    """
    src = open_log(source, read_only=True)
    try:
        meta = src.meta()
        dst = open_log(target, seed=int(meta["seed"]))
        refuse_non_empty(dst)
        try:
            for key, value in meta.items():
                if key not in LOG_KEYS:
                    dst.set_meta(key, value)
            copy_keys(src, dst)  # before the events: a copy is complete only once its last event is written
            return copy_rows(src, dst, None, progress, inputs_only)
        finally:
            dst.close()
    finally:
        src.close()

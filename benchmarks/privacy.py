"""What sealing personal values costs: publishing and reading Feedback with a user id, sealed against plain.

Both sides run in the same process on the same machine, in SQLite files under one temporary directory,
with no handler (the kernel's own path), alternating sealed and plain runs and keeping each side's fastest.
Times are the process's CPU time, which other processes' load disturbs less than the wall clock, with the
prepared events frozen out of the garbage collector's sight:

1. ``Engine.publish_many`` of Feedback in 1,000-event calls, each with a ``user_id`` (drawn in turn from a
   pool of ``--users`` users, so keys are made for the first events and found in memory after) and a
   ``session_id`` (a new one every 5 feedback of a user), sealing on (the default) against ``privacy=False``;
2. the same with a new user on every event: a key is made and stored for each one (the worst case);
3. ``Engine.read`` of every event of the log of step 1, sealed against plain;
4. sealing and opening alone: ``Keyring.encode`` against ``encode_payload`` and ``Keyring.decode`` against
   ``decode_payload`` over the events of step 1 (keys made, nothing written);
5. ``Engine.forget`` of one user of the log of step 1 (the key deleted, the files checkpointed).

It prints events/s, the ratio sealed / plain and the cost per event in microseconds. Run
``python benchmarks/privacy.py`` (``--quick`` for a tiny run, ``--json`` for one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rtopt import Engine, Feedback
from rtopt.events import decode_payload, encode_payload
from rtopt.privacy import Keyring
from rtopt.storage.factory import open_log

BATCH = 1_000
SEED = 7
ROUNDS = 3
SESSION = 5  # feedback a user gives in one session


def feedbacks(events: int, users: int | None) -> list[Feedback]:
    """``events`` Feedback, the i-th from user ``i % users`` (a new user each time when ``users`` is None), each
    user in a session of ``SESSION`` feedback."""
    pool = events if users is None else users
    return [
        Feedback(
            prompt_id="bench",
            variant_id=f"v{i % 3}",
            response_time_ms=100.0 + i % 50,
            success=i % 4 != 0,
            quality_score=(i % 10) / 10,
            user_id=f"user-{i % pool}@example.com",
            session_id=f"session-{i % pool}-{i // (pool * SESSION)}",
        )
        for i in range(events)
    ]


def publish(path: Path, events: list[Feedback], sealed: bool) -> float:
    """Seconds to publish ``events`` into a new log at ``path``."""
    with Engine.open(path, seed=SEED, handlers=[], privacy=sealed) as engine:
        started = time.process_time()
        for i in range(0, len(events), BATCH):
            engine.publish_many(events[i : i + BATCH], time=1.0 + i)
        return time.process_time() - started


def read(path: Path) -> float:
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        started = time.process_time()
        count = sum(1 for _ in engine.read())
        elapsed = time.process_time() - started
    if count == 0:
        raise RuntimeError(f"{path} is empty")
    return elapsed


def codec(events: list[Feedback]) -> dict[str, float]:
    """Microseconds per event to encode and decode ``events`` sealed and plain (keys made beforehand)."""
    keys = Keyring(open_log(":memory:", seed=SEED))
    keys.prepare(events)
    stored = [keys.encode(event) for event in events]
    plain = [encode_payload(event) for event in events]
    steps: dict[str, Callable[[], object]] = {
        "encode_sealed": lambda: [keys.encode(event) for event in events],
        "encode_plain": lambda: [encode_payload(event) for event in events],
        "decode_sealed": lambda: [keys.decode("Feedback", data) for data in stored],
        "decode_plain": lambda: [decode_payload("Feedback", data) for data in plain],
    }
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(ROUNDS):
        for name, step in steps.items():
            started = time.process_time()
            step()
            best[name] = min(best[name], time.process_time() - started)
    return {f"{name}_us_per_event": seconds / len(events) * 1e6 for name, seconds in best.items()}


def fastest(runs: dict[bool, list[float]], measure: Callable[[bool, int], float]) -> None:
    """Alternate sealed and plain runs ``ROUNDS`` times, appending each run's seconds."""
    for round_ in range(ROUNDS):
        for sealed in (True, False):
            runs[sealed].append(measure(sealed, round_))


def compare(name: str, events: int, runs: dict[bool, list[float]]) -> dict[str, float]:
    sealed, plain = min(runs[True]), min(runs[False])
    return {
        f"{name}_sealed_events_per_s": events / sealed,
        f"{name}_plain_events_per_s": events / plain,
        f"{name}_sealed_to_plain": plain / sealed,
        f"{name}_us_per_event": (sealed - plain) / events * 1e6,
    }


def measure(events: int, users: int) -> dict[str, float]:
    results: dict[str, float] = {"events": events, "users": users}
    pooled, fresh = feedbacks(events, users), feedbacks(events, None)
    gc.collect()
    gc.freeze()  # the prepared events would not exist in a service: the collector need not walk them
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)

        def log(kind: str, sealed: bool, round_: int) -> Path:
            return root / f"{kind}-{'sealed' if sealed else 'plain'}-{round_}.sqlite"

        for name, batch in (("publish", pooled), ("publish_new_users", fresh)):
            runs: dict[bool, list[float]] = {True: [], False: []}
            fastest(runs, lambda sealed, round_, b=batch, n=name: publish(log(n, sealed, round_), b, sealed))
            results.update(compare(name, events, runs))
        runs = {True: [], False: []}
        fastest(runs, lambda sealed, round_: read(log("publish", sealed, 0)))
        results.update(compare("read", events, runs))
        results.update(codec(pooled))
        with Engine.open(log("publish", True, 0), handlers=[]) as engine:
            started = time.process_time()
            engine.forget("user-0@example.com")
            results["forget_ms"] = (time.process_time() - started) * 1000
    gc.unfreeze()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="Feedback events per run (default 50,000)")
    parser.add_argument("--users", type=int, default=1_000, help="users they come from in step 1 (default 1,000)")
    parser.add_argument("--quick", action="store_true", help="a tiny run: 2,000 events from 100 users")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    args = parser.parse_args(argv)
    results = measure(2_000, 100) if args.quick else measure(args.events, args.users)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{results['events']:,.0f} Feedback with a user id and a session id, no handler, best of {ROUNDS}")
    for name, label in (
        ("publish", f"publish_many, {results['users']:,.0f} users"),
        ("publish_new_users", "publish_many, a new user per event"),
        ("read", "engine.read"),
    ):
        print(
            f"{label:<36}: sealed {results[f'{name}_sealed_events_per_s']:>9,.0f} events/s, plain "
            f"{results[f'{name}_plain_events_per_s']:>9,.0f} events/s, sealed/plain "
            f"{results[f'{name}_sealed_to_plain']:.2f}, {results[f'{name}_us_per_event']:+.1f} us per event"
        )
    print(
        f"sealing alone                       : encode {results['encode_sealed_us_per_event']:.2f} us against "
        f"{results['encode_plain_us_per_event']:.2f} us plain, decode {results['decode_sealed_us_per_event']:.2f} us "
        f"against {results['decode_plain_us_per_event']:.2f} us plain, per event"
    )
    print(f"forget one user of the publish log  : {results['forget_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Envelopes as the log stores them (one row per event, its personal values sealed by a keyring) and read
back, up to the end of the log or following it as it grows."""

from __future__ import annotations

import threading
import time as wall_clock
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from rtopt.errors import InvalidLog, UnreadableSchemaVersion
from rtopt.events import Envelope, decode_payload, encode_payload
from rtopt.privacy import Keyring
from rtopt.storage.interface import EventLog, Row


def envelope_from_row(row: Row, keys: Keyring | None = None) -> Envelope[Any]:
    """Decode a stored row into its envelope, opening its sealed values with ``keys``."""
    seq, tag, version, payload = row[0], row[2], row[8], row[9]
    try:
        event = decode_payload(tag, payload, version) if keys is None else keys.decode(tag, payload, version)
    except msgspec.DecodeError as exc:
        raise InvalidLog(f"seq {seq}: its {tag} payload cannot be decoded ({exc}): the log is damaged") from None
    except UnreadableSchemaVersion as exc:
        raise UnreadableSchemaVersion(f"seq {seq}: {exc}") from None
    return Envelope(*row[:9], event)


def envelopes_from_rows(rows: Sequence[Row], keys: Keyring) -> list[Envelope[Any]]:
    """The envelopes of ``rows``, each as :func:`envelope_from_row` decodes it (the same errors too)."""
    decode = keys.decode
    try:
        return [
            Envelope(
                seq,
                event_id,
                tag,
                stream,
                time,
                recorded_at,
                causation_id,
                correlation_id,
                version,
                decode(tag, payload, version),
            )
            for seq, event_id, tag, stream, time, recorded_at, causation_id, correlation_id, version, payload in rows
        ]
    except (msgspec.DecodeError, UnreadableSchemaVersion):
        for row in rows:
            envelope_from_row(row, keys)  # raises, naming the seq of the row that does not decode
        raise


def envelope_row(envelope: Envelope[Any], keys: Keyring | None = None) -> Row:
    """The stored row of an envelope, its personal values sealed with ``keys``."""
    return (
        envelope.seq,
        envelope.id,
        envelope.type,
        envelope.stream,
        envelope.time,
        envelope.recorded_at,
        envelope.causation_id,
        envelope.correlation_id,
        envelope.schema_version,
        encode_payload(envelope.payload) if keys is None else keys.encode(envelope.payload),
    )


def follow(
    log: EventLog,
    keys: Keyring,
    after: int,
    tags: list[str] | None,
    stream: str | None,
    poll_interval: float,
    idle_timeout: float | None,
    stop: threading.Event | None,
) -> Iterator[Envelope[Any]]:
    """The envelopes of ``log`` after seq ``after`` (of ``tags`` in ``stream``, if given), then new ones as
    any process commits them, until ``stop`` is set or nothing arrives for ``idle_timeout`` seconds."""
    idle_since = wall_clock.monotonic()
    while stop is None or not stop.is_set():
        found = False
        for row in log.rows(after + 1, None, tags, stream):
            found = True
            after = row[0]
            yield envelope_from_row(row, keys)
        if found:
            idle_since = wall_clock.monotonic()
        elif idle_timeout is not None and wall_clock.monotonic() - idle_since >= idle_timeout:
            return
        else:
            log.wait_for_change(poll_interval)

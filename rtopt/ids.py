"""Deterministic, roughly time-ordered event ids.

An id is a UUID (version 8, RFC 9562) whose first 48 bits are an ordering prefix (the input number of
the event or of the input it descends from) and whose other bits hash a name. Ids of events written
close together are close together, so the log's id index grows at its right edge instead of scattering
writes across the whole B-tree; the hash keeps ids from different seeds, handlers and positions apart.
"""

from __future__ import annotations

import hashlib

_PREFIX_BITS = 48
_VERSION_MASK = ~(0xF << 76) & (2**128 - 1)
_VARIANT_MASK = ~(0x3 << 62) & (2**128 - 1)


def ordered_id(prefix: int, namespace: bytes, name: str) -> str:
    """A UUID string with ``prefix`` in its leading 48 bits and a SHA-1 of ``namespace + name`` after.

    >>> ordered_id(1, b"ns", "a")[:14]
    '00000000-0001-'
    >>> ordered_id(1, b"ns", "a") == ordered_id(1, b"ns", "a") != ordered_id(1, b"ns", "b")
    True
    """
    digest = int.from_bytes(hashlib.sha1(namespace + name.encode()).digest()[:10], "big")
    value = (prefix % (1 << _PREFIX_BITS)) << 80 | digest
    value = (value & _VERSION_MASK) | (0x8 << 76)
    value = (value & _VARIANT_MASK) | (0x2 << 62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def prefix_of(event_id: str) -> int:
    """The ordering prefix of an id made by :func:`ordered_id` (0 for an id of another form)."""
    head = event_id[:8] + event_id[9:13]
    try:
        return int(head, 16)
    except ValueError:
        return 0

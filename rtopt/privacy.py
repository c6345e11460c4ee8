"""Crypto-shredding: personal values are stored sealed with a key of their subject, and forgetting a subject
deletes its key, so that an immutable log stops being able to say who its events were about.

A subject is a user id (or a session id with no user). It gets a random 256-bit key and a random reference
(``ref``, 16 hex digits) when it is first sealed; both live in the ``rtopt_subject_keys`` table of the log's
database, found by a hash of the subject, never in the events. A sealed value reads
``sealed:1:<ref>:<base64 AES-GCM-SIV ciphertext>``: the cipher is deterministic (a fixed nonce, which
AES-GCM-SIV tolerates), so the same value of the same subject always seals to the same bytes and re-deriving
a log gives the bytes it holds. Reading opens sealed values while the key exists; once the subject is
forgotten they read as the pseudonym ``forgotten:<ref>``, the same for every event of the subject, so
whatever was counted per user is counted the same way under the pseudonym.

The fields sealed are those an event names by ``Event.personal()`` (the first one holding a value names the
subject), plus the ``metadata`` keys a :class:`Privacy` setting names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from rtopt.arguments import invalid
from rtopt.errors import InvalidLog, ReadOnlyLog, RtoptError, StorageError
from rtopt.events import Event, decode_payload, encode_payload
from rtopt.storage.interface import EventLog
from rtopt.storage.sql import SQLLog
from rtopt.storage.sqlite import SQLiteLog

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

KEYS_TABLE = "rtopt_subject_keys"
SEALED = "sealed:1:"
FORGOTTEN = "forgotten:"
_SEALED_BYTES = SEALED.encode()
_OPAQUE = (SEALED, FORGOTTEN)
_NONCE = bytes(12)  # deterministic sealing: AES-GCM-SIV only reveals that two plaintexts are equal
_CHUNK = 300  # subjects looked up or stored by one statement
_CACHED = 65_536  # sealed and opened values kept in memory


class Privacy(msgspec.Struct, frozen=True):
    """What the engine seals when it writes: with ``seal`` on, the fields event types declare personal
    (``Feedback.user_id`` and ``session_id``, ``Decision.unit`` ...) and the ``personal_metadata`` keys of
    their ``metadata``. Sealed values are opened on reading whatever this says.

    >>> Privacy.of(False).seal, Privacy.of(True).seal, Privacy.of(Privacy(personal_metadata=("email",)))
    (False, True, Privacy(seal=True, personal_metadata=('email',)))
    """

    seal: bool = True
    personal_metadata: tuple[str, ...] = ()

    @classmethod
    def of(cls, setting: Privacy | bool) -> Privacy:
        """The setting given to ``Engine.open(privacy=...)``: a Privacy, True (the default) or False (off)."""
        if isinstance(setting, Privacy):
            return setting
        if isinstance(setting, bool):
            return cls(seal=setting)
        raise invalid("privacy", setting, "must be True, False or a Privacy")


def is_pseudonym(value: object) -> bool:
    """True for the value a sealed field reads as once its subject is forgotten.

    >>> is_pseudonym("forgotten:0123456789abcdef"), is_pseudonym("user-42"), is_pseudonym(None)
    (True, False, False)
    """
    return isinstance(value, str) and value.startswith(FORGOTTEN)


def _opaque(value: str) -> bool:
    """A value sealed already, or a pseudonym: nothing of it is left to seal."""
    return value.startswith(_OPAQUE)


def _subject(event: Event, fields: tuple[str, ...]) -> str | None:
    """The subject of ``event``: the first of its personal ``fields`` holding a value left to seal."""
    for name in fields:
        value = getattr(event, name)
        if value and not _opaque(value):
            return value
    return None


def _new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _cipher(key: str) -> AESGCMSIV:
    """The AES-GCM-SIV cipher of a stored (base64) key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV  # imported by the first log that seals

    return AESGCMSIV(base64.b64decode(key))


def _remember(cache: dict[Any, str], key: Any, value: str) -> None:
    """Keep ``value`` in ``cache``, emptied when full: sealing and opening are pure, so it only saves time."""
    if len(cache) >= _CACHED:
        cache.clear()
    cache[key] = value


def _subject_hash(subject: str) -> str:
    return hashlib.blake2b(subject.encode(), digest_size=16, person=b"rtopt/subject").hexdigest()


class Keyring:
    """The subjects' keys of one log: seals events on their way into it and opens them on their way out.

    >>> from rtopt import Feedback
    >>> from rtopt.storage.factory import open_log
    >>> keys = Keyring(open_log(":memory:", seed=1))
    >>> fb = Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True, quality_score=1.0,
    ...               user_id="u1")
    >>> stored = keys.encode(fb)
    >>> b"u1" in stored, keys.decode("Feedback", stored).user_id
    (False, 'u1')
    >>> ref = keys.forget("u1")
    >>> keys.decode("Feedback", stored).user_id == f"forgotten:{ref}"
    True
    """

    def __init__(self, log: EventLog, privacy: Privacy | None = None) -> None:
        if not isinstance(log, SQLLog):
            raise TypeError(f"{type(log).__name__}: keys are kept in an SQL log's database")
        self._log = log
        self._privacy = privacy if privacy is not None else Privacy()
        self._by_subject: dict[str, tuple[str, AESGCMSIV]] = {}
        self._by_ref: dict[str, AESGCMSIV | None] = {}
        self._sealed: dict[tuple[str, str], str] = {}  # (subject, value) -> sealed value
        self._opened: dict[str, str] = {}  # sealed value -> what it reads as
        self._table_ready = False
        if isinstance(log, SQLiteLog) and not log.read_only:
            log._execute("PRAGMA secure_delete=ON")  # freed key bytes are overwritten, not left in free space

    # --- writing ---------------------------------------------------------------------------------

    def encode(self, event: Event) -> bytes:
        """The stored bytes of ``event``, its personal values sealed."""
        return encode_payload(self.seal(event))

    def seal(self, event: Event) -> Event:
        """``event`` with its personal values sealed (itself when it has none to seal or sealing is off)."""
        fields = event.personal()
        if not fields or not self._privacy.seal:
            return event
        subject = None
        changes: dict[str, Any] = {}
        for name in fields:
            value = getattr(event, name)
            if value and not value.startswith(_OPAQUE):
                subject = subject or value  # the first value left to seal names the subject
                changes[name] = self._seal_value(subject, value)
        personal = self._privacy.personal_metadata
        metadata = getattr(event, "metadata", None)
        if personal and metadata and any(key in metadata for key in personal):
            changes["metadata"] = {
                key: self._seal_value(subject or value, value) if key in personal and not _opaque(value) else value
                for key, value in metadata.items()
            }
        return msgspec.structs.replace(event, **changes) if changes else event

    def prepare(self, events: Iterable[Event]) -> None:
        """Find or make the keys of the subjects of ``events`` in a few statements, before they are sealed one
        by one (which would store each new subject's key in a transaction of its own)."""
        if not self._privacy.seal:
            return
        new = set()
        for event in events:
            fields = event.personal()
            subject = _subject(event, fields) if fields else None
            if subject is not None and subject not in self._by_subject:
                new.add(subject)
        if new:
            self._learn(new)

    def _seal_value(self, subject: str, value: str) -> str:
        sealed = self._sealed.get((subject, value))
        if sealed is None:
            if subject not in self._by_subject:
                self._learn({subject})
            ref, cipher = self._by_subject[subject]
            ciphertext = cipher.encrypt(_NONCE, value.encode(), ref.encode())
            sealed = f"{SEALED}{ref}:{base64.b64encode(ciphertext).decode()}"
            _remember(self._sealed, (subject, value), sealed)
        return sealed

    def _learn(self, subjects: set[str]) -> None:
        """Read the keys of ``subjects`` from the table, making and storing the ones it lacks."""
        self._prepare_table()
        by_hash = {_subject_hash(subject): subject for subject in subjects}
        hashes = sorted(by_hash)  # every writer inserts in one order, so two cannot deadlock on each other's rows
        for start in range(0, len(hashes), _CHUNK):
            part = hashes[start : start + _CHUNK]
            found = self._stored(part)
            new = [(digest, secrets.token_hex(8), _new_key()) for digest in part if digest not in found]
            if new:
                # another writer of a shared log may store a key first: the stored ones are read back either way
                self._log._execute(
                    f"INSERT INTO {KEYS_TABLE} (subject_hash, ref, key) VALUES {', '.join(['(?, ?, ?)'] * len(new))}"
                    " ON CONFLICT (subject_hash) DO NOTHING",
                    [value for row in new for value in row],
                )
                found = self._stored(part)
            for digest, (ref, key) in found.items():
                cipher = _cipher(key)
                self._by_subject[by_hash[digest]] = (ref, cipher)
                self._by_ref[ref] = cipher

    def _stored(self, hashes: list[str]) -> dict[str, tuple[str, str]]:
        """The reference and key stored for each of ``hashes`` that has them."""
        marks = ", ".join("?" * len(hashes))
        query = f"SELECT subject_hash, ref, key FROM {KEYS_TABLE} WHERE subject_hash IN ({marks})"
        return {digest: (ref, key) for digest, ref, key in self._log._query(query, hashes)}

    def _prepare_table(self) -> None:
        if self._log.read_only:
            raise ReadOnlyLog(f"{self._log.location} is open read-only: its keys cannot change")
        if self._table_ready:
            return
        try:
            self._log._execute(
                f"CREATE TABLE IF NOT EXISTS {KEYS_TABLE}"
                " (subject_hash TEXT PRIMARY KEY, ref TEXT NOT NULL UNIQUE, key TEXT NOT NULL)"
            )
        except StorageError:
            if not _has_keys(self._log):  # else another process created it at the same moment
                raise
        self._table_ready = True

    # --- reading ---------------------------------------------------------------------------------

    def decode(self, tag: str, data: bytes, version: int | None = None) -> Event:
        """The event stored as ``data`` under ``tag`` at schema ``version`` (see
        :func:`~rtopt.events.decode_payload`), its sealed values opened (or pseudonyms if forgotten)."""
        event = decode_payload(tag, data, version)
        if _SEALED_BYTES not in data:
            return event
        changes: dict[str, Any] = {}
        for name in type(event).personal_fields:
            value = getattr(event, name)
            if value and value.startswith(SEALED):
                changes[name] = self._open(value)
        metadata = getattr(event, "metadata", None)
        if metadata and any(value.startswith(SEALED) for value in metadata.values()):
            changes["metadata"] = {
                key: self._open(value) if value.startswith(SEALED) else value for key, value in metadata.items()
            }
        return msgspec.structs.replace(event, **changes) if changes else event

    def _open(self, sealed: str) -> str:
        opened = self._opened.get(sealed)
        if opened is None:
            opened = self._decrypt(sealed)
            _remember(self._opened, sealed, opened)
        return opened

    def _decrypt(self, sealed: str) -> str:
        ref, _, body = sealed[len(SEALED) :].partition(":")
        cipher = self._cipher_of(ref)
        if cipher is None:
            return f"{FORGOTTEN}{ref}"
        from cryptography.exceptions import InvalidTag

        try:
            return cipher.decrypt(_NONCE, base64.b64decode(body), ref.encode()).decode()
        except (InvalidTag, binascii.Error, UnicodeDecodeError):
            raise InvalidLog(f"{self._log.location}: a value sealed for {ref} does not open with its key") from None

    def _cipher_of(self, ref: str) -> AESGCMSIV | None:
        if ref not in self._by_ref:
            # a value sealed elsewhere (its row copied without the keys) has no key here: it reads as forgotten
            self._table_ready = self._table_ready or _has_keys(self._log)
            found = self._log._query(f"SELECT key FROM {KEYS_TABLE} WHERE ref = ?", (ref,)) if self._table_ready else []
            self._by_ref[ref] = _cipher(found[0][0]) if found else None
        return self._by_ref[ref]

    def reload(self) -> None:
        """Forget what was read or made of the keys: a write that failed may have rolled back keys it stored."""
        self._by_subject.clear()
        self._by_ref.clear()
        self._sealed.clear()
        self._opened.clear()
        self._table_ready = False

    # --- forgetting ------------------------------------------------------------------------------

    def forget(self, subject: str) -> str:
        """Delete the key of ``subject`` and every handler snapshot (they may hold its values in the clear);
        returns its reference. Raises :class:`RtoptError` for a subject with no key: never seen, or
        forgotten already."""
        self._prepare_table()
        digest = _subject_hash(subject)
        found = self._log._query(f"SELECT ref FROM {KEYS_TABLE} WHERE subject_hash = ?", (digest,))
        if not found:
            raise RtoptError(
                f"subject = {subject!r}: no key in {self._log.location} (never seen, or forgotten already)"
            )
        ref = found[0][0]
        self._log._execute(f"DELETE FROM {KEYS_TABLE} WHERE subject_hash = ?", (digest,))
        self._log._execute("DELETE FROM snapshots")
        if isinstance(self._log, SQLiteLog):
            self._log._execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL's copies of the key go too
        self._by_subject.pop(subject, None)
        self._by_ref[ref] = None
        self._sealed.clear()
        self._opened.clear()
        return ref


def _has_keys(log: SQLLog) -> bool:
    """True if ``log``'s database holds the keys table."""
    catalog = (
        "SELECT count(*) FROM sqlite_master WHERE name = ?"
        if isinstance(log, SQLiteLog)
        else "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = current_schema()"
    )
    return log._query(catalog, (KEYS_TABLE,))[0][0] > 0


def copy_keys(source: EventLog, target: EventLog) -> int:
    """Copy the subjects' keys of ``source`` into ``target``, where its events were copied; returns how many.
    The copy's keys are its own from then on: forgetting a subject in one log leaves the other as it was."""
    if not isinstance(source, SQLLog) or not isinstance(target, SQLLog) or not _has_keys(source):
        return 0
    rows = source._query(f"SELECT subject_hash, ref, key FROM {KEYS_TABLE} ORDER BY ref")
    Keyring(target)._prepare_table()
    for row in rows:
        target._execute(
            f"INSERT INTO {KEYS_TABLE} (subject_hash, ref, key) VALUES (?, ?, ?) ON CONFLICT (subject_hash) DO NOTHING",
            row,
        )
    return len(rows)

"""An online feature store fed by window results, and the request-time helper that reads it.

- :class:`OnlineFeatureStore` keeps the latest value of each (entity, feature), the event time it was
  computed at, and answers reads with its freshness under a per-feature TTL. It counts fresh, stale and
  missing reads per feature. It only knows the event time its caller passes as ``now``: never the wall
  clock.
- :class:`FeatureStoreHandler` is the handler chain that fills a store from
  :class:`~rtopt.streams.events.WindowClosed` and :class:`~rtopt.streams.events.WindowUpdated` events: a configured
  mapping says which ``(pipeline, aggregate)`` of a window becomes which feature; the entity is the
  window's key and the value's time is the window's end. Its state is a msgspec struct, so it is
  snapshotted, and replay rebuilds it byte for byte.
- :func:`request_context` builds a request's feature vector from the engine's store, ready for
  ``engine.decide(experiment, context=vector)``; the Decision then records the vector.

Latest wins **by event time**, not by arrival: a value replaces the stored one only if its window ends
no earlier (and, for the same window, its revision is no lower), so a late result for an older window
never overwrites a newer one.

The handler derives no events. Its state is a pure function of the window events already in the log, so
a ``FeatureUpdated`` event would copy every window result into the log a second time without adding a
fact; whoever wants to react to a new feature value subscribes to ``WindowClosed`` / ``WindowUpdated``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import msgspec
from rtopt.streams.events import WindowClosed, WindowUpdated
from rtopt.streams.features import FeatureSchema

from rtopt.arguments import invalid, non_empty
from rtopt.engine import Engine
from rtopt.errors import InvalidArgument
from rtopt.events import Envelope, Event
from rtopt.handler import Context, Handler, handles

DEFAULT_TTL_S = 300.0


# --- stored data ----------------------------------------------------------------------------------


class StoredFeature(msgspec.Struct, frozen=True, array_like=True):
    """One stored value: the value, the event time it was computed at, and its window revision (0: first)."""

    value: float
    computed_at: float
    revision: int = 0


class FeatureTable(msgspec.Struct):
    """The latest value of each feature of each entity: ``entities[entity][feature]``.

    ``out_of_order`` counts, per feature, the values that arrived after a newer one and were dropped.
    This is the state of :class:`FeatureStoreHandler` and what snapshots store.
    """

    entities: dict[str, dict[str, StoredFeature]] = {}
    out_of_order: dict[str, int] = {}


def upsert(table: FeatureTable, entity: str, feature: str, value: float, computed_at: float, revision: int = 0) -> bool:
    """Store ``value`` unless the table holds a newer one; returns whether it was stored.

    Newer means a later ``computed_at``, or the same ``computed_at`` and a higher ``revision``; an equal
    (time, revision) replaces the stored value (the later arrival wins).

    >>> table = FeatureTable()
    >>> upsert(table, "api", "latency", 420.0, computed_at=120.0), upsert(table, "api", "latency", 380.0, 60.0)
    (True, False)
    >>> table.entities["api"]["latency"].value, table.out_of_order
    (420.0, {'latency': 1})
    """
    features = table.entities.get(entity)
    if features is None:
        features = table.entities[entity] = {}
    current = features.get(feature)
    if current is not None and (computed_at, revision) < (current.computed_at, current.revision):
        table.out_of_order[feature] = table.out_of_order.get(feature, 0) + 1
        return False
    features[feature] = StoredFeature(value, computed_at, revision)
    return True


class FeatureValue(msgspec.Struct, frozen=True):
    """A value read from the store at event time ``now``: ``age = now - computed_at``, ``fresh = age <= ttl``.

    A value computed after ``now`` (negative age: the reader's clock lags the window's) counts as fresh.
    """

    value: float
    computed_at: float
    fresh: bool
    age: float


class ReadStats(msgspec.Struct):
    """How the reads of one feature went: fresh, stale (older than its TTL) or missing (no value)."""

    fresh: int = 0
    stale: int = 0
    missing: int = 0

    @property
    def reads(self) -> int:
        return self.fresh + self.stale + self.missing


class ReadCounters:
    """Thread-safe per-feature counts of fresh, stale and missing reads.

    Reads are observations, not events: these counts live in the process (like ``engine.stats()``), are
    not replayed and start at zero in every engine.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, ReadStats] = {}

    def record(self, feature: str, outcome: str) -> None:
        """Count one ``outcome`` (``"fresh"``, ``"stale"`` or ``"missing"``) for ``feature``."""
        with self._lock:
            stats = self._stats.get(feature)
            if stats is None:
                stats = self._stats[feature] = ReadStats()
            setattr(stats, outcome, getattr(stats, outcome) + 1)

    def snapshot(self) -> dict[str, ReadStats]:
        """A copy of the counts, by feature name in sorted order."""
        with self._lock:
            return {name: ReadStats(s.fresh, s.stale, s.missing) for name, s in sorted(self._stats.items())}

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._stats.clear()


def _ttl(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        raise invalid(what, value, "must be a positive number of seconds (inf: never stale)")
    return float(value)


def _event_time(now: float) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise InvalidArgument(
            f"now = {now!r}: must be a finite event time in seconds since the epoch", argument="now", value=now
        )
    return float(now)


# --- the store ------------------------------------------------------------------------------------


class OnlineFeatureStore:
    """Latest value per (entity, feature), with freshness under a per-feature TTL and read counters.

    ``ttl`` maps feature names to their time to live in seconds; other features live ``default_ttl``.
    A value read at event time ``now`` is fresh while ``now - computed_at <= ttl`` (so exactly at the TTL
    it is still fresh) and stale after. If ``known`` is given, reading a feature outside it raises
    KeyError (a misspelt name would otherwise read as forever missing).

    >>> store = OnlineFeatureStore(default_ttl=60.0, ttl={"cost_1h": 3600.0})
    >>> store.put("api", "latency", 420.0, computed_at=1000.0)
    True
    >>> store.get("api", "latency", now=1060.0)
    FeatureValue(value=420.0, computed_at=1000.0, fresh=True, age=60.0)
    >>> store.get("api", "latency", now=1060.5).fresh
    False
    >>> store.get("web", "latency", now=1060.0) is None
    True
    >>> store.stats()["latency"]
    ReadStats(fresh=1, stale=1, missing=1)
    """

    def __init__(
        self,
        default_ttl: float = DEFAULT_TTL_S,
        ttl: Mapping[str, float] | None = None,
        *,
        table: FeatureTable | None = None,
        counters: ReadCounters | None = None,
        known: Sequence[str] | None = None,
    ) -> None:
        self.default_ttl = _ttl(default_ttl, "default_ttl")
        self.ttl = {name: _ttl(seconds, f"ttl[{name!r}]") for name, seconds in (ttl or {}).items()}
        self.table = FeatureTable() if table is None else table
        self.counters = ReadCounters() if counters is None else counters
        self.known = None if known is None else frozenset(known)

    def ttl_for(self, feature: str) -> float:
        """The time to live of ``feature``, in seconds."""
        return self.ttl.get(feature, self.default_ttl)

    def put(self, entity: str, feature: str, value: float, computed_at: float, revision: int = 0) -> bool:
        """Store ``value`` unless a newer one is stored (see :func:`upsert`); returns whether it was stored."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgument(f"{feature} = {value!r}: must be a finite number", argument=feature, value=value)
        return upsert(self.table, entity, feature, float(value), _event_time(computed_at), revision)

    def get(self, entity: str, feature: str, now: float, default: Any = None) -> FeatureValue | Any:
        """The value of ``feature`` for ``entity`` read at event time ``now``, or ``default`` if there is none.

        Counts the read as fresh, stale or missing.
        """
        now = _event_time(now)
        if self.known is not None and feature not in self.known:
            raise KeyError(f"no feature named {feature!r} in this store; known: {sorted(self.known)}")
        stored = self.table.entities.get(entity, {}).get(feature)
        if stored is None:
            self.counters.record(feature, "missing")
            return default
        age = now - stored.computed_at
        fresh = age <= self.ttl_for(feature)
        self.counters.record(feature, "fresh" if fresh else "stale")
        return FeatureValue(stored.value, stored.computed_at, fresh, age)

    def entity(self, entity: str) -> EntityFeatures:
        """A reader of ``entity``'s features (sharing this store's data, TTLs and counters)."""
        return EntityFeatures(entity, self)

    def vector(
        self,
        entity: str,
        names: Sequence[str] | None,
        now: float,
        schema: FeatureSchema | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
        default: float | None = None,
        use_stale: bool = False,
    ) -> dict[str, float]:
        """``entity``'s feature vector at event time ``now``; see :meth:`EntityFeatures.vector`."""
        return self.entity(entity).vector(names, now, schema, extra=extra, default=default, use_stale=use_stale)

    def entities(self) -> list[str]:
        """The entities with at least one value."""
        return list(self.table.entities)

    def stats(self) -> dict[str, ReadStats]:
        """Fresh, stale and missing read counts per feature."""
        return self.counters.snapshot()

    def encode(self) -> bytes:
        """The stored values as msgpack bytes (what a snapshot of the handler holds)."""
        return msgspec.msgpack.encode(self.table)


class EntityFeatures:
    """The features of one entity, read through an :class:`OnlineFeatureStore`.

    ``engine.state("features", entity)`` returns one of these, over a detached copy of the entity's values.

    >>> store = OnlineFeatureStore(default_ttl=60.0)
    >>> _ = store.put("api", "latency", 420.0, computed_at=1000.0)
    >>> api = store.entity("api")
    >>> "latency" in api, api["latency"], api.get("latency", now=1030.0).age
    (True, 420.0, 30.0)
    >>> api.vector(["latency"], now=1030.0)
    {'latency': 420.0}
    """

    __slots__ = ("entity", "store")

    def __init__(self, entity: str, store: OnlineFeatureStore) -> None:
        self.entity = entity
        self.store = store

    @property
    def features(self) -> dict[str, StoredFeature]:
        """The stored values of this entity, by feature name."""
        return dict(self.store.table.entities.get(self.entity, {}))

    def __contains__(self, feature: object) -> bool:
        return feature in self.store.table.entities.get(self.entity, {})

    def __getitem__(self, feature: str) -> float:
        """The stored value of ``feature``, fresh or not (not counted as a read)."""
        return self.store.table.entities.get(self.entity, {})[feature].value

    def __len__(self) -> int:
        return len(self.store.table.entities.get(self.entity, {}))

    def __repr__(self) -> str:
        return f"EntityFeatures({self.entity!r}, {self.features!r})"

    def get(self, feature: str, now: float, default: Any = None) -> FeatureValue | Any:
        """The value of ``feature`` read at event time ``now``, or ``default``; see :meth:`OnlineFeatureStore.get`."""
        return self.store.get(self.entity, feature, now, default)

    def vector(
        self,
        names: Sequence[str] | None,
        now: float,
        schema: FeatureSchema | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
        default: float | None = None,
        use_stale: bool = False,
    ) -> dict[str, float]:
        """The feature vector of this entity at event time ``now``.

        Reads ``names`` from the store (default: every feature of ``schema`` that is not given in ``extra``
        and, if the store has a list of known features, is one of them). A
        stale value counts as missing unless ``use_stale``. ``extra`` holds request-time values that are
        not in the store (calendar features, request attributes); naming a feature both in ``extra`` and
        in ``names`` is an error.

        With a ``schema`` the values are encoded by it: columns in schema order, a missing feature takes
        its default or raises InvalidArgument naming it. Without one the vector holds ``names`` in order,
        then ``extra``'s keys; a missing feature takes ``default`` or raises InvalidArgument naming it.
        """
        extra = {} if extra is None else extra
        if names is None:
            if schema is None:
                raise invalid("names", names, "name the features to read, or give a schema")
            known = self.store.known
            names = [name for name in schema.names if name not in extra and (known is None or name in known)]
        clash = next((name for name in names if name in extra), None)
        if clash is not None:
            raise InvalidArgument(
                f"{clash}: given in extra and also read from the store", argument=clash, value=extra[clash]
            )
        values: dict[str, Any] = dict(extra)
        for name in names:
            read = self.get(name, now)
            values[name] = read.value if read is not None and (read.fresh or use_stale) else None
        if schema is not None:
            return schema.vector(values)
        vector: dict[str, float] = {}
        for name in [*names, *extra]:
            value = values[name] if values[name] is not None else default
            if value is None:
                raise InvalidArgument(
                    f"{name}: no fresh value for {self.entity!r} at time {now!r} and no default",
                    argument=name,
                    value=None,
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidArgument(f"{name} = {value!r}: must be a finite number", argument=name, value=value)
            vector[name] = float(value)
        return vector


# --- the handler ----------------------------------------------------------------------------------


class FeatureStoreHandler(Handler[FeatureTable]):
    """Folds window results into an online feature store: one feature per ``(pipeline, aggregate)``.

    ``features`` maps a feature name to the window pipeline and the aggregate (a key of the window's
    ``values``, ``"<field>.<aggregate>"``) it takes its value from; the entity is the window's ``key`` and
    the value's time is the window's ``end``. A window that lacks the aggregate leaves the feature as it
    was. ``default_ttl`` and ``ttl`` set freshness at read time only, so changing them keeps snapshots
    valid.

    ``engine.state(name)`` is an :class:`OnlineFeatureStore` over a copy of the table;
    ``engine.state(name, entity)`` is that entity's :class:`EntityFeatures` (empty for an unknown entity).
    Reads through either count into this handler's :attr:`counters`, in this process only.

    >>> from rtopt import Engine
    >>> handler = FeatureStoreHandler({"latency_1m": ("latency_1min", "response_time_ms.mean")}, default_ttl=60.0)
    >>> with Engine.open(":memory:", seed=1, handlers=[handler]) as engine:
    ...     _ = engine.publish(WindowClosed(pipeline="latency_1min", key="api", start=0.0, end=60.0, count=2,
    ...                                     values={"response_time_ms.mean": 410.0}), stream="api", time=61.0)
    ...     api = engine.state("features", "api")
    >>> api.get("latency_1m", now=90.0)
    FeatureValue(value=410.0, computed_at=60.0, fresh=True, age=30.0)
    """

    name: ClassVar[str] = "features"
    state_type = FeatureTable
    version = 1

    def __init__(
        self,
        features: Mapping[str, tuple[str, str] | Sequence[str]],
        *,
        name: str = "features",
        default_ttl: float = DEFAULT_TTL_S,
        ttl: Mapping[str, float] | None = None,
    ) -> None:
        non_empty("features", features)
        if not isinstance(name, str) or not name:
            raise invalid("name", name, "must be a non-empty string")
        self.name = name  # type: ignore[misc]
        self.features: dict[str, tuple[str, str]] = {}
        routes: dict[str, list[tuple[str, str]]] = {}
        for feature, source in features.items():
            if isinstance(source, str) or len(source) != 2 or not all(isinstance(s, str) and s for s in source):
                raise invalid(f"features[{feature!r}]", source, "expected (pipeline, aggregate)")
            pipeline, aggregate = source
            self.features[feature] = (pipeline, aggregate)
            routes.setdefault(pipeline, []).append((aggregate, feature))
        self._routes = routes
        unknown = sorted(set(ttl or {}) - set(self.features))
        if unknown:
            raise invalid("ttl", ttl, f"names features this handler does not produce: {unknown}")
        self.default_ttl = _ttl(default_ttl, "default_ttl")
        self.ttl = {feature: _ttl(seconds, f"ttl[{feature!r}]") for feature, seconds in (ttl or {}).items()}
        self.counters = ReadCounters()

    def config(self) -> dict[str, Any]:
        return {"features": {feature: list(source) for feature, source in self.features.items()}}

    def initial_state(self) -> FeatureTable:
        return FeatureTable()

    @handles(WindowClosed, WindowUpdated)
    def _window(
        self, state: FeatureTable, envelope: Envelope[WindowClosed | WindowUpdated], ctx: Context
    ) -> tuple[FeatureTable, Sequence[Event]]:
        window = envelope.payload
        routes = self._routes.get(window.pipeline)
        if routes:
            revision = window.revision if isinstance(window, WindowUpdated) else 0
            for aggregate, feature in routes:
                value = window.values.get(aggregate)
                if value is not None:
                    upsert(state, window.key, feature, value, window.end, revision)
        return state, ()

    def store(self, table: FeatureTable) -> OnlineFeatureStore:
        """A store over ``table`` with this handler's TTLs, feature names and read counters."""
        return OnlineFeatureStore(
            self.default_ttl, self.ttl, table=table, counters=self.counters, known=list(self.features)
        )

    def view(self, state: FeatureTable, key: str | None = None) -> OnlineFeatureStore | EntityFeatures:
        # stored values are immutable, so copying the dicts detaches the view from the live state
        if key is None:
            table = FeatureTable({e: dict(f) for e, f in state.entities.items()}, dict(state.out_of_order))
            return self.store(table)
        features = state.entities.get(key)
        table = FeatureTable({key: dict(features)} if features else {}, dict(state.out_of_order))
        return self.store(table).entity(key)

    def stats(self) -> dict[str, ReadStats]:
        """Fresh, stale and missing read counts per feature, over every view of this handler."""
        return self.counters.snapshot()


def request_context(
    engine: Engine,
    entity: str,
    names: Sequence[str] | None,
    now: float,
    schema: FeatureSchema | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    handler: str = "features",
    default: float | None = None,
    use_stale: bool = False,
) -> dict[str, float]:
    """The feature vector of ``entity`` at event time ``now``, read from the engine's feature store.

    Pass it as ``engine.decide(experiment, context=vector, time=now)``: the Decision records it, so the
    decision can be evaluated and replayed with exactly the features it saw. ``handler`` names the
    :class:`FeatureStoreHandler`; the other arguments are those of :meth:`EntityFeatures.vector` (stale
    values count as missing unless ``use_stale``; ``extra`` adds request-time values such as
    :func:`rtopt.streams.features.time_features`).

    >>> from rtopt import Engine
    >>> from rtopt.streams.features import FeatureSpec
    >>> schema = FeatureSchema([FeatureSpec("latency_1m", "continuous", default=500.0)])
    >>> handler = FeatureStoreHandler({"latency_1m": ("latency_1min", "response_time_ms.mean")}, default_ttl=60.0)
    >>> with Engine.open(":memory:", seed=1, handlers=[handler]) as engine:
    ...     _ = engine.publish(WindowClosed(pipeline="latency_1min", key="api", start=0.0, end=60.0, count=2,
    ...                                     values={"response_time_ms.mean": 410.0}), stream="api", time=61.0)
    ...     request_context(engine, "api", None, now=90.0, schema=schema), request_context(
    ...         engine, "api", None, now=200.0, schema=schema)
    ({'latency_1m': 410.0}, {'latency_1m': 500.0})
    """
    view = engine.state(handler, entity)
    if not isinstance(view, EntityFeatures):
        raise TypeError(f"handler {handler!r} is not a FeatureStoreHandler (its view is a {type(view).__name__})")
    return view.vector(names, now, schema, extra=extra, default=default, use_stale=use_stale)

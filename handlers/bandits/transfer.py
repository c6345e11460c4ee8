"""Policy state as JSON: export an experiment's arms from one engine and import them into another.

The import is itself an event (:class:`~rtopt.handlers.bandits.events.PolicyStateImported`), so the state it
brings in is rebuilt by replay like any other.
"""

from __future__ import annotations

import msgspec
from rtopt.handlers.bandits.events import PolicyStateImported
from rtopt.handlers.bandits.policies import ArmState

from rtopt import Engine, Envelope, InvalidEvent


def export_policy_state(engine: Engine, experiment: str, handler: str = "bandit") -> str:
    """The JSON of ``experiment``'s arms (their statistics and status) in ``engine``.

    >>> from rtopt.handlers.bandits import BanditHandler
    >>> with Engine.open(":memory:", seed=1, handlers=[BanditHandler()]) as source, \\
    ...      Engine.open(":memory:", seed=2, handlers=[BanditHandler()]) as target:
    ...     _ = source.define_experiment("g", arms=["a", "b"], policy="thompson")
    ...     d = source.decide("g")
    ...     _ = source.feedback(d.id, success=True, quality_score=0.9, response_time_ms=10.0)
    ...     _ = target.define_experiment("g", arms=["a", "b"], policy="thompson")
    ...     _ = import_policy_state(target, "g", export_policy_state(source, "g"))
    ...     target.state("bandit", "g").arms == source.state("bandit", "g").arms
    True
    """
    return msgspec.json.encode(engine.state(handler, experiment).arms).decode()


def import_policy_state(
    engine: Engine, experiment: str, arms_json: str, *, time: float | None = None
) -> Envelope[PolicyStateImported]:
    """Publish the import of ``arms_json`` (from :func:`export_policy_state`) into ``experiment``."""
    return engine.publish(PolicyStateImported(experiment=experiment, arms=arms_json), time=time)


def decode_arms(event: PolicyStateImported) -> dict[str, ArmState]:
    """The arms an import carries; InvalidEvent if its JSON is not a mapping of arm states."""
    try:
        return msgspec.json.decode(event.arms, type=dict[str, ArmState])
    except msgspec.ValidationError as exc:
        raise InvalidEvent(
            f"arms: not an exported policy state ({exc})", field="arms", value=event.arms[:200]
        ) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"arms: not JSON ({exc})", field="arms", value=event.arms[:200]) from None

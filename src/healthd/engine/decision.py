"""What a workload's policy hands the daemon: a ``Decision`` (the events to publish, and
whether to restart the workload now), and how its events are made, for ``policy.py`` and the
parts it hands work to (``restarts.py``, ``flapping.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from healthd.model import Clock, Event, EventType, State, WorkloadStatus


@dataclass(slots=True)
class Decision:
    events: list[Event] = field(default_factory=list)
    restart: bool = False  # the daemon must restart the workload and report the outcome


# Returned when a result changes nothing worth acting on (most results): shared, never mutated.
QUIET = Decision()


def transition(
    status: WorkloadStatus,
    clock: Clock,
    kind: EventType,
    message: str,
    previous: State,
    **details: object,
) -> Event:
    """An event about ``status``'s workload, from state ``previous`` to the state it is in."""
    return Event(
        kind,
        status.workload,
        clock.now(),
        message,
        state_from=previous,
        state_to=status.state,
        details=dict(details),
    )

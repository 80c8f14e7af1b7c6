"""Plain data that flows between healthd's parts: check results, events, workload status."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol


class State(StrEnum):
    """What a workload is doing, for humans and APIs (``state`` in statuses.json)."""

    STARTING = "starting"  # no decisive result yet: never "healthy" before a success
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"  # restarted; must prove itself healthy again
    GAVE_UP = "gave_up"  # unhealthy and the restart budget is spent
    DISABLED = "disabled"  # configured with enabled: false, not monitored
    CONFIG_ERROR = "config_error"  # its file does not load now; last saved counters kept
    PAUSED = "paused"  # maintenance: checked, never restarted; shown over the machine's state
    # -- policy states (engine/policy.py) --

    # -- end of states --


class EventType(StrEnum):
    """Event names; the first four are the reference's."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    RESTART = "restart"
    CHECK_FAIL = "check_fail"
    RESTART_FAILED = "restart_failed"
    RESTART_EXHAUSTED = "restart_exhausted"
    PAUSED = "paused"
    RESUMED = "resumed"
    CONFIG_ERROR = "config_error"
    DAEMON_STARTED = "daemon_started"
    DAEMON_STOPPING = "daemon_stopping"
    # -- check events (checks/) --
    CERT_EXPIRING = "cert_expiring"  # an https server's certificate is within cert_expiry_warn

    # -- policy events (engine/policy.py) --
    RESTART_HELD = "restart_held"  # a restart is due but held (flapping, a dependency)
    FLAPPING = "flapping"  # the verdict changed more than flap_threshold times in flap_window
    FLAPPING_STOPPED = "flapping_stopped"  # fewer than flap_threshold changes in the window
    RESET = "reset"  # `healthd reset`: restart budget, backoff and flap history restored

    # -- operations events --

    # -- end of events --


class CheckResult(NamedTuple):
    """One check's outcome. ``error`` is empty when ``ok``; ``duration`` is in seconds.

    A named tuple rather than a dataclass: one is made per check, and a tuple is the cheapest
    immutable record to make.
    """

    ok: bool
    duration: float
    error: str = ""
    # https: the notAfter (Unix seconds) of the certificate the server presented, if one did
    cert_not_after: float | None = None
    # what a check saw that did not decide its verdict, e.g. a body cut short after a status
    # that decides ("body truncated: 12 of 100 bytes"); empty when there is nothing to say
    note: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a workload (or the daemon: ``workload`` is ""), in the
    reference's shape plus context. ``id`` and ``host`` are given by the journal: unique and
    increasing, and the node name, so that a fleet's events can be told apart."""

    type: EventType
    workload: str
    timestamp: datetime
    message: str
    state_from: State | None = None
    state_to: State | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: int = 0
    host: str = ""


@dataclass(slots=True)
class WorkloadStatus:
    """Persisted per-workload status: the reference's ``Status`` fields, then ours.

    Mutated only by the workload's policy (and the daemon for address and enablement), on the
    event loop thread, so no lock is needed.
    """

    workload: str
    healthy: bool = False
    last_check: datetime | None = None
    last_healthy: datetime | None = None
    consecutive_fails: int = 0
    total_checks: int = 0
    total_fails: int = 0
    restart_count: int = 0
    last_error: str = ""
    last_restart: datetime | None = None
    # additive fields, ignored by the reference's reader
    state: State = State.STARTING
    address: str = ""
    address_source: str = ""
    restart_failures: int = 0
    last_restart_error: str = ""
    last_restart_attempt: datetime | None = None  # successful or not: paces restart_delay
    last_check_duration: float | None = None
    last_check_note: str = ""  # CheckResult.note of the last check
    # Maintenance, set through the API or CLI and kept across daemon restarts. ``state`` goes
    # on holding the state machine's own state; ``shown_state`` is what people see.
    paused: bool = False
    paused_at: datetime | None = None
    paused_reason: str = ""
    # -- check fields (checks/) --
    # https: the notAfter (Unix seconds) of the server's certificate at the last check that
    # saw one, and that of the certificate cert_expiring was sent for (engine/certs.py). In
    # memory only: after a daemon restart a certificate still expiring is announced again.
    cert_not_after: float | None = None
    cert_warned: float | None = None

    # -- policy fields (engine/policy.py) --
    consecutive_successes: int = 0  # in a row, towards success_threshold, while not healthy
    starting_until: datetime | None = None  # the end of the start period, while one runs
    current_restart_delay: float | None = None  # restart_backoff: what paces the next attempt
    # restart_count when `healthd reset` last restored the budget: restart_count stays the
    # lifetime total (the reference's field), the budget counts the restarts made since.
    restart_count_at_reset: int = 0
    recent_restarts: tuple[datetime, ...] = ()  # restart_window: successful restarts in it
    checks_stopped: bool = False  # on_exhausted: stop, and the budget is spent
    restart_held: str = ""  # why a restart that is due waits ("dependency db unhealthy")
    flapping: bool = False
    flapping_since: datetime | None = None
    verdict_changes: tuple[datetime, ...] = ()  # flap detection: within flap_window

    # -- end of fields --

    @property
    def shown_state(self) -> State:
        return State.PAUSED if self.paused else self.state


class Clock(Protocol):
    """Time source; the policy gets one injected so tests can drive time by hand."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: for schedules, delays and deadlines."""
        ...

    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC: for timestamps people read."""
        ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

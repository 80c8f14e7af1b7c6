"""Flap detection (``flap_threshold``, ``flap_window``): a workload whose verdict keeps
changing is ``flapping``.

More than ``flap_threshold`` verdict changes (``healthy``/``unhealthy`` events) within
``flap_window`` set ``flapping`` with one ``flapping`` event; fewer than ``flap_threshold`` in
the window clear it with one ``flapping_stopped``. Verdict events still go out meanwhile: the
journal stays the truth. While flapping, a due restart is held (``holds.py``).

``policy.py`` makes a detector only for the workloads that set ``flap_threshold`` and tells it
of each verdict change and each result; the counting over the window is ``windows.py``'s
``FlapHistory``.
"""

from __future__ import annotations

from healthd import durations
from healthd.engine.decision import transition
from healthd.engine.policy_settings import PolicySettings
from healthd.engine.windows import FlapHistory
from healthd.model import Clock, Event, EventType, WorkloadStatus


class FlapDetector:
    __slots__ = ("_history", "clock", "settings", "status")

    def __init__(self, status: WorkloadStatus, clock: Clock) -> None:
        self.status = status
        self.clock = clock
        self.settings = PolicySettings()
        self._history = FlapHistory(status, clock)

    def configure(self, settings: PolicySettings, mono: float) -> None:
        self.settings = settings
        self._history.configure(settings.flap_threshold, settings.flap_window, mono)

    def verdict_changed(self, mono: float, events: list[Event]) -> None:
        """A ``healthy`` or ``unhealthy`` event went out: count it; flapping may start."""
        count = self._history.changed(mono, self.clock.now())
        if count is None:
            return
        st = self.settings
        window = durations.format_seconds(st.flap_window)
        held = "; restarts are held until it is stable" if st.auto_restart else ""
        events.append(
            transition(
                self.status,
                self.clock,
                EventType.FLAPPING,
                f"flapping: the verdict changed {count} times within {window}{held}",
                self.status.state,
                changes=count,
                flap_threshold=st.flap_threshold,
                flap_window=st.flap_window,
            )
        )

    def review(self, mono: float, events: list[Event]) -> None:
        """End flapping once fewer than ``flap_threshold`` changes are left in the window."""
        count = self._history.review(mono)
        if count is None:
            return
        s = self.status
        if s.restart_held == "flapping":
            s.restart_held = ""
        window = durations.format_seconds(self.settings.flap_window)
        events.append(
            transition(
                s,
                self.clock,
                EventType.FLAPPING_STOPPED,
                f"stable again: {count} verdict changes within {window}",
                s.state,
                changes=count,
            )
        )

    def clear(self) -> None:
        """``healthd reset``: the flap history starts over."""
        self._history.clear()


def detector(
    kept: FlapDetector | None,
    settings: PolicySettings,
    status: WorkloadStatus,
    clock: Clock,
    mono: float,
) -> FlapDetector | None:
    """The detector ``settings`` ask for: ``kept`` (the one before a reload, with its
    history) or a new one; None without ``flap_threshold``, which forgets the flap history."""
    if not settings.flap_threshold:
        status.verdict_changes = ()
        status.flapping, status.flapping_since = False, None
        return None
    found = kept if kept is not None else FlapDetector(status, clock)
    found.configure(settings, mono)
    return found

"""What the restart policies count over sliding windows: the restarts within
``restart_window`` and flap detection's verdict changes.

Pure bookkeeping for ``restarts.py`` and ``flapping.py``, which decide and speak (events),
made only for the workloads that use them; both keep their times in the workload's status so
that statuses.json carries them across daemon restarts. Windows are measured on the monotonic
clock, immune to wall-clock steps; the wall-clock times saved in the status only bring them
back after a restart.
"""

from __future__ import annotations

from datetime import datetime

from healthd.model import Clock, WorkloadStatus


class RecentTimes:
    """Times of recent happenings, oldest first, on both clocks."""

    __slots__ = ("mono", "wall")

    def __init__(self, saved: tuple[datetime, ...], clock: Clock) -> None:
        now, mono = clock.now(), clock.monotonic()
        # A saved time in the future (the wall clock went back since) is taken as now.
        pairs = sorted((mono - max(0.0, (now - t).total_seconds()), t) for t in saved)
        self.mono = [m for m, _ in pairs]
        self.wall = [t for _, t in pairs]

    def add(self, mono: float, wall: datetime, keep: int) -> None:
        self.mono.append(mono)
        self.wall.append(wall)
        self.keep(keep)

    def keep(self, newest: int) -> None:
        if len(self.mono) > newest:
            del self.mono[:-newest], self.wall[:-newest]

    def drop_until(self, cutoff: float) -> None:
        """Forget what happened at or before monotonic ``cutoff``."""
        n = 0
        while n < len(self.mono) and self.mono[n] <= cutoff:
            n += 1
        if n:
            del self.mono[:n], self.wall[:n]

    def count_after(self, cutoff: float) -> int:
        return sum(1 for t in self.mono if t > cutoff)

    def saved(self) -> tuple[datetime, ...]:
        return tuple(self.wall)


class RestartWindow:
    """``restart_window``: the successful restarts within it (``recent_restarts``, at most
    ``max_restarts`` kept), which count against ``max_restarts`` instead of those since the
    last reset."""

    __slots__ = ("_recent", "max_restarts", "status", "window")

    def __init__(self, status: WorkloadStatus, clock: Clock) -> None:
        self.status = status
        self.max_restarts = 1
        self.window = 0.0
        self._recent = RecentTimes(status.recent_restarts, clock)

    def configure(self, max_restarts: int, window: float, mono: float) -> None:
        self.max_restarts, self.window = max_restarts, window
        self._recent.keep(max_restarts)
        self._recent.drop_until(mono - window)
        self.status.recent_restarts = self._recent.saved()

    def used(self, mono: float) -> int:
        return self._recent.count_after(mono - self.window)

    def frees_at(self, mono: float) -> float | None:
        """When the budget is spent: the monotonic time the oldest restart counted leaves the
        window. None when a restart is allowed now."""
        counted = [t for t in self._recent.mono if t > mono - self.window]
        if len(counted) < self.max_restarts:
            return None
        return counted[0] + self.window

    def record(self, mono: float, wall: datetime) -> None:
        self._recent.add(mono, wall, self.max_restarts)
        self._recent.drop_until(mono - self.window)
        self.status.recent_restarts = self._recent.saved()

    def clear(self) -> None:
        self._recent.mono.clear()
        self._recent.wall.clear()
        self.status.recent_restarts = ()


class FlapHistory:
    """Verdict changes within ``flap_window`` (``verdict_changes``, at most threshold + 1
    kept) and whether they make the workload ``flapping``: more than ``threshold`` of them
    start it, fewer than ``threshold`` end it (between the two it stays as it is)."""

    __slots__ = ("_recent", "status", "threshold", "window")

    def __init__(self, status: WorkloadStatus, clock: Clock) -> None:
        self.status = status
        self.threshold = 1
        self.window = 0.0
        self._recent = RecentTimes(status.verdict_changes, clock)

    def configure(self, threshold: int, window: float, mono: float) -> None:
        self.threshold, self.window = threshold, window
        self._recent.keep(threshold + 1)
        self._recent.drop_until(mono - window)
        self.status.verdict_changes = self._recent.saved()

    def changed(self, mono: float, wall: datetime) -> int | None:
        """Count a verdict change; the number in the window if flapping starts now."""
        s = self.status
        recent = self._recent
        recent.add(mono, wall, self.threshold + 1)
        recent.drop_until(mono - self.window)
        s.verdict_changes = recent.saved()
        count = len(recent.mono)
        if s.flapping or count <= self.threshold:
            return None
        s.flapping, s.flapping_since = True, wall
        return count

    def review(self, mono: float) -> int | None:
        """The number left in the window if flapping ends now (changes left it)."""
        s = self.status
        if not s.flapping:
            return None
        self._recent.drop_until(mono - self.window)
        s.verdict_changes = self._recent.saved()
        count = len(self._recent.mono)
        if count >= self.threshold:
            return None
        s.flapping, s.flapping_since = False, None
        return count

    def clear(self) -> None:
        self._recent.mono.clear()
        self._recent.wall.clear()
        s = self.status
        s.verdict_changes = ()
        s.flapping, s.flapping_since = False, None

"""What the API and metrics say about a workload's recent checks: the last results and a
histogram of check durations since the daemon started.

Kept compactly (arrays, not an object per result): at 10,000 workloads a list of named tuples
per workload would cost more memory than everything else the daemon holds for them.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass

from healthd.model import CheckResult

HISTORY_SIZE = 30  # results kept per workload
# Upper bounds (seconds) of the check duration buckets: loopback checks take ~100 µs, slow
# ones reach their timeout. Few of them: a scrape at 5,000 workloads encodes every bucket of
# every workload, and the histogram is most of its cost.
DURATION_BOUNDS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


@dataclass(frozen=True, slots=True)
class Recorded:
    """One past check, as the API shows it. ``time`` is when it ended (Unix seconds)."""

    time: float
    ok: bool
    duration: float
    error: str
    note: str = ""


class CheckHistory:
    __slots__ = ("_count", "_durations", "_errors", "_next", "_oks", "_times", "buckets", "sum")

    def __init__(self) -> None:
        # Allocated at the first result: a disabled or never-checked workload costs nothing.
        self._times: array[float] | None = None
        self._durations: array[float] = array("d")
        self._oks = bytearray()
        self._errors: list[str] = []
        self._next = 0
        self._count = 0
        self.buckets: array[int] | None = None  # per DURATION_BOUNDS, then +Inf; not cumulative
        self.sum = 0.0

    def record(self, result: CheckResult, ended: float) -> None:
        if self._times is None:
            self._times = array("d", bytes(8 * HISTORY_SIZE))
            self._durations = array("d", bytes(8 * HISTORY_SIZE))
            self._oks = bytearray(HISTORY_SIZE)
            self._errors = [""] * HISTORY_SIZE
            self.buckets = array("q", bytes(8 * (len(DURATION_BOUNDS) + 1)))
        i = self._next
        self._times[i] = ended
        self._durations[i] = result.duration
        self._oks[i] = result.ok
        # one slot for both: an error is only ever failed, a note only healthy
        self._errors[i] = result.error or result.note
        self._next = (i + 1) % HISTORY_SIZE
        if self._count < HISTORY_SIZE:
            self._count += 1
        assert self.buckets is not None
        self.buckets[bisect_left(DURATION_BOUNDS, result.duration)] += 1
        self.sum += result.duration

    def recent(self, limit: int = HISTORY_SIZE) -> list[Recorded]:
        """Up to ``limit`` results, newest first."""
        if self._times is None:
            return []
        out = []
        for back in range(min(limit, self._count)):
            i = (self._next - 1 - back) % HISTORY_SIZE
            ok, text = bool(self._oks[i]), self._errors[i]
            error, note = ("", text) if ok else (text, "")
            out.append(Recorded(self._times[i], ok, self._durations[i], error, note))
        return out

    @property
    def count(self) -> int:
        """Results recorded since the daemon started (the histogram's count)."""
        return sum(self.buckets) if self.buckets is not None else 0

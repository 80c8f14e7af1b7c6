"""TimerWheel on a running loop: due order, never early beyond its tick, re-arming."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from healthd.engine.scheduler import SystemUniform, TimerWheel, tick_for

TICK = 0.005  # the daemon picks its tick from the intervals; these tests fix one

# The loop's own timers have millisecond resolution: a callback may run this much before the
# tick time call_at returned (which itself is within one tick of the time asked for).
LOOP_RESOLUTION = 0.0015


def on_time(rec: Recorder, label: str, due: float, when: float, tick: float = TICK) -> bool:
    """``label`` ran at its tick (``due``, as call_at returned it) or later, and ``due`` is
    the tick of ``when``."""
    return abs(due - when) <= tick + 1e-9 and rec.at(label) >= due - LOOP_RESOLUTION


class Recorder:
    """Callbacks that note (label, loop time) when they run; ``wait`` for ``n`` of them."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.ran: list[tuple[str, float]] = []
        self._changed = asyncio.Event()

    def callback(self, label: str, then: Callable[[], None] | None = None) -> Callable[[], None]:
        def run() -> None:
            self.ran.append((label, self.loop.time()))
            self._changed.set()
            if then is not None:
                then()

        return run

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.ran]

    def at(self, label: str) -> float:
        return next(t for name, t in self.ran if name == label)

    async def wait(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.ran) < n:
                self._changed.clear()
                await self._changed.wait()


async def test_callbacks_run_in_due_order_and_not_before_their_tick() -> None:
    wheel, rec = TimerWheel(TICK), Recorder()
    now = rec.loop.time()
    offsets = {"c": 0.08, "a": 0.02, "d": 0.11, "b": 0.05, "past": -0.5}
    due = {label: now + offset for label, offset in offsets.items()}
    returned = {label: wheel.call_at(when, rec.callback(label)) for label, when in due.items()}
    await rec.wait(len(offsets))
    assert rec.labels == sorted(offsets, key=offsets.__getitem__)
    for label, when in due.items():
        assert on_time(rec, label, returned[label], when), (label, when, returned, rec.ran)


async def test_callbacks_of_one_tick_run_in_the_order_they_were_added() -> None:
    wheel, rec = TimerWheel(TICK), Recorder()
    when = (int(rec.loop.time() / TICK) + 6 + 0.4) * TICK  # well inside a tick
    due = {wheel.call_at(when, rec.callback(label)) for label in ("first", "second", "third")}
    due.add(wheel.call_at(when + TICK / 20, rec.callback("fourth")))  # the same tick
    await rec.wait(4)
    assert len(due) == 1
    assert rec.labels == ["first", "second", "third", "fourth"]
    assert all(on_time(rec, label, min(due), when) for label in rec.labels)


async def test_an_entry_earlier_than_the_armed_one_rearms_the_wheel() -> None:
    wheel, rec = TimerWheel(TICK), Recorder()
    now = rec.loop.time()
    late = wheel.call_at(now + 0.4, rec.callback("late"))
    await asyncio.sleep(0.02)  # the wheel is armed for "late" now, and not firing
    asked = rec.loop.time() + 0.03
    early = wheel.call_at(asked, rec.callback("early"))
    await rec.wait(2)
    assert rec.labels == ["early", "late"]
    assert on_time(rec, "early", early, asked)
    assert rec.at("early") < late  # at its own time, not the armed one's
    assert on_time(rec, "late", late, now + 0.4)


async def test_a_later_entry_does_not_disturb_the_armed_one() -> None:
    wheel, rec = TimerWheel(TICK), Recorder()
    now = rec.loop.time()
    first = wheel.call_at(now + 0.03, rec.callback("first"))
    second = wheel.call_at(now + 0.3, rec.callback("second"))
    await rec.wait(1)
    assert rec.labels == ["first"]
    assert on_time(rec, "first", first, now + 0.03)
    assert rec.at("first") < second
    await rec.wait(2)
    assert on_time(rec, "second", second, now + 0.3)


async def test_a_callback_can_schedule_later_and_earlier_entries_while_firing() -> None:
    wheel, rec = TimerWheel(TICK), Recorder()
    now = rec.loop.time()
    pending = wheel.call_at(now + 0.5, rec.callback("pending"))
    planned: dict[str, tuple[float, float]] = {}  # label -> (asked, due)

    def plan(label: str, when: float) -> None:
        planned[label] = (when, wheel.call_at(when, rec.callback(label)))

    def schedule_more() -> None:
        t = rec.loop.time()
        plan("soon", t + 0.05)  # before "pending"
        plan("later", t + 0.6)  # after it
        plan("now", t)  # the tick being fired
        plan("past", t - 1.0)  # already overdue

    wheel.call_at(now + 0.02, rec.callback("trigger", schedule_more))
    await rec.wait(6)
    assert rec.labels[0] == "trigger"
    assert set(rec.labels[1:3]) == {"now", "past"}  # due already: run without a new wait
    assert rec.labels[3:] == ["soon", "pending", "later"]
    # "soon" was added while the wheel fired: the wheel re-armed for it, not for "pending"
    assert on_time(rec, "soon", planned["soon"][1], planned["soon"][0])
    assert rec.at("soon") < pending
    assert on_time(rec, "later", planned["later"][1], planned["later"][0])


async def test_a_callback_rescheduling_itself_keeps_running() -> None:
    wheel, rec = TimerWheel(TICK), Recorder()
    runs: list[tuple[float, float]] = []  # (due, ran)
    due: list[float] = []

    def again() -> None:
        runs.append((due[-1], rec.loop.time()))
        if len(runs) < 5:
            due.append(wheel.call_at(rec.loop.time() + 0.02, again))
        else:
            rec.callback("done")()

    due.append(wheel.call_at(rec.loop.time() + 0.01, again))
    await rec.wait(1)
    assert len(runs) == 5
    for (due_before, ran_before), (due_after, ran_after) in itertools.pairwise(runs):
        assert ran_before < ran_after
        assert abs(due_after - (ran_before + 0.02)) <= TICK + 1e-9
        assert ran_after >= due_after - LOOP_RESOLUTION
        assert due_before < due_after


async def test_a_raising_callback_does_not_lose_the_others_of_its_tick() -> None:
    """A callback that raises is reported by the loop; callbacks due with it still run.

    In the daemon, the wheel's callbacks start checks (a socket, a pipe, a spawn): one that
    fails with an unexpected OSError (EMFILE) must not silently stop other workloads' schedules.
    """
    wheel, rec = TimerWheel(TICK), Recorder()
    errors: list[dict[str, Any]] = []
    rec.loop.set_exception_handler(lambda loop, context: errors.append(context))

    def boom() -> None:
        raise OSError(24, "Too many open files")

    when = rec.loop.time() + 0.02
    wheel.call_at(when, rec.callback("before"))
    wheel.call_at(when, boom)
    wheel.call_at(when, rec.callback("after"))
    wheel.call_at(when + 0.05, rec.callback("next tick"))
    try:
        await rec.wait(2, timeout=2.0)
        await asyncio.sleep(0.1)
    except TimeoutError:
        pass
    finally:
        rec.loop.set_exception_handler(None)
    assert [str(c.get("exception")) for c in errors] == ["[Errno 24] Too many open files"]
    assert rec.labels == ["before", "after", "next tick"]


@pytest.mark.parametrize("tick", [0.001, 0.02])
async def test_a_wheel_with_another_tick(tick: float) -> None:
    wheel, rec = TimerWheel(tick), Recorder()
    now = rec.loop.time()
    asked = {"b": now + 0.07, "a": now + 0.03}
    due = {label: wheel.call_at(when, rec.callback(label)) for label, when in asked.items()}
    await rec.wait(2)
    assert rec.labels == ["a", "b"]
    for label, when in asked.items():
        assert on_time(rec, label, due[label], when, tick)


async def test_the_wheel_wakes_about_once_per_due_tick() -> None:
    """Each due tick costs one wake-up of the loop, not a spin until the clock moves on.

    Counted, not timed: the loop timer the wheel arms should fire about once per tick that
    has callbacks, whatever the machine's speed.
    """
    wakeups = [0]

    class CountingWheel(TimerWheel):
        def _fire(self) -> None:
            wakeups[0] += 1
            super()._fire()

    wheel, rec = CountingWheel(TICK), Recorder()
    runs = [0]

    def again() -> None:
        runs[0] += 1
        if runs[0] < 20:
            wheel.call_at(rec.loop.time() + 0.02, again)
        else:
            rec.callback("done")()

    wheel.call_at(rec.loop.time() + 0.02, again)
    await rec.wait(1)
    assert runs[0] == 20
    assert wakeups[0] <= 2 * runs[0] + 5, f"{wakeups[0]} wake-ups for {runs[0]} due ticks"


@pytest.mark.parametrize(
    ("intervals", "tick"),
    [
        ([1.0, 30.0], 0.05),  # the most a tick may be
        ([0.5], 0.025),  # a twentieth of the shortest interval
        ([0.1, 60.0], 0.005),
        ([0.001], 0.001),  # never below a millisecond: the loop's clock resolution
        ([], 0.05),
    ],
)
def test_the_tick_follows_the_shortest_interval(intervals: list[float], tick: float) -> None:
    assert tick_for(intervals) == pytest.approx(tick)


def test_the_first_checks_spread_over_the_whole_window() -> None:
    spread = SystemUniform()
    values = [spread.uniform(0.0, 1.0) for _ in range(2000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert min(values) < 0.05
    assert max(values) > 0.95  # the whole window, not one end of it
    assert all(2.0 <= spread.uniform(2.0, 3.0) < 3.0 for _ in range(100))

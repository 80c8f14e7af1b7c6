"""Delivering one sink's outbox: in event order, at least once, with backoff, never silently.

For each sink a ``Dispatcher`` takes its pending deliveries from the journal, oldest first,
and delivers them one at a time. A transient failure (network error, deadline, 5xx, 429) is
retried with exponential backoff and jitter, and holds back the events after it, so a
receiver sees them in order; a permanent one (other 4xx) is recorded as ``failed`` and the
next event goes. A delivery older than the sink's ``max_age`` is recorded as ``expired``. Each
outcome is written to the journal before the next delivery starts, so a crash at any instant
delivers an event again at worst, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

from healthd import durations
from healthd.config.sinks import redact
from healthd.engine.scheduler import SystemUniform, Uniform
from healthd.logs import Logger
from healthd.sinks import DeliveryError, Sink
from healthd.store.journal import DELIVERED, EXPIRED, FAILED, SUPPRESSED, Delivery, Journal

BATCH = 20
FIRST_RETRY = 1.0
MAX_RETRY = 300.0
IDLE_RECHECK = 30.0  # look at the outbox this often even without a wake-up
RESUME_AFTER = 5.0  # after the journal failed us (a full disk): try again then
_MAX_DOUBLINGS = 30  # 2**30 s is far past MAX_RETRY; more would overflow a float


def backoff(attempts: int, rng: Uniform) -> float:
    """Seconds before attempt ``attempts + 1``: doubling from 1 s up to 5 min, with jitter
    (half to all of it), so that many hosts do not retry a recovered receiver at once."""
    full = min(MAX_RETRY, FIRST_RETRY * 2 ** min(max(0, attempts - 1), _MAX_DOUBLINGS))
    return rng.uniform(full / 2, full)


class Dispatcher:
    def __init__(
        self, sink: Sink, journal: Journal, log: Logger, rng: Uniform | None = None
    ) -> None:
        self.sink = sink
        self.name = sink.settings.name
        self.journal = journal
        self.log = log.bind(sink=self.name)
        self.rng = rng or SystemUniform()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()  # set while the outbox is empty (a stop waits for it)
        self.outcomes: Counter[str] = Counter()  # since the daemon started, for /metrics
        self.retries = 0
        # (workload, type) -> timestamp of the last event of that kind delivered
        self._last_sent: dict[tuple[str, str], float] = {}
        self._errors: dict[int, str] = {}  # delivery id -> its last error, while it is retried
        # delivery id -> time.monotonic() of its next attempt, for retries this run scheduled
        self._retry_at: dict[int, float] = {}

    async def run(self) -> None:
        """Deliver until cancelled. A failing journal (a full disk, a locked database) is
        logged and tried again: a sink must not stop delivering for good over it."""
        while True:
            try:
                await self._run()
            except Exception as exc:
                self.log.error(
                    "sink_dispatch_error",
                    error=f"{type(exc).__name__}: {exc}",
                    consequence=f"deliveries resume in {durations.format_seconds(RESUME_AFTER)}",
                )
                await asyncio.sleep(RESUME_AFTER)

    async def _run(self) -> None:
        while True:
            self.wake.clear()  # a commit from now on wakes the wait below
            due = await self.journal.call(self.journal.due, self.name, BATCH)
            if not due:
                self.idle.set()
                await self._sleep(IDLE_RECHECK)
                continue
            self.idle.clear()
            for delivery in due:
                wait = self._wait(delivery)
                if wait > 0:
                    await self._sleep(wait)
                    break  # read the outbox again: it may have changed meanwhile
                if not await self._attempt(delivery):
                    break  # to be retried first: the events after it wait, in order

    def _wait(self, d: Delivery) -> float:
        """Seconds before ``d`` may be tried. One never tried is due since it was written: its
        ``next_at`` is the wall clock of that instant, and a clock set back an hour just after
        must not hold it (and, in order, every delivery after it) back. A retry scheduled by
        this run waits on the monotonic clock, for the same reason. One left by an earlier run
        has only its wall-clock time, and waits no longer than a backoff."""
        if d.attempts == 0:
            return 0.0
        at = self._retry_at.get(d.id)
        if at is not None:
            return at - time.monotonic()
        return min(d.next_at - time.time(), MAX_RETRY)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake.wait()

    async def _attempt(self, d: Delivery) -> bool:
        """One try; True when the delivery is settled (the next may go)."""
        settings = self.sink.settings
        now = time.time()
        if now - d.created > settings.max_age:
            # The reason it never went stays visible (settle replaces last_error).
            age = durations.format_seconds(settings.max_age)
            why = f"expired after {d.attempts} attempt(s) in {age}"
            last = self._errors.pop(d.id, "")
            await self._settle(
                d, EXPIRED, d.attempts, f"{why}; last error: {last}" if last else why
            )
            self.log.error(
                "event_expired",
                event_id=d.event.id,
                type=d.event.type.value,
                workload=d.event.workload,
                attempts=d.attempts,
                max_age=durations.format_seconds(settings.max_age),
            )
            return True
        # Noise is judged by when events happened, not when they are delivered: after an
        # outage, a backlog of events hours apart is not flapping.
        key = (d.event.workload, d.event.type.value)
        happened = d.event.timestamp.timestamp()
        if not d.reminder and happened - self._last_sent.get(key, -1e18) < settings.min_interval:
            await self._settle(d, SUPPRESSED, d.attempts, "")
            return True
        error, permanent = await self._deliver(d)
        attempts = d.attempts + 1
        if error is None:
            self._errors.pop(d.id, None)
            if not d.reminder:
                self._last_sent[key] = happened
            await self._settle(d, DELIVERED, attempts, "")
            return True
        if permanent:
            self._errors.pop(d.id, None)
            await self._settle(d, FAILED, attempts, error)
            self.log.error(
                "delivery_failed", event_id=d.event.id, error=error, consequence="not retried"
            )
            return True
        self._errors[d.id] = error
        retry_in = backoff(attempts, self.rng)
        self._retry_at[d.id] = time.monotonic() + retry_in
        await self.journal.call(
            self.journal.retry_later, d.id, attempts, time.time() + retry_in, error
        )
        self.retries += 1
        self.log.warning(
            "delivery_retry",
            event_id=d.event.id,
            attempt=attempts,
            error=error,
            retry_in=durations.format_seconds(round(retry_in, 1)),
        )
        return False

    async def _deliver(self, d: Delivery) -> tuple[str | None, bool]:
        """(error or None, permanent)."""
        timeout = self.sink.settings.timeout
        try:
            async with asyncio.timeout(timeout):
                await self.sink.deliver(d.event, reminder=d.reminder)
        except DeliveryError as exc:
            # redacted here, once: the text goes to the log, the journal and the API
            return redact(str(exc), self.sink.settings) or type(exc).__name__, exc.permanent
        except TimeoutError:
            return f"no answer within {durations.format_seconds(timeout)}", False
        except Exception as exc:  # a sink's bug: keep the event, try again later
            return redact(f"{type(exc).__name__}: {exc}", self.sink.settings), False
        return None, False

    async def _settle(self, d: Delivery, state: str, attempts: int, error: str) -> None:
        await self.journal.call(self.journal.settle, d.id, state, attempts, error)
        self._retry_at.pop(d.id, None)
        self.outcomes[state] += 1

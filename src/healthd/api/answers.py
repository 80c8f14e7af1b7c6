"""Expensive answers built once and served many times: /v1/status, /v1/workloads, /metrics.

Each of them reads every workload, so at 1,000 workloads one answer costs milliseconds of the
event loop the checks run on, and a client that asks for it again and again (32 connections
pipelining ``GET /v1/status``) would take the loop from the checks. So the encoded bytes are
kept and served as they are while both hold:

- they are younger than ``FRESH_FOR`` (or, where a build took long, ``BUILD_SHARE`` times
  what it took: rebuilding then takes at most a fifth of the loop, whatever the flood; at
  5,000 workloads /metrics takes seconds to encode, and is then kept 10-17 s, about one
  Prometheus scrape interval);
- nothing an answer must show at once has happened since: the daemon's ``generation`` (a
  state change, a restart, pause, resume, reset, reload) and the API's own count of changes
  it made (a check run now) are what they were.

What an operator can see: numbers that move with every check (``last_check``,
``total_checks``, ``uptime_seconds``, the metrics' counters) up to ``FRESH_FOR`` old (longer
on big hosts, as above); a state change, pause, resume, reset or reload made before the
request, never. Requests that come while an answer is being built wait for that build (or,
if it began before a change they must see, for the next): one build at a time, whatever the
number of clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

FRESH_FOR = 1.0  # seconds an answer is served again at most (unless its build took long)
BUILD_SHARE = 4  # an answer that took B seconds to build is kept BUILD_SHARE * B at least


class CachedAnswer:
    """One answer's bytes, rebuilt by ``build`` when stale (see the module's rules).

    ``version`` counts what the answer depends on besides time: it only grows, and a value
    other than the one a build started with makes that build's bytes stale at once. A request
    is never answered with a build that started before the version it saw on arrival.
    """

    def __init__(
        self,
        build: Callable[[], Awaitable[bytes]],
        version: Callable[[], int],
        *,
        fresh_for: float = FRESH_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._version = version
        self.fresh_for = fresh_for
        self._clock = clock
        self._body: bytes | None = None
        self._built_version = -1
        self._expires = 0.0
        self._building: asyncio.Task[tuple[bytes, int]] | None = None
        self.builds = 0  # how many times it was built (tests, and curious people)

    async def get(self) -> bytes:
        wanted = self._version()
        if (
            self._body is not None
            and self._built_version == wanted
            and self._clock() < self._expires
        ):
            return self._body
        while True:  # twice at most: a build already under way may have begun before a change
            if self._building is None:
                self._building = asyncio.get_running_loop().create_task(self._rebuild())
                # Its error is its waiters'; should they all have gone, nobody else's business.
                self._building.add_done_callback(_retrieve)
            # Shielded: a client that goes away must not cancel a build others wait for.
            body, version = await asyncio.shield(self._building)
            if version >= wanted:
                return body

    async def _rebuild(self) -> tuple[bytes, int]:
        try:
            version = self._version()  # before: a change during the build makes it stale
            started = self._clock()
            body = await self._build()
            # Time on the clock, not CPU: a build in slices also waits for the checks that
            # run between its slices, which is the loop's time it took all the same.
            took = self._clock() - started
            self._body, self._built_version = body, version
            self._expires = self._clock() + max(self.fresh_for, BUILD_SHARE * took)
            self.builds += 1
            return body, version
        finally:
            self._building = None


def _retrieve(task: asyncio.Task[tuple[bytes, int]]) -> None:
    if not task.cancelled():
        task.exception()

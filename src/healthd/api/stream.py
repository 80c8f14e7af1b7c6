"""GET /v1/events/stream: the journal's events as Server-Sent Events, resumable, never gapped.

Each event is sent as ``id: <id>``, ``event: <type>``, ``data: <event JSON>``, only once it is
committed (what a client is shown is never taken back). A client resumes where it stopped with
``Last-Event-ID`` (or ``?after_id=``): what was committed after that id is replayed from the
journal, then live events follow. To leave neither a gap nor a duplicate between the two, the
stream listens for commits *before* it reads the journal, and sends an event only if its id is
above the last one sent.

Memory per client is bounded: live events wait in a queue of at most ``max_queued``; when a
client reads too slowly for that, the queue is dropped and the stream reads on from the
journal instead, where every event is anyway. A client that takes none of the bytes sent to it
for the idle timeout (30 s) is dropped by the HTTP server, however few they are (see
sendqueue.py); it resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import deque
from collections.abc import AsyncGenerator, Collection, Iterator
from dataclasses import dataclass, field

from healthd.model import Event
from healthd.store.journal import Journal, event_json

RETRY_MS = 2000  # how long a disconnected EventSource waits before it reconnects
KEEPALIVE = 15.0  # a comment this often keeps proxies from closing a quiet stream
MAX_QUEUED = 1000  # live events waiting for one client; beyond, it reads from the journal
REPLAY_PAGE = 500  # events read from the journal at a time
# Events are written in pieces of about this size, not one write each: a replay of 100,000
# events took 5.2 s one by one, 4.0 s in pieces (the rest is reading and encoding them).
PIECE = 32 * 1024


def frame(event: Event) -> bytes:
    """One event as an SSE message. JSON has no raw newline, so ``data`` is one line."""
    data = json.dumps(event_json(event), ensure_ascii=False, default=str)
    return f"id: {event.id}\nevent: {event.type.value}\ndata: {data}\n\n".encode()


def pieces(events: list[Event]) -> Iterator[tuple[bytes, int]]:
    """The events' frames, joined into pieces of about ``PIECE`` bytes, each with the id of
    its last event."""
    frames: list[bytes] = []
    size = 0
    for event in events:
        frames.append(frame(event))
        size += len(frames[-1])
        if size >= PIECE:
            yield b"".join(frames), event.id
            frames, size = [], 0
    if frames:
        yield b"".join(frames), events[-1].id


@dataclass
class EventStream:
    journal: Journal
    after_id: int | None  # None: from now on, no replay
    workload: str | None = None
    types: Collection[str] = ()
    keepalive: float = KEEPALIVE
    max_queued: int = MAX_QUEUED
    overflows: int = field(default=0, init=False)  # times the client fell behind the queue

    def wants(self, event: Event) -> bool:
        if self.workload is not None and event.workload != self.workload:
            return False
        return not self.types or event.type.value in self.types

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The stream's bytes. Nothing happens until it is first iterated (a HEAD request
        never subscribes), and closing it unsubscribes."""
        queue: deque[Event] = deque()
        wake = asyncio.Event()
        behind = False  # the queue overflowed: catch up from the journal

        def committed(batch: list[Event]) -> None:
            # Called by the journal on the loop after each commit: must not raise, nor block.
            nonlocal behind
            if behind:
                return
            queue.extend(e for e in batch if self.wants(e))
            if len(queue) > self.max_queued:
                behind = True
                queue.clear()
                self.overflows += 1
            wake.set()

        journal = self.journal
        journal.on_commit(committed)
        if self.after_id is None:
            last = journal.committed_id  # every later commit reaches ``committed``
        else:
            # An id the journal never reached: it was replaced (moved aside as unusable) and
            # counts from 1 again; all of the new one is news to this client.
            last = self.after_id if self.after_id <= journal.committed_id else 0
            behind = True
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            while True:
                if behind:
                    behind = False
                    queue.clear()  # what it held is committed: the journal has it too
                    page_full = True
                    while page_full and not behind:
                        page = await journal.call(
                            functools.partial(
                                journal.events,
                                after_id=last,
                                workload=self.workload,
                                types=tuple(self.types),
                                limit=REPLAY_PAGE,
                            )
                        )
                        for piece, upto in pieces(page):
                            yield piece
                            last = upto
                        page_full = len(page) == REPLAY_PAGE
                    continue
                fresh = [e for e in queue if e.id > last]
                queue.clear()
                for piece, upto in pieces(fresh):
                    yield piece
                    last = upto
                if behind or queue:  # more came meanwhile (in the queue, or the journal)
                    continue
                wake.clear()
                try:
                    async with asyncio.timeout(self.keepalive):
                        await wake.wait()
                except TimeoutError:
                    yield b": keepalive\n\n"
        finally:
            journal.off_commit(committed)

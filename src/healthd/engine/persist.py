"""Saving: statuses.json on every state change (coalesced) and every flush interval while
anything changed, re-encoding only the entries that changed; daemon.json beside it says how
the daemon keeps up (lag histogram, checks run, whether it is behind) and where its API is.

Both are written atomically in a thread, so a crash at any instant leaves the old or the new
file, and a slow disk never holds the event loop. A write that fails (a full disk) is tried
again at every flush interval with every entry, and ``health`` says so meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable

from healthd.logs import Logger
from healthd.model import WorkloadStatus
from healthd.store.atomic import write_atomic
from healthd.store.health import WriteHealth
from healthd.store.status import StatusEncoder, StatusStore

DAEMON_FILENAME = "daemon.json"
_ENCODE_SLICE = 500


class StatusWriter:
    def __init__(
        self,
        statuses: dict[str, WorkloadStatus],
        store: StatusStore,
        *,
        summary: Callable[[], dict[str, object]],
        log: Logger,
        flush_interval: float,
        on_tick: Callable[[], None],
    ) -> None:
        self.statuses = statuses
        self.store = store
        self.summary = summary
        self.log = log
        self.flush_interval = flush_interval
        self.on_tick = on_tick  # called every flush interval, saved or not
        self._save_now = asyncio.Event()
        self._changed_names: set[str] = set()
        self._encoder = StatusEncoder()
        self._encoded_all = False
        self._write_lock = threading.Lock()
        self._snapshots = 0  # numbers snapshots, so an older one never overwrites a newer one
        self._written = 0
        self.health = WriteHealth(
            store.path.name,
            str(store.path),
            log,
            failing_event="status_save_failed",
            consequence="monitoring goes on; the save is tried again every flush interval",
        )

    def changed(self, workload: str, urgent: bool) -> None:
        self._changed_names.add(workload)
        if urgent:
            self._save_now.set()

    def save_soon(self) -> None:
        self._save_now.set()

    async def run(self) -> None:
        """Save on every state change (coalesced) and every flush interval while dirty."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._save_now.wait()
            self._save_now.clear()
            self.on_tick()
            if not self._changed_names and self._encoded_all:
                continue
            data = await self._encode_in_slices()
            summary = self._encode_summary()
            try:
                await asyncio.to_thread(self._write_files, self._snapshots, data, summary)
            except OSError as exc:
                self._encoded_all = False  # what failed to save is saved at the next tick
                self.health.failed(exc)
            else:
                self.health.succeeded()
            del data, summary  # the whole file, held until the next flush otherwise

    async def _encode_in_slices(self) -> bytes:
        """Encode what changed a slice at a time, letting checks run in between: at 10,000
        workloads encoding everything at once would hold the loop for ~100 ms. Each entry is
        consistent; entries may be some milliseconds apart."""
        names = self._take_changed()
        for start in range(0, len(names), _ENCODE_SLICE):
            self._encoder.update(self.statuses, names[start : start + _ENCODE_SLICE])
            await asyncio.sleep(0)
        self._encoded_all = True
        return self._encoder.render(self.statuses)

    def _encode(self) -> bytes:
        """All that changed at once (start and stop, when no check is waiting for the loop)."""
        self._encoder.update(self.statuses, self._take_changed())
        self._encoded_all = True
        return self._encoder.render(self.statuses)

    def _take_changed(self) -> list[str]:
        """The workloads to encode for a new snapshot: those changed, or all after a gap."""
        self._snapshots += 1
        names = list(self._changed_names if self._encoded_all else self.statuses)
        self._changed_names = set()
        self._encoded_all = False  # until every name is in (a cancelled writer leaves gaps)
        return names

    def _encode_summary(self) -> bytes:
        return json.dumps(self.summary(), indent=1).encode() + b"\n"

    def _write_files(self, snapshot: int, statuses: bytes, summary: bytes) -> None:
        with self._write_lock:
            if snapshot < self._written:
                return  # a writer thread outlived its task; the final save is newer
            self.store.write_bytes(statuses)
            write_atomic(self.store.status_dir / DAEMON_FILENAME, summary, self.store.mode or 0o644)
            self._written = snapshot

    def save_sync(self) -> None:
        """Save at once, on the loop thread (at start and at stop)."""
        try:
            data = self._encode()
            self._write_files(self._snapshots, data, self._encode_summary())
        except OSError as exc:
            self._encoded_all = False
            self.health.failed(exc)
            if self.health.episode_failures > 1:  # already logged once; a stop says so again
                self.log.error(
                    "status_not_saved",
                    path=str(self.store.path),
                    error=self.health.error,
                    consequence="the file keeps what was last saved",
                )
        else:
            self.health.succeeded()

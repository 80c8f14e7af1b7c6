"""Config dir watching: a change in the config dir is reloaded by itself, as SIGHUP would.

watchfiles' Rust core (inotify underneath) collects the changes in a thread of its own; one
thread here waits for a burst of them to end (``quiet``: no further change for that long, or
at most ``max_wait`` of grouping) and the loop then runs one reload for the whole burst. An
editor's save (a temp file written and renamed over, a backup made and removed) or a
``healthd add`` (``.NAME.yaml.PID.N.tmp`` renamed to ``NAME.yaml``) is one reload, and a
file is only ever read once it has its final name. Only what the loader reads counts
(``*.yaml``/``*.yml``, not hidden), plus:

- Kubernetes' ``..data``: a ConfigMap volume swaps this symlink to publish a new version (its
  ``NAME.yaml`` entries are links through it), so no ``*.yaml`` entry of the dir changes;
- the config dir itself: its mode (strict modes read it), and its removal, replacement or
  creation (``rm -r`` then ``mkdir``, a ``mv`` over it, ``ln -sfn`` of a symlinked dir). The
  watch is made again on the new dir when its identity (device, inode, as its name resolves)
  changes. A config dir named by a symlink has its parent watched too, where a new link
  shows; a real directory is watched alone, because inotify reports every open and read in a
  watched directory (the underlying library asks for them), and a parent such as ``/etc`` is
  read all the time by every process on the host;
- a config dir that does not exist (or cannot be watched) yet: its nearest existing ancestor
  is watched until it appears.

When inotify cannot be had (``fs.inotify.max_user_instances`` or ``max_user_watches`` reached)
the same changes are found by polling every 2 s. What is not seen: a change inside a file
that a workload file links to elsewhere, or in a directory above the parent; SIGHUP or
``healthd reload`` still reload.

Idle, the waiting thread wakes every ``quiet`` (to see whether to stop): a few microseconds
of CPU, four times a second at the default 250 ms (figures in the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from healthd.config.loader import SUFFIXES
from healthd.logs import Logger

KUBERNETES_SWAP = "..data"
MIN_QUIET = 0.05  # the waiting thread wakes this often at most, however small the setting
POLL_DELAY_MS = 2000  # when inotify cannot be had
RETRY = 10.0  # seconds between attempts when nothing at all can be watched
MAX_NAMES = 20  # files named in a log line; more are counted


class Notify(Protocol):
    """What is used of ``watchfiles``' ``RustNotify``."""

    def watch(
        self,
        debounce_ms: int,
        step_ms: int,
        timeout_ms: int,
        stop_event: threading.Event | None,
    ) -> set[tuple[int, str]] | str: ...

    def close(self) -> None: ...


# (paths, polling) -> a started watch; raises OSError (or RuntimeError) when it cannot be had
NotifyFactory = Callable[[list[str], bool], Notify]


def rust_notify(paths: list[str], polling: bool) -> Notify:
    """watchfiles' watcher, not recursive. Its Python wrappers (``awatch``, ``watch``) create
    it only when first iterated; made here directly, it watches from the moment this returns,
    so that arming it before the first load leaves no window in which a change is missed."""
    from watchfiles._rust_notify import RustNotify  # noqa: PLC0415  (loaded when watching)

    # ignore_permission_denied must be False: when True, a path that does not exist is
    # silently not watched at all
    return RustNotify(paths, False, polling, POLL_DELAY_MS, False, False)


def counts(name: str) -> bool:
    """Whether a change to entry ``name`` of the config dir can change what loads."""
    return name == KUBERNETES_SWAP or (name.endswith(SUFFIXES) and not name.startswith("."))


def identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the directory ``path`` names now; None if it is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def nearest_ancestor(path: str) -> str:
    """The nearest directory above ``path`` that exists."""
    current = os.path.dirname(path)
    while current != os.path.dirname(current) and identity(current) is None:
        current = os.path.dirname(current)
    return current


def shown(names: list[str]) -> str:
    if len(names) <= MAX_NAMES:
        return ",".join(names)
    return ",".join(names[:MAX_NAMES]) + f",+{len(names) - MAX_NAMES} more"


class ConfigWatcher:
    """``arm`` before the first load, ``start`` once the daemon runs, ``close`` at stop.
    ``on_change(names)`` is awaited once per burst of changes, with the entries (or the config
    dir's path) that changed."""

    def __init__(
        self,
        config_dir: Path,
        on_change: Callable[[list[str]], Awaitable[object]],
        log: Logger,
        *,
        quiet: float = 0.25,
        factory: NotifyFactory = rust_notify,
    ) -> None:
        # Not resolved: a symlinked config dir is watched where it is named, so that a new
        # link (ln -sfn) is seen in its parent.
        self.config_dir = os.path.abspath(config_dir)
        self.parent = os.path.dirname(self.config_dir)
        self.on_change = on_change
        self.log = log
        self.quiet_ms = int(max(MIN_QUIET, quiet) * 1000)
        self.max_wait_ms = max(2000, 8 * self.quiet_ms)
        self.factory = factory
        self.mode = "off"  # "inotify" or "polling" once armed; "failed": nothing watched
        self.watching: list[str] = []
        self.inside = False  # the config dir itself is watched (not only an ancestor)
        self._identity: tuple[int, int] | None = None
        self._notify: Notify | None = None
        self._stop = threading.Event()  # read by the waiting thread
        self._stopped = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    # -- arming ---------------------------------------------------------------------------

    def arm(self, reason: str = "start") -> None:
        """Watch the config dir (and its parent), or its nearest existing ancestor while it
        does not exist or cannot be watched. Made again whenever the dir changes identity."""
        self._close_notify()
        for _ in range(5):  # the dir may come or go while this runs: then look again
            self._identity = identity(self.config_dir)
            if self._identity is not None and self._open(self._dir_paths()):
                self.inside = True
            elif self._open([nearest_ancestor(self.config_dir)]):
                self.inside = False  # missing, not a dir, or unreadable: wait for it
            if self._notify is None or identity(self.config_dir) == self._identity:
                break
            self._close_notify()
        if self._notify is None:
            if self.mode != "failed":  # said once, not at every retry
                self.log.error(
                    "config_watch_failed",
                    config_dir=self.config_dir,
                    retry_every=RETRY,
                    consequence="changes are picked up on SIGHUP or healthd reload only",
                )
            self.mode = "failed"
            return
        self.log.info(
            "config_watch",
            reason=reason,
            mode=self.mode,
            watching=",".join(self.watching),
            config_dir_exists=self._identity is not None,
        )

    def _dir_paths(self) -> list[str]:
        """What to watch while the config dir exists: the dir, and its parent only when the
        dir is named by a symlink (a swapped link shows in the parent, not in either target)."""
        if os.path.islink(self.config_dir):
            return [self.config_dir, self.parent]
        return [self.config_dir]

    def _open(self, paths: list[str]) -> bool:
        paths = list(dict.fromkeys(paths))  # "/" is its own parent
        try:
            self._notify = self.factory(paths, False)
            self.mode = "inotify"
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return False  # this path cannot be watched: the caller tries one further up
        except (OSError, RuntimeError) as exc:  # no inotify to be had: limits reached
            try:
                self._notify = self.factory(paths, True)
            except (OSError, RuntimeError):
                return False
            self.mode = "polling"
            self.log.warning(
                "config_watch_polling",
                error=str(exc),
                poll_every=POLL_DELAY_MS / 1000,
                hint="raise fs.inotify.max_user_instances / max_user_watches",
            )
        self.watching = paths
        return True

    def _close_notify(self) -> None:
        notify, self._notify = self._notify, None
        if notify is not None:
            with contextlib.suppress(RuntimeError):  # the waiting thread still inside (cancel)
                notify.close()

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="healthd-watch")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="config-watch")

    def stop(self) -> None:
        """No further reload; the waiting thread returns within ``quiet`` (``close`` waits)."""
        self._stop.set()
        self._stopped.set()

    async def close(self) -> None:
        """Stop watching; returns once the waiting thread has returned (within ``quiet``)."""
        self.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._close_notify()
        if self._executor is not None:
            self._executor.shutdown(wait=False)  # its one thread is idle by now
        self.mode = "off"

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            notify = self._notify
            if notify is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), RETRY)
                    return
                self.arm("retry")
                if self._notify is not None:
                    await self._changed([self.config_dir])
                continue
            raw = await loop.run_in_executor(
                self._executor, notify.watch, self.max_wait_ms, self.quiet_ms, 0, self._stop
            )
            if isinstance(raw, str):  # "stop"; "timeout" and "signal" are never asked for
                continue
            names = self._sort(raw)
            if names:
                await self._changed(names)

    def _sort(self, raw: set[tuple[int, str]]) -> list[str]:
        """The names that count among ``raw``'s changes; the watch is made again when the
        config dir itself came, went or was replaced."""
        names: set[str] = set()
        dir_touched = False
        for _, path in raw:
            if path == self.config_dir or self.config_dir.startswith(path.rstrip("/") + "/"):
                dir_touched = True  # the dir itself, or (watching an ancestor) a dir above it
            elif self.inside and os.path.dirname(path) == self.config_dir:
                name = os.path.basename(path)
                if counts(name):
                    names.add(name)
        if dir_touched:
            before, now = self._identity, identity(self.config_dir)
            if now != before or not self.inside:
                self.arm(
                    "config dir created"
                    if before is None
                    else "config dir removed"
                    if now is None
                    else "config dir replaced"
                    if now != before
                    else "config dir changed"
                )
            # Its mode or owner may have changed (strict modes judge it), or what is in it.
            # A dir that was missing and still is (one above it came) has nothing to load. The
            # same dir with entries that changed is named by those entries (polling also sees
            # the dir's own mtime move with them).
            if (now is not None or before is not None) and (now != before or not names):
                names.add(self.config_dir)
        return sorted(names)

    async def _changed(self, names: list[str]) -> None:
        try:
            await self.on_change(names)
        except Exception as exc:  # a bug in a reload must not end the watching
            self.log.error("config_watch_reload_failed", error=repr(exc), files=shown(names))
